"""The built-in synthetic scene: its ground truth is self-consistent and reads back like any dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datasets import read_scene
from datasets.synthetic import (CAMERA_RADIUS, SyntheticConfig, analytic_sdf, generate, indoor_sdf,
                                object_cameras, one_torch_thread)
from pipeline.geometry.mesh import read_ply

SMALL = SyntheticConfig(views=8, size=96, seed=0, panoramas=True, panorama_count=3, panorama_width=128,
                        mesh_resolution=96)


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    """A small scene with panoramas, generated once for the module."""
    return generate(tmp_path_factory.mktemp("synthetic") / "scene", SMALL)


@pytest.fixture(scope="module")
def scene(scene_dir):
    return read_scene(scene_dir, background="none")


def world_points(scene, i):
    """The 3-D points seen by frame i (from its depth file) and their pixel (row, col)."""
    depth = scene.load_depth(i)
    rows, cols = np.nonzero(depth > 0)
    cams = scene.cameras([i], dtype=torch.float64)
    uv = torch.tensor(np.stack([cols + 0.5, rows + 0.5], -1), dtype=torch.float64)
    dirs_cam = cams.unproject(uv) * torch.tensor(depth[rows, cols], dtype=torch.float64)[:, None]
    c2w = cams.c2w[0]
    points = dirs_cam @ c2w[:3, :3].T + c2w[:3, 3]
    return points, rows, cols


def bilinear(image, u, v):
    """Sample image (H, W, ...) at continuous pixel coords (pixel centres at +0.5)."""
    x, y = u - 0.5, v - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    if image.ndim == 3:
        fx, fy = fx[:, None], fy[:, None]
    return ((1 - fx) * (1 - fy) * image[y0, x0] + fx * (1 - fy) * image[y0, x0 + 1]
            + (1 - fx) * fy * image[y0 + 1, x0] + fx * fy * image[y0 + 1, x0 + 1])


def test_reads_back_with_exact_cameras_and_splits(scene, scene_dir):
    intrinsics, poses = object_cameras(SMALL.views, SMALL.size)
    assert len(scene) == SMALL.views
    assert sorted(scene.split("test")) == sorted(i for i, f in enumerate(scene.frames) if f.name in ("r_0", "r_5"))
    for frame in scene.frames:
        i = int(frame.name.split("_")[1])
        assert frame.intrinsics == intrinsics
        np.testing.assert_allclose(frame.c2w, poses[i], atol=1e-9)
    meta = json.loads((scene_dir / "transforms_train.json").read_text())
    assert meta["camera_model"] == "PINHOLE" and meta["w"] == SMALL.size
    assert (scene_dir / meta["recon"]["mesh_gt"]).exists()
    bounds = np.asarray(scene.bounds)
    assert np.all(bounds[0] < -0.5) and np.all(bounds[1] > 0.4)


def test_cameras_look_at_the_origin_from_radius_4(scene):
    cams = scene.cameras()
    centres = scene.camera_centers()
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), CAMERA_RADIUS, rtol=1e-6)
    uv, depth = cams.project_world(torch.zeros(len(scene), 3))
    np.testing.assert_allclose(uv.numpy(), SMALL.size / 2, atol=1e-3)
    np.testing.assert_allclose(depth.numpy(), CAMERA_RADIUS, rtol=1e-5)
    # world up (+z) appears up in the image: a point above the origin projects above the centre
    uv_up, _ = cams.project_world(torch.tensor([[0.0, 0.0, 0.5]]).expand(len(scene), 3))
    assert torch.all(uv_up[:, 1] < SMALL.size / 2)


def test_masks_equal_depth_coverage_and_the_object_fills_the_view(scene):
    for i in range(len(scene)):
        mask, depth = scene.load_mask(i), scene.load_depth(i)
        np.testing.assert_array_equal(mask, depth > 0)
        assert 0.1 < mask.mean() < 0.7
        alpha = scene.load_rgba(i)[..., 3]
        assert np.abs((alpha > 0.5) != mask).mean() < 0.03  # anti-aliased alpha agrees with the mask
        normals = scene.load_normals(i)
        np.testing.assert_allclose(np.linalg.norm(normals[mask], axis=-1), 1.0, atol=1e-4)
        assert np.all(normals[~mask] == 0)


def test_depth_points_lie_on_the_analytic_surface(scene):
    for i in range(len(scene)):
        points, _, _ = world_points(scene, i)
        sdf = analytic_sdf(points.float()).abs()
        assert float(sdf.max()) < 2e-3, f"frame {i}: depth point off the surface by {float(sdf.max()):.4f} m"


def visible_from(centre: np.ndarray, points: torch.Tensor) -> np.ndarray:
    """Ground-truth visibility: the analytic surface is first hit at the point along the ray from ``centre``."""
    from datasets.synthetic_render import sphere_trace

    origin = torch.tensor(centre, dtype=torch.float64)
    offset = points - origin
    dist = offset.norm(dim=-1)
    rays_d = (offset / dist[:, None]).float()
    with one_torch_thread():  # many small ops: see one_torch_thread
        t, hit = sphere_trace(analytic_sdf, origin.float().expand_as(rays_d), rays_d, torch.zeros(len(dist)),
                              dist.float() + 1.0)
    return (hit & (t > dist.float() - 0.01)).numpy()


def test_two_views_agree_on_depth_and_colour(scene):
    """A point seen in view a and visible from view b projects into b onto the same surface and colour."""
    scene_size = 2.0  # the object's diameter in metres
    centres = scene.camera_centers()
    size = SMALL.size
    checked = 0
    for a in range(3):
        b = int(np.argsort(np.linalg.norm(centres - centres[a], axis=1))[1])  # the nearest other view
        points, rows, cols = world_points(scene, a)
        uv, z = scene.cameras([b], dtype=torch.float64).project_world(points)
        uv, z = uv.numpy(), z.numpy()
        depth_b = scene.load_depth(b)
        # bilinear sampling needs the 4 pixels around uv on one smooth surface (not across a depth edge)
        x0, y0 = np.floor(uv[:, 0] - 0.5).astype(int), np.floor(uv[:, 1] - 0.5).astype(int)
        ok = (x0 >= 0) & (y0 >= 0) & (x0 < size - 1) & (y0 < size - 1)
        x0, y0 = x0.clip(0, size - 2), y0.clip(0, size - 2)
        around = np.stack([depth_b[y0, x0], depth_b[y0, x0 + 1], depth_b[y0 + 1, x0], depth_b[y0 + 1, x0 + 1]], -1)
        ok &= (around.min(-1) > 0) & (around.max(-1) - around.min(-1) < 0.1)
        ok &= visible_from(centres[b], points)
        assert ok.sum() > 300
        err = np.abs(bilinear(depth_b, uv[ok, 0], uv[ok, 1]) - z[ok])
        assert np.median(err) < 0.001 * scene_size
        assert np.mean(err < 0.005 * scene_size) > 0.9, f"views {a}, {b}: {np.mean(err < 0.01):.1%} agree"

        image_a, image_b = scene.load_rgba(a)[..., :3], scene.load_rgba(b)[..., :3]
        colour_a = image_a[rows[ok], cols[ok]]
        colour_b = bilinear(image_b, uv[ok, 0], uv[ok, 1])
        diff = np.abs(colour_a - colour_b).mean(-1)
        # shading is view-independent: what differs is the resampling of the texture between views
        assert np.median(diff) < 0.05 and np.mean(diff) < 0.08, (np.median(diff), np.mean(diff))
        # and that is not trivially true: unrelated pixels of the object differ much more
        shuffled = image_b[np.roll(rows[ok], 7), np.roll(cols[ok], 7)]
        assert np.mean(np.abs(colour_a - shuffled).mean(-1)) > 2 * np.mean(diff)
        checked += ok.sum()
    assert checked > 1000


def test_gt_mesh_lies_on_the_sdf(scene_dir):
    verts, faces, colors = read_ply(scene_dir / "mesh_gt.ply")
    assert faces is not None and len(faces) > 1000 and colors is not None
    sdf = analytic_sdf(torch.tensor(verts, dtype=torch.float32)).abs()
    object_size = 2.0
    assert float(sdf.max()) < 0.01 * object_size
    info = json.loads((scene_dir / "scene_info.json").read_text())
    assert abs(np.linalg.norm(verts, axis=1).max() - info["object_radius"]) < 1e-6


def test_same_seed_same_bytes_and_other_seed_other_textures(tmp_path, scene_dir):
    config = SyntheticConfig(views=1, size=32, mesh_resolution=32)
    first = generate(tmp_path / "a", config)
    again = generate(tmp_path / "b", config)
    other = generate(tmp_path / "c", SyntheticConfig(views=1, size=32, mesh_resolution=32, seed=1))
    image = "test/r_0.png"
    assert (first / image).read_bytes() == (again / image).read_bytes()
    assert (first / image).read_bytes() != (other / image).read_bytes()
    # geometry does not depend on the seed
    np.testing.assert_array_equal(np.load(first / "depth/r_0.npy"), np.load(other / "depth/r_0.npy"))


def test_regenerating_with_the_same_config_is_skipped(tmp_path):
    config = SyntheticConfig(views=1, size=16, mesh_resolution=24)
    out = generate(tmp_path / "s", config)
    stamp = (out / "scene_info.json").stat().st_mtime_ns
    image = out / "test/r_0.png"
    image.write_bytes(b"untouched")
    generate(out, config)
    assert image.read_bytes() == b"untouched" and (out / "scene_info.json").stat().st_mtime_ns == stamp
    generate(out, SyntheticConfig(views=1, size=16, mesh_resolution=24, seed=3))  # new config: regenerated
    assert image.read_bytes() != b"untouched"


def test_panoramas_centres_and_depth_match_the_room(scene_dir):
    from datasets.nerfstudio import read_nerfstudio

    pano_dir = scene_dir / "panoramas"
    centres = json.loads((pano_dir / "centers.json").read_text())
    assert centres["up"] == [0.0, 0.0, 1.0]
    panos = read_nerfstudio(pano_dir)
    assert len(panos) == SMALL.panorama_count == len(centres["panoramas"])
    for frame, entry in zip(panos.frames, centres["panoramas"]):
        assert frame.intrinsics.model == "equirect" and frame.intrinsics.width == 2 * frame.intrinsics.height
        assert frame.image_path.name == entry["file"]
        np.testing.assert_allclose(frame.c2w[:3, 3], entry["center"], atol=1e-9)
        assert entry["center"][2] == pytest.approx(1.5)
        np.testing.assert_allclose(frame.c2w[:3, 1], [0, 0, -1], atol=1e-9)  # camera -y = world up
    for i in range(len(panos)):
        depth = panos.load_depth(i)
        assert np.all(depth > 0.2)  # a closed room: every pixel sees a surface
        cams = panos.cameras([i], dtype=torch.float64)
        rows, cols = np.mgrid[0:depth.shape[0]:3, 0:depth.shape[1]:3].reshape(2, -1)
        uv = torch.tensor(np.stack([cols + 0.5, rows + 0.5], -1), dtype=torch.float64)
        rays_o, rays_d, _ = cams.generate_rays(uv)
        points = rays_o + rays_d * torch.tensor(depth[rows, cols], dtype=torch.float64)[:, None]
        sdf = indoor_sdf(points.float()).abs()
        assert float(sdf.max()) < 0.01, f"panorama {i}: depth point off the surface by {float(sdf.max()):.4f} m"
        # the image's top row looks at the ceiling (z = 3 m)
        top = points.reshape(-1, 3)[: depth.shape[1] // 3]
        np.testing.assert_allclose(top[:, 2].numpy(), 3.0, atol=0.02)


def test_sparse_sdf_sampling_gives_the_same_mesh_as_the_full_grid():
    from datasets.synthetic import sample_sdf_sparse
    from pipeline.geometry.mesh import marching_cubes, sample_grid

    bounds = np.array([[-1.1] * 3, [1.1] * 3])
    full = sample_grid(analytic_sdf, bounds, 50)
    sparse = sample_sdf_sparse(analytic_sdf, bounds, 50)
    np.testing.assert_array_equal(np.sign(full), np.sign(sparse))
    near = np.abs(full) < 0.1
    np.testing.assert_allclose(sparse[near], full[near], atol=1e-5)
    assert np.abs(sparse[~near] - full[~near]).max() > 0.01  # far away it really is cheaper
    verts_full, faces_full = marching_cubes(full, bounds)
    verts_sparse, faces_sparse = marching_cubes(sparse, bounds)
    np.testing.assert_array_equal(faces_full, faces_sparse)
    np.testing.assert_allclose(verts_full, verts_sparse, atol=1e-5)
