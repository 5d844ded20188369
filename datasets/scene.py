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
            return mask_from_image(load_image_file(frame.mask_path))
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


def mask_from_image(img: np.ndarray) -> np.ndarray:
    """The object mask (H, W) bool of a mask file loaded by :func:`load_image_file` (H, W, 3 or 4):
    its alpha where the alpha says something (a cut-out), else its grey/red channel (white =
    object); an opaque alpha channel must not turn the whole view into object."""
    if img.shape[-1] == 4 and float(img[..., 3].min()) < 0.5:
        return img[..., 3] > 0.5
    return img[..., 0] > 0.5


def _is_rgba(path: Path) -> bool:
    return Path(path).suffix.lower() in (".png", ".exr", ".tif", ".tiff", ".webp")


# float and 16-bit TIFF/EXR go through imageio's plugins (tifffile, ...); every other format
# through PIL, whose modes say what the pixels are (CMYK, palette, 16-bit grey, ...)
_IMAGEIO_SUFFIXES = (".exr", ".hdr", ".tif", ".tiff")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_image_file(path) -> np.ndarray:
    """Any image file as float32 (H, W, 3 or 4) in [0, 1], EXIF orientation applied to JPEGs.

    Converted on load: grey (and 1-bit) -> RGB, grey + alpha -> RGBA, palette -> RGB, or RGBA
    when it has transparency, CMYK (Adobe-inverted too) and YCbCr -> RGB; 16-bit grey and 16-bit
    RGB(A)/grey-alpha PNGs keep their 16-bit precision (PIL alone would cut the colour ones to
    8 bits, so those are decoded by OpenCV). A file that is missing, unreadable or in a mode
    that has no RGB meaning raises :class:`SceneError` naming it.
    """
    path = Path(path)
    if not path.exists():
        raise SceneError(f"{path}: image file not found; check the path in the scene's metadata")
    try:
        if path.suffix.lower() in _IMAGEIO_SUFFIXES:
            img = _to_float(np.asarray(iio.imread(path)))
        elif _is_16bit_colour_png(path):
            img = _read_png16(path)
        else:
            img = _read_with_pil(path)
    except SceneError:
        raise
    except Exception as exc:  # PIL/imageio raise many types for corrupt or truncated files
        raise SceneError(f"{path}: cannot read image ({type(exc).__name__}: {exc}); "
                         "replace or re-export the file, or remove it from the dataset") from exc
    return _to_rgb_channels(img, path)


def _read_with_pil(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.load()  # decodes everything now: truncated data fails here, inside the caller's try
        if path.suffix.lower() in (".jpg", ".jpeg"):
            img = ImageOps.exif_transpose(img)  # photos taken in portrait
        mode = img.mode
        if mode in ("L", "RGB") and "transparency" in img.info:  # tRNS colour key: that colour is transparent
            img = img.convert("RGBA")
        elif mode in ("RGB", "RGBA", "L", "LA"):
            pass  # grey channels are replicated by _to_rgb_channels (cheaper than PIL's convert)
        elif mode in ("I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit grey PNG/TIFF
            return np.asarray(img).astype(np.float32) / 65535.0
        elif mode == "I":  # 32-bit int: what PIL made of 16-bit grey PNGs before I;16
            return np.clip(np.asarray(img, dtype=np.float64) / 65535.0, 0.0, 1.0).astype(np.float32)
        elif mode == "F":
            return np.asarray(img, dtype=np.float32)
        elif mode in ("P", "PA"):
            has_alpha = mode == "PA" or "transparency" in img.info or img.palette.mode == "RGBA"
            img = img.convert("RGBA" if has_alpha else "RGB")
        elif mode in ("RGBa", "RGBX"):
            img = img.convert("RGBA" if mode == "RGBa" else "RGB")
        else:  # "1", CMYK (PIL undoes Adobe's inversion when it reads the JPEG), YCbCr, LAB, HSV
            img = img.convert("RGB")
        return _to_float(np.asarray(img))


def _is_16bit_colour_png(path: Path) -> bool:
    """True for a PNG whose header says 16 bits per sample and colour or grey + alpha (colour
    types 2, 4, 6): the kinds PIL reads as 8-bit."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    return head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 4, 6)


def _read_png16(path: Path) -> np.ndarray:
    try:
        import cv2
    except ImportError:  # opencv-python-headless is in requirements.txt; without it keep 8 bits, say so
        from pipeline.runner.log import get_logger

        get_logger("datasets").warning(f"{path}: 16-bit PNG read at 8 bits (OpenCV is not installed)")
        return _read_with_pil(path)
    img = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise SceneError(f"{path}: cannot decode this 16-bit PNG; re-export the file")
    if img.ndim == 3:  # OpenCV's channel order is BGR(A); grey + alpha comes back as BGRA too
        img = img[..., [2, 1, 0, 3][:img.shape[-1]]]
    return img.astype(np.float32) / 65535.0


def _to_float(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.bool_:
        return img.astype(np.float32)
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return img.astype(np.float32)


def _to_rgb_channels(img: np.ndarray, path: Path) -> np.ndarray:
    """(H, W), (H, W, 1..4) -> (H, W, 3 or 4): grey replicated into RGB, its alpha kept."""
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 2, 3, 4):
        raise SceneError(f"{path}: image of shape {img.shape} is not grey, grey + alpha, RGB or RGBA; "
                         "convert it to an 8- or 16-bit RGB(A) PNG or a JPEG")
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    elif img.shape[-1] == 2:
        img = np.concatenate([np.repeat(img[..., :1], 3, axis=-1), img[..., 1:]], -1)
    return np.ascontiguousarray(img, dtype=np.float32)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path).astype(np.float32)
    except FileNotFoundError:
        raise SceneError(f"{path}: file not found; check the path in the scene's metadata") from None
    except Exception as exc:
        raise SceneError(f"{path}: cannot read .npy ({exc}); re-export the file") from exc
