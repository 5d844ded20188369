"""Tail averaging of the weights (stochastic weight averaging, Izmailov et al. 2018, through
``torch.optim.swa_utils.AveragedModel``): the running mean of a module's parameters over the last
``tail`` fraction of the training budget.

Why: at the end of a short surface run the weights still wander step to step at the final learning
rate, and the held-out PSNR of one step's weights swings by +-0.7 dB from one 25-step snapshot to the
next; the mean of the tail's weights renders 1-2 dB better than the last step's (bench/RESULTS.md).

    tail = TailAverage(model, 0.2)
    for each step:
        ...optimizer.step()...
        tail.update(model, progress)         # progress in [0, 1] of the budget
    tail.apply_to(model)                     # the model now holds the mean (when anything was averaged)
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.optim.swa_utils import AveragedModel

from pipeline.runner.config import ConfigError


def check_tail(value: float, key: str = "average_tail") -> None:
    """Raise ConfigError unless ``0 <= value < 1`` (0 = off: the last step's weights)."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{key} must be in [0, 1) (the share of the training budget whose weights are "
                          f"averaged; 0 = off, keep the last step's), got {value:g}")


class TailAverage:
    """The running mean of ``module``'s parameters over steps whose progress is >= ``1 - tail``.
    Buffers are not averaged (the module's own are kept). ``tail = 0`` does nothing."""

    def __init__(self, module: torch.nn.Module, tail: float):
        check_tail(tail)
        self.tail = tail
        self.averaged: Optional[AveragedModel] = AveragedModel(module, use_buffers=False) if tail > 0 else None

    @property
    def count(self) -> int:
        """How many steps' weights the mean holds."""
        return 0 if self.averaged is None else int(self.averaged.n_averaged)

    def update(self, module: torch.nn.Module, progress: float) -> None:
        """Add ``module``'s current weights to the mean once ``progress`` (0..1 of the budget) is in the
        tail. Before it the mean is emptied: a run resumed with a larger budget averages its new tail
        only."""
        if self.averaged is None:
            return
        if progress >= 1.0 - self.tail:
            self.averaged.update_parameters(module)
        elif self.count:
            self.averaged.n_averaged.zero_()

    @torch.no_grad()
    def apply_to(self, module: torch.nn.Module) -> bool:
        """Copy the mean into ``module``'s parameters; False (nothing changed) when no step was averaged."""
        if self.count == 0:
            return False
        for target, mean in zip(module.parameters(), self.averaged.module.parameters(), strict=True):
            target.copy_(mean)
        return True

    def state_dict(self) -> Optional[dict]:
        return None if self.averaged is None else self.averaged.state_dict()

    def load_state_dict(self, state: Optional[dict]) -> None:
        """Restore a checkpoint's mean; a checkpoint without one (None) restarts the mean empty."""
        if self.averaged is None:
            return
        if state is None:
            self.averaged.n_averaged.zero_()
        else:
            self.averaged.load_state_dict(state)
