"""Steps 4c and 4d of pose estimation: the principal point refined when the views support it, checked
on held-out tracks; then a last adjustment of the poses on the tracks that three or more views see.

COLMAP's mapper keeps the principal point at the image centre: with a few views it is poorly
determined and freeing it can make things worse. A real lens's principal point is often 10-20 px
off the centre of a 24-megapixel photo (Herz-Jesu-P8: 16 px), and the mapper then tilts every camera
to absorb the offset (~0.3 deg there). :func:`refine_principal_point` frees it only when a shared
camera has enough registered views, and keeps the result only when it predicts tracks that the
refinement did not see better than the fixed principal point does
(bench/RESULTS.md, poses on high-resolution photos).

The check: every ``holdout_every``-th 3D point is taken out; the model without them is
bundle-adjusted twice, principal point fixed and free; the held-out points are then
re-triangulated in each (poses and intrinsics held constant) and their reprojection errors
compared track by track (:func:`paired_gain`: the z-score of the mean decrease). Freeing the
principal point always lowers the error on the tracks it was fitted to; on held-out tracks it does
so, beyond chance, only when the offset is real (Herz-Jesu-P8: z = 6; the same photos cropped so
that the principal point is at the centre: z = 0.3).

Step 4d (:func:`adjust_on_long_tracks`): a two-view track has no redundancy, so a feature that is
not a fixed point of the surface (a blob on an occluding contour, a T-junction) triangulates into a
point that fits both of its views and pulls their poses. The mapper's bundle adjustments keep such
tracks; the last adjustment moves the poses on tracks of three or more views only
(``BundleAdjustmentOptions.min_track_length``) and then re-fits the shorter tracks' points with the
poses fixed, so that every point stays in the model (bench/RESULTS.md, poses at scale).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class PrincipalPointCheck:
    """What the check found (recorded in the report)."""

    camera_id: int
    views: int
    accepted: bool
    reason: str
    heldout_fixed_px: Optional[float] = None  # mean reprojection error of the held-out tracks, principal point fixed
    heldout_free_px: Optional[float] = None  # same, principal point free (None: not checked)
    shift_px: tuple[float, float] = (0.0, 0.0)  # principal point found minus the one before
    gain: float = 0.0  # relative decrease of the held-out error
    z: float = 0.0  # z-score of the per-track paired decrease (>= min_z to accept)


# a capture whose registered images are all within this many hops of each other in the covisibility
# graph is compact enough for Ceres' iterative Schur solver (see :func:`use_iterative_solver`)
ITERATIVE_MAX_DIAMETER = 4
# ... and only past this many images: below, a direct solve is as fast (incremental mapping of the
# built-in scene: iterative slower at 59 and 77 images, even at 101, faster from 132; bench/RESULTS.md)
ITERATIVE_MIN_IMAGES = 100
# two images are linked in the covisibility graph when they share this many 3D points
COVISIBILITY_MIN_SHARED = 15


def graph_diameter(num_nodes: int, edges: np.ndarray) -> float:
    """Hops across the undirected graph of ``num_nodes`` nodes and ``edges`` (E, 2) node indices: a
    double-sweep breadth-first search (a lower bound, exact on trees and near it on such graphs); inf
    when the graph is not connected."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import shortest_path

    if num_nodes < 2:
        return 0.0
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    graph = csr_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(num_nodes, num_nodes))
    hops = shortest_path(graph, directed=False, unweighted=True, indices=[0])[0]
    if not np.isfinite(hops).all():
        return float("inf")
    return float(shortest_path(graph, directed=False, unweighted=True, indices=[int(np.argmax(hops))])[0].max())


def covisibility_diameter(rec, min_shared: int = COVISIBILITY_MIN_SHARED) -> float:
    """Hops across the graph of ``rec``'s registered images, two images linked when they share
    ``min_shared`` or more 3D points (:func:`graph_diameter`)."""
    from scipy.sparse import csr_matrix, triu

    ids = sorted(rec.reg_image_ids())
    index = {image_id: k for k, image_id in enumerate(ids)}
    rows, cols = [], []
    for p, point in enumerate(rec.points3D.values()):
        for element in point.track.elements:
            if element.image_id in index:
                rows.append(index[element.image_id])
                cols.append(p)
    seen = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(ids), max(rec.num_points3D(), 1)))
    shared = triu(seen @ seen.T, k=1).tocoo()
    linked = shared.data >= min_shared
    return graph_diameter(len(ids), np.stack([shared.row[linked], shared.col[linked]], axis=1))


def use_iterative_solver(rec) -> tuple[bool, float]:
    """(whether ``rec``'s adjustments should use Ceres' iterative Schur solver, its
    :func:`covisibility_diameter`): past ``ITERATIVE_MIN_IMAGES`` and within ``ITERATIVE_MAX_DIAMETER``
    hops. COLMAP factors the reduced camera system by a sparse Cholesky up to 1000 images. Around an
    object that system is dense (every view shares points with most others): costly to factor, well
    conditioned, and conjugate gradients solve it 6x faster (the built-in scene at 400 views, diameter
    3: steps 4d-4g ~20% faster, at 1000 views ~45%). Along a walk it is banded: cheap to factor,
    ill-conditioned, and conjugate gradients took 9x as long (a 300-view corridor, diameter 18;
    bench/ba_solvers.py, bench/RESULTS.md)."""
    if rec.num_reg_images() <= ITERATIVE_MIN_IMAGES:
        return False, 0.0
    diameter = covisibility_diameter(rec)
    return diameter <= ITERATIVE_MAX_DIAMETER, diameter


def set_iterative_schur(options) -> None:
    """Make ``options`` (``pycolmap.BundleAdjustmentOptions``) solve with Ceres' iterative Schur
    solver past the dense solver's 50 images: COLMAP then picks it, with a Schur-Jacobi
    preconditioner, instead of its sparse Cholesky (kept up to 1000 images)."""
    options.ceres.max_num_images_direct_sparse_cpu_solver = options.ceres.max_num_images_direct_dense_cpu_solver + 1


def _ba_options(pycolmap, refine_pp: bool, refine_intrinsics: bool, num_threads: int,
                function_tolerance: float = 0.0, loss_scale_px: float = 0.0, iterative: bool = False):
    """COLMAP's bundle adjustment options; ``function_tolerance`` > 0 stops Ceres once an iteration
    lowers the cost by less than that fraction (COLMAP's 0 iterates until the gradient vanishes);
    ``loss_scale_px`` > 0 weighs the residuals by a Cauchy loss of that scale (COLMAP's 0: least
    squares); ``iterative``: Ceres' iterative Schur solver (past the dense solver's 50 images), not
    COLMAP's sparse Cholesky (:func:`use_iterative_solver`)."""
    options = pycolmap.BundleAdjustmentOptions()
    if loss_scale_px > 0:
        options.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
        options.ceres.loss_function_scale = float(loss_scale_px)
    options.print_summary = False
    options.refine_focal_length = refine_intrinsics
    options.refine_extra_params = refine_intrinsics
    options.refine_principal_point = refine_pp
    options.ceres.solver_options.num_threads = num_threads
    options.ceres.solver_options.function_tolerance = function_tolerance
    if iterative:
        set_iterative_schur(options)
    return options


def bundle_adjust(pycolmap, rec, refine_intrinsics: bool, num_threads: int = -1,
                  function_tolerance: float = 0.0, loss_scale_px: float = 0.0, iterative: bool = False) -> None:
    """A global bundle adjustment of ``rec`` in place (principal points as they are);
    ``function_tolerance``, ``loss_scale_px``, ``iterative``: as in :func:`_ba_options`."""
    pycolmap.bundle_adjustment(rec, _ba_options(pycolmap, False, refine_intrinsics, num_threads, function_tolerance,
                                                loss_scale_px, iterative))


def adjust_on_long_tracks(pycolmap, rec, min_track_length: int, refine_intrinsics: bool,
                          min_observations: int = 10, num_threads: int = -1, function_tolerance: float = 0.0,
                          loss_scale_px: float = 0.0, iterative: bool = False) -> dict:
    """Bundle-adjust ``rec`` in place with the poses moved by tracks of ``min_track_length`` views
    or more, then the shorter tracks' points alone. An image with fewer than ``min_observations``
    observations in such tracks keeps its pose (too few to move it). ``function_tolerance``,
    ``loss_scale_px``, ``iterative``: as in :func:`_ba_options`. Returns what was done: ``{"min_track_length",
    "points_used", "points", "held_images"}``."""
    long_points = [p for p in rec.point3D_ids() if rec.points3D[p].track.length() >= min_track_length]
    seen = dict.fromkeys(rec.reg_image_ids(), 0)
    for p in long_points:
        for element in rec.points3D[p].track.elements:
            seen[element.image_id] += 1
    held = sorted(rec.images[i].name for i, n in seen.items() if n < min_observations)
    options = _ba_options(pycolmap, False, refine_intrinsics, num_threads, function_tolerance, loss_scale_px, iterative)
    options.min_track_length = min_track_length
    if held:
        config = pycolmap.BundleAdjustmentConfig()
        for image_id, n in seen.items():
            config.add_image(image_id)
            if n < min_observations:
                config.set_constant_rig_from_world_pose(rec.images[image_id].frame_id)
        _run_config(pycolmap, rec, options, config)
    else:
        pycolmap.bundle_adjustment(rec, options)
    pycolmap.bundle_adjustment(rec, _points_only_options(pycolmap, num_threads, function_tolerance, loss_scale_px))
    return {"min_track_length": int(min_track_length), "points_used": len(long_points),
            "points": int(rec.num_points3D()), "held_images": held}


def _points_only_options(pycolmap, num_threads: int, function_tolerance: float = 0.0, loss_scale_px: float = 0.0):
    """Bundle adjustment that moves the 3D points only: a triangulation minimising reprojection error."""
    options = _ba_options(pycolmap, False, False, num_threads, function_tolerance, loss_scale_px)
    options.refine_rig_from_world = False
    options.refine_sensor_from_rig = False
    return options


def _copy(pycolmap, rec):
    return pycolmap.Reconstruction(rec)


def _heldout_errors(pycolmap, rec, heldout: list, num_threads: int) -> np.ndarray:
    """Re-triangulate the held-out tracks (``[(xyz, track)]``) in ``rec`` with its cameras fixed;
    (len(heldout),) their mean reprojection errors (px)."""
    model = _copy(pycolmap, rec)
    ids = [model.add_point3D(xyz, track) for xyz, track in heldout]
    pycolmap.bundle_adjustment(model, _points_only_options(pycolmap, num_threads))
    model.update_point_3d_errors()
    return np.array([model.points3D[i].error for i in ids], dtype=np.float64)


def check_principal_point(pycolmap, rec, camera_id: int, holdout_every: int, num_threads: int) -> tuple:
    """(error fixed, error free, the model refined with a free principal point but without the
    held-out tracks) for ``camera_id`` of ``rec`` (see the module docstring)."""
    point_ids = sorted(rec.point3D_ids())
    heldout_ids = set(point_ids[::holdout_every])
    train = _copy(pycolmap, rec)
    heldout = []
    for pid in heldout_ids:
        point = rec.points3D[pid]
        elements = [pycolmap.TrackElement(e.image_id, e.point2D_idx) for e in point.track.elements]
        heldout.append((np.array(point.xyz), pycolmap.Track(elements)))
        train.delete_point3D(pid)
    fixed = _copy(pycolmap, train)
    pycolmap.bundle_adjustment(fixed, _ba_options(pycolmap, False, True, num_threads))
    free = _copy(pycolmap, train)
    _adjust_with_free_principal_points(pycolmap, free, [camera_id], num_threads)
    return (_heldout_errors(pycolmap, fixed, heldout, num_threads), _heldout_errors(pycolmap, free, heldout, num_threads),
            free)


def _run_config(pycolmap, rec, options, config) -> None:
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.THREE_POINTS)
    adjuster = pycolmap.create_default_bundle_adjuster(options, config, rec)
    adjuster.solve()


def paired_gain(err_fixed: np.ndarray, err_free: np.ndarray) -> tuple[float, float]:
    """(relative gain of the mean error, z-score of the per-track paired difference) of freeing the
    principal point; errors (N,) of the same held-out tracks."""
    diff = err_fixed - err_free
    spread = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    gain = float(diff.mean() / max(err_fixed.mean(), 1e-12))
    z = float(diff.mean() / (spread / np.sqrt(len(diff)))) if spread > 0 else 0.0
    return gain, z


def refine_principal_point(pycolmap, rec, min_views: int, min_z: float, max_shift: float,
                           holdout_every: int = 5, num_threads: int = -1,
                           log: logging.Logger | None = None) -> list[PrincipalPointCheck]:
    """Free the principal point of each camera of ``rec`` seen by at least ``min_views``
    registered images, and keep it when held-out tracks are reprojected better, significantly
    (the per-track paired improvement's z-score >= ``min_z``), and the point moved by at most
    ``max_shift`` (a fraction of the image's long side). Cameras are checked one at a time, most
    views first; an accepted one is refined in ``rec`` at once (a bundle adjustment with every
    track, the principal points of the cameras accepted so far free), so that the next camera is
    checked against the better model. Returns one :class:`PrincipalPointCheck` per camera."""
    results = []
    views_of: dict[int, int] = {}
    for image_id in rec.reg_image_ids():
        cam = rec.images[image_id].camera_id
        views_of[cam] = views_of.get(cam, 0) + 1
    accepted: list[int] = []
    for camera_id in sorted(rec.cameras, key=lambda c: (-views_of.get(c, 0), c)):
        camera = rec.cameras[camera_id]
        views = views_of.get(camera_id, 0)
        if views < min_views:
            results.append(PrincipalPointCheck(camera_id, views, False, f"{views} views < {min_views}"))
            continue
        if rec.num_points3D() < 10 * holdout_every:
            results.append(PrincipalPointCheck(camera_id, views, False, f"{rec.num_points3D()} points: too few"))
            continue
        before = np.array([camera.principal_point_x, camera.principal_point_y])
        err_fixed, err_free, free = check_principal_point(pycolmap, rec, camera_id, holdout_every, num_threads)
        after = free.cameras[camera_id]
        shift = np.array([after.principal_point_x, after.principal_point_y]) - before
        gain, z = paired_gain(err_fixed, err_free)
        ok_gain = z >= min_z
        ok_shift = float(np.linalg.norm(shift)) <= max_shift * max(camera.width, camera.height)
        ok = ok_gain and ok_shift
        reason = ("held-out tracks reprojected better" if ok else
                  "held-out tracks not reprojected significantly better" if not ok_gain else "moved too far from the centre")
        results.append(PrincipalPointCheck(camera_id, views, ok, reason, float(err_fixed.mean()), float(err_free.mean()),
                                           (float(shift[0]), float(shift[1])), gain, z))
        if log is not None:
            log.info(f"principal point of camera {camera_id} ({views} views): held-out error {err_fixed.mean():.3f} px "
                     f"fixed, {err_free.mean():.3f} px free (z = {z:.1f}), shift ({shift[0]:+.1f}, {shift[1]:+.1f}) px: "
                     f"{'kept' if ok else 'rejected'}")
        if ok:
            accepted.append(camera_id)
            _adjust_with_free_principal_points(pycolmap, rec, accepted, num_threads)
    return sorted(results, key=lambda r: r.camera_id)


def _adjust_with_free_principal_points(pycolmap, rec, free_cameras: list[int], num_threads: int) -> None:
    """Bundle adjustment of ``rec`` in place with the principal points of ``free_cameras`` free and
    the other cameras' intrinsics constant."""
    options = _ba_options(pycolmap, True, True, num_threads)
    constant = [c for c in rec.cameras if c not in free_cameras]
    if not constant:
        pycolmap.bundle_adjustment(rec, options)
        return
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in rec.reg_image_ids():
        config.add_image(image_id)
    for c in constant:
        config.set_constant_cam_intrinsics(c)
    _run_config(pycolmap, rec, options, config)
