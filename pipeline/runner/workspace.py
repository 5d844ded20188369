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
      .tmp/       outputs being written (renamed into place only when complete); a folder left by
                  a killed run is removed by the next run of that stage

With ``Workspace(W, create=False)`` (the command line) nothing is created on disk until a stage
actually starts: a failed start leaves no folder behind.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

from pipeline.geometry.normalize import Similarity


OWNER_FILE = ".owner"


def running_owner(temp_dir: Path) -> Optional[int]:
    """The id of the live process that owns ``temp_dir`` (its ``.owner`` file), or None when the
    owner is gone (killed) or unknown."""
    try:
        pid = int((temp_dir / OWNER_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        return pid
    return pid


class WorkspaceError(RuntimeError):
    """A workspace is missing what a stage needs; the message says which command produces it."""


class Workspace:
    def __init__(self, root: str | Path, create: bool = True):
        """``create=False`` (the command line) defers making the folder until a stage starts, so a
        run that fails its checks leaves nothing behind."""
        self.root = Path(root).resolve()
        if create:
            self.create()

    def create(self) -> None:
        """Make the workspace folder (and check that it is writable), with a clear error if it cannot be."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            why = "it is read-only or not yours" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) \
                else (exc.strerror or str(exc))
            raise WorkspaceError(f"cannot write to the workspace {self.root}: {why}; "
                                 f"choose a writable folder with --workspace") from None

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def stage_dir(self, name: str) -> Path:
        return self.root / name

    def resume_dir(self, name: str) -> Path:
        path = self.root / ".resume" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def new_temp_dir(self, name: str) -> Path:
        """A fresh folder for a stage's outputs, marked with this process's id (``.owner``) so that a
        later run can tell a killed run's leftovers from a live one's."""
        path = self.root / ".tmp" / f"{name}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        (path / OWNER_FILE).write_text(str(os.getpid()))
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

    def clean_temp(self, name: Optional[str] = None) -> list[Path]:
        """Remove leftovers of runs that were killed while writing (all stages, or stage ``name``);
        a folder whose owning process is still alive (a concurrent run) is left alone. Returns the
        removed folders."""
        tmp = self.root / ".tmp"
        if not tmp.is_dir():
            return []
        removed = []
        for path in sorted(tmp.iterdir()):
            if name is not None and not path.name.startswith(f"{name}-"):
                continue
            if running_owner(path) is not None:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed

    def running_owner(self, name: str) -> Optional[int]:
        """The process id of another live run of stage ``name`` in this workspace, if there is one."""
        tmp = self.root / ".tmp"
        if not tmp.is_dir():
            return None
        for path in tmp.glob(f"{name}-*"):
            pid = running_owner(path)
            if pid is not None and pid != os.getpid():
                return pid
        return None

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
