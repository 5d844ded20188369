"""What both training loops share: the step/time budget and the learning-rate decay over it, when
to checkpoint, atomic checkpoint files and what a checkpoint must match to be resumed, Adam with
the fused kernel where it exists, and settings taken from a stage's config.

Resuming: a checkpoint records the training config it was made with (:func:`resume_config`: the
stage's config without the keys that only set the budget, checkpoints or evaluation, plus the
device and a fingerprint of the training views). One made with another config, one that does not
load into the model, or an unreadable one (a truncated file) is moved aside
(``checkpoint.stale.pt`` / ``checkpoint.corrupt.pt`` in the resume folder) with a warning naming
why, and training starts afresh. The device is recorded by kind (``cuda``, not ``cuda:1``), so a
checkpoint of one GPU resumes under ``torchrun`` on several and back (the global batch is the
same); under DDP rank 0 alone reads it and moves files (:mod:`pipeline.training.distributed`).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

from pipeline.runner.config import ConfigError

# the default period of the time-based checkpoints of both training stages: a kill loses at most this
DEFAULT_CHECKPOINT_EVERY_S = 30.0


# keys of a surface stage's config (idr, sdf) that a resumed run may change: the budget, checkpoint
# periods, evaluation, meshing, threads (the device actually used is recorded instead of ``device``)
SURFACE_NOT_RESUME_KEYS = ("max_steps", "max_time_s", "checkpoint_every", "checkpoint_every_s", "cpu_threads",
                           "device", "eval_max_views", "eval_downscale", "mesh_resolution", "mesh_min_component",
                           "mesh_colors", "gt_mesh")


def settings_from(cls, config, **extra):
    """An instance of the dataclass ``cls`` with each field taken from the same-named attribute of
    ``config`` (a stage's config), except those given in ``extra``."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in extra]
    return cls(**{name: getattr(config, name) for name in names}, **extra)


def check_non_negative(**values: float) -> None:
    """Raise ConfigError naming the first key whose value is negative (budgets and periods: 0 = off)."""
    for key, value in values.items():
        if value < 0:
            zero = "no time budget" if key.endswith("max_time_s") else "off"
            raise ConfigError(f"{key} must be >= 0 (0 = {zero}), got {value:g}")


def check_budget(config: Any, time_keys: Iterable[str] = ("max_time_s",), step_keys: Iterable[str] = ("max_steps",),
                 period_keys: Iterable[str] = ("checkpoint_every", "checkpoint_every_s")) -> None:
    """Validate a stage config's budget before any work: time budgets and checkpoint periods >= 0
    (0 = no time budget / off), step budgets >= 1. Raises ConfigError naming the key."""
    check_non_negative(**{k: getattr(config, k) for k in (*time_keys, *period_keys) if hasattr(config, k)})
    for key in step_keys:
        if hasattr(config, key) and getattr(config, key) < 1:
            raise ConfigError(f"{key} must be >= 1 (the most training steps; the time budget, max_time_s, "
                              f"usually ends training first), got {getattr(config, key)}")


@dataclass
class Budget:
    """Training ends at ``max_steps`` or after ``max_time_s`` trained seconds, whichever comes first;
    ``max_time_s`` = 0 means no time budget."""

    max_steps: int
    max_time_s: float

    def __post_init__(self):
        check_non_negative(max_time_s=self.max_time_s)

    @property
    def has_time_limit(self) -> bool:
        return self.max_time_s > 0

    def time_up(self, elapsed: float) -> bool:
        return self.has_time_limit and elapsed >= self.max_time_s

    def done(self, step: int, elapsed: float) -> bool:
        return step >= self.max_steps or self.time_up(elapsed)

    def progress(self, step: int, elapsed: float) -> float:
        """The fraction of the budget used: of the steps or of the time, whichever is further along
        (the schedules follow the budget that runs out first)."""
        fraction = step / self.max_steps
        if self.has_time_limit:
            fraction = max(fraction, elapsed / self.max_time_s)
        return fraction


def decay_factor(final_factor: float, progress: float) -> float:
    """Exponential learning-rate decay: 1 at the start, ``final_factor`` at the end of the budget."""
    return final_factor ** min(1.0, max(0.0, progress))


class CheckpointSchedule:
    """A checkpoint is due every ``every_steps`` steps and every ``every_s`` seconds of training
    since the last one (either 0 = off). Seconds are the loop's trained seconds (``elapsed``,
    counted across resumes), so the first time-based checkpoint comes ``every_s`` into training and
    a resumed run's ``every_s`` after it resumed."""

    def __init__(self, every_steps: int, every_s: float, elapsed: float = 0.0):
        check_non_negative(checkpoint_every=every_steps, checkpoint_every_s=every_s)
        self.every_steps, self.every_s = every_steps, every_s
        self.last_save = elapsed

    def due(self, step: int, elapsed: float) -> bool:
        return ((self.every_steps > 0 and step % self.every_steps == 0)
                or (self.every_s > 0 and elapsed - self.last_save >= self.every_s))

    def saved(self, elapsed: float) -> None:
        self.last_save = elapsed


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: written to ``<name>.tmp``, flushed to disk, then
    renamed over ``path``, so a kill (or power loss) mid-write leaves the previous checkpoint; a
    ``.tmp`` left by a kill is never read and is overwritten by the next save."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable (POSIX; not possible on every platform)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load_checkpoint(path: Optional[Path], map_location="cpu") -> Optional[dict]:
    """The state saved at ``path``, or None when there is none. Raises on an unreadable file
    (:func:`load_resumable` turns that into a warning and a fresh start)."""
    if path is None or not Path(path).exists():
        return None
    return torch.load(path, map_location=map_location, weights_only=False)


def _flatten(value: Any, prefix: str = "") -> dict:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    elif hasattr(value, "__dict__") and not isinstance(value, (str, bytes, Path, type)):
        value = vars(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, (list, tuple)):
        value = [v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for v in value]
    elif not isinstance(value, (int, float, str, bool, type(None))):
        value = str(value)
    return {prefix[:-1]: value}


def views_fingerprint(scene, indices: list[int]) -> str:
    """A short hash of the training views: names, poses, intrinsics and image files (size and
    modification time), so a checkpoint made on other data is not resumed."""
    h = hashlib.sha256()
    for i in indices:
        frame = scene.frames[i]
        try:
            st = frame.image_path.stat()
            file = (st.st_size, st.st_mtime_ns)
        except OSError:
            file = None
        c2w = None if frame.c2w is None else [round(float(v), 9) for v in frame.c2w.reshape(-1)]
        h.update(json.dumps([frame.name, str(frame.image_path), file, c2w, str(frame.intrinsics)],
                            default=str).encode())
    return h.hexdigest()[:16]


def resume_config(config: Any, ignore: Iterable[str], **extra) -> dict:
    """What a checkpoint must have been made with to be resumed: the config's values as a flat
    dict of dotted keys, without the keys in ``ignore`` (a key or a dotted prefix: budgets,
    checkpoint periods, evaluation and thread settings, which a resumed run may change), plus
    ``extra`` (the device actually used, the training views' fingerprint)."""
    ignore = tuple(ignore)
    flat = {k: v for k, v in _flatten(config).items()
            if not any(k == i or k.startswith(i + ".") for i in ignore)}
    if "device" in extra:  # the kind: rank N of torchrun trains on cuda:N
        extra = {**extra, "device": str(extra["device"]).split(":")[0]}
    flat.update({k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for k, v in extra.items()})
    return flat


def config_changes(old: dict, new: dict, limit: int = 6) -> str:
    """``key old -> new`` for each key whose value differs (at most ``limit``, then a count)."""
    keys = sorted(set(old) | set(new))
    missing = object()
    changed = [k for k in keys if old.get(k, missing) != new.get(k, missing)]
    text = ", ".join(f"{k} {old.get(k, '(none)')!r} -> {new.get(k, '(none)')!r}"
                     if k != "views" else "the training views (data or poses)" for k in changed[:limit])
    if len(changed) > limit:
        text += f" and {len(changed) - limit} more"
    return text


def set_aside(path: Path, kind: str) -> Path:
    """Move a checkpoint that is not resumed to ``checkpoint.<kind>.pt`` beside it (``kind``:
    stale | corrupt), replacing an earlier one; returns the new path."""
    path = Path(path)
    aside = path.with_name(f"{path.stem}.{kind}{path.suffix}")
    os.replace(path, aside)
    return aside


def load_resumable(path: Optional[Path], config: Optional[dict], log: logging.Logger, stage: str) -> Optional[dict]:
    """The checkpoint at ``path`` when it can be resumed: readable and made with the same
    ``config`` (:func:`resume_config`; not checked when either side has none). Otherwise
    None, after setting the file aside with a warning that says why: training starts afresh."""
    if path is None or not Path(path).exists():
        return None
    try:
        state = load_checkpoint(path, "cpu")
        if not isinstance(state, dict):
            raise ValueError(f"holds a {type(state).__name__}, not a checkpoint")
    except Exception as exc:  # truncated or otherwise damaged: torch/pickle/zip errors of many kinds
        aside = set_aside(path, "corrupt")
        log.warning(f"{stage}: the checkpoint {path} cannot be read ({_first_line(exc)}); moved to {aside.name}, "
                    f"training starts afresh")
        return None
    recorded = state.get("config")
    if recorded is not None and config is not None and recorded != config:
        aside = set_aside(path, "stale")
        log.warning(f"{stage}: the checkpoint {path} was made with another config ({config_changes(recorded, config)}); "
                    f"moved to {aside.name}, training starts afresh")
        return None
    return state


def restore_or_start_afresh(state: dict, path: Path, restore: Callable[[dict], None], log: logging.Logger,
                            stage: str, modules: Iterable[Any], generators: Iterable[torch.Generator] = ()) -> bool:
    """Apply ``restore(state)`` (load the checkpoint into the model, optimiser, ...). When that fails
    (a checkpoint that does not fit this model: another version or an unrecorded config change),
    undo what it changed in ``modules`` (anything with ``state_dict``/``load_state_dict``),
    ``generators`` and torch's RNG, set the file aside with a warning and return False."""
    modules, generators = list(modules), list(generators)
    before = ([copy.deepcopy(m.state_dict()) for m in modules], [g.get_state() for g in generators],
              torch.get_rng_state())
    try:
        restore(state)
        return True
    except Exception as exc:
        for m, saved in zip(modules, before[0]):
            m.load_state_dict(saved)
        for g, saved in zip(generators, before[1]):
            g.set_state(saved)
        torch.set_rng_state(before[2])
        from pipeline.training import distributed

        if not distributed.is_main():  # under DDP rank 0 alone moves files (every rank fails alike)
            return False
        aside = set_aside(path, "stale")
        log.warning(f"{stage}: the checkpoint {path} does not fit this model, it was made with another config or "
                    f"version ({_first_line(exc)}); moved to {aside.name}, training starts afresh")
        return False


def _first_line(exc: BaseException) -> str:
    """The gist of an exception in one line: load_state_dict's header line is followed by the
    first mismatch it names."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
    return f"{type(exc).__name__}: {text[:160]}{'...' if len(text) > 160 else ''}"


def adam(groups: list[dict], fused: bool = True, **kwargs) -> torch.optim.Adam:
    """Adam over parameter groups; ``fused``: one kernel for all parameters where this device and
    torch build have it, else the multi-tensor (foreach) implementation."""
    if not fused:
        return torch.optim.Adam(groups, **kwargs)
    try:
        return torch.optim.Adam(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # fused Adam is missing for this device / torch build
        return torch.optim.Adam(groups, foreach=True, **kwargs)


def build_kernels_before_timing(device: torch.device) -> None:
    """Build (or load) the C++ CPU kernels now, outside the timed loop: a first use on a fresh
    machine compiles them for ~10 s, which would otherwise count against ``max_time_s``."""
    if device.type == "cpu":
        from pipeline.kernels import cpu_kernels

        cpu_kernels.load()


class TrainingSession:
    """The bookkeeping around a training loop's steps: the progress bar, the training curve (the
    ``metrics.jsonl`` beside the checkpoint), checkpoints every period and on Ctrl-C or an error,
    and the trained seconds across resumes.

        with TrainingSession("idr", budget, settings, resume_dir, start, elapsed, save, log) as session:
            while session.iteration < budget.max_steps and not session.time_up():
                ...one step...
                session.step_done(stats, lr, postfix={...}, curve_keys=(...))
        total = session.finish()  # the final checkpoint

    ``save(iteration, trained_seconds)`` writes a checkpoint. ``clock`` is read at call time, so a
    test can stand a fake clock in for it.

    Under DDP (:mod:`pipeline.training.distributed`) the trained seconds are rank 0's, shared after
    every step, so all ranks stop, decay and checkpoint at the same step; only rank 0 saves and
    writes the curve.
    """

    def __init__(self, name: str, budget: Budget, checkpoint_every: int, checkpoint_every_s: float, resume_dir,
                 start: int, elapsed: float, save, log, device: torch.device, clock=None):
        from pipeline.runner.log import TrainingProgress
        from pipeline.training import distributed
        from pipeline.training.progress_log import ProgressLog

        self.distributed = distributed.is_distributed()
        self.main = distributed.is_main()
        self._from_main = distributed.from_main
        self.name, self.save, self.log = name, save, log
        self.budget = budget
        self.clock = clock or time.time
        self.start = self.iteration = start
        self.elapsed = elapsed
        self.stopped_by_time = False
        self.schedule = CheckpointSchedule(checkpoint_every, checkpoint_every_s, elapsed)
        self.curve = ProgressLog(resume_dir if self.main else None, start, elapsed)
        build_kernels_before_timing(device)
        self.bar = TrainingProgress(name, budget.max_steps, budget.max_time_s, start, elapsed)
        self.t_session = self.clock()
        self.synced = elapsed  # under DDP: rank 0's trained seconds after the last step

    def spent(self) -> float:
        """Trained seconds, this session's and those of earlier ones (under DDP: rank 0's, as of the
        last step)."""
        if self.distributed:
            return self.synced
        return self.elapsed + self.clock() - self.t_session

    def _save(self, iteration: int, spent: float) -> None:
        if self.main:
            self.save(iteration, spent)

    def time_up(self) -> bool:
        if self.budget.time_up(self.spent()):
            self.stopped_by_time = True
        return self.stopped_by_time

    def step_done(self, stats: dict, lr: float, postfix: dict, curve_keys, log_line: str = "") -> None:
        """After a step: count it, update the bar, the curve and (when due) the checkpoint."""
        self.iteration += 1
        if self.distributed:
            self.synced = self._from_main(self.elapsed + self.clock() - self.t_session)
        spent = self.spent()
        if self.iteration % 10 == 0:
            self.bar.postfix.update(postfix)
        self.bar.update(self.iteration, spent)
        if log_line and self.iteration % 200 == 0:
            self.log.info(f"{self.name} it {self.iteration}: {log_line} t={spent:.0f}s")
        if self.curve.due(self.iteration, spent, last=self.budget.done(self.iteration, spent)):
            self.curve.write(self.iteration, spent, lr=lr, **{k: stats[k] for k in curve_keys if k in stats})
        if self.schedule.due(self.iteration, spent):
            self._save(self.iteration, spent)
            self.schedule.saved(spent)

    def finish(self) -> float:
        """The final checkpoint; returns the trained seconds."""
        total = self.spent()
        self._save(self.iteration, total)
        return total

    def __enter__(self) -> "TrainingSession":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and self.iteration > self.start and self.main:  # Ctrl-C or an error
                self._save(self.iteration, self.spent())
                self.log.warning(f"{self.name}: interrupted at step {self.iteration}; checkpoint saved "
                                 f"(re-run to resume)")
        finally:
            self.bar.close()
            self.curve.close()
