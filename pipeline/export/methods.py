"""Which trained model a workspace holds (NeRF, IDR or the volume-rendered SDF), and loading it."""
from __future__ import annotations

from typing import Any

import torch

from pipeline.models.idr import io as idr_io
from pipeline.models.nerf import io as nerf_io
from pipeline.models.sdf import io as sdf_io
from pipeline.runner.workspace import Workspace, WorkspaceError

METHODS = ("nerf", "idr", "sdf")
# methods whose model is a signed distance (meshed at level 0): SDFModel
SDF_METHODS = ("idr", "sdf")
# the commands that make the inputs of a stage that reads the trained model (for its error messages)
MODEL_PRODUCED_BY = {"poses/transforms.json": "`python run.py poses --data DATA --workspace W`",
                     "nerf": "`python run.py nerf --workspace W` (or idr, sdf)",
                     "idr": "`python run.py idr --workspace W`",
                     "sdf": "`python run.py sdf --workspace W`"}


def trained_methods(workspace: Workspace) -> list[str]:
    """Methods with a completed stage folder in the workspace, newest first."""
    found = []
    for method in METHODS:
        manifest = workspace.manifest(method)
        if manifest and manifest.get("status") == "done":
            when = (workspace.stage_dir(method) / "manifest.json").stat().st_mtime
            found.append((when, method))
    return [m for _, m in sorted(found, reverse=True)]


def resolve_method(workspace: Workspace, method: str) -> str:
    """``auto`` -> the newest trained method; otherwise check the requested one exists."""
    if method not in ("auto",) + METHODS:
        raise ValueError(f"method must be auto or one of {', '.join(METHODS)}, got {method!r}")
    available = trained_methods(workspace)
    if method == "auto":
        if not available:
            raise WorkspaceError(f"{workspace.root} has no trained model (no completed nerf/, idr/ or sdf/ "
                                 f"folder); run `python run.py nerf --workspace {workspace.root}` (or idr, sdf) first")
        return available[0]
    if method not in available:
        raise WorkspaceError(f"{workspace.stage_dir(method)} holds no completed {method} run; "
                             f"run `python run.py {method} --workspace {workspace.root}` first")
    return method


def model_inputs(workspace: Workspace, config: Any) -> list[str]:
    """The inputs of a stage that reads the trained model (``config.method``): the normalised
    poses and the model's folder."""
    inputs = ["poses/transforms.json"]
    try:
        inputs.append(resolve_method(workspace, config.method))
    except WorkspaceError:
        inputs.append("nerf" if config.method == "auto" else config.method)  # the runner says it is missing
    return inputs


def load_model(workspace: Workspace, method: str, device: torch.device):
    """The trained model of ``method`` (nerf | idr | sdf), in the normalised frame, in eval mode."""
    # the modules' load_trained is read when called: tests stand an analytic model in for it
    loaders = {"nerf": nerf_io, "idr": idr_io, "sdf": sdf_io}
    if method not in loaders:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return loaders[method].load_trained(workspace, device)
