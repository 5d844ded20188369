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
    """Quiet when RECON_QUIET is set, or in CI (CI=true), or when stderr is not a terminal and
    RECON_PROGRESS is not set."""
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
    """A tqdm progress bar, disabled in quiet mode. Use ``bar.set_postfix(loss=...)`` for live numbers."""
    return tqdm(iterable, total=total, desc=desc, disable=is_quiet(), dynamic_ncols=True, leave=False, **kwargs)
