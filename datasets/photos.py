"""A plain folder of photos without poses (the poses stage estimates them).

Images: ``.jpg``/``.jpeg``/``.png`` (any case) directly in the folder, or in its ``images/``
subfolder, sorted by name. Intrinsics are a first guess for pose estimation (pinhole, principal
point at the centre):

- EXIF ``FocalLengthIn35mmFilm``: ``f_px = f35 / 43.27 mm * image diagonal in px`` (the 35 mm
  equivalent is defined on the 36x24 mm frame's 43.27 mm diagonal, so any aspect ratio works);
- else EXIF ``FocalLength`` (mm) with the sensor width from ``FocalPlaneXResolution`` (and
  ``ExifImageWidth`` to undo resizing): ``f_px = f_mm / sensor_width_mm * width_px``;
- else ``f_px = 1.2 * max(width, height)`` (about a 45 degree field of view).

Sizes are those of the image as loaded, with the EXIF orientation applied (portrait photos).
Files that cannot be decoded are skipped with one warning and listed in ``scene.meta["unreadable"]``;
``scene.meta["exif_focal"]`` maps each frame name to whether its focal length came from EXIF.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from datasets.readers_common import PHOTO_SUFFIXES, list_images, warn_skipped
from datasets.scene import Frame, Scene, SceneError
from pipeline.geometry.cameras import Intrinsics

FALLBACK_FOCAL_FACTOR = 1.2
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)
# EXIF tags (numbers from the EXIF 2.3 standard)
_EXIF_IFD = 0x8769
_ORIENTATION = 0x0112
_FOCAL_LENGTH = 0x920A
_FOCAL_35MM = 0xA405
_FOCAL_PLANE_X_RES = 0xA20E
_FOCAL_PLANE_UNIT = 0xA210
_EXIF_IMAGE_WIDTH = 0xA002
_EXIF_IMAGE_HEIGHT = 0xA003
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # inch, cm, mm, um


def _probe(path: Path) -> tuple[int, int, dict]:
    """Decode the image (cheaply, at reduced scale for JPEGs) to prove it is readable; returns the
    stored (width, height) and the merged EXIF tags."""
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
        exif = img.getexif()
        tags = dict(exif)
        try:
            tags.update(exif.get_ifd(_EXIF_IFD))
        except Exception:  # malformed EXIF block: keep the base tags
            pass
        if img.format == "JPEG":
            img.draft("RGB", (max(1, w // 8), max(1, h // 8)))  # still reads the whole entropy stream
        img.load()
    return int(w), int(h), tags


def _number(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def focal_from_exif(tags: dict, width: int, height: int) -> Optional[float]:
    """Focal length in pixels of an image of (width, height) as loaded, from EXIF tags, or None."""
    f35 = _number(tags.get(_FOCAL_35MM))
    if f35 is not None:
        return f35 / FULL_FRAME_DIAGONAL_MM * math.hypot(width, height)
    f_mm = _number(tags.get(_FOCAL_LENGTH))
    x_res = _number(tags.get(_FOCAL_PLANE_X_RES))
    unit_mm = _UNIT_MM.get(int(tags.get(_FOCAL_PLANE_UNIT, 2) or 2))
    if f_mm is None or x_res is None or unit_mm is None:
        return None
    # FocalPlaneXResolution counts pixels per unit along the sensor's long side at the camera's
    # own resolution: ExifImageWidth (when given) says what that resolution was
    exif_w = _number(tags.get(_EXIF_IMAGE_WIDTH))
    exif_h = _number(tags.get(_EXIF_IMAGE_HEIGHT))
    long_side_px = max(width, height)
    original_long_px = max(exif_w or 0, exif_h or 0) or long_side_px
    sensor_long_mm = original_long_px / x_res * unit_mm
    return f_mm / sensor_long_mm * long_side_px


def read_photo_folder(path: str | Path, background: str = "white") -> Scene:
    """Read a folder of photos (no poses: every ``frame.c2w`` is None)."""
    root = Path(path)
    if not root.is_dir():
        raise SceneError(f"{root}: not a folder of photos")
    folder = root / "images" if (root / "images").is_dir() else root
    paths = list_images(folder, PHOTO_SUFFIXES)
    if not paths:
        raise SceneError(f"{folder}: no .jpg/.jpeg/.png photos found")
    frames, unreadable, reasons, exif_focal = [], [], [], {}
    for image_path in paths:
        try:
            w, h, tags = _probe(image_path)
        except Exception as exc:  # PIL raises many types for corrupt or truncated files
            unreadable.append(image_path.name)
            reasons.append(f"{image_path.name} ({type(exc).__name__}: {exc})")
            continue
        if image_path.suffix.lower() in (".jpg", ".jpeg") and tags.get(_ORIENTATION) in (5, 6, 7, 8):
            w, h = h, w  # the loader rotates JPEGs upright
        focal = focal_from_exif(tags, w, h)
        exif_focal[image_path.stem] = focal is not None
        if focal is None:
            focal = FALLBACK_FOCAL_FACTOR * max(w, h)
        intr = Intrinsics("pinhole", w, h, focal, focal, w / 2.0, h / 2.0)
        frames.append(Frame(image_path=image_path, intrinsics=intr, c2w=None, name=image_path.stem))
    warn_skipped(folder, "unreadable image file(s)", reasons)
    if not frames:
        raise SceneError(f"{folder}: none of the {len(paths)} image files could be read")
    meta = {"unreadable": unreadable, "exif_focal": exif_focal}
    return Scene(frames, {"train": list(range(len(frames)))}, None, background, meta, source=folder)
