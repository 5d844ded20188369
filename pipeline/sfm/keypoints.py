"""Track keypoints refined at full resolution: patch alignment of each track's observations.

SIFT runs on downscaled images (``max_image_size``); its keypoints are then only as precise as the
downscaled pixels. :func:`refine_track_keypoints` aligns, for every track of a reconstruction, each
observation's full-resolution patch to the patch of one reference observation (the one seen at
the largest SIFT scale: its patch has the finest detail), with the relative affine frame of the two
SIFT keypoints (scale, orientation) and a translation found by Gauss-Newton on zero-mean,
unit-variance patches (Lucas-Kanade). Moves larger than ``max_shift`` px or that lower the patches'
correlation are dropped. A bundle adjustment on the moved observations follows (the caller's).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _grey(path: Path) -> np.ndarray:
    """(H, W) uint8 grey levels of an image COLMAP read (the prepared 8-bit file): 8 bits keep a
    24-megapixel photo at 24 MB, so that a few hundred fit in memory."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L"))


def _sample(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """float32 bilinear samples of ``img`` (H, W) (uint8 or float) at COLMAP pixel coordinates ``x``, ``y`` (same
    shape; pixel centres at +0.5), clamped at the border. numpy gathers on the flat image: a few
    times faster than scipy's map_coordinates for millions of points."""
    h, w = img.shape
    fx = np.clip(x - np.float32(0.5), 0.0, w - 1.001).astype(np.float32)
    fy = np.clip(y - np.float32(0.5), 0.0, h - 1.001).astype(np.float32)
    fx0, fy0 = np.floor(fx), np.floor(fy)
    ax, ay = fx - fx0, fy - fy0  # float32 (int - float32 would be float64)
    x0, y0 = fx0.astype(np.int32), fy0.astype(np.int32)
    flat = img.ravel()
    i00 = y0 * w + x0
    top = flat[i00].astype(np.float32) * (1 - ax) + flat[i00 + 1] * ax
    bottom = flat[i00 + w].astype(np.float32) * (1 - ax) + flat[i00 + w + 1] * ax
    return top * (1 - ay) + bottom * ay


def _normalise(p: np.ndarray) -> np.ndarray:
    p = p - p.mean(axis=(1, 2), keepdims=True)
    return p / (p.std(axis=(1, 2), keepdims=True) + 1e-6)


def refine_track_keypoints(pycolmap, rec, db_path: Path, image_dir: Path) -> dict:
    """:func:`align_track_keypoints` with the SIFT frames of COLMAP's database at ``db_path`` and
    the full-resolution images COLMAP read in ``image_dir``."""
    if rec.num_points3D() == 0:
        return {"observations": 0, "moved": 0, "median_shift_px": 0.0}
    db = pycolmap.Database.open(str(db_path))
    try:  # COLMAP's keypoints: x, y, then the affine frame a11 a12 a21 a22 (full-resolution pixels)
        shapes = {image_id: db.read_keypoints(image_id)[:, 2:6].reshape(-1, 2, 2) for image_id in rec.reg_image_ids()}
    finally:
        db.close()
    ids = list(rec.reg_image_ids())
    with ThreadPoolExecutor(max(1, min(len(ids), os.cpu_count() or 1))) as pool:  # PIL decodes without the GIL
        images = dict(zip(ids, pool.map(lambda i: _grey(image_dir / rec.images[i].name), ids)))
    return align_track_keypoints(rec, shapes, images)


def align_track_keypoints(rec, shapes: dict, images: dict, half: int = 8, iterations: int = 6,
                          max_shift: float = 2.0) -> dict:
    """Move the observations of ``rec``'s tracks to where their patches align with the track's
    reference patch; ``rec``'s points2D are changed in place.

    shapes: {image id: (K, 2, 2) affine frame of each of its points2D (columns: the keypoint's x and y
    axes in pixels, scaled by its SIFT scale)}; images: {image id: (H, W) grey image, uint8 or float}.
    Patches have 2*half+1 samples a side; ``iterations`` Gauss-Newton steps. Returns
    ``{"observations", "moved", "median_shift_px"}``."""
    if rec.num_points3D() == 0:
        return {"observations": 0, "moved": 0, "median_shift_px": 0.0}
    # per observation: image, point2D index, track; the reference of each track: its largest SIFT frame
    obs_img, obs_idx, obs_track, is_ref = [], [], [], []
    for t, point in enumerate(rec.points3D.values()):
        elems = [(e.image_id, e.point2D_idx) for e in point.track.elements]
        ref = int(np.argmax([abs(np.linalg.det(shapes[i][j])) for i, j in elems]))
        for k, (i, j) in enumerate(elems):
            obs_img.append(i), obs_idx.append(j), obs_track.append(t), is_ref.append(k == ref)
    obs_img, obs_idx, obs_track, is_ref = map(np.asarray, (obs_img, obs_idx, obs_track, is_ref))
    points2d = {i: rec.images[i].points2D for i in np.unique(obs_img)}
    xy = np.array([points2d[i][j].xy for i, j in zip(obs_img, obs_idx)], dtype=np.float64)
    frames = np.stack([shapes[i][j] for i, j in zip(obs_img, obs_idx)]).astype(np.float64)
    ref_of_track = np.empty(obs_track.max() + 1, dtype=np.int64)
    ref_of_track[obs_track[is_ref]] = np.flatnonzero(is_ref)
    ref_obs = ref_of_track[obs_track]
    # the reference patch: 2*half+1 samples a side spanning +-max(half, 2 sigma) reference pixels
    step = np.maximum(1.0, 2.0 * np.sqrt(np.abs(np.linalg.det(frames[ref_obs]))) / half)
    # the other view's frame relative to the reference's: M = A_o A_ref^-1 (reference pixels -> image pixels)
    rel = frames @ np.linalg.inv(frames[ref_obs])
    others = np.flatnonzero(~is_ref)
    others = others[np.argsort(obs_img[others], kind="stable")]  # sampled image by image
    with ThreadPoolExecutor(max(1, min(len(images), os.cpu_count() or 1))) as pool:
        sampler = _PatchSampler(images, obs_img, xy, rel, step, half, pool)
        shift, ok = _gauss_newton(sampler, others, ref_obs[others], step, half, iterations, max_shift)
    for n in np.flatnonzero(ok):
        o = others[n]
        points2d[obs_img[o]][obs_idx[o]].xy = xy[o] + shift[n]
    return {"observations": int(len(xy)), "moved": int(ok.sum()),
            "median_shift_px": float(np.median(np.linalg.norm(shift[ok], axis=1))) if ok.any() else 0.0}


class _PatchSampler:
    """Patches of observations: (n, P, P) samples around xy + M (grid * step + offset) (float32)."""

    def __init__(self, images, obs_img, xy, rel, step, half, pool):
        self.images, self.obs_img, self.pool = images, obs_img, pool
        self.xy, self.rel, self.step = xy.astype(np.float32), rel.astype(np.float32), step.astype(np.float32)
        g = np.arange(-half, half + 1, dtype=np.float32)
        self.gx, self.gy = np.meshgrid(g, g)

    def __call__(self, which: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """``which``: observation indices, grouped by image; ``offsets`` (n, 2) in reference pixels."""
        s_ = self.step[which, None, None]
        off = offsets.astype(np.float32)
        lx = self.gx[None] * s_ + off[:, 0, None, None]
        ly = self.gy[None] * s_ + off[:, 1, None, None]
        m = self.rel[which]
        px = self.xy[which, 0, None, None] + m[:, 0, 0, None, None] * lx + m[:, 0, 1, None, None] * ly
        py = self.xy[which, 1, None, None] + m[:, 1, 0, None, None] * lx + m[:, 1, 1, None, None] * ly
        out = np.empty(px.shape, dtype=np.float32)
        img_of = self.obs_img[which]
        bounds = np.flatnonzero(np.diff(img_of)) + 1

        def fill(span):
            a, b = span
            out[a:b] = _sample(self.images[img_of[a]], px[a:b], py[a:b])

        list(self.pool.map(fill, zip(np.r_[0, bounds], np.r_[bounds, len(which)])))  # numpy releases the GIL
        return out


def _gauss_newton(sampler: _PatchSampler, others: np.ndarray, refs: np.ndarray, step: np.ndarray, half: int,
                  iterations: int, max_shift: float) -> tuple[np.ndarray, np.ndarray]:
    """(shift (n, 2) in image pixels, accepted (n,) bool) of the observations ``others`` aligned on
    their references' patches ``refs`` (translation in the reference's frame, Lucas-Kanade)."""
    order = np.argsort(sampler.obs_img[refs], kind="stable")  # the templates, sampled image by image
    template = np.empty((len(others), 2 * half + 1, 2 * half + 1), dtype=np.float32)
    template[order] = _normalise(sampler(refs[order], np.zeros((len(others), 2))))
    d = np.zeros((len(others), 2))
    inv_step = 1.0 / step[others]
    start_ncc = None
    for _ in range(iterations):
        pn = _normalise(sampler(others, d))
        if start_ncc is None:
            start_ncc = (pn * template).mean(axis=(1, 2))
        gy, gx = np.gradient(pn, axis=(1, 2))  # per grid sample; grid step = step px
        r = template - pn
        a = (gx * gx).sum(axis=(1, 2)) * inv_step ** 2 + 1e-6
        b = (gx * gy).sum(axis=(1, 2)) * inv_step ** 2
        c = (gy * gy).sum(axis=(1, 2)) * inv_step ** 2 + 1e-6
        u = (gx * r).sum(axis=(1, 2)) * inv_step
        v = (gy * r).sum(axis=(1, 2)) * inv_step
        det = a * c - b * b
        d = d + np.stack([(c * u - b * v) / det, (a * v - b * u) / det], axis=1)
    end_ncc = (_normalise(sampler(others, d)) * template).mean(axis=(1, 2))
    shift = np.einsum("nij,nj->ni", sampler.rel[others].astype(np.float64), d)  # image pixels
    ok = (np.linalg.norm(shift, axis=1) <= max_shift) & (end_ncc > start_ncc) & (end_ncc > 0.5)
    return shift, ok
