"""Small helpers shared by the dataset readers (image listing, sizes, splits, warnings)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

from datasets.scene import SceneError
from pipeline.runner.log import get_logger

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
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
