"""The workspace: one folder per reconstruction, through which stages talk.

Layout (each stage owns one folder and writes a ``manifest.json`` in it)::

    W/
      poses/      transforms.json (nerfstudio convention, normalised), normalization.json,
                  sparse/ (COLMAP model, when estimated), points.ply, report.json
      nerf/       model.pt, test renders, depth .npy, metrics.json
      idr/        model.pt, renders, mesh.ply, metrics.json
      export/     depth/, views/ (frames + mp4), mesh.ply / mesh.obj
      eval/       metrics.json, renders/
      logs/       run.log (everything the stages logged)
      .resume/S/  checkpoints of an interrupted stage S (removed when S completes)
      .tmp/       outputs being written (renamed into place only when complete)
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

from pipeline.geometry.normalize import Similarity


class WorkspaceError(RuntimeError):
    """A workspace is missing what a stage needs; the message says which command produces it."""


class Workspace:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def stage_dir(self, name: str) -> Path:
        return self.root / name

    def resume_dir(self, name: str) -> Path:
        path = self.root / ".resume" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def new_temp_dir(self, name: str) -> Path:
        path = self.root / ".tmp" / f"{name}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    @property
    def log_path(self) -> Path:
        return self.root / "logs" / "run.log"

    def manifest(self, name: str) -> Optional[dict]:
        path = self.stage_dir(name) / "manifest.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def publish(self, temp_dir: Path, name: str) -> Path:
        """Move a completed stage output folder into place, replacing an older one atomically enough
        that the final name never holds a half-written output."""
        final = self.stage_dir(name)
        old = None
        if final.exists():
            old = self.root / ".tmp" / f"{name}-old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(temp_dir, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def clean_temp(self) -> None:
        """Remove leftovers of stages that were killed while writing."""
        shutil.rmtree(self.root / ".tmp", ignore_errors=True)

    # --- what stages read from each other ------------------------------------------------

    @property
    def transforms_path(self) -> Path:
        return self.stage_dir("poses") / "transforms.json"

    def require(self, relative: str, produced_by: str) -> Path:
        path = self.root / relative
        if not path.exists():
            raise WorkspaceError(f"{path} is missing; run `{produced_by}` first")
        return path

    def load_scene(self, background: str = "white"):
        """The posed, normalised scene written by the poses stage."""
        from datasets.nerfstudio import read_nerfstudio

        path = self.require("poses/transforms.json",
                            f"python run.py poses --data DATA --workspace {self.root}")
        return read_nerfstudio(path, background=background)

    def normalization(self) -> Similarity:
        """The similarity from the original scene units to the normalised frame (identity if none)."""
        path = self.stage_dir("poses") / "normalization.json"
        return Similarity.load(path) if path.exists() else Similarity()
