"""Readers and writers of scene formats; every reader returns a :class:`datasets.scene.Scene`.

``read_scene(path)`` detects the format; ``read_scene(path, fmt="colmap")`` forces one.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from datasets.scene import Frame, Scene, SceneError

# format name -> (module, function, one-line description used in errors and the README)
READERS = {
    "nerfstudio": ("datasets.nerfstudio", "read_nerfstudio", "transforms.json (nerfstudio / instant-ngp)"),
    "blender": ("datasets.nerfstudio", "read_blender", "transforms_{train,val,test}.json (Blender / NeRF-synthetic)"),
    "colmap": ("datasets.colmap", "read_colmap", "COLMAP sparse model (sparse/0 or sparse/, binary or text)"),
    "llff": ("datasets.llff", "read_llff", "LLFF poses_bounds.npy with images/"),
    "idr": ("datasets.idr", "read_idr", "IDR/NeuS/DTU cameras.npz with image/ or images/ and mask/"),
    "middlebury": ("datasets.middlebury", "read_middlebury", "Middlebury *_par.txt (K R t per image)"),
    "strecha": ("datasets.strecha", "read_strecha", "Strecha benchmark: images with cameras/<image name>.camera"),
    "panoramas": ("datasets.panoramas", "read_panorama_folder", "folder of equirectangular panoramas"),
    "photos": ("datasets.photos", "read_photo_folder", "plain folder of photos (no poses)"),
}


def detect_format(path: str | Path) -> str:
    """The format of a dataset folder (or file), from the files it holds."""
    p = Path(path)
    if not p.exists():
        raise SceneError(f"{p}: no such file or folder")
    if p.is_file():
        if p.name.endswith("_par.txt"):
            return "middlebury"
        if p.suffix == ".json":
            return "nerfstudio"
        if p.name == "poses_bounds.npy":
            return "llff"
        if p.name == "cameras.npz":
            return "idr"
        if p.suffix == ".camera":
            return "strecha"
        raise SceneError(f"{p}: unknown scene file; give the dataset folder instead")
    if (p / "transforms_train.json").exists():
        return "blender"
    if (p / "transforms.json").exists():
        return "nerfstudio"
    if (p / "poses_bounds.npy").exists():
        return "llff"
    if (p / "cameras.npz").exists() or (p / "cameras_sphere.npz").exists():
        return "idr"
    if any(p.glob("*_par.txt")):
        return "middlebury"
    from datasets.strecha import has_camera_files

    if has_camera_files(p):
        return "strecha"
    for sub in ("sparse/0", "sparse", "colmap/sparse/0"):
        q = p / sub
        if (q / "cameras.bin").exists() or (q / "cameras.txt").exists():
            return "colmap"
    if (p / "panos").is_dir() or (p / "panoramas").is_dir() or _mostly_panoramas(p):
        return "panoramas"
    return "photos"


def _mostly_panoramas(folder: Path) -> bool:
    """True when most images in ``folder`` are 2:1 (equirectangular 360-degree panoramas): ordinary
    photos are 4:3, 3:2 or 16:9. ``--format photos`` overrides it."""
    from datasets.readers_common import image_size, list_images

    sizes = []
    for path in list_images(folder, (".jpg", ".jpeg", ".png"))[:50]:
        try:
            sizes.append(image_size(path, apply_exif_orientation=False))
        except Exception:  # an unreadable file is reported by the reader; it does not decide the format
            continue
    return len(sizes) >= 2 and sum(w == 2 * h for w, h in sizes) > len(sizes) / 2


def read_scene(path: str | Path, fmt: str = "auto", **kwargs) -> Scene:
    """Read any supported dataset. kwargs go to the reader (e.g. ``background="white"``)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise SceneError(f"unknown dataset format {fmt!r}; supported: {', '.join(READERS)}")
    module, func, _ = READERS[fmt]
    reader = getattr(importlib.import_module(module), func)
    return reader(path, **kwargs)


__all__ = ["Frame", "Scene", "SceneError", "READERS", "detect_format", "read_scene"]
