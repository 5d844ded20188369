"""Convention checks on real data from ../shared/data (skipped with a reason when absent):
poses, intrinsics and pixel conventions must agree with what the images show."""
from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch

from datasets import read_scene
from pipeline.geometry.cameras import pixel_grid
from pipeline.evaluation.metrics import mask_iou


def _project(cams, points):
    """World points (P, 3) into every camera: pixels (N, P, 2), depth (N, P)."""
    n, p = len(cams), points.shape[0]
    per = cams[torch.arange(n).repeat_interleave(p)]
    uv, depth = per.project_world(points.repeat(n, 1))
    return uv.reshape(n, p, 2), depth.reshape(n, p)


def test_lego_origin_projects_inside_every_training_mask(shared_data):
    scene = read_scene(shared_data("lego-200"))
    train = scene.split("train")
    cams = scene.cameras(train, dtype=torch.float64)
    uv, depth = _project(cams, torch.zeros(1, 3, dtype=torch.float64))
    for k, i in enumerate(train):
        mask = scene.load_mask(i)
        u, v = uv[k, 0].tolist()
        assert depth[k, 0] > 0, f"{scene.frames[i].name}: the origin is behind the camera"
        assert mask[int(v), int(u)], f"{scene.frames[i].name}: origin projects to ({u:.1f}, {v:.1f}), off the object"


def test_lego_object_size_in_the_image_agrees_across_views(shared_data):
    """sqrt(mask area) * distance / focal is the object's size in scene units: it varies with the
    viewpoint (the model is not a sphere) but not by the factor a wrong focal or pose would give."""
    scene = read_scene(shared_data("lego-200"))
    train = scene.split("train")
    sizes = []
    for i in train:
        frame = scene.frames[i]
        area = scene.load_mask(i).sum()
        sizes.append(np.sqrt(area) * np.linalg.norm(frame.c2w[:3, 3]) / frame.intrinsics.fx)
    sizes = np.array(sizes)
    assert sizes.max() / sizes.min() < 1.6, sizes.round(3)


def test_lego_visual_hull_reprojects_onto_every_mask(shared_data):
    """Carve a voxel grid with all training silhouettes; the hull must cover each mask (IoU > 0.8).
    Any flipped axis, transposed image or wrong focal makes the hull empty or too small."""
    scene = read_scene(shared_data("lego-200"))
    train = scene.split("train")
    cams = scene.cameras(train, dtype=torch.float64)
    masks = torch.from_numpy(np.stack([scene.load_mask(i) for i in train]))
    res = 56
    axis = torch.linspace(-1.5, 1.5, res, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    uv, depth = _project(cams, grid)
    w, h = masks.shape[2], masks.shape[1]
    u, v = uv[..., 0].floor().long(), uv[..., 1].floor().long()
    inside = (depth > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    on_mask = torch.zeros_like(inside)
    n_idx = torch.arange(len(train))[:, None].expand_as(u)
    on_mask[inside] = masks[n_idx[inside], v[inside], u[inside]]
    hull = on_mask.all(0)
    assert hull.sum() > 100, "the silhouettes do not intersect: the cameras disagree"
    for k, i in enumerate(train):
        image = np.zeros((h, w), bool)
        image[v[k, hull].numpy(), u[k, hull].numpy()] = True
        image = scipy.ndimage.binary_closing(image, iterations=3) | image
        iou = mask_iou(image, masks[k].numpy())
        assert iou > 0.8, f"{scene.frames[i].name}: hull/mask IoU {iou:.3f}"


def test_temple_cameras_look_at_a_common_point(shared_data):
    scene = read_scene(shared_data("temple-ring"))
    centres = np.stack([f.c2w[:3, 3] for f in scene.frames])
    axes = np.stack([f.c2w[:3, 2] for f in scene.frames])  # OpenCV +z = viewing direction
    # least-squares point closest to all optical axes: sum (I - d d^T)(x - c) = 0
    A = sum(np.eye(3) - np.outer(d, d) for d in axes)
    b = sum((np.eye(3) - np.outer(d, d)) @ c for d, c in zip(axes, centres))
    target = np.linalg.solve(A, b)
    to_target = target - centres
    distance = np.linalg.norm(to_target, axis=1)
    angles = np.degrees(np.arccos(np.clip(np.sum(to_target / distance[:, None] * axes, 1), -1, 1)))
    assert angles.max() < 3.0, angles.round(2)
    assert scene.bounds is not None  # from the dataset's README
    lo, hi = scene.bounds
    margin = 0.25 * (hi - lo)
    assert np.all(target > lo - margin) and np.all(target < hi + margin), (target, scene.bounds)


def test_temple_object_lies_inside_the_projected_bounding_box(shared_data):
    """The bright object pixels (black background) fall inside the projection of the README's box."""
    scene = read_scene(shared_data("temple-ring"))
    lo, hi = scene.bounds
    corners = torch.tensor([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])],
                           dtype=torch.float64)
    cams = scene.cameras(dtype=torch.float64)
    uv, depth = _project(cams, corners)
    assert (depth > 0).all()
    for k in range(len(scene)):
        bright = scene.load_image(k).max(-1) > 0.25
        vs, us = np.nonzero(bright)
        u0, v0 = uv[k].min(0).values.tolist()
        u1, v1 = uv[k].max(0).values.tolist()
        inside = (us + 0.5 >= u0 - 2) & (us + 0.5 <= u1 + 2) & (vs + 0.5 >= v0 - 2) & (vs + 0.5 <= v1 + 2)
        assert bright.sum() > 1000 and inside.mean() > 0.97, (scene.frames[k].name, inside.mean())


# Landmark: centre of the kitchen sink window frame, located by eye on 2x crops (column in the
# full-resolution 1024 px panoramas, about +-2 px)
ZIND_SINK_WINDOW_U = {"pano_12": 382.0, "pano_11": 512.0, "pano_10": 620.0, "pano_16": 841.0}


def _zind_frame(scene, suffix):
    return next(i for i, f in enumerate(scene.frames) if f.name.endswith(suffix))


def test_zind_poses_reproject_a_landmark_seen_in_other_panoramas(shared_data):
    """Triangulate the sink window from panoramas 12 and 11 (horizontal rays at camera height)
    and reproject it into panoramas 10 and 16: within 5 degrees of where it is seen."""
    scene = read_scene(shared_data("zind-room06"))
    cams = scene.cameras(dtype=torch.float64)
    rays = {}
    for name in ("pano_12", "pano_11"):
        i = _zind_frame(scene, name)
        o, d, _ = cams[i].generate_rays(torch.tensor([[ZIND_SINK_WINDOW_U[name], 256.0]], dtype=torch.float64))
        rays[name] = (o[0, :2].numpy(), d[0, :2].numpy())
    (o1, d1), (o2, d2) = rays["pano_12"], rays["pano_11"]
    t = np.linalg.solve(np.stack([d1, -d2], 1), o2 - o1)
    assert (t > 0).all(), "the two rays meet behind a camera"
    landmark = torch.tensor([[*(o1 + t[0] * d1), scene.frames[0].c2w[2, 3]]], dtype=torch.float64)
    for name in ("pano_10", "pano_16"):
        i = _zind_frame(scene, name)
        uv, _ = cams[i].project_world(landmark)
        error_deg = abs(float(uv[0, 0]) - ZIND_SINK_WINDOW_U[name]) / 1024 * 360
        assert error_deg < 5.0, f"{name}: landmark reprojected {error_deg:.1f} deg from where it is seen"


def test_zind_panoramas_are_upright_at_camera_height(shared_data):
    scene = read_scene(shared_data("zind-room06"))
    cams = scene.cameras(dtype=torch.float64)
    top = pixel_grid(1024, 512, dtype=torch.float64)[:1024:97]  # points on the top row
    for i in range(len(scene)):
        _, d, _ = cams[i].generate_rays(top)
        assert (d[:, 2] > 0.99).all()  # the top row looks up (+z)
    heights = scene.camera_centers()[:, 2]
    assert np.allclose(heights, 1.435, atol=0.01)
