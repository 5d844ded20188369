"""The region of interest of an object-centric reconstruction: a ball in the workspace's normalised
frame, and the similarity that maps it onto the origin-centred ball a model trains in.

Where the ball comes from (:func:`choose_roi`, ``roi=auto`` tries them in this order, after a
``roi_box`` when one is given):

- ``bounds``: the dataset's own box of the object (``scene.bounds``: the built-in scene, Middlebury):
  the ball around it, no margin (the poses stage already normalised exactly this ball to the
  target radius, so the similarity is the identity there);
- ``points``: the sparse points of pose estimation (``W/poses/points.ply``, normalised frame): the
  points inside the view of at least half the cameras (background points behind the object are
  in few views), their 2nd-98th percentile box, the ball around it grown by ``margin``;
- ``cameras``: the cameras' common view: the point closest (least squares) to all optical axes,
  and the median over the cameras of the largest ball around it that fits in each one's field of
  view (``d sin(half_fov - off_axis_angle)``), grown by ``margin``;
- ``sphere``: the normalised frame's own ball (the identity): the behaviour before ROIs existed;
- ``box``: a box the user gives in the ORIGINAL units of the dataset (``roi_box``), the ball around it.

:class:`RegionOfInterest` holds the ball; :meth:`RegionOfInterest.similarity` is the map into the
model's frame (``x_model = s (x - c)``, no rotation, so the workspace's up axis stays up) and its
``inverse()`` the way back; depths scale by ``s``. :func:`move_scene` moves a scene's cameras.
When the ball came from a box (``bounds``, ``box``), the ROI keeps that box (original units), and
:func:`box_distance` gives the signed distance to it in the model's frame: meshes are cut there.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from pipeline.geometry.normalize import Similarity, box_corners, focus_point
from pipeline.runner.config import ConfigError

ROI_MODES = ("auto", "sphere", "box")
POINT_PERCENTILE = 2.0  # the sparse points' box runs from this percentile to 100 minus it


@dataclass
class RegionOfInterest:
    """A ball (centre (3,), radius) in the workspace's normalised frame; ``source`` says where it
    came from (bounds | points | cameras | sphere | box) and ``reason`` why, for the log."""

    center: np.ndarray
    radius: float
    source: str
    reason: str = ""
    box: Optional[np.ndarray] = None  # (2, 3) the object's box in ORIGINAL units, when one is known

    def similarity(self, target_radius: float = 1.0) -> Similarity:
        """normalised frame -> model frame: the ball onto the origin-centred ball of ``target_radius``.
        Within 1e-6 of the identity it IS the identity (the default sphere stays bit-identical)."""
        scale = target_radius / self.radius
        translation = -scale * np.asarray(self.center, dtype=np.float64)
        if abs(scale - 1.0) < 1e-6 and np.abs(translation).max() < 1e-6:
            return Similarity()
        return Similarity(scale, np.eye(3), translation)

    def describe(self) -> str:
        c = ", ".join(f"{v:.3g}" for v in self.center)
        return f"roi from {self.source}: centre ({c}), radius {self.radius:.3g} (normalised frame); {self.reason}"


def is_identity(sim: Similarity) -> bool:
    return sim.scale == 1.0 and np.array_equal(sim.rotation, np.eye(3)) and not np.any(sim.translation)


def ball_around_box(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, float]:
    """The smallest ball holding the axis-aligned box (lo, hi): centre (3,), radius."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    return (lo + hi) / 2, float(np.linalg.norm(hi - lo) / 2)


def _box_half_extents(bounds: np.ndarray, rotation: np.ndarray) -> Optional[np.ndarray]:
    """The half-extents ``e`` (3,) of the box whose rotation by ``rotation`` has the axis-aligned
    box ``bounds`` (2, 3): the solution of ``|R| e = half`` with ``e >= 0``; None when none fits."""
    from scipy.optimize import nnls

    half = (bounds[1] - bounds[0]) / 2
    e, residual = nnls(np.abs(np.asarray(rotation, dtype=np.float64)), half)
    return e if residual <= 1e-6 * max(1e-12, float(np.linalg.norm(half))) else None


def dataset_box_original(bounds: np.ndarray, normalization: Similarity) -> Optional[np.ndarray]:
    """The dataset's box of the object back in ORIGINAL units (2, 3), from the normalised scene's
    ``bounds`` (the axis-aligned box of the rotated box); None when no box fits them."""
    bounds = np.asarray(bounds, dtype=np.float64)
    e = _box_half_extents(bounds, normalization.rotation)
    if e is None:
        return None
    center = normalization.inverse().apply_points(((bounds[0] + bounds[1]) / 2)[None])[0]
    # the normalisation's rotation maps original axes onto its columns: e_j lies along original axis j
    half = e / normalization.scale
    return np.stack([center - half, center + half])


def box_distance(points, box: np.ndarray, to_original: Similarity):
    """Signed distance (N,) in the model's units from points (N, 3) (a torch tensor in the model's
    frame) to the box (2, 3, ORIGINAL units): negative inside. ``to_original`` maps the model frame
    to the original units (or to whichever frame the box is given in); a similarity keeps
    distances up to its scale."""
    import torch

    rotation = torch.as_tensor(to_original.rotation, dtype=points.dtype, device=points.device)
    translation = torch.as_tensor(to_original.translation, dtype=points.dtype, device=points.device)
    box = torch.as_tensor(np.asarray(box, dtype=np.float64), dtype=points.dtype, device=points.device)
    original = to_original.scale * points @ rotation.T + translation
    q = (original - (box[0] + box[1]) / 2).abs() - (box[1] - box[0]) / 2
    outside = q.clamp_min(0).norm(dim=-1)
    inside = q.max(dim=-1).values.clamp_max(0)
    return (outside + inside) / to_original.scale


def ball_of_dataset_box(bounds: np.ndarray, rotation: np.ndarray) -> tuple[np.ndarray, float]:
    """The ball around a dataset's box, from ``bounds`` (2, 3): the normalised frame's axis-aligned
    box of that box after the normalisation's ``rotation`` (3, 3), which is larger than the box
    itself unless the rotation is axis-aligned. Its half-extents are ``|R| e`` for the box's own
    half-extents ``e``; solving for ``e >= 0`` gives back the box's ball (the very ball the poses
    stage normalised), else (no consistent ``e``) the ball around ``bounds``."""
    center, outer = ball_around_box(*bounds)
    e = _box_half_extents(np.asarray(bounds, dtype=np.float64), rotation)
    return (center, float(min(outer, np.linalg.norm(e)))) if e is not None else (center, outer)


def parse_box(values: Sequence[float], key: str = "roi_box") -> np.ndarray:
    """``[xmin, ymin, zmin, xmax, ymax, zmax]`` -> (2, 3); a ConfigError naming ``key`` otherwise."""
    try:
        box = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be 6 numbers [xmin, ymin, zmin, xmax, ymax, zmax] in the units of "
                          f"transforms.json's source, got {values!r}") from None
    if box.shape != (6,) or not np.isfinite(box).all():
        raise ConfigError(f"{key} must be 6 finite numbers [xmin, ymin, zmin, xmax, ymax, zmax], got {list(values)!r}")
    box = box.reshape(2, 3)
    if not (box[1] > box[0]).all():
        raise ConfigError(f"{key}: each max must exceed its min ([xmin, ymin, zmin, xmax, ymax, zmax]), "
                          f"got {box.reshape(-1).tolist()}")
    return box


def roi_from_box(box: np.ndarray, normalization: Similarity) -> RegionOfInterest:
    """box (2, 3) in ORIGINAL units -> the ball around its 8 corners in the normalised frame."""
    c = normalization.apply_points(box_corners(box))
    center = c.mean(0)  # a similarity keeps the box's centre the centre of the moved corners
    radius = float(np.linalg.norm(c - center, axis=1).max())
    return RegionOfInterest(center, radius, "box", f"roi_box {box.reshape(-1).tolist()} (original units)",
                            box=np.asarray(box, dtype=np.float64))


def _half_fov(intrinsics) -> float:
    """The half-angle of the largest cone around the optical axis inside the image (radians)."""
    k = intrinsics
    return float(min(np.arctan2(k.cx, k.fx), np.arctan2(k.width - k.cx, k.fx),
                     np.arctan2(k.cy, k.fy), np.arctan2(k.height - k.cy, k.fy)))


def _perspective(intrinsics_list) -> bool:
    return all(k is not None and k.model != "equirect" and k.fx > 0 and k.fy > 0 for k in intrinsics_list)


def in_view_counts(points: np.ndarray, c2w: np.ndarray, intrinsics_list) -> np.ndarray:
    """(M,) how many of the cameras (N, 4, 4) see each point (M, 3) inside their image, in front."""
    counts = np.zeros(len(points), dtype=np.int64)
    for pose, k in zip(c2w, intrinsics_list):
        uv, in_front = project_points(points, pose, k)
        counts += in_front & (uv[:, 0] >= 0) & (uv[:, 0] <= k.width) & (uv[:, 1] >= 0) & (uv[:, 1] <= k.height)
    return counts


def project_points(points: np.ndarray, c2w: np.ndarray, k) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions uv (M, 2) of points (M, 3) in a pinhole camera (c2w (4, 4), intrinsics
    ``k``), and whether each is in front of it (M,) bool (uv is meaningless where it is not)."""
    pc = (np.asarray(points, dtype=np.float64) - c2w[:3, 3]) @ c2w[:3, :3]  # world -> camera (OpenCV): R^T (x - o)
    z = pc[:, 2]
    zs = np.where(z > 1e-9, z, 1.0)
    return np.stack([k.fx * pc[:, 0] / zs + k.cx, k.fy * pc[:, 1] / zs + k.cy], 1), z > 1e-9


def roi_from_points(points: np.ndarray, c2w: np.ndarray, intrinsics_list, margin: float) -> Optional[RegionOfInterest]:
    """The ball around the robust box of the sparse points (M, 3) that at least half the
    cameras see; None when fewer than 8 such points remain."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if _perspective(intrinsics_list) and len(c2w):
        seen = in_view_counts(points, c2w, intrinsics_list) >= max(1, int(np.ceil(len(c2w) / 2)))
        kept = points[seen]
    else:
        kept = points
    if len(kept) < 8:
        return None
    lo, hi = np.percentile(kept, POINT_PERCENTILE, axis=0), np.percentile(kept, 100 - POINT_PERCENTILE, axis=0)
    center, radius = ball_around_box(lo, hi)
    return RegionOfInterest(center, radius * (1 + margin), "points",
                            f"{len(kept)} of {len(points)} sparse points seen by >= half the cameras, "
                            f"{POINT_PERCENTILE:g}-{100 - POINT_PERCENTILE:g} percentile box, margin {margin:g}")


def camera_arrays(scene, idx: Sequence[int]) -> tuple[np.ndarray, list]:
    """c2w (N, 4, 4) and intrinsics of the frames ``idx`` of a posed scene."""
    return np.stack([scene.frames[i].c2w for i in idx]), [scene.frames[i].intrinsics for i in idx]


def points_box(points: np.ndarray, c2w: np.ndarray, intrinsics_list, margin: float, min_views: int = 2,
               percentile: float = 1.0) -> Optional[np.ndarray]:
    """The box (2, 3, the points' frame) of what the cameras saw of a scene seen from inside: the
    sparse points (M, 3) inside the view of at least ``min_views`` cameras (N, 4, 4), from the
    ``percentile`` to the ``100 - percentile`` percentile on each axis, grown by ``margin`` of its
    size. It holds the street's facades and ground but not the sky over them. None for fewer than
    8 such points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if _perspective(intrinsics_list) and len(c2w):
        points = points[in_view_counts(points, c2w, intrinsics_list) >= min_views]
    if len(points) < 8:
        return None
    lo, hi = np.percentile(points, percentile, axis=0), np.percentile(points, 100 - percentile, axis=0)
    grow = margin * (hi - lo)
    return np.stack([lo - grow, hi + grow])


def roi_from_cameras(c2w: np.ndarray, intrinsics_list, margin: float) -> Optional[RegionOfInterest]:
    """The cameras' common view: centre where the optical axes meet (least squares), radius the
    median over cameras of the largest ball there inside each field of view; None for fewer than
    two perspective cameras, or when the axes meet behind most of them."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if len(c2w) < 2 or not _perspective(intrinsics_list):
        return None
    center = focus_point(c2w)
    offsets = center - c2w[:, :3, 3]
    distance = np.linalg.norm(offsets, axis=1)
    cos_off = np.einsum("ij,ij->i", offsets, c2w[:, :3, 2]) / np.maximum(distance, 1e-12)
    off_axis = np.arccos(np.clip(cos_off, -1, 1))
    half_fov = np.array([_half_fov(k) for k in intrinsics_list])
    fits = half_fov - off_axis
    ok = (fits > 0) & (distance > 1e-9)
    if ok.sum() < max(2, len(c2w) // 2):  # most cameras do not look at the meeting point
        return None
    radius = float(np.median(distance[ok] * np.sin(fits[ok])))
    return RegionOfInterest(center, radius * (1 + margin), "cameras",
                            f"optical axes of {len(c2w)} cameras meet there (least squares); radius: median "
                            f"ball inside {int(ok.sum())} fields of view, margin {margin:g}")


def choose_roi(mode: str, scene, normalization: Similarity, sphere_radius: float, points: Optional[np.ndarray] = None,
               box: Optional[Sequence[float]] = None, margin: float = 0.1, cameras: Optional[list[int]] = None
               ) -> RegionOfInterest:
    """The region of interest of a posed, normalised ``scene`` (see the module docstring).
    ``sphere_radius``: the ball of ``roi=sphere`` (the model's own radius). ``points``: sparse
    points (M, 3), normalised frame. ``box``: 6 numbers, original units (``roi=box``).
    ``cameras``: the frames to use (the training views; default all)."""
    if mode not in ROI_MODES:
        raise ConfigError(f"roi must be one of {', '.join(ROI_MODES)}, got {mode!r}")
    if not margin >= 0:
        raise ConfigError(f"roi_margin must be >= 0, got {margin}")
    if mode == "box" or (mode == "auto" and box is not None and len(box)):
        if box is None or len(box) == 0:
            raise ConfigError("roi=box needs roi_box=[xmin,ymin,zmin,xmax,ymax,zmax] (original units)")
        return roi_from_box(parse_box(box), normalization)
    sphere = RegionOfInterest(np.zeros(3), float(sphere_radius), "sphere", "the normalised frame's own ball")
    if mode == "sphere":
        return sphere
    if scene.bounds is not None:
        center, radius = ball_of_dataset_box(np.asarray(scene.bounds), normalization.rotation)
        return RegionOfInterest(center, radius, "bounds", "the dataset's box of the object",
                                box=dataset_box_original(scene.bounds, normalization))
    idx = list(range(len(scene.frames))) if cameras is None else list(cameras)
    c2w = np.stack([scene.frames[i].c2w for i in idx])
    intrinsics = [scene.frames[i].intrinsics for i in idx]
    found = roi_from_points(points, c2w, intrinsics, margin) if points is not None and len(points) else None
    found = found or roi_from_cameras(c2w, intrinsics, margin)
    if found is None:
        sphere.reason = "no sparse points and no common view of the cameras (panoramas?): the normalised ball"
        return sphere
    return found


def cameras_inside(roi: RegionOfInterest, centres: np.ndarray, mode: str) -> tuple[bool, str]:
    """Whether the scene is seen from inside its ROI (``mode`` auto: more than half of the camera
    centres (N, 3, normalised frame) stand inside the ball; on | off force it), and why, for the log."""
    if mode != "auto":
        return mode == "on", f"inside_out={mode}"
    inside = int((np.linalg.norm(np.asarray(centres, dtype=np.float64) - roi.center, axis=1) < roi.radius).sum())
    return inside * 2 > len(centres), f"{inside} of {len(centres)} training cameras inside the sphere (auto)"


def holding_cameras(roi: RegionOfInterest, centres: np.ndarray, margin: float) -> RegionOfInterest:
    """The ROI grown (same centre) until it holds every camera centre (N, 3, normalised frame) with
    ``margin`` of its radius to spare: a scene seen from inside (a street) must model what lies
    between each camera and the rest, which a ball that leaves cameras outside cannot."""
    farthest = float(np.linalg.norm(np.asarray(centres, dtype=np.float64) - roi.center, axis=1).max())
    radius = max(roi.radius, farthest * (1 + margin))
    if radius == roi.radius:
        return roi
    return replace(roi, radius=radius, reason=f"{roi.reason}; grown from {roi.radius:.3g} to hold all {len(centres)} "
                                              f"cameras (margin {margin:g})")


def move_scene(scene, sim: Similarity):
    """The scene with its cameras (and bounds) moved by ``sim`` and its depth scale updated."""
    if is_identity(sim):
        return scene
    frames = [replace(f, c2w=sim.apply_c2w(f.c2w)) if f.c2w is not None else f for f in scene.frames]
    bounds = None
    if scene.bounds is not None:
        corners = sim.apply_points(np.asarray(scene.bounds))
        bounds = np.stack([corners.min(0), corners.max(0)])
    meta = dict(scene.meta)
    recon = dict(meta.get("recon", {}))
    recon["depth_scale"] = recon.get("depth_scale", 1.0) * sim.scale
    meta["recon"] = recon
    return replace(scene, frames=frames, bounds=bounds, meta=meta)


__all__ = ["ROI_MODES", "RegionOfInterest", "ball_around_box", "box_distance", "cameras_inside", "choose_roi",
           "dataset_box_original", "holding_cameras", "in_view_counts", "is_identity", "project_points",
           "move_scene", "parse_box", "roi_from_box", "roi_from_cameras", "roi_from_points"]
