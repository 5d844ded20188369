"""Stages and the runner that chains them.

A stage is a name, a typed config (dataclass), the workspace files it reads, and a function
``run(ctx) -> metrics``. The runner skips a stage whose output is up to date for the same config
and inputs (``force`` re-runs it; when it re-runs it says what changed), writes outputs to a temporary folder that is renamed into place
only when the stage completes, and records a ``manifest.json`` (config, versions, times, metrics).
A stage that keeps checkpoints in ``ctx.resume_dir`` resumes from them after an interruption.

Under ``torchrun`` (several processes, :mod:`pipeline.training.distributed`) every rank runs the
stage's code, but rank 0 alone decides whether it is up to date, owns the temporary output folder
(``W/.tmp/<stage>-*`` with its ``.owner``), the log file, the manifest and the published output;
the other ranks write their (unused) outputs into a private temporary folder outside the workspace,
removed when they finish. A stage that does not train (``Stage.distributed`` false) runs on rank 0
alone while the others wait (a chain under torchrun, like the demo, stays in step).
"""
from __future__ import annotations

import logging
import platform
import shutil
import subprocess
import tempfile
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
from pipeline.runner.fingerprint import (MAX_LISTED_FILES, data_listing, describe_config_change,
                                         describe_listing_change, file_fingerprint, listing_digest)
from pipeline.runner.workspace import OWNER_FILE, Workspace, WorkspaceError
from pipeline.training import distributed

# the training curve a stage logs in its resume folder as it goes (pipeline.training.progress_log)
PROGRESS_LOG = "metrics.jsonl"
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
    # data outside the workspace the stage reads (the poses stage's dataset folder): config -> paths;
    # their listing (names, sizes, modification times) is part of the up-to-date check
    data_inputs: Optional[Callable[[Any], Sequence[str | Path]]] = None
    # checks of the config that need no data (raise ConfigError), run before anything is created
    check: Optional[Callable[[Any], None]] = None
    # runs on every rank under torchrun (a training stage: DDP); otherwise on rank 0 alone
    distributed: bool = False

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


def input_fingerprint(stage: Stage, workspace: Workspace, config: Any, listings: Optional[dict] = None) -> dict:
    """What decides whether the stage's output is up to date: its config, the workspace files it
    reads (by content) and the data outside the workspace it reads (by listing; see
    :mod:`pipeline.runner.fingerprint`). Raises a clear error when an input is missing."""
    inputs = {}
    rels = stage.inputs(workspace, config) if callable(stage.inputs) else stage.inputs
    for rel in rels:
        path = workspace.root / rel
        if not path.exists():
            how = stage.produced_by.get(rel, "the stage that writes it").replace("--workspace W",
                                                                               f"--workspace {workspace.root}")
            how = how if "`" in how else f"`{how}`"
            raise WorkspaceError(f"stage {stage.name!r} needs {path}, which is missing; run {how} first")
        inputs[rel] = file_fingerprint(path)
    fingerprint = {"config": config_hash(config), "inputs": inputs}
    data = data_listings(stage, workspace, config) if listings is None else listings
    if data:
        fingerprint["data"] = {path: listing_digest(listing) for path, listing in data.items()}
    return fingerprint


def data_listings(stage: Stage, workspace: Workspace, config: Any) -> dict[str, dict]:
    """Absolute path -> listing of each data folder outside the workspace that the stage reads."""
    listings = {}
    for path in (stage.data_inputs(config) if stage.data_inputs else ()):
        path = Path(path).resolve()
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder (stage {stage.name!r} reads it); "
                                    f"check the path given with --data")
        listings[str(path)] = data_listing(path, exclude=[workspace.root])
    return listings


def what_changed(previous: dict, fingerprint: dict, config: Any, listings: dict) -> str:
    """Why a stage that ran before runs again, in words (``"config: max_time_s 600 -> 60"``)."""
    if previous.get("status") != "done":
        return f"the last run did not finish ({previous.get('status', 'unknown')})"
    old = previous.get("fingerprint", {})
    reasons = []
    if old.get("config") != fingerprint["config"]:
        reasons.append(describe_config_change(previous.get("config"), config_to_dict(config)))
    for rel, value in fingerprint["inputs"].items():
        if old.get("inputs", {}).get(rel) != value:
            reasons.append(f"{rel} changed")
    old_data, old_listings = old.get("data", {}), previous.get("data_files", {})
    for path, digest in fingerprint.get("data", {}).items():
        if old_data.get(path) != digest:
            reasons.append(describe_listing_change(old_listings.get(path), listings[path], f"data {path}"))
    return "; ".join(reasons) or "its inputs changed"


def run_stage(stage: Stage, workspace: Workspace, config: Any = None, force: bool = False) -> StageResult:
    """Run one stage unless its output is up to date; returns its manifest.

    Everything that can be checked before work starts (config, inputs, data) is checked before
    anything is created on disk. Under torchrun see the module's docstring: ranks > 0 return a
    result with an empty manifest."""
    distributed.init_from_env()
    if not distributed.is_main():
        return _run_stage_follower(stage, workspace, config, force)
    result = _run_stage_main(stage, workspace, config, force)
    if not stage.distributed:  # the others waited for it (its outputs may be the next stage's inputs)
        distributed.barrier()
    return result


def _run_stage_main(stage: Stage, workspace: Workspace, config: Any, force: bool) -> StageResult:
    log = get_logger(stage.name)
    config = stage.load_config() if config is None else config
    if stage.check is not None:
        stage.check(config)
    listings = data_listings(stage, workspace, config)
    fingerprint = input_fingerprint(stage, workspace, config, listings)
    previous = workspace.manifest(stage.name)
    up_to_date = (not force and previous and previous.get("status") == "done"
                  and previous.get("fingerprint") == fingerprint)
    if stage.distributed:  # the others follow rank 0's decision
        distributed.broadcast_object(bool(up_to_date))
    if up_to_date:
        log.info(f"{stage.name}: up to date in {workspace.stage_dir(stage.name)} (use --force to re-run)")
        return StageResult(stage.name, True, previous, workspace.stage_dir(stage.name))
    if previous and not force:
        log.info(f"{stage.name}: re-running because {what_changed(previous, fingerprint, config, listings)}")

    created_now = not workspace.root.exists()
    workspace.create()
    other = workspace.running_owner(stage.name)
    if other is not None:
        raise WorkspaceError(f"stage {stage.name!r} is already running in {workspace.root} (process {other}); "
                             f"wait for it to finish or stop it first")
    for leftover in workspace.clean_temp(stage.name):
        log.info(f"{stage.name}: removed {leftover}, left by a run that was killed")
    handler = attach_log_file(workspace.log_path)
    resume_dir = workspace.root / ".resume" / stage.name
    if force and resume_dir.exists():
        shutil.rmtree(resume_dir)
    resume_dir = workspace.resume_dir(stage.name)
    out_dir = workspace.new_temp_dir(stage.name)
    if stage.distributed:  # set up (a forced re-run's resume folder cleared): the others may start
        distributed.barrier()
    started = time.time()
    manifest = {"stage": stage.name, "status": "running", "config": config_to_dict(config),
                "fingerprint": fingerprint, "versions": package_versions(),
                "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds")}
    if listings:
        manifest["data_files"] = {p: listing for p, listing in listings.items() if len(listing) <= MAX_LISTED_FILES}
    log.info(f"{stage.name}: running -> {workspace.stage_dir(stage.name)}")
    try:
        ctx = StageContext(workspace, config, out_dir, resume_dir, log, force)
        metrics = stage.run(ctx) or {}
        # the resume folder survives interruptions but goes when the stage completes: keep the curve
        curve = resume_dir / PROGRESS_LOG
        if curve.is_file() and not (out_dir / PROGRESS_LOG).exists():
            shutil.copy2(curve, out_dir / PROGRESS_LOG)
    except BaseException as exc:
        # Keep the resume state and any previous output; drop the half-written folder.
        shutil.rmtree(out_dir, ignore_errors=True)
        # to the log file only: the caller (the command line) reports the error itself, on one line
        handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0,
                                      f"{stage.name}: failed after {time.time() - started:.1f}s: {exc}", (), None))
        with open(workspace.log_path, "a") as f:
            f.write(traceback.format_exc())
        detach_log_file(handler)
        if created_now and not any(resume_dir.iterdir()):
            # the first stage of a new workspace failed having computed nothing worth keeping:
            # leave no folder behind (the command's --debug shows the traceback)
            shutil.rmtree(workspace.root, ignore_errors=True)
        raise
    finished = time.time()
    (out_dir / OWNER_FILE).unlink(missing_ok=True)
    manifest.update(status="done", finished=datetime.fromtimestamp(finished, timezone.utc).isoformat(timespec="seconds"),
                    duration_s=round(finished - started, 3), metrics=metrics,
                    outputs=sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file()))
    write_json(out_dir / "manifest.json", manifest)
    final = workspace.publish(out_dir, stage.name)
    shutil.rmtree(resume_dir, ignore_errors=True)
    log.info(f"{stage.name}: done in {finished - started:.1f}s")
    detach_log_file(handler)
    return StageResult(stage.name, False, manifest, final)


def _run_stage_follower(stage: Stage, workspace: Workspace, config: Any, force: bool) -> StageResult:
    """A rank > 0 under torchrun: the stage's code (its training steps) with nothing written to the
    workspace; outputs go to a private temporary folder, removed at the end."""
    empty = StageResult(stage.name, True, {}, workspace.stage_dir(stage.name))
    if not stage.distributed:  # rank 0 runs it alone
        distributed.barrier()
        return empty
    config = stage.load_config() if config is None else config
    if stage.check is not None:
        stage.check(config)
    input_fingerprint(stage, workspace, config, {})  # the inputs must be readable here too (clear error)
    if distributed.broadcast_object(None):  # up to date, says rank 0
        return empty
    distributed.barrier()
    out_dir = Path(tempfile.mkdtemp(prefix=f"recon-{stage.name}-rank{distributed.rank()}-"))
    try:
        ctx = StageContext(workspace, config, out_dir, workspace.root / ".resume" / stage.name,
                           get_logger(stage.name), force)
        stage.run(ctx)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return StageResult(stage.name, False, {}, workspace.stage_dir(stage.name))


def run_chain(stages: Sequence[Stage], workspace: Workspace, configs: Optional[dict] = None,
              force: bool = False) -> list[StageResult]:
    """Run stages in order; ``configs`` maps a stage name to its config (defaults otherwise)."""
    configs = configs or {}
    return [run_stage(s, workspace, configs.get(s.name), force=force) for s in stages]
