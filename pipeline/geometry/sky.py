"""Sky in outdoor photos, without a segmentation network (none can be downloaded here).

The sky is the part of a photo that no surface explains: seen from a street, a surface field can
paint it on a ceiling over the roofs as well as leave it to the background field, and colours alone
never tell the two apart (it has no texture, hence no parallax). Urban Radiance Fields and
StreetSurf settle it with sky masks from a segmentation network; here a classical detector gives
them (Shen & Wang 2013 in spirit: sky is smooth, bright and reaches the top of the photo), made
conservative because a false sky pushes a real surface away, while a missed sky only leaves things
as they were:

- seeds: smooth, bright, clearly blue pixels;
- the sky: the smooth sky-coloured regions (blue, or a white/grey cloud) that touch the top edge
  and hold enough seed, grown a few pixels into the rims of clouds, with the clouds and small
  holes they enclose;
- no sky at all below ``min_fraction`` of the photo;
- a sky region where pose estimation saw a point (:func:`veto_seen_points`) is not sky.

Overcast skies (no blue) are not found: give masks (``sky=folder``) for those."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SkyDetector:
    """Thresholds on colours in [0, 1] at ``work_size`` px (long side)."""

    work_size: int = 320
    blue_margin: float = 0.06  # blue exceeds red by this much (the sky's Rayleigh tint)
    # a seed is a clearly blue sky: a pale blue-grey wall (Herz-Jesu's stone, b - r 0.16, saturation
    # 0.24) is not one; lund's blue sky has b - r 0.3-0.5, saturation 0.4-0.6
    seed_margin: float = 0.2
    seed_saturation: float = 0.35
    seed_fraction: float = 0.005  # a seed region covers at least this share of the photo
    min_brightness: float = 0.35  # max(r, g, b) of a sky pixel
    cloud_brightness: float = 0.65  # a cloud is at least this bright ...
    cloud_saturation: float = 0.18  # ... and this grey
    max_gradient: float = 0.035  # smoothed gradient magnitude of the grey image, per pixel at work_size
    rim_steps: int = 3  # px at work_size the sky grows into sky-coloured but not smooth pixels
    max_hole: float = 0.003  # holes up to this share of the photo are filled (a bird, a wire)
    cloud_share: float = 0.7  # an enclosed hole this sky-coloured is a cloud (a tree crown is not)
    min_fraction: float = 0.01  # less than this share of the photo: no sky

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """image (H, W, 3) float in [0, 1] (or uint8) -> sky (H, W) bool."""
        from scipy import ndimage

        rgb = np.asarray(image, dtype=np.float32)
        if rgb.max() > 1.5:
            rgb = rgb / 255.0
        h, w = rgb.shape[:2]
        factor = max(1, int(np.ceil(max(h, w) / self.work_size)))
        small = _area_downscale(rgb, factor)
        r, g, b = small[..., 0], small[..., 1], small[..., 2]
        value = small.max(-1)
        saturation = (value - small.min(-1)) / np.maximum(value, 1e-6)
        grey = small @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        gradient = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1)) / 8.0
        smooth = ndimage.uniform_filter(gradient, 3) < self.max_gradient
        blue = (b > r + self.blue_margin) & (b >= g - 0.02) & (value > self.min_brightness)
        cloud = (value > self.cloud_brightness) & (saturation < self.cloud_saturation)
        seed = smooth & (b > r + self.seed_margin) & (saturation > self.seed_saturation) & (value > self.min_brightness)
        candidate = smooth & (blue | cloud)
        labels, count = ndimage.label(candidate)
        if count == 0:
            return np.zeros((h, w), dtype=bool)
        ids = np.arange(1, count + 1)
        touches_top = np.isin(ids, labels[0])
        seeded = np.asarray(ndimage.sum(seed, labels, ids)) >= self.seed_fraction * seed.size
        sky = np.isin(labels, ids[touches_top & seeded])
        # the rims of clouds are not smooth: grow into sky-coloured pixels a few steps
        sky = ndimage.binary_dilation(sky, iterations=self.rim_steps, mask=blue | cloud)
        # holes: small ones (a bird, a wire), and clouds: enclosed and mostly sky-coloured
        holes, n_holes = ndimage.label(ndimage.binary_fill_holes(sky) & ~sky)
        if n_holes:
            hole_ids = np.arange(1, n_holes + 1)
            sizes = np.asarray(ndimage.sum(np.ones_like(sky), holes, hole_ids))
            coloured = np.asarray(ndimage.mean(blue | cloud, holes, hole_ids))
            sky |= np.isin(holes, hole_ids[(sizes <= self.max_hole * sky.size) | (coloured >= self.cloud_share)])
        if sky.mean() < self.min_fraction:
            return np.zeros((h, w), dtype=bool)
        full = np.repeat(np.repeat(sky, factor, 0), factor, 1)
        out = np.zeros((h, w), dtype=bool)
        out[:full.shape[0], :full.shape[1]] = full[:h, :w]
        return out


def _area_downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, C) -> (ceil(H/f), ceil(W/f), C): means over f x f blocks (edge blocks padded by edge values)."""
    if factor == 1:
        return image
    h, w = image.shape[:2]
    ph, pw = -h % factor, -w % factor
    padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor, -1).mean((1, 3))


def veto_seen_points(sky: np.ndarray, uv: np.ndarray, radius: int, density_ratio: float = 0.25) -> np.ndarray:
    """What pose estimation saw is not sky: sky (H, W) bool, uv (K, 2) pixel positions (centres at
    +0.5) of the points this view saw -> sky (H, W) bool. Points on a region's rim (roof edges,
    tree tops) clear a disc of ``radius`` px each; a region with points deeper inside it than
    ``3 * radius``, at least ``density_ratio`` as dense as in the rest of the photo, goes whole (a
    pale wall the colours took for sky)."""
    from scipy import ndimage

    if not sky.any() or len(uv) == 0:
        return sky
    h, w = sky.shape
    px = np.clip(np.floor(uv).astype(int), [0, 0], [w - 1, h - 1])
    labels, count = ndimage.label(sky)
    hits = labels[px[:, 1], px[:, 0]]
    deep = ndimage.distance_transform_edt(sky)[px[:, 1], px[:, 0]] > 3 * radius
    per_region = np.bincount(hits[deep], minlength=count + 1).astype(np.float64)
    areas = np.bincount(labels.ravel(), minlength=count + 1).astype(np.float64)
    rest_density = np.sum(hits == 0) / max(areas[0], 1.0)
    dense = (per_region[1:] >= 3) & (per_region[1:] / areas[1:] >= density_ratio * rest_density)
    out = sky & ~np.isin(labels, np.flatnonzero(dense) + 1)
    inside = px[hits > 0]
    if len(inside):  # the discs: pixels within ``radius`` of the nearest point inside the sky
        away = np.ones((h, w), dtype=bool)
        away[inside[:, 1], inside[:, 0]] = False
        out &= ndimage.distance_transform_edt(away) > radius
    return out


__all__ = ["SkyDetector", "veto_seen_points"]
