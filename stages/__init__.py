"""The stages of recon. Each module defines ``STAGE`` (a :class:`pipeline.runner.stage.Stage`); a stage
module that does not exist yet is simply not offered."""
from __future__ import annotations

import importlib

from pipeline.runner.stage import Stage

# module name in stages/ -> position in the chain
STAGE_MODULES = ("poses", "centres", "nerf", "idr", "sdf", "export", "eval", "report")

# the demo chain of each method; stages that are not available are left out
DEMO_CHAINS = {"nerf": ("poses", "nerf", "export", "eval", "report"), "idr": ("poses", "idr", "export", "eval", "report"),
               "sdf": ("poses", "sdf", "export", "eval", "report")}


def available_stages() -> dict[str, Stage]:
    """Stage name -> Stage, for every stage module present, in chain order."""
    stages = {}
    for module in STAGE_MODULES:
        try:
            mod = importlib.import_module(f"stages.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"stages.{module}":
                continue
            raise
        stages[mod.STAGE.name] = mod.STAGE
    return stages
