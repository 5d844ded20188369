"""Scores of equirectangular renders and the nearest-panorama baseline.

WS-PSNR (Sun, Lu and Yu 2017, "Weighted-to-spherically-uniform quality evaluation for
omnidirectional video"): the PSNR of the mean squared error weighted per row by cos(latitude), so
that each pixel counts by the solid angle it covers and the stretched poles do not dominate.

The nearest-panorama baseline answers "what would a viewer show at the new centre without any
reconstruction": the training panorama whose centre is nearest, resampled exactly to the target
orientation (:func:`pipeline.panoramas.equirect.rotate_equirect`). A method that interpolates
panoramas has to beat it.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from pipeline.panoramas.equirect import latitude_weights, rotate_equirect


def ws_mse(pred, target) -> float:
    """cos(latitude)-weighted mean squared error of two equirect images (H, W[, C]) in [0, 1]."""
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"WS-PSNR needs images of the same shape, got {p.shape} and {t.shape}")
    w = latitude_weights(p.shape[0]).reshape(-1, *([1] * (p.ndim - 1)))
    w = np.broadcast_to(w, p.shape)
    return float(np.sum(w * (p - t) ** 2) / np.sum(w))


def ws_psnr(pred, target) -> float:
    """WS-PSNR in dB of equirect images (H, W[, C]) in [0, 1]; inf for identical images."""
    mse = ws_mse(pred, target)
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def ws_ssim(pred, target, window: int = 11) -> float:
    """SSIM map (kornia, Gaussian window 11) averaged with cos(latitude) weights (WS-SSIM, Zhou et
    al. 2018) of equirect images (H, W, C) in [0, 1]."""
    import kornia
    import torch

    def bchw(img):
        t = torch.as_tensor(np.asarray(img, dtype=np.float32))
        return (t[..., None] if t.ndim == 2 else t).permute(2, 0, 1)[None]

    ssim_map = kornia.metrics.ssim(bchw(pred), bchw(target), window_size=window)[0].mean(0).double().numpy()
    w = latitude_weights(ssim_map.shape[0])[:, None]
    return float(np.sum(ssim_map * w) / (np.sum(w) * ssim_map.shape[1]))


def nearest_panorama_baseline(image: np.ndarray, source_c2w: np.ndarray, target_c2w: np.ndarray,
                              size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """The training panorama ``image`` (H, W, C) of the camera ``source_c2w`` (4, 4) shown in the
    orientation of ``target_c2w``; resized to ``size`` (height, width) first when given (the
    target panorama's size)."""
    if size is not None and image.shape[:2] != tuple(size):
        from pipeline.panoramas.equirect import resize_equirect

        image = resize_equirect(image, size[1], size[0])
    return rotate_equirect(image, np.asarray(source_c2w)[:3, :3], np.asarray(target_c2w)[:3, :3])
