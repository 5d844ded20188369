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


def get_logger(name: str = "") -> logging.Logger:
    logger = logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)
    root = logging.getLogger(LOGGER_NAME)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
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
