"""Stages and the runner that chains them.

A stage is a name, a typed config (dataclass), the workspace files it reads, and a function
``run(ctx) -> metrics``. The runner skips a stage whose output is up to date for the same config
and inputs (``force`` re-runs it), writes outputs to a temporary folder that is renamed into place
only when the stage completes, and records a ``manifest.json`` (config, versions, times, metrics).
A stage that keeps checkpoints in ``ctx.resume_dir`` resumes from them after an interruption.
"""
from __future__ import annotations

import hashlib
import logging
import platform
import shutil
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from pipeline.runner.config import config_hash, config_to_dict, load_config
from pipeline.runner.log import attach_log_file, detach_log_file, get_logger
from pipeline.runner.io import write_json
from pipeline.runner.workspace import Workspace, WorkspaceError

TRACKED_PACKAGES = ("torch", "numpy", "kornia", "pycolmap", "imageio", "omegaconf", "scikit-image", "triton")


@dataclass
class StageContext:
    """What a running stage gets: where to write, where to keep resumable state, its config."""

    workspace: Workspace
    config: Any
    out_dir: Path  # temporary; becomes workspace/<stage name> when the stage completes
    resume_dir: Path  # survives interruptions; cleared when the stage completes
    log: logging.Logger
    force: bool = False


@dataclass
class Stage:
    name: str
    config_cls: type
    run: Callable[[StageContext], Optional[dict]]
    # workspace-relative files this stage reads; or a function (workspace, config) -> such a list,
    # for stages whose input depends on the config or workspace (export/eval: the nerf or idr folder)
    inputs: Sequence[str] | Callable[[Workspace, Any], Sequence[str]] = ()
    description: str = ""
    default_config: Optional[str] = None  # a file name in configs/
    produced_by: dict = field(default_factory=dict)  # input -> command that makes it (for errors)

    def load_config(self, path=None, overrides: Sequence[str] = ()):
        return load_config(self.config_cls, path if path is not None else self.default_config, overrides)


@dataclass
class StageResult:
    name: str
    skipped: bool
    manifest: dict
    out_dir: Path


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        if rev.returncode == 0:
            versions["recon"] = rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return versions


def _file_fingerprint(path: Path) -> str:
    if path.is_dir():
        manifest = path / "manifest.json"
        return _file_fingerprint(manifest) if manifest.exists() else f"dir:{path.stat().st_mtime_ns}"
    st = path.stat()
    if st.st_size > 64 << 20:
        return f"size:{st.st_size}:mtime:{st.st_mtime_ns}"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def input_fingerprint(stage: Stage, workspace: Workspace, config: Any) -> dict:
    inputs = {}
    rels = stage.inputs(workspace, config) if callable(stage.inputs) else stage.inputs
    for rel in rels:
        path = workspace.root / rel
        if not path.exists():
            how = stage.produced_by.get(rel, "the stage that writes it")
            raise WorkspaceError(f"stage {stage.name!r} needs {path}, which is missing; run {how} first")
        inputs[rel] = _file_fingerprint(path)
    return {"config": config_hash(config), "inputs": inputs}


def run_stage(stage: Stage, workspace: Workspace, config: Any = None, force: bool = False) -> StageResult:
    """Run one stage unless its output is up to date; returns its manifest."""
    log = get_logger(stage.name)
    config = stage.load_config() if config is None else config
    fingerprint = input_fingerprint(stage, workspace, config)
    previous = workspace.manifest(stage.name)
    if (not force and previous and previous.get("status") == "done"
            and previous.get("fingerprint") == fingerprint):
        log.info(f"{stage.name}: up to date in {workspace.stage_dir(stage.name)} (use --force to re-run)")
        return StageResult(stage.name, True, previous, workspace.stage_dir(stage.name))

    handler = attach_log_file(workspace.log_path)
    resume_dir = workspace.root / ".resume" / stage.name
    if force and resume_dir.exists():
        shutil.rmtree(resume_dir)
    resume_dir = workspace.resume_dir(stage.name)
    out_dir = workspace.new_temp_dir(stage.name)
    started = time.time()
    manifest = {"stage": stage.name, "status": "running", "config": config_to_dict(config),
                "fingerprint": fingerprint, "versions": package_versions(),
                "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds")}
    log.info(f"{stage.name}: running -> {workspace.stage_dir(stage.name)}")
    try:
        ctx = StageContext(workspace, config, out_dir, resume_dir, log, force)
        metrics = stage.run(ctx) or {}
    except BaseException as exc:
        # Keep the resume state and any previous output; drop the half-written folder.
        shutil.rmtree(out_dir, ignore_errors=True)
        log.error(f"{stage.name}: failed after {time.time() - started:.1f}s: {exc}")
        with open(workspace.log_path, "a") as f:
            f.write(traceback.format_exc())
        detach_log_file(handler)
        raise
    finished = time.time()
    manifest.update(status="done", finished=datetime.fromtimestamp(finished, timezone.utc).isoformat(timespec="seconds"),
                    duration_s=round(finished - started, 3), metrics=metrics,
                    outputs=sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file()))
    write_json(out_dir / "manifest.json", manifest)
    final = workspace.publish(out_dir, stage.name)
    shutil.rmtree(resume_dir, ignore_errors=True)
    log.info(f"{stage.name}: done in {finished - started:.1f}s")
    detach_log_file(handler)
    return StageResult(stage.name, False, manifest, final)


def run_chain(stages: Sequence[Stage], workspace: Workspace, configs: Optional[dict] = None,
              force: bool = False) -> list[StageResult]:
    """Run stages in order; ``configs`` maps a stage name to its config (defaults otherwise)."""
    configs = configs or {}
    return [run_stage(s, workspace, configs.get(s.name), force=force) for s in stages]
