"""Images as written to disk: float images to 8 bits, colour-mapped depth, PNG files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_uint8(img) -> np.ndarray:
    """A float image (..., C) in [0, 1] (numpy or torch, any device) -> uint8, rounded; values
    outside [0, 1] are clipped. Computed in float32."""
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
    return (np.clip(np.asarray(img, dtype=np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


def turbo(x: np.ndarray) -> np.ndarray:
    """Google's Turbo colour map (polynomial fit) of values in [0, 1]: (..., 3) float in [0, 1]."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0, 1)
    kr = np.array([0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943])
    kg = np.array([0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604])
    kb = np.array([0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973])
    powers = x[..., None] ** np.arange(6)  # (..., 6)
    return np.clip(np.stack([powers @ kr, powers @ kg, powers @ kb], -1), 0, 1)


def depth_preview(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) colour-mapped depth (near red, far blue; black where not valid), robust range."""
    out = np.zeros(depth.shape + (3,), dtype=np.uint8)
    if valid.any():
        lo, hi = np.percentile(depth[valid], [1, 99])
        x = 1.0 - (depth - lo) / max(hi - lo, 1e-12)
        out[valid] = (turbo(x[valid]) * 255 + 0.5).astype(np.uint8)
    return out


def write_png(path: Path, img: np.ndarray) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, img)
