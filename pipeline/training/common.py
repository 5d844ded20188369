"""What both training loops share: the step/time budget and the learning-rate decay over it, when
to checkpoint, atomic checkpoint files, Adam with the fused kernel where it exists, and settings
taken from a stage's config."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch


def settings_from(cls, config, **extra):
    """An instance of the dataclass ``cls`` with each field taken from the same-named attribute of
    ``config`` (a stage's config), except those given in ``extra``."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in extra]
    return cls(**{name: getattr(config, name) for name in names}, **extra)


def check_non_negative(**values: float) -> None:
    """Raise ValueError naming the first key whose value is negative (budgets and periods: 0 = off)."""
    for key, value in values.items():
        if value < 0:
            raise ValueError(f"{key} must be >= 0 (0 = off), got {value}")


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
    """A checkpoint is due every ``every_steps`` steps and every ``every_s`` seconds of wall time
    since the last one (either 0 = off)."""

    def __init__(self, every_steps: int, every_s: float):
        check_non_negative(checkpoint_every=every_steps, checkpoint_every_s=every_s)
        self.every_steps, self.every_s = every_steps, every_s
        self.last_save = time.time()

    def due(self, step: int) -> bool:
        return ((self.every_steps > 0 and step % self.every_steps == 0)
                or (self.every_s > 0 and time.time() - self.last_save > self.every_s))

    def saved(self) -> None:
        self.last_save = time.time()


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a kill mid-write leaves the previous checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Optional[Path], map_location) -> Optional[dict]:
    """The state saved at ``path``, or None when there is none."""
    if path is None or not Path(path).exists():
        return None
    return torch.load(path, map_location=map_location, weights_only=False)


def adam(groups: list[dict], fused: bool = True, **kwargs) -> torch.optim.Adam:
    """Adam over parameter groups; ``fused``: one kernel for all parameters where this device and
    torch build have it, else the multi-tensor (foreach) implementation."""
    if not fused:
        return torch.optim.Adam(groups, **kwargs)
    try:
        return torch.optim.Adam(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # fused Adam is missing for this device / torch build
        return torch.optim.Adam(groups, foreach=True, **kwargs)
