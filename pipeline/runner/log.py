"""Logging and progress bars: a log file per workspace, tqdm bars that go quiet in CI."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Iterable, Optional

from tqdm.auto import tqdm

LOGGER_NAME = "recon"


def is_quiet() -> bool:
    """Quiet (no progress bars) when RECON_QUIET is set to anything but 0, or in CI (CI=true)."""
    if os.environ.get("RECON_QUIET", "") not in ("", "0"):
        return True
    if os.environ.get("CI", "").lower() in ("1", "true"):
        return True
    return False


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is logged, not the stream it was when the
    logger was first made (a caller that redirects stderr, or a test capturing it, would otherwise
    leave the handler writing to a closed stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def get_logger(name: str = "") -> logging.Logger:
    logger = logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)
    root = logging.getLogger(LOGGER_NAME)
    if not root.handlers:
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logger


def attach_log_file(path: Path) -> logging.Handler:
    """Also write every log line to ``path`` (the workspace's log); returns the handler to detach."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
    get_logger().addHandler(handler)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    get_logger().removeHandler(handler)
    handler.close()


def progress(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "", **kwargs):
    """A tqdm progress bar, disabled in quiet mode. Use ``bar.set_postfix(loss=...)`` for live numbers.

    When stderr is not a terminal (output sent to a file), the bar updates every 30 s instead of
    many times a second, so logs stay readable."""
    kwargs.setdefault("mininterval", 0.1 if sys.stderr.isatty() else 30.0)
    return tqdm(iterable, total=total, desc=desc, disable=is_quiet(), dynamic_ncols=True, leave=False, **kwargs)


class TrainingProgress:
    """The progress bar of a training loop bounded by steps and, optionally, a time budget.

    With a time budget the bar counts trained seconds out of the budget, so its remaining-time
    estimate is the real one (a step bar would show hours for a run the budget ends in minutes);
    the step number goes into the postfix. Without one it counts steps.

        bar = TrainingProgress("nerf", max_steps=20000, max_time_s=600, step=0, elapsed=0.0)
        bar.update(step, elapsed, loss="0.01", psnr="25.1")
        bar.close()
    """

    def __init__(self, desc: str, max_steps: int, max_time_s: float = 0.0, step: int = 0, elapsed: float = 0.0):
        self.by_time = bool(max_time_s and max_time_s > 0)
        if self.by_time:
            self.bar = progress(total=round(float(max_time_s), 1), desc=desc, unit="s",
                                initial=round(min(elapsed, max_time_s), 1),
                                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s budget [{elapsed}<{remaining}{postfix}]")
        else:
            self.bar = progress(total=max_steps, desc=desc, initial=step, unit="step")
        self.max_time_s = float(max_time_s or 0.0)
        self.postfix: dict = {}

    def update(self, step: int, elapsed: float, **postfix) -> None:
        """Move to ``step`` / ``elapsed`` trained seconds; ``postfix`` values (shown as given) stay
        until replaced."""
        self.postfix.update(postfix)
        if self.by_time:
            self.bar.set_postfix({"step": step, **self.postfix}, refresh=False)
            delta = round(min(elapsed, self.max_time_s), 1) - self.bar.n
        else:
            if postfix:
                self.bar.set_postfix(self.postfix, refresh=False)
            delta = step - self.bar.n
        if delta > 0:
            self.bar.update(delta)

    def close(self) -> None:
        self.bar.close()
