"""Volume-rendered SDF model files (``model.pt``): build a :class:`VolumeSDFModel` from its config,
save it, load it.

A model file holds ``format`` (:data:`MODEL_FORMAT`), ``config`` (the :class:`SDFModelConfig` as a
dict: field, sampling, sdf, renderer, background_field), ``background`` (3,) and ``state_dict``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from pipeline.geometry.normalize import Similarity
from pipeline.models.framed import FramedModel
from pipeline.models.idr.model import RendererConfig
from pipeline.models.idr.sdf_network import SDFNetworkConfig
from pipeline.models.sdf.background import BackgroundConfig
from pipeline.models.sdf.model import SamplingConfig, SDFModelConfig, VolumeSDFModel
from pipeline.runner.workspace import Workspace, WorkspaceError

MODEL_FORMAT = "recon-sdf-1"
MODEL_FILE = "model.pt"
STAGE_NAME = "sdf"


def build_model(config: SDFModelConfig, background) -> VolumeSDFModel:
    """A fresh model; background: (3,) the constant colour behind everything."""
    return VolumeSDFModel(config, background)


def config_from_dict(d: dict) -> SDFModelConfig:
    return SDFModelConfig(field=d["field"], sampling=SamplingConfig(**d["sampling"]), sdf=SDFNetworkConfig(**d["sdf"]),
                          renderer=RendererConfig(**d["renderer"]),
                          background_field=BackgroundConfig(**d["background_field"]),
                          sample_gradients=d.get("sample_gradients", "differentiable"))


def save_model(path: Path, model: VolumeSDFModel, frame: Similarity | None = None, bounds=None) -> None:
    """``frame``: the model's frame as a similarity of the normalised one (the sdf stage's region of
    interest); loading then wraps the model in a :class:`FramedModel` of the normalised frame.
    ``bounds`` (2, 3, the model's frame): the box to mesh, when it is not the sphere's cube (a scene
    seen from inside: the box of what its cameras saw); loading sets ``model.bounds`` to it."""
    torch.save({"format": MODEL_FORMAT, "config": dataclasses.asdict(model.config),
                "background": model.background.tolist(), "state_dict": model.state_dict(),
                "frame": frame.to_dict() if frame is not None else None,
                "bounds": None if bounds is None else [[float(v) for v in row] for row in bounds]}, path)


def load_model_file(path: Path, device="cpu") -> VolumeSDFModel:
    """A saved model.pt -> VolumeSDFModel on ``device`` in eval mode."""
    path = Path(path)
    if not path.exists():
        raise WorkspaceError(f"{path} is missing; run `python run.py sdf --workspace W` first")
    blob = torch.load(path, map_location=device, weights_only=False)
    if blob.get("format") != MODEL_FORMAT:
        raise WorkspaceError(f"{path}: not an SDF model file (format {blob.get('format')!r}); re-run the sdf stage")
    model = build_model(config_from_dict(blob["config"]), blob["background"])
    model.load_state_dict(blob["state_dict"])
    model.to(device).prepare_for_rendering()  # the skipping grid is not saved: it comes from the field
    if blob.get("bounds") is not None:
        model.bounds = np.asarray(blob["bounds"], dtype=np.float64)
    if blob.get("frame"):  # trained in its region of interest's frame
        return FramedModel(model, Similarity.from_dict(blob["frame"])).to(device).eval()
    return model.to(device).eval()


def load_trained(workspace: Workspace | str | Path, device="cpu") -> VolumeSDFModel:
    """The trained model of a workspace's sdf stage (an :class:`pipeline.models.render.SDFModel`, normalised frame)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    return load_model_file(ws.stage_dir(STAGE_NAME) / MODEL_FILE, device)
