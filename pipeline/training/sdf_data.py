"""Training rays of the sdf stage: every pixel of the training views (masks optional), drawn
uniformly or partly by their last errors; no pixel is left out, since the background field has to
explain what lies outside the object's sphere."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from pipeline.training.idr_data import Views, view_pixels


def full_masks(scene, indices: list[int]) -> list[np.ndarray]:
    """All-true masks (H, W) of the given frames' images: the stand-in when masks are not used."""
    return [np.ones(scene.load_image(i).shape[:2], dtype=bool) for i in indices]


class PixelRays:
    """Every pixel of the views: the flat rows of ``views.store`` (uint8 colours, 1 B per channel)
    and ``views.mask_flat`` (bool; all true when ``views`` came with stand-in masks). Nothing per
    ray is stored: each drawn pixel's view, uv and float colour are made on demand. Pixels are
    drawn uniformly, or (:meth:`enable_error_map`) partly in proportion to their last errors."""

    def __init__(self, views: Views):
        self.store = views.store
        self.mask_flat = torch.from_numpy(views.mask_flat)
        self.error_fraction = 0.0
        self.pixel_error: Optional[torch.Tensor] = None  # (P,) float16: each pixel's last error
        self._cdf: Optional[torch.Tensor] = None
        self._draws_since_cdf = 0
        self.cdf_every = 0  # set by enable_error_map

    def __len__(self) -> int:
        return self.store.num_pixels

    def enable_error_map(self, fraction: float, cdf_every: int = 16) -> None:
        """Draw ``fraction`` of each batch in proportion to the pixels' last errors (instant-ngp's
        error map, as the nerf stage's ``error_sampling``): few-view regions (a pit seen only from
        above, a crease) get rays in proportion to what they still get wrong. Unseen pixels start
        at the largest error; the drawing table is rebuilt every ``cdf_every`` batches (a cumulative
        sum over every pixel costs more than a step on large sets)."""
        self.error_fraction = float(fraction)
        self.pixel_error = torch.ones(len(self), dtype=torch.float16)
        self.cdf_every = max(1, int(cdf_every))
        self._cdf, self._draws_since_cdf = None, 0

    def record_error(self, rows: torch.Tensor, error: torch.Tensor) -> None:
        """rows (n,) from :meth:`draw`, error (n,) of their renders (the error map is enabled)."""
        self.pixel_error[rows.cpu()] = error.detach().float().cpu().clamp_max(60000.0).to(self.pixel_error.dtype)

    def draw(self, count: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``count`` pixel rows (count,) int64: uniform, and the error map's share by weight."""
        rows = torch.randint(len(self), (count,), generator=generator)
        n_error = int(round(count * self.error_fraction)) if self.pixel_error is not None else 0
        if n_error:
            if self._cdf is None or self._draws_since_cdf >= self.cdf_every:
                self._cdf = torch.cumsum(self.pixel_error, 0, dtype=torch.float64)
                self._draws_since_cdf = 0
            self._draws_since_cdf += 1
            u = torch.rand(n_error, generator=generator, dtype=torch.float64) * self._cdf[-1]
            rows[:n_error] = torch.searchsorted(self._cdf, u).clamp_max(len(self) - 1)
        return rows

    def batch(self, rows: torch.Tensor, jitter: Optional[torch.Generator] = None):
        """Pixel rows (N,) -> (view (N,), uv (N, 2), rgb (N, 3) float32, mask (N,)). uv: the pixels'
        centres, or with a ``jitter`` generator a random point of each pixel's area (a photo's pixel
        averages its area; the draw is the whole batch's, so every DDP rank draws the same)."""
        view, uv, rgb = view_pixels(self.store, rows)
        if jitter is not None:
            uv = uv - 0.5 + torch.rand(len(rows), 2, generator=jitter)
        return view, uv, rgb, self.mask_flat[rows]

    def sample(self, count: int, generator: Optional[torch.Generator] = None):
        """``count`` random pixels: (view (N,), uv (N, 2), rgb (N, 3) float32, mask (N,))."""
        return self.batch(self.draw(count, generator))


@dataclass
class SurfaceAnchors:
    """What pose estimation says about the surface, in the model's frame: the sparse points
    (M, 3), where f = 0, and the rays along which training cameras saw them: origins (K, 3), unit
    directions (K, 3) and the distance to the point (K,), where each ray's first surface is
    (DS-NeRF's depth from the points' tracks; None without tracks)."""

    points: torch.Tensor
    ray_origins: Optional[torch.Tensor] = None
    ray_dirs: Optional[torch.Tensor] = None
    ray_depths: Optional[torch.Tensor] = None

    @property
    def num_rays(self) -> int:
        return 0 if self.ray_depths is None else len(self.ray_depths)

    def to(self, device) -> "SurfaceAnchors":
        return SurfaceAnchors(*(None if t is None else t.to(device) for t in (
            self.points, self.ray_origins, self.ray_dirs, self.ray_depths)))


def surface_anchors(points: np.ndarray, views: Optional[np.ndarray], centres: dict[int, np.ndarray],
                    to_model) -> Optional[SurfaceAnchors]:
    """The anchors of sparse points (M, 3, normalised frame): ``views`` (K, 2) (point index, frame
    index) observations or None, ``centres`` the camera centre (3,) of each frame whose
    observations count (the training views, normalised frame), ``to_model`` the similarity into
    the model's frame. None without points."""
    if points is None or not len(points):
        return None
    moved = to_model.apply_points(np.asarray(points, dtype=np.float64))
    anchors = SurfaceAnchors(torch.as_tensor(moved, dtype=torch.float32))
    if views is not None and len(views):
        views = np.asarray(views, dtype=np.int64).reshape(-1, 2)
        views = views[np.isin(views[:, 1], list(centres)) & (views[:, 0] >= 0) & (views[:, 0] < len(points))]
        if len(views):
            origins = to_model.apply_points(np.stack([centres[f] for f in views[:, 1].tolist()]))
            offsets = moved[views[:, 0]] - origins
            depths = np.linalg.norm(offsets, axis=1)
            ok = depths > 1e-9
            anchors.ray_origins = torch.as_tensor(origins[ok], dtype=torch.float32)
            anchors.ray_dirs = torch.as_tensor(offsets[ok] / depths[ok, None], dtype=torch.float32)
            anchors.ray_depths = torch.as_tensor(depths[ok], dtype=torch.float32)
    return anchors


def anchors_for_training(points: np.ndarray, views: Optional[np.ndarray], scene, train_idx: list[int], to_model,
                         radius: float, box: Optional[Sequence[float]] = None) -> Optional[SurfaceAnchors]:
    """The anchors of the sdf stage: of the sparse points (M, 3, normalised frame) those inside the
    view of >= 2 training cameras (``scene`` in the normalised frame), within ``radius`` of the
    model's origin and inside the foreground's ``box`` (6 numbers, model frame) when there is one,
    with the training rays that observed them (``views`` (K, 2): point index, frame index, as the
    poses stage writes them; or None); None when no point is left."""
    from pipeline.geometry.roi import camera_arrays, in_view_counts

    if points is None or not len(points):
        return None
    moved = to_model.apply_points(points)
    keep = (in_view_counts(points, *camera_arrays(scene, train_idx)) >= 2) & (np.linalg.norm(moved, axis=1) < radius)
    if box is not None and len(box):  # a ray cannot end on a surface outside the surface field
        lo, hi = np.asarray(box, dtype=np.float64).reshape(2, 3)
        keep &= ((moved >= lo) & (moved <= hi)).all(1)
    if not keep.any():
        return None
    if views is not None:  # re-indexed to the kept points (rows of unknown points: -1, dropped there)
        index = np.append(np.where(keep, np.cumsum(keep) - 1, -1), -1)
        j = np.asarray(views[:, 0], dtype=np.int64)
        views = np.stack([index[np.where((j >= 0) & (j < len(points)), j, -1)], views[:, 1]], 1)
    centres = {i: scene.frames[i].c2w[:3, 3] for i in train_idx}
    return surface_anchors(points[keep], views, centres, to_model)


SKY_SOURCES = ("auto", "folder", "off")
SKY_HELP = ("sky=folder needs sky_folder=DIR with one image per view named like the view (white = sky), e.g. "
            "from a segmentation network; sky=auto detects blue skies; sky=off uses none")


def sky_masks(scene, train_idx: list[int], source: str, folder: str = "", points: Optional[np.ndarray] = None,
              views: Optional[np.ndarray] = None) -> Optional[list[np.ndarray]]:
    """The sky (H, W) bool of each training view (``scene`` in the points' frame), or None when
    ``source`` is off or no view has any: ``auto`` detects blue skies
    (:class:`pipeline.geometry.sky.SkyDetector`), ``folder`` reads one mask per view. Where pose
    estimation saw a point (``points`` (M, 3), ``views`` (K, 2): point index, frame index) it is
    not sky (:func:`pipeline.geometry.sky.veto_seen_points`)."""
    from pipeline.geometry.roi import project_points
    from pipeline.geometry.sky import SkyDetector, veto_seen_points
    from pipeline.training.idr_data import folder_mask

    if source not in SKY_SOURCES:
        raise ValueError(f"sky must be one of {', '.join(SKY_SOURCES)}, got {source!r}")
    if source == "off":
        return None
    if source == "folder" and not Path(folder).is_dir():
        from datasets.scene import SceneError
        raise SceneError(f"sky_folder {folder!r} is not a folder; {SKY_HELP}")
    detect = SkyDetector()
    masks = []
    for i in train_idx:
        frame = scene.frames[i]
        sky = folder_mask(Path(folder), frame.name, SKY_HELP) if source == "folder" else detect(scene.load_image(i))
        if points is not None and views is not None and len(views) and sky.any():
            seen = views[(views[:, 1] == i) & (views[:, 0] >= 0) & (views[:, 0] < len(points)), 0]
            k = frame.intrinsics.scaled(sky.shape[1] / frame.intrinsics.width)
            uv, in_front = project_points(points[seen], frame.c2w, k)
            sky = veto_seen_points(sky, uv[in_front], radius=max(2, round(0.01 * max(sky.shape))))
        masks.append(sky)
    return masks if any(m.any() for m in masks) else None


__all__ = ["SKY_SOURCES", "sky_masks", "full_masks", "PixelRays", "SurfaceAnchors", "surface_anchors",
           "anchors_for_training"]
