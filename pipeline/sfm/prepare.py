"""Step 1 of pose estimation: the scene's images in a folder COLMAP reads as they are, with the
sharpness of each (for the diagnosis) and the unreadable files named, not fatal."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.scene import Scene, load_image_file


@dataclass
class PreparedImage:
    frame_index: int
    colmap_name: str  # file name inside the prepared folder
    width: int
    height: int
    sharpness: float  # variance of the Laplacian on a downscaled grey image (blur indicator)


def _sharpness(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a float grey image in [0, 1]."""
    lap = (grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1])
    return float(lap.var())


def prepare_images(scene: Scene, folder: Path, background: str) -> tuple[list[PreparedImage], dict[str, str]]:
    """Check every image and make it available to COLMAP under ``folder``.

    Plain RGB files are linked; RGBA images are composited onto ``background`` and JPEGs with an
    EXIF rotation are rotated (COLMAP sees the picture as our loader does). Returns the prepared
    images and ``{frame name: reason}`` for the unreadable ones (skipped).
    """
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    prepared, unreadable = [], {}
    used_names: set[str] = set()
    for i, frame in enumerate(scene.frames):
        path = frame.image_path
        try:
            with Image.open(path) as img:
                img.load()  # decodes the whole file: truncated or corrupt data fails here
                orientation = img.getexif().get(0x0112, 1) if path.suffix.lower() in (".jpg", ".jpeg") else 1
                has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
                if orientation not in (1, None):
                    img = ImageOps.exif_transpose(img)
                unusual_mode = img.mode not in ("RGB", "RGBA", "L", "LA", "P", "PA")
                if unusual_mode:  # CMYK, 16-bit, ...: COLMAP sees what our loader sees (8-bit RGB)
                    img = Image.fromarray((np.clip(load_image_file(path)[..., :3], 0, 1) * 255 + 0.5).astype(np.uint8))
                    has_alpha = False
                if has_alpha and background != "none":
                    rgba = img.convert("RGBA")
                    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255) if background == "white" else (0, 0, 0, 255))
                    img = Image.alpha_composite(bg, rgba).convert("RGB")
                elif has_alpha:
                    img = img.convert("RGB")
                grey = img.convert("L")
                grey.thumbnail((640, 640))
                sharp = _sharpness(np.asarray(grey, dtype=np.float32) / 255.0)
                stem = unique_name(frame.name or path.stem, used_names)
                converted = has_alpha or unusual_mode or orientation not in (1, None)
                name = stem + (".png" if converted else path.suffix.lower())
                target = folder / name
                if target.is_symlink() or target.exists():
                    target.unlink()
                if converted:
                    img.save(target, compress_level=1)  # lossless; the fastest level, the file is temporary
                else:
                    target.symlink_to(path.resolve())
                prepared.append(PreparedImage(i, name, img.size[0], img.size[1], sharp))
        except Exception as exc:  # PIL raises many types for corrupt or missing files
            unreadable[frame.name or path.name] = f"{path}: {type(exc).__name__}: {exc}"
    return prepared, unreadable


def unique_name(stem: str, used: set[str]) -> str:
    """``stem`` made safe for COLMAP and different from every name in ``used`` (suffix _1, _2, ...);
    the result is added to ``used``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "image"
    name, k = safe, 1
    while name in used:
        name, k = f"{safe}_{k}", k + 1
    used.add(name)
    return name


def prepare(scene: Scene, folder: Path, log: logging.Logger) -> tuple[list[PreparedImage], dict[str, str]]:
    """The readable images of ``scene`` prepared in ``folder``, and ``{frame name: reason}`` of the
    unreadable ones: those this step skipped and those the photo reader already dropped."""
    background = scene.background if scene.background != "none" else "white"
    prepared, unreadable = prepare_images(scene, folder, background)
    for name, why in unreadable.items():
        log.warning(f"skipping unreadable image {name}: {why}")
    # the photo reader drops files it cannot decode and lists them in meta["unreadable"]
    skipped_by_reader = {str(n): "cannot be decoded (skipped when reading the folder)"
                         for n in scene.meta.get("unreadable", []) or []}
    return prepared, {**skipped_by_reader, **unreadable}
