"""Step 4g of pose estimation: the model's 3D points tracked by patch alignment into the registered
views where SIFT gave them no keypoint.

A view seen from an unusual angle (below an object, at its edge) keeps few observations, yet most
of the points that it sees are in the model: in the built-in scene's 50-view set a view from below
the base observes 29 of the 221 model points that are visible in it. SIFT did not find them there
(a blob at another scale, low contrast) or their matches failed the ratio test, so descriptor
matching (steps 4d, 4f) cannot add them. Patch alignment can, as KLT tracks points without
detecting them: each candidate point's reference patch (its track's view nearest the track's mean
viewing direction, as step 4e) is aligned at the point's projection under an affine warp with gain
and bias (:func:`pipeline.sfm.keypoints.align_patches`), starting from the warp of the plane through
the point that faces the reference camera. An alignment that correlates by 0.9 or more within
1.5 px of the projection becomes an observation: a keypoint appended to the image's keypoints. It
sees the same surface point as the reference's keypoint, like every aligned observation of step 4e.
SIFT's keypoints stay each image's first ones, in their order. The working COLMAP database keeps
only those; the exported copy gets the new ones appended too
(:func:`pipeline.sfm.database.append_model_keypoints`), so that COLMAP accepts the model with it.
"""
from __future__ import annotations

import numpy as np

from pipeline.sfm.keypoints import _TrackObservations, align_patches


def _segment_starts(lengths: np.ndarray) -> np.ndarray:
    return np.r_[0, np.cumsum(lengths)[:-1]]


def track_points_into_views(pycolmap, rec, shapes: dict, images: dict, max_angle_deg: float = 45.0,
                            per_view: int | None = None, margin_px: float = 2.0, half: int = 4) -> dict:
    """Add to ``rec`` (in place) the observations of its points in the registered views that do
    not observe them yet, found by patch alignment.

    Candidates: points in front of the view, projecting at least ``margin_px`` plus the patch's
    half width inside the image, and within ``max_angle_deg`` of a view that observes them (seen
    from nearby, so likely visible and not foreshortened beyond an affine warp); at most
    ``per_view`` per view, the nearest in angle first (None: the median registered view's
    observations, so that the work grows with the model's observations). shapes, images: as
    :func:`pipeline.sfm.keypoints.read_frames_and_images`; ``shapes`` gains the new keypoints'
    affine frames (the reference's, carried by the warp). Returns ``{"candidates", "added",
    "per_view", "max_angle_deg"}``."""
    registered = sorted(rec.reg_image_ids())
    if per_view is None:
        per_view = int(np.median([rec.images[i].num_points3D for i in registered])) if registered else 0
    report = {"candidates": 0, "added": 0, "per_view": int(per_view), "max_angle_deg": float(max_angle_deg)}
    if rec.num_points3D() == 0 or per_view <= 0:
        return report
    obs = _TrackObservations(rec, shapes, reference="central")
    n_points, xyz, rays, mean_ray, ref = len(obs.point_ids), obs.xyz, obs.rays, obs.mean_ray, obs.ref_of_track
    centres = {i: rec.images[i].projection_center() for i in registered}
    by_track = np.argsort(obs.track, kind="stable")
    length = np.bincount(obs.track, minlength=n_points)
    track_start = _segment_starts(length)
    ref_img, ref_xy = obs.image[ref], obs.xy[ref]
    probes = _probes(rec, xyz, ref_img, ref_xy)
    by_image = np.argsort(obs.image, kind="stable")
    image_bounds = np.searchsorted(obs.image[by_image], [*registered, np.iinfo(np.int64).max])
    cos_max = np.cos(np.radians(max_angle_deg))
    # first (cheap) the points far from their track's mean viewing direction are left out, then
    # the exact test against each observing view
    cos_prefilter = np.cos(np.radians(min(2 * max_angle_deg, 180.0)))
    found_img, found_track, found_uv, found_warp = [], [], [], []
    for k, image_id in enumerate(registered):
        camera, pose = rec.cameras[rec.images[image_id].camera_id], rec.images[image_id].cam_from_world().matrix()
        seen = np.zeros(n_points, dtype=bool)
        seen[obs.track[by_image[image_bounds[k]:image_bounds[k + 1]]]] = True
        ray = xyz - centres[image_id]
        ray /= np.linalg.norm(ray, axis=1, keepdims=True)
        in_camera = xyz @ pose[:, :3].T + pose[:, 3]
        idx = np.flatnonzero(~seen & (in_camera[:, 2] > 1e-6) & (np.einsum("ij,ij->i", ray, mean_ray) >= cos_prefilter))
        if not len(idx):
            continue
        uv = np.asarray(camera.img_from_cam(in_camera[idx]), dtype=np.float64).reshape(-1, 2)
        m = margin_px + half + 1
        inside = np.all(np.isfinite(uv), 1) & (uv[:, 0] >= m) & (uv[:, 1] >= m) & \
            (uv[:, 0] <= camera.width - m) & (uv[:, 1] <= camera.height - m)
        idx, uv = idx[inside], uv[inside]
        if not len(idx):
            continue
        # the largest cosine between this view's ray and the rays of the views that observe the point
        counts = length[idx]
        owner = np.repeat(np.arange(len(idx)), counts)
        member = by_track[np.repeat(track_start[idx], counts) + np.arange(counts.sum()) - np.repeat(_segment_starts(counts), counts)]
        nearest = np.maximum.reduceat(np.einsum("ij,ij->i", rays[member], ray[idx][owner]), _segment_starts(counts))
        near = nearest >= cos_max
        idx, uv, nearest = idx[near], uv[near], nearest[near]
        if len(idx) > per_view:
            keep = np.sort(np.argsort(-nearest, kind="stable")[:per_view])
            idx, uv = idx[keep], uv[keep]
        if not len(idx):
            continue
        projected = [np.asarray(camera.img_from_cam(p[idx] @ pose[:, :3].T + pose[:, 3]), dtype=np.float64).reshape(-1, 2)
                     for p in probes]
        found_img.append(np.full(len(idx), image_id))
        found_track.append(idx)
        found_uv.append(uv)
        found_warp.append(np.stack([projected[0] - projected[1], projected[2] - projected[3]], axis=-1))
    if not found_img:
        return report
    img, track, uv, warp = (np.concatenate(v) for v in (found_img, found_track, found_uv, found_warp))
    shift, ok = align_patches(images, img, uv, warp, ref_img[track], ref_xy[track], half=half)
    ref_frames = obs.frames[ref[track]]
    for image_id in np.unique(img[ok]):
        which = np.flatnonzero(ok & (img == image_id))
        points2D = rec.images[int(image_id)].points2D
        first = len(points2D)
        for n in which:
            points2D.append(pycolmap.Point2D(uv[n] + shift[n]))
        for j, n in enumerate(which):
            rec.add_observation(int(obs.point_ids[track[n]]), pycolmap.TrackElement(int(image_id), first + j))
        shapes[int(image_id)] = np.concatenate([shapes[int(image_id)][:first], warp[which] @ ref_frames[which]])
    report.update(candidates=int(len(img)), added=int(ok.sum()))
    return report


def _probes(rec, xyz: np.ndarray, ref_img: np.ndarray, ref_xy: np.ndarray) -> np.ndarray:
    """(4, P, 3) world points on the plane through each point ``xyz`` (P, 3) that faces its
    reference camera, seen half a pixel right, left, down and up of the reference keypoint
    ``ref_xy`` (P, 2) in image ``ref_img`` (P,): projected into another view, their differences are
    the columns of the warp from reference pixels to that view's pixels."""
    probes = np.zeros((4, len(xyz), 3))
    for image_id in np.unique(ref_img):
        s = np.flatnonzero(ref_img == image_id)
        camera, pose = rec.cameras[rec.images[int(image_id)].camera_id], rec.images[int(image_id)].cam_from_world().matrix()
        depth = (xyz[s] @ pose[:, :3].T + pose[:, 3])[:, 2:3]
        for k, offset in enumerate(([0.5, 0.0], [-0.5, 0.0], [0.0, 0.5], [0.0, -0.5])):
            normalised = np.asarray(camera.cam_from_img(ref_xy[s] + np.asarray(offset)), dtype=np.float64).reshape(-1, 2)
            probes[k, s] = (np.c_[normalised, np.ones(len(s))] * depth - pose[:, 3]) @ pose[:, :3]
    return probes
