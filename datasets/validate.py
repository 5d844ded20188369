"""Checks of a scene's files that are cheap enough to run before any training (the poses stage
calls them), so that a bad file is named at once instead of crashing a training stage later."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from datasets.readers_common import probe_image
from datasets.scene import Scene, SceneError


def check_images(scene: Scene, max_listed: int = 10) -> None:
    """Decode the image (and mask, if any) of every frame and check its size against the frame's
    camera; raise one SceneError listing the bad files (first ``max_listed``) and what to do.

    Each file is decoded by :func:`datasets.readers_common.probe_image` (JPEGs at 1/8 scale, which
    still reads all of their data: ~25 ms for a 6 MP photo, 0.2 s for the 8 photos of herzjesu-p8
    on the development machine); its pixel mode must be one the loader turns into RGB(A). The size
    (EXIF orientation applied to JPEGs, as the loader does) must equal the frame's
    ``intrinsics.width x height``: a training stage would cast rays for the wrong pixels otherwise.
    """
    problems: list[str] = []
    for frame in scene.frames:
        size, why = _probe(frame.image_path)
        if why is None and frame.intrinsics is not None and size != (frame.intrinsics.width, frame.intrinsics.height):
            why = (f"the image is {size[0]}x{size[1]} but its camera is {frame.intrinsics.width}x"
                   f"{frame.intrinsics.height}; fix the size and intrinsics in the dataset's metadata")
        if why is not None:
            problems.append(f"{frame.image_path} ({why})")
        if frame.mask_path is not None:
            mask_size, mask_why = _probe(frame.mask_path)
            if mask_why is None and why is None and mask_size != size:
                mask_why = f"the mask is {mask_size[0]}x{mask_size[1]} but its image is {size[0]}x{size[1]}"
            if mask_why is not None:
                problems.append(f"{frame.mask_path} ({mask_why})")
    if problems:
        shown = "; ".join(problems[:max_listed]) + (f"; ... ({len(problems)} in all)" if len(problems) > max_listed else "")
        raise SceneError(f"{len(problems)} image file(s) of the dataset cannot be used: {shown}. "
                         "Replace or re-export them (8- or 16-bit PNG or JPEG), or remove them from the dataset")


def _probe(path: Path) -> tuple[Optional[tuple[int, int]], Optional[str]]:
    """((width, height) as loaded, None) for a usable image, (None, reason) for a bad one."""
    try:
        return probe_image(path), None
    except SceneError as exc:
        return None, str(exc).split(": ", 1)[-1].split("; ")[0]  # the advice is given once, at the end
