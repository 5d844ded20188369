"""NeRF model files (``model.pt``): build a :class:`NeRFModel` from its config, save it, load it.

A model file holds ``config`` (the training settings as a dict; its ``model`` and ``background``
entries rebuild the network), ``aabb`` (2, 3), ``scene_background`` and ``state_dict``.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from pipeline.models.components.hashgrid import HashGridConfig
from pipeline.models.nerf.model import NeRFModel, NeRFModelConfig
from pipeline.runner.workspace import Workspace, WorkspaceError

MODEL_FILE = "model.pt"


def build_model(config: NeRFModelConfig, aabb, scene_background: str, background: str = "white") -> NeRFModel:
    """A fresh model. aabb: (2, 3) box in the normalised frame; scene_background: the scene's own
    background (black | white, where rays end transparent); background: the training background
    setting (``learned`` makes the background colour a parameter)."""
    bg = (0.0, 0.0, 0.0) if scene_background == "black" else (1.0, 1.0, 1.0)
    return NeRFModel(config, aabb, background=bg, learn_background=background == "learned")


def save_model(path: Path, model: NeRFModel, background: str, scene_background: str,
               settings: Optional[dict] = None) -> None:
    """Write ``model`` (on any device) to ``path``. settings: the training settings to record beside
    the network's config (the stage's config as a dict)."""
    config = {**(settings or {}), "model": asdict(model.config), "background": background}
    torch.save({"config": config, "aabb": model.aabb.cpu(), "scene_background": scene_background,
                "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, path)


def model_config_from_dict(d: dict) -> NeRFModelConfig:
    d = dict(d)
    grid = HashGridConfig(**d.pop("grid", {}))
    return NeRFModelConfig(**d, grid=grid)


def load_model_file(path: Path, device="cpu") -> NeRFModel:
    """A saved model.pt -> NeRFModel on ``device`` in eval mode."""
    path = Path(path)
    if not path.exists():
        raise WorkspaceError(f"{path} is missing; run `python run.py nerf --workspace W` first")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    config = saved["config"]
    model = build_model(model_config_from_dict(config.get("model", {})), saved["aabb"],
                        saved.get("scene_background", "white"), config.get("background", "random"))
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval()


def load_trained(workspace: Workspace | str | Path, device="cpu") -> NeRFModel:
    """The trained NeRF of a workspace (a :class:`pipeline.models.render.DensityModel`), in eval mode."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    return load_model_file(ws.stage_dir("nerf") / MODEL_FILE, device)
