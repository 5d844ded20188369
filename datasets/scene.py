"""The one scene type every reader returns and every stage consumes.

Images, masks and depth maps are loaded lazily from disk. Poses are OpenCV camera-to-world 4x4
matrices (see ``pipeline/cameras.py``); readers convert other conventions on the way in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import imageio.v3 as iio
import numpy as np

from pipeline.geometry.cameras import Cameras, Intrinsics

BACKGROUNDS = ("white", "black", "none")


class SceneError(ValueError):
    """Bad input data: the message names the file, what is wrong and what to do."""


@dataclass
class Frame:
    """One image of a scene. ``c2w`` is None until poses are known (a plain folder of photos)."""

    image_path: Path
    intrinsics: Optional[Intrinsics]
    c2w: Optional[np.ndarray] = None  # (4, 4) float64, OpenCV camera-to-world
    mask_path: Optional[Path] = None
    depth_path: Optional[Path] = None  # .npy float32 (H, W) in scene units; 0 or inf = no depth
    normal_path: Optional[Path] = None  # .npy float32 (H, W, 3), world-space unit normals
    name: str = ""

    def __post_init__(self):
        self.image_path = Path(self.image_path)
        for attr in ("mask_path", "depth_path", "normal_path"):
            value = getattr(self, attr)
            if value is not None:
                setattr(self, attr, Path(value))
        if self.c2w is not None:
            self.c2w = np.asarray(self.c2w, dtype=np.float64).reshape(4, 4)
        if not self.name:
            self.name = self.image_path.stem


@dataclass
class Scene:
    """Frames plus named splits (lists of frame indices), optional bounds and free-form metadata.

    bounds: (2, 3) axis-aligned box (min, max) of the region of interest in scene units, if known.
    background: how RGBA images are composited when loaded ("white", "black" or "none": keep RGB).
    """

    frames: list[Frame]
    splits: dict[str, list[int]] = field(default_factory=dict)
    bounds: Optional[np.ndarray] = None
    background: str = "white"
    meta: dict = field(default_factory=dict)
    source: Optional[Path] = None

    def __post_init__(self):
        if self.background not in BACKGROUNDS:
            raise SceneError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        if not self.splits:
            self.splits = {"train": list(range(len(self.frames)))}
        if self.bounds is not None:
            self.bounds = np.asarray(self.bounds, dtype=np.float64).reshape(2, 3)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def has_poses(self) -> bool:
        return bool(self.frames) and all(f.c2w is not None for f in self.frames)

    @property
    def has_masks(self) -> bool:
        return bool(self.frames) and all(f.mask_path is not None or _is_rgba(f.image_path) for f in self.frames)

    def split(self, name: str) -> list[int]:
        if name not in self.splits:
            raise KeyError(f"scene has no split {name!r}; splits: {sorted(self.splits)}")
        return self.splits[name]

    def eval_split(self) -> list[int]:
        """The held-out views used for evaluation: test, else val, else empty."""
        for name in ("test", "val"):
            if self.splits.get(name):
                return self.splits[name]
        return []

    # --- lazy loading ---------------------------------------------------------------------

    def load_rgba(self, i: int) -> np.ndarray:
        """The image of frame i as float32 (H, W, 3 or 4) in [0, 1]."""
        return load_image_file(self.frames[i].image_path)

    def load_image(self, i: int) -> np.ndarray:
        """float32 (H, W, 3) in [0, 1]; RGBA images are composited onto ``self.background``."""
        img = self.load_rgba(i)
        if img.shape[-1] == 4 and self.background != "none":
            bg = 1.0 if self.background == "white" else 0.0
            img = img[..., :3] * img[..., 3:] + bg * (1.0 - img[..., 3:])
        return np.ascontiguousarray(img[..., :3])

    def load_mask(self, i: int) -> Optional[np.ndarray]:
        """bool (H, W): True on the object. From ``mask_path``, else from the alpha channel, else None."""
        frame = self.frames[i]
        if frame.mask_path is not None:
            m = load_image_file(frame.mask_path)
            if m.ndim == 3:
                m = m[..., 3] if m.shape[-1] == 4 else m[..., 0]
            return m > 0.5
        if _is_rgba(frame.image_path):
            img = self.load_rgba(i)
            if img.shape[-1] == 4:
                return img[..., 3] > 0.5
        return None

    @property
    def depth_scale(self) -> float:
        """Factor from the depth files' units to this scene's units (the poses stage normalises
        the scene but leaves the dataset's depth files untouched)."""
        return float(self.meta.get("recon", {}).get("depth_scale", 1.0))

    def load_depth(self, i: int) -> Optional[np.ndarray]:
        """float32 (H, W) depth in scene units (z-depth; range for equirect); 0 where unknown."""
        path = self.frames[i].depth_path
        return None if path is None else _load_npy(path) * self.depth_scale

    def load_normals(self, i: int) -> Optional[np.ndarray]:
        path = self.frames[i].normal_path
        return None if path is None else _load_npy(path)

    def cameras(self, indices: Optional[list[int]] = None, device="cpu", dtype=None) -> Cameras:
        """The cameras of the given frames (all by default) as one batch."""
        import torch

        indices = list(range(len(self.frames))) if indices is None else list(indices)
        missing = [self.frames[i].name for i in indices if self.frames[i].c2w is None]
        if missing:
            raise SceneError(f"frames without poses: {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                             "run the poses stage first (python run.py poses --data DIR --workspace W)")
        return Cameras.from_intrinsics([self.frames[i].intrinsics for i in indices],
                                       np.stack([self.frames[i].c2w for i in indices]),
                                       dtype=dtype or torch.float32, device=device)

    def camera_centers(self) -> np.ndarray:
        """(N, 3) camera centres of the posed frames."""
        return np.stack([f.c2w[:3, 3] for f in self.frames if f.c2w is not None])


def _is_rgba(path: Path) -> bool:
    return Path(path).suffix.lower() in (".png", ".exr", ".tif", ".tiff", ".webp")


def load_image_file(path) -> np.ndarray:
    """Any image file as float32 (H, W, C) in [0, 1] (C = 1, 3 or 4), EXIF orientation applied."""
    path = Path(path)
    if not path.exists():
        raise SceneError(f"{path}: image file not found; check the path in the scene's metadata")
    try:
        # rotate=True applies the EXIF orientation of photos taken in portrait
        img = iio.imread(path, rotate=True) if path.suffix.lower() in (".jpg", ".jpeg") else iio.imread(path)
    except Exception as exc:  # imageio raises many types for corrupt files
        raise SceneError(f"{path}: cannot read image ({exc}); replace or remove the file") from exc
    if img.ndim == 2:
        img = img[..., None]
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return img.astype(np.float32)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path).astype(np.float32)
    except FileNotFoundError:
        raise SceneError(f"{path}: file not found; check the path in the scene's metadata") from None
    except Exception as exc:
        raise SceneError(f"{path}: cannot read .npy ({exc}); re-export the file") from exc
