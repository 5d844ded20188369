"""pycolmap access shared by the steps: the import, the device, COLMAP's log level."""
from __future__ import annotations

import contextlib

from datasets.scene import SceneError


def import_pycolmap():
    """The pycolmap module, or a SceneError saying how to install it."""
    try:
        import pycolmap
    except ImportError as exc:
        raise SceneError(f"pose estimation needs pycolmap ({exc}); pip install pycolmap") from exc
    return pycolmap


@contextlib.contextmanager
def quiet_colmap(pycolmap, quiet: bool):
    """COLMAP logs every step at INFO on stderr; keep warnings and errors only unless asked."""
    old = pycolmap.logging.minloglevel
    if quiet:
        pycolmap.logging.minloglevel = 1
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def colmap_device(pycolmap, use_gpu: str):
    """The pycolmap device of SIFT and matching for ``use_gpu`` (auto | yes | no)."""
    if use_gpu not in ("auto", "yes", "no"):
        raise SceneError(f"use_gpu must be auto, yes or no, got {use_gpu!r}")
    if use_gpu == "yes" and not pycolmap.has_cuda:
        raise SceneError("use_gpu=yes but this pycolmap build has no CUDA; install a CUDA build or use use_gpu=auto")
    if use_gpu == "no" or not pycolmap.has_cuda:
        return pycolmap.Device.cpu
    return pycolmap.Device.cuda
