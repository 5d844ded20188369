"""Equirectangular images as functions on the sphere: pixel directions, latitude weights and the
exact resampling of a panorama into another orientation.

Convention (``pipeline/geometry/cameras.py``): column u spans longitude -180..180 degrees left to
right (longitude 0 looks along camera +z), row v latitude +90 (top, camera -y) .. -90 (bottom);
pixel centres at +0.5. Directions here are in the camera frame (OpenCV axes).
"""
from __future__ import annotations

import math

import numpy as np


def row_latitudes(height: int) -> np.ndarray:
    """Latitude (radians) of each row's pixel centres, top to bottom: (H,)."""
    return math.pi / 2 - (np.arange(height) + 0.5) / height * math.pi


def latitude_weights(height: int) -> np.ndarray:
    """cos(latitude) of each row (H,): the solid angle a pixel of that row covers, up to a constant
    (the weights of WS-PSNR, Sun et al. 2017)."""
    return np.cos(row_latitudes(height))


def pixel_directions(width: int, height: int) -> np.ndarray:
    """Unit directions (H, W, 3) of every pixel centre in the camera frame (as ``Cameras.unproject``)."""
    lon = (np.arange(width) + 0.5) / width * 2 * math.pi - math.pi
    lat = row_latitudes(height)
    lon, lat = np.meshgrid(lon, lat)
    return np.stack([np.cos(lat) * np.sin(lon), -np.sin(lat), np.cos(lat) * np.cos(lon)], -1)


def direction_to_pixel(dirs: np.ndarray, width: int, height: int) -> np.ndarray:
    """Camera-frame directions (..., 3) -> continuous pixel coordinates (..., 2) as (u, v) with
    pixel centres at +0.5 (as ``Cameras.project``)."""
    x, y, z = dirs[..., 0], dirs[..., 1], dirs[..., 2]
    lon = np.arctan2(x, z)
    lat = np.arctan2(-y, np.sqrt(x * x + z * z))
    return np.stack([(lon + math.pi) / (2 * math.pi) * width, (math.pi / 2 - lat) / math.pi * height], -1)


def sample_bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear samples of an equirect image (H, W, C) or (H, W) at pixel coordinates uv (..., 2):
    columns wrap around (longitude is periodic), rows clamp at the poles. Coordinates within 1e-6
    of a pixel centre are snapped to it, so resampling on the pixel lattice copies values exactly."""
    h, w = image.shape[:2]
    x = uv[..., 0] - 0.5
    y = uv[..., 1] - 0.5
    # trigonometry leaves lattice points a few ulps off: snap them so shifts copy pixels exactly
    x = np.where(np.abs(x - np.round(x)) < 1e-6, np.round(x), x)
    y = np.where(np.abs(y - np.round(y)) < 1e-6, np.round(y), y)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    if image.ndim == 3:
        fx, fy = fx[..., None], fy[..., None]
    xa, xb = x0 % w, (x0 + 1) % w
    ya, yb = np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1)
    top = image[ya, xa] * (1 - fx) + image[ya, xb] * fx
    bottom = image[yb, xa] * (1 - fx) + image[yb, xb] * fx
    return (top * (1 - fy) + bottom * fy).astype(image.dtype, copy=False)


def rotate_equirect(image: np.ndarray, source_rotation: np.ndarray, target_rotation: np.ndarray) -> np.ndarray:
    """The panorama ``image`` (H, W, C) taken with camera-to-world rotation ``source_rotation``
    (3, 3), as seen from the same centre by a camera with rotation ``target_rotation``: each target
    pixel looks along world direction R_t d and takes the source colour in that direction
    (bilinear, wrapping in longitude). A yaw by a multiple of 360 / W degrees is a column shift."""
    h, w = image.shape[:2]
    dirs = pixel_directions(w, h)  # target camera frame
    relative = np.asarray(source_rotation, dtype=np.float64).T @ np.asarray(target_rotation, dtype=np.float64)
    source_dirs = dirs @ relative.T  # R_s^T R_t d
    return sample_bilinear(image, direction_to_pixel(source_dirs, w, h))


def resize_equirect(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """An equirect image (H, W, C) resampled to (height, width) on the sphere's own lattice (area
    averaging when shrinking, via OpenCV)."""
    import cv2

    if image.shape[:2] == (height, width):
        return image
    shrink = width < image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
