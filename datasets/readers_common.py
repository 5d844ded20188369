"""Small helpers shared by the dataset readers (image listing, sizes, splits, warnings) and the
checks every reader applies to what it reads (poses, intrinsics, image sizes)."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from datasets.scene import SceneError
from pipeline.geometry.cameras import Intrinsics
from pipeline.runner.log import get_logger

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
# rotation columns orthonormal and bottom row [0, 0, 0, 1] within this: poses written as text keep
# ~1e-6, hand-edited or single-precision ones ~1e-4; a 2x scale or a shear is far outside
POSE_TOLERANCE = 1e-3
# EXIF orientations 5..8 rotate the picture by 90 degrees: width and height swap once applied
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)

log = get_logger("datasets")


def list_images(folder: Path, suffixes: Sequence[str] = PHOTO_SUFFIXES) -> list[Path]:
    """Image files directly in ``folder`` (suffix case-insensitive), sorted by name."""
    return sorted((p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in suffixes),
                  key=lambda p: p.name)


def first_existing_dir(root: Path, names: Iterable[str]) -> Optional[Path]:
    """The first ``root / name`` that is a folder, or None."""
    for name in names:
        candidate = Path(root) / name
        if candidate.is_dir():
            return candidate
    return None


def image_size(path: Path, apply_exif_orientation: Optional[bool] = None) -> tuple[int, int]:
    """(width, height) of an image from its header, as :func:`datasets.scene.load_image_file` will
    return it (EXIF orientation applied for JPEGs, where the loader applies it)."""
    from PIL import Image

    path = Path(path)
    if apply_exif_orientation is None:
        apply_exif_orientation = path.suffix.lower() in (".jpg", ".jpeg")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if apply_exif_orientation and img.getexif().get(_ORIENTATION_TAG) in _SWAPPING_ORIENTATIONS:
                w, h = h, w
    except FileNotFoundError:
        raise SceneError(f"{path}: image file not found") from None
    except Exception as exc:
        raise SceneError(f"{path}: cannot read image header ({exc}); replace or remove the file") from exc
    return int(w), int(h)


# PIL modes that datasets.scene.load_image_file turns into RGB(A)
LOADABLE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
                  "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
# formats PIL decodes itself; the others (EXR, TIFF) are probed by loading them in full
_PIL_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def probe_image(path: Path) -> tuple[int, int]:
    """(width, height) of an image as :func:`datasets.scene.load_image_file` will return it, after
    decoding all of its data, or a SceneError naming the file and why it cannot be used.

    JPEGs are decoded at 1/8 scale (PIL's draft mode still reads the whole entropy-coded stream,
    so truncated or corrupt data fails, at a fraction of a full decode's cost); PNGs and other PIL
    formats in full (a cut zlib stream fails only there); EXR/TIFF through the loader itself."""
    from PIL import Image

    from datasets.scene import load_image_file

    path = Path(path)
    if not path.is_file():
        raise SceneError(f"{path}: image file not found")
    if path.suffix.lower() not in _PIL_SUFFIXES:
        img = load_image_file(path)
        return int(img.shape[1]), int(img.shape[0])
    try:
        with Image.open(path) as img:
            w, h = img.size
            # the loader rotates by the suffix, as image_size does
            if path.suffix.lower() in (".jpg", ".jpeg") and img.getexif().get(_ORIENTATION_TAG) in _SWAPPING_ORIENTATIONS:
                w, h = h, w
            if img.format in ("JPEG", "MPO"):
                img.draft(img.mode, (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
            img.load()
            mode = img.mode
    except Exception as exc:  # PIL raises many types for corrupt or truncated files
        raise SceneError(f"{path}: cannot decode ({type(exc).__name__}: {exc}); replace or re-export the file, "
                         "or remove it") from exc
    if mode not in LOADABLE_MODES:
        raise SceneError(f"{path}: pixel mode {mode!r} has no RGB meaning; convert the file to an RGB PNG or JPEG")
    return int(w), int(h)


def every_nth_splits(n_frames: int, test_every: int) -> dict[str, list[int]]:
    """Splits holding out every ``test_every``-th frame (0, n, 2n, ...) as test, as in the NeRF
    paper's LLFF protocol; ``test_every <= 0`` puts every frame in train."""
    if test_every <= 0 or n_frames < 2:
        return {"train": list(range(n_frames))}
    test = list(range(0, n_frames, test_every))
    held = set(test)
    return {"train": [i for i in range(n_frames) if i not in held], "test": test}


def warn_skipped(source: Path, what: str, names: Sequence[str]) -> None:
    """One warning listing the skipped items (first ten)."""
    if names:
        shown = ", ".join(str(n) for n in names[:10])
        log.warning(f"{source}: skipped {len(names)} {what}: {shown}{' ...' if len(names) > 10 else ''}")


def finite_number(params: dict, key: str, where: str) -> float:
    """``params[key]`` as a finite float, or a SceneError saying ``where`` (file and frame) it is not."""
    try:
        value = float(params[key])
    except (TypeError, ValueError):
        raise SceneError(f"{where}: {key}={params[key]!r} is not a number; fix it") from None
    if not math.isfinite(value):
        raise SceneError(f"{where}: {key} is {value}; it must be a finite number: fix it")
    return value


def check_pose(c2w, source, frame, tol: float = POSE_TOLERANCE) -> np.ndarray:
    """A camera pose as read, checked: (4, 4) or (3, 4) -> (4, 4) float64.

    Rejected with a SceneError naming ``source`` (the file) and ``frame`` (its file path, image
    name or index): non-finite values, a bottom row other than [0, 0, 0, 1], a 3x3 part that is
    not a rotation (columns not orthonormal within ``tol``: a scale or shear) or is a reflection
    (det -1). Works as well for world-to-camera matrices (rigid either way).
    """
    where = f"{source}: frame {frame}"
    try:
        m = np.asarray(c2w, dtype=np.float64)
    except (TypeError, ValueError):
        raise SceneError(f"{where}: the pose is not a matrix of numbers; fix or remove the frame") from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise SceneError(f"{where}: the pose has shape {m.shape}, expected 4x4 (or 3x4); fix or remove the frame")
    if not np.isfinite(m).all():
        raise SceneError(f"{where}: the pose holds NaN or infinite values; fix or remove the frame")
    if np.abs(m[3] - [0.0, 0.0, 0.0, 1.0]).max() > tol:
        raise SceneError(f"{where}: the pose's bottom row is {m[3].tolist()}, expected [0, 0, 0, 1]; "
                         "fix or remove the frame")
    rot = m[:3, :3]
    gram_error = float(np.abs(rot.T @ rot - np.eye(3)).max())
    if gram_error > tol:
        scales = np.linalg.norm(rot, axis=0)
        raise SceneError(f"{where}: the pose's 3x3 part is not a rotation (column lengths "
                         f"{', '.join(f'{v:.4g}' for v in scales)}, orthonormality error {gram_error:.2g}: "
                         "scaled or sheared); camera poses must be rigid: fix or remove the frame")
    if np.linalg.det(rot) < 0:
        raise SceneError(f"{where}: the pose's 3x3 part is a reflection (determinant -1), not a rotation; "
                         "check the axis convention of the file, or fix or remove the frame")
    m[3] = [0.0, 0.0, 0.0, 1.0]
    return m


def rigid_inverse(m: np.ndarray) -> np.ndarray:
    """Inverse (4, 4) of a rigid transform checked by :func:`check_pose`: [R^T | -R^T t]."""
    out = np.eye(4)
    out[:3, :3] = m[:3, :3].T
    out[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return out


def check_intrinsics(intr: Intrinsics, source, frame) -> Intrinsics:
    """``intr`` unchanged, or a SceneError naming the file and frame: width/height not positive,
    focal lengths not finite and positive, principal point or distortion not finite."""
    where = f"{source}: frame {frame}"
    if intr.width <= 0 or intr.height <= 0:
        raise SceneError(f"{where}: image size {intr.width}x{intr.height} is not positive; fix w/h")
    if intr.model != "equirect":
        values = {"fx": intr.fx, "fy": intr.fy, "cx": intr.cx, "cy": intr.cy}
        bad = [k for k, v in values.items() if not math.isfinite(v)] + \
              [f"dist[{i}]" for i, v in enumerate(intr.dist) if not math.isfinite(v)]
        if bad:
            raise SceneError(f"{where}: camera intrinsics {', '.join(bad)} are NaN or infinite; fix them")
        if intr.fx <= 0 or intr.fy <= 0:
            raise SceneError(f"{where}: focal length fx={intr.fx:.6g}, fy={intr.fy:.6g} must be positive; fix it")
    return intr


def fit_intrinsics_to_image(intr: Intrinsics, width: int, height: int, source, frame) -> Intrinsics:
    """The intrinsics of an image whose actual size is (width, height) when the file declares
    ``intr.width x intr.height``: unchanged when they agree; scaled when the image is the same
    picture resized (same aspect ratio up to one pixel of rounding, as in downscaled image
    folders); else a SceneError naming both sizes."""
    if (intr.width, intr.height) == (width, height):
        return intr
    if intr.model == "equirect" and width == 2 * height:
        return replace(intr, width=width, height=height)
    if intr.width > 0 and intr.height > 0 and abs(intr.height * width / intr.width - height) <= 1.0:
        sx, sy = width / intr.width, height / intr.height  # the resize rounded each side to whole pixels
        return replace(intr, width=width, height=height, fx=intr.fx * sx, fy=intr.fy * sy,
                       cx=intr.cx * sx, cy=intr.cy * sy)
    raise SceneError(f"{source}: frame {frame}: the image is {width}x{height} but the file declares "
                     f"{intr.width}x{intr.height} (a different aspect ratio, so the intrinsics cannot be "
                     "rescaled); fix w/h and the intrinsics, or replace the image")
