"""Track keypoints refined at full resolution: patch alignment of each track's observations.

SIFT runs on downscaled images (``max_image_size``); its keypoints are then only as precise as the
downscaled pixels. :func:`align_track_keypoints` aligns, for every track of a reconstruction, each
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


def read_frames_and_images(pycolmap, rec, db_path: Path, image_dir: Path) -> tuple[dict, dict]:
    """({image id: (K, 2, 2) SIFT frames}, {image id: (H, W) uint8 grey image}) of ``rec``'s
    registered images: the frames from COLMAP's database at ``db_path``, the images from
    ``image_dir`` (the files COLMAP read). Read once for both alignments (:func:`align_track_keypoints`,
    :func:`align_track_keypoints_affine`): decoding hundreds of large photos is not free."""
    db = pycolmap.Database.open(str(db_path))
    try:  # COLMAP's keypoints: x, y, then the affine frame a11 a12 a21 a22 (full-resolution pixels)
        shapes = {image_id: db.read_keypoints(image_id)[:, 2:6].reshape(-1, 2, 2) for image_id in rec.reg_image_ids()}
    finally:
        db.close()
    ids = list(rec.reg_image_ids())
    with ThreadPoolExecutor(max(1, min(len(ids), os.cpu_count() or 1))) as pool:  # PIL decodes without the GIL
        images = dict(zip(ids, pool.map(lambda i: _grey(image_dir / rec.images[i].name), ids)))
    return shapes, images


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
    obs = _TrackObservations(rec, shapes, reference="largest_scale")
    obs_img, obs_idx, is_ref, ref_obs, points2d, xy, frames = (obs.image, obs.index, obs.is_ref, obs.ref, obs.points2d,
                                                               obs.xy, obs.frames)
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


class _TrackObservations:
    """Every observation of ``rec``'s tracks, flat: ``image`` and ``index`` (point2D) ids, ``track``
    number, ``xy`` (n, 2), SIFT ``frames`` (n, 2, 2), and per observation its track's reference
    observation ``ref`` (``is_ref`` where it is its own; per track ``ref_of_track``), and per track
    its 3D point's ``point_ids`` and ``xyz`` (tracks, 3). The reference is the track's largest SIFT
    frame (``largest_scale``: the finest detail) or the view nearest the track's mean viewing
    direction (``central``: the least foreshortening to the others; then also the observations'
    unit viewing ``rays`` (n, 3) and each track's unit ``mean_ray`` (tracks, 3))."""

    def __init__(self, rec, shapes: dict, reference: str):
        image, index, track, xyz, point_ids = [], [], [], [], []
        for t, (point_id, point) in enumerate(rec.points3D.items()):
            for e in point.track.elements:
                image.append(e.image_id), index.append(e.point2D_idx), track.append(t)
            xyz.append(point.xyz)
            point_ids.append(point_id)
        self.image, self.index, self.track = map(np.asarray, (image, index, track))
        self.point_ids = np.asarray(point_ids, dtype=np.int64)  # (tracks,) the 3D point of each track
        self.points2d = {i: rec.images[i].points2D for i in np.unique(self.image)}
        self.xy = np.array([self.points2d[i][j].xy for i, j in zip(self.image, self.index)], dtype=np.float64)
        self.frames = np.stack([shapes[i][j] for i, j in zip(self.image, self.index)]).astype(np.float64)
        self.xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        if reference == "central":
            centres = {i: rec.images[i].projection_center() for i in np.unique(self.image)}
            rays = self.xyz[self.track] - np.stack([centres[i] for i in self.image])
            rays /= np.linalg.norm(rays, axis=1, keepdims=True)
            mean = np.zeros((len(xyz), 3))
            np.add.at(mean, self.track, rays)
            score = np.einsum("ni,ni->n", rays, mean[self.track])
            self.rays = rays
            self.mean_ray = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
        else:
            score = np.abs(np.linalg.det(self.frames))
        order = np.lexsort((-score, self.track))  # by track, the best first
        first = order[np.r_[True, self.track[order][1:] != self.track[order][:-1]]]
        self.is_ref = np.zeros(len(self.track), dtype=bool)
        self.is_ref[first] = True
        self.ref_of_track = np.empty(len(xyz), dtype=np.int64)
        self.ref_of_track[self.track[first]] = first
        self.ref = self.ref_of_track[self.track]


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
        return _sample_grouped(self.images, self.obs_img[which], px, py, self.pool)


def _sample_grouped(images: dict, img_of: np.ndarray, px: np.ndarray, py: np.ndarray, pool=None) -> np.ndarray:
    """float32 samples (n, ...) of ``images[img_of[k]]`` at ``px[k]``, ``py[k]``; ``img_of`` (n,)
    grouped by image (one gather per image, the images spread over ``pool``'s threads, or in this
    thread without a pool)."""
    out = np.empty(px.shape, dtype=np.float32)
    bounds = np.flatnonzero(np.diff(img_of)) + 1

    def fill(span):
        a, b = span
        out[a:b] = _sample(images[img_of[a]], px[a:b], py[a:b])

    list((pool.map if pool is not None else map)(fill, zip(np.r_[0, bounds], np.r_[bounds, len(img_of)])))
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


def align_track_keypoints_affine(rec, shapes: dict, images: dict, half: int = 4, iterations: int = 10,
                                 window_sigma: float = 2.1, min_ncc: float = 0.9, max_shift: float = 1.5,
                                 chunk: int = 4096, points: set[int] | None = None) -> dict:
    """Move the observations of ``rec``'s tracks (in place) to where a small patch around each
    matches its track's reference patch under a local affine warp with gain and bias.

    Unlike :func:`align_track_keypoints` (a translation in the SIFT frames, for keypoints found in
    downscaled images), the warp here is estimated: between views 10-40 deg apart the SIFT frames
    only roughly predict a patch's shape, and at the images' own scale a translation alone leaves
    the patch misaligned (bench/RESULTS.md, poses at scale: the translation moved the built-in
    scene's rotations from 0.12 to 0.29 deg median). The reference is the view nearest the track's
    mean viewing direction; every other observation is then a view of the same surface point as
    the reference's keypoint, which is what the bundle adjustment needs (pixel-perfect SfM's
    keypoint adjustment, with grey levels for features).

    shapes, images: as :func:`align_track_keypoints`. Patches have ``2 * half + 1`` samples a side,
    1 px apart in the reference image (larger patches did worse: an affine warp no longer fits them
    across depth edges), weighted by a Gaussian of ``window_sigma`` px; at most ``iterations``
    Levenberg-damped Gauss-Newton steps on (translation 2, affine 4, gain, bias), in chunks of
    ``chunk`` observations on all cores. A move is kept when the aligned patches correlate by
    ``min_ncc`` or more and the keypoint moved at most ``max_shift`` px. ``points``: only the tracks of
    these 3D point ids are aligned (None: every track). Returns
    ``{"observations", "moved", "median_shift_px"}`` (observations: those aligned, i.e. not
    references)."""
    if rec.num_points3D() == 0:
        return {"observations": 0, "moved": 0, "median_shift_px": 0.0}
    obs = _TrackObservations(rec, shapes, reference="central")
    others = np.flatnonzero(~obs.is_ref)
    if points is not None:
        others = others[np.isin(obs.point_ids[obs.track[others]], np.fromiter(points, dtype=np.int64))]
    others = others[np.argsort(obs.image[others], kind="stable")]  # sampled image by image
    refs = obs.ref[others]
    warp = obs.frames[others] @ np.linalg.inv(obs.frames[refs])  # reference pixels -> image pixels
    shift, ok = align_patches(images, obs.image[others], obs.xy[others], warp, obs.image[refs], obs.xy[refs],
                              half, iterations, window_sigma, min_ncc, max_shift, chunk)
    for n in np.flatnonzero(ok):
        o = others[n]
        obs.points2d[obs.image[o]][obs.index[o]].xy = obs.xy[o] + shift[n]
    return {"observations": int(len(others)), "moved": int(ok.sum()),
            "median_shift_px": float(np.median(np.linalg.norm(shift[ok], axis=1))) if ok.any() else 0.0}


def align_patches(images: dict, img: np.ndarray, xy: np.ndarray, warp: np.ndarray, ref_img: np.ndarray,
                  ref_xy: np.ndarray, half: int = 4, iterations: int = 10, window_sigma: float = 2.1,
                  min_ncc: float = 0.9, max_shift: float = 1.5, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(shift (n, 2) px, accepted (n,) bool): the points at ``xy`` (n, 2) in ``images[img]``, ``img``
    (n,) grouped by image, moved to where their patches match the patches at ``ref_xy`` in
    ``images[ref_img]`` under an affine warp with gain and bias, starting from ``warp`` (n, 2, 2:
    reference pixels -> image pixels). Patches, weights, iterations and acceptance as
    :func:`align_track_keypoints_affine`; chunks of ``chunk`` points side by side on all cores."""
    g = np.arange(-half - 1, half + 2, dtype=np.float64)  # one sample more a side for central differences
    grid = np.stack(np.meshgrid(g, g), -1)  # (S, S, 2) as (x, y)
    weight = np.exp(-0.5 * (grid[1:-1, 1:-1] ** 2).sum(-1) / window_sigma ** 2).reshape(-1)
    shift = np.zeros((len(img), 2))
    ok = np.zeros(len(img), dtype=bool)

    def align(start):
        part = slice(start, start + chunk)
        shift[part], ok[part] = _affine_gauss_newton(images, img[part], xy[part], warp[part], ref_img[part],
                                                     ref_xy[part], grid, weight, iterations, min_ncc, max_shift)

    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:  # chunks side by side: numpy releases the GIL
        list(pool.map(align, range(0, len(img), chunk)))
    return shift, ok


def _affine_gauss_newton(images, img, xy, warp, ref_img, ref_xy, grid, weight, iterations, min_ncc, max_shift,
                         converged_px=1e-3):
    """(shift (n, 2) px, accepted (n,)) of observations at ``xy`` (n, 2) in images ``img`` (n,),
    grouped by image, aligned on their references' patches; ``warp`` (n, 2, 2) the starting map
    from reference pixels to image pixels; ``grid`` (S, S, 2) the patch's offsets in reference
    pixels, one sample more a side than ``weight`` (the inner samples' weights, (S - 2)^2). An
    observation stops once its step moves it by less than ``converged_px``."""
    n, inner = len(img), grid[1:-1, 1:-1].reshape(-1, 2)
    order = np.argsort(ref_img, kind="stable")
    template = np.empty((n, len(inner)), dtype=np.float64)
    rx = ref_xy[order, 0, None] + inner[:, 0]
    ry = ref_xy[order, 1, None] + inner[:, 1]
    template[order] = _sample_grouped(images, ref_img[order], rx, ry)
    centre, start_warp, warp = xy.copy(), warp, warp.copy()
    start_det, failed = np.abs(np.linalg.det(warp)), np.zeros(n, dtype=bool)
    gain, bias = np.ones(n), np.zeros(n)
    sw = np.sqrt(weight)
    flat_grid = grid.reshape(-1, 2)

    def patch(which):
        p = centre[which, None, :] + flat_grid @ warp[which].transpose(0, 2, 1)  # (m, S * S, 2)
        return _sample_grouped(images, img[which], p[..., 0], p[..., 1]).astype(np.float64).reshape(
            len(which), *grid.shape[:2])

    active = np.arange(n)  # observations still moving; img order is kept, so they stay grouped by image
    for it in range(iterations):
        a, m = active, len(active)
        full = patch(a)
        values = full[:, 1:-1, 1:-1].reshape(m, -1)
        if it == 0:  # gain and bias from the moments
            gain = template.std(1) / np.maximum(values.std(1), 1e-6)
            bias = template.mean(1) - gain * values.mean(1)
        d_gx = 0.5 * (full[:, 1:-1, 2:] - full[:, 1:-1, :-2]).reshape(m, -1)  # per grid step
        d_gy = 0.5 * (full[:, 2:, 1:-1] - full[:, :-2, 1:-1]).reshape(m, -1)
        inv = np.linalg.inv(warp[a])  # image gradient = warp^-T (grid gradient)
        ix = inv[:, 0, 0, None] * d_gx + inv[:, 1, 0, None] * d_gy
        iy = inv[:, 0, 1, None] * d_gx + inv[:, 1, 1, None] * d_gy
        gx, gy = gain[a, None] * ix * sw, gain[a, None] * iy * sw
        Jt = np.empty((m, 8, len(inner)), dtype=np.float32)  # float32: half the memory traffic
        Jt[:, 0], Jt[:, 1] = gx, gy
        Jt[:, 2], Jt[:, 3], Jt[:, 4], Jt[:, 5] = gx * inner[:, 0], gx * inner[:, 1], gy * inner[:, 0], gy * inner[:, 1]
        Jt[:, 6], Jt[:, 7] = values * sw, sw
        r = ((gain[a, None] * values + bias[a, None] - template[a]) * sw).astype(np.float32)
        JtJ = (Jt @ Jt.transpose(0, 2, 1)).astype(np.float64)
        JtJ += 1e-4 * JtJ * np.eye(8) + 1e-9 * np.eye(8)  # Levenberg's damping on the diagonal
        delta = -np.linalg.solve(JtJ, (Jt @ r[..., None]).astype(np.float64))[..., 0]
        centre[a] += delta[:, :2]
        warp[a] += delta[:, 2:6].reshape(m, 2, 2)
        gain[a] += delta[:, 6]
        bias[a] += delta[:, 7]
        # a patch without texture or one that ran off its surface diverges: back to the start, not kept
        failed[a] |= ~np.isfinite(delta).all(1) | (np.abs(np.linalg.det(warp[a])) < 1e-3 * start_det[a])
        centre[failed], warp[failed], gain[failed], bias[failed] = xy[failed], start_warp[failed], 1.0, 0.0
        active = a[~failed[a] & (np.abs(delta[:, :2]).max(1) > converged_px)]
        if not len(active):
            break
    values = patch(np.arange(n))[:, 1:-1, 1:-1].reshape(n, -1)

    def standard(v):
        v = v - v.mean(1, keepdims=True)
        return v / np.maximum(v.std(1, keepdims=True), 1e-9)

    ncc = (standard(values) * standard(template)).mean(1)
    shift = centre - xy
    shape = {i: images[i].shape for i in np.unique(img)}
    size = np.array([shape[i][::-1] for i in img], dtype=np.float64)  # (W, H) of each observation's image
    reach = np.abs(warp).sum(-1).max(-1) * (grid.shape[0] // 2)  # px from the centre to the patch's edge
    inside = np.all((centre - reach[:, None] >= 0) & (centre + reach[:, None] <= size), axis=1)
    ok = ~failed & (np.linalg.norm(shift, axis=1) <= max_shift) & (ncc >= min_ncc) & inside
    return shift, ok
