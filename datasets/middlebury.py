"""Middlebury multi-view stereo reader (``*_par.txt``: K, R, t per image).

File format: first line = number of images, then per image
``name k11 k12 k13 k21 k22 k23 k31 k32 k33 r11 r12 r13 r21 r22 r23 r31 r32 r33 t1 t2 t3``
with the projection ``x = K (R X + t)``: world-to-camera in OpenCV axes, so
``c2w = inverse([R | t])``. Images lie beside the file. K is used as given (the data's README
only says the origin is the top-left corner). When the dataset's ``README.txt`` states the
object's bounding box (as Middlebury's do), it becomes ``scene.bounds``. ``*_ang.txt`` is ignored;
there are no masks on disk (the dark background gives silhouettes).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from datasets.readers_common import (check_intrinsics, check_pose, every_nth_splits, image_size, rigid_inverse,
                                     warn_skipped)
from datasets.scene import Frame, Scene, SceneError
from pipeline.geometry.cameras import Intrinsics

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BOX = re.compile(r"bounding box.*?\(\s*(" + _NUMBER + r")\s+(" + _NUMBER + r")\s+(" + _NUMBER + r")\s*\)\s*-?\s*"
                  r"\(\s*(" + _NUMBER + r")\s+(" + _NUMBER + r")\s+(" + _NUMBER + r")\s*\)",
                  re.IGNORECASE | re.DOTALL)


def parse_par_file(par_path: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, K (3, 3), R (3, 3), t (3,)) per line of a ``*_par.txt`` file."""
    lines = [ln.split() for ln in Path(par_path).read_text().splitlines() if ln.strip()]
    if not lines:
        raise SceneError(f"{par_path}: empty file")
    try:
        count = int(lines[0][0])
    except ValueError:
        raise SceneError(f"{par_path}: the first line must be the number of images, got {lines[0]}") from None
    entries = []
    for line_no, fields in enumerate(lines[1:], start=2):
        if len(fields) != 22:
            raise SceneError(f"{par_path}:{line_no}: expected 'name' + 21 numbers (K, R, t), got {len(fields)} fields")
        try:
            values = np.array([float(v) for v in fields[1:]], dtype=np.float64)
        except ValueError:
            raise SceneError(f"{par_path}:{line_no}: non-numeric camera parameter") from None
        entries.append((fields[0], values[:9].reshape(3, 3), values[9:18].reshape(3, 3), values[18:21]))
    if len(entries) != count:
        raise SceneError(f"{par_path}: header says {count} images but {len(entries)} lines follow")
    return entries


def read_bounding_box(readme: Path) -> Optional[np.ndarray]:
    """The (2, 3) box '(x y z) (x y z)' after the words 'bounding box' in a Middlebury README, if any."""
    if not readme.is_file():
        return None
    match = _BOX.search(readme.read_text(errors="replace"))
    if not match:
        return None
    values = np.array([float(v) for v in match.groups()]).reshape(2, 3)
    return np.stack([values.min(0), values.max(0)])


def read_middlebury(path: str | Path, background: str = "white", test_every: int = 0) -> Scene:
    """Read a Middlebury MVS folder (or its ``*_par.txt`` file). test_every: hold out every n-th
    view as test (0: all train). Lines whose image is missing are skipped with one warning."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*_par.txt"))
        if not candidates:
            raise SceneError(f"{path}: no *_par.txt file; is this a Middlebury multi-view folder?")
        par_path = candidates[0]
    else:
        par_path = path
    root = par_path.parent
    frames, missing = [], []
    for name, K, R, t in parse_par_file(par_path):
        image_path = root / name
        if not image_path.is_file():
            missing.append(name)
            continue
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = R, t
        w2c = check_pose(w2c, par_path, name)
        if not np.isfinite(K).all():
            raise SceneError(f"{par_path}: frame {name}: K holds NaN or infinite values; fix the line")
        w, h = image_size(image_path, apply_exif_orientation=False)
        intr = Intrinsics("pinhole", w, h, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
        check_intrinsics(intr, par_path, name)
        frames.append(Frame(image_path=image_path, intrinsics=intr, c2w=rigid_inverse(w2c), name=Path(name).stem))
    warn_skipped(par_path, "camera(s) whose image is missing", missing)
    if not frames:
        raise SceneError(f"{par_path}: none of the listed images exists in {root}")
    bounds = read_bounding_box(root / "README.txt")
    return Scene(frames, every_nth_splits(len(frames), test_every), bounds, background,
                 {"dark_background": True}, source=par_path)
