"""IDR model files (``model.pt``): build an :class:`IDRModel` from its configs, save it, load it.

A model file holds ``format`` (:data:`MODEL_FORMAT`), the ``sdf``, ``renderer`` and ``tracing``
configs as dicts, ``background`` (3,), ``state_dict``, and whatever extra entries the trainer adds
(``cameras``: the refined poses when cameras were trained).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import torch

from pipeline.models.idr.model import IDRModel, RendererConfig
from pipeline.models.idr.sdf_network import SDFNetworkConfig
from pipeline.models.idr.sphere_tracing import TracingConfig
from pipeline.runner.workspace import Workspace, WorkspaceError

MODEL_FORMAT = "recon-idr-1"
MODEL_FILE = "model.pt"


def build_model(sdf: SDFNetworkConfig, renderer: RendererConfig, tracing: TracingConfig, background) -> IDRModel:
    """A fresh model; background: (3,) colour of rays that miss the surface."""
    return IDRModel(sdf, renderer, tracing, background)


def save_model(path: Path, model: IDRModel, sdf: SDFNetworkConfig, renderer: RendererConfig,
               tracing: TracingConfig, extra: Optional[dict] = None) -> None:
    torch.save({"format": MODEL_FORMAT, "sdf": dataclasses.asdict(sdf), "renderer": dataclasses.asdict(renderer),
                "tracing": dataclasses.asdict(tracing), "background": model.background.tolist(),
                "state_dict": model.state_dict(), **(extra or {})}, path)


def load_model_file(path: Path, device="cpu") -> IDRModel:
    """A saved model.pt -> IDRModel on ``device`` in eval mode."""
    path = Path(path)
    if not path.exists():
        raise WorkspaceError(f"{path} is missing; run `python run.py idr --workspace W` first")
    blob = torch.load(path, map_location=device, weights_only=False)
    if blob.get("format") != MODEL_FORMAT:
        raise WorkspaceError(f"{path}: not an IDR model file (format {blob.get('format')!r}); re-run the idr stage")
    model = build_model(SDFNetworkConfig(**blob["sdf"]), RendererConfig(**blob["renderer"]),
                        TracingConfig(**blob["tracing"]), blob["background"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()


def load_trained(workspace: Workspace | str | Path, device="cpu") -> IDRModel:
    """The trained IDR model of a workspace (an :class:`pipeline.models.render.SDFModel`, normalised frame)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    return load_model_file(ws.stage_dir("idr") / MODEL_FILE, device)
