"""What the viewer shows of a workspace: one frustum per posed image with its thumbnail, the sparse
points, the mesh moved into the normalised frame, the field rendered from a browser's camera; a
workspace with only some stages done shows what exists; a folder with nothing is one clear error."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.runner.workspace import WorkspaceError
from pipeline.viewer.camera import c2w_to_viser
from pipeline.viewer.render import View
from pipeline.viewer.scene import load_content
from pipeline.viewer.server import Viewer
from tests.analytic_sphere import CENTER, RADIUS


@pytest.fixture
def viewer(viewer_workspace):
    ws, model = viewer_workspace
    v = Viewer(ws.root, port=0, device="cpu")
    yield v
    v.stop()


def test_the_scene_has_every_camera_the_points_and_the_mesh(viewer, viewer_workspace):
    ws, _ = viewer_workspace
    frames = json.loads(ws.transforms_path.read_text())["frames"]
    cameras = sorted(n for n in viewer.nodes if n.startswith("/cameras/"))
    assert len(cameras) == len(frames) == 8
    assert {"/points", "/mesh"} <= set(viewer.nodes)
    assert viewer.method == "idr" and viewer.content.notes == []
    # each frustum sits at its camera, with the image as its thumbnail (96 px on the longer side)
    sim = ws.normalization()
    for cam in viewer.content.cameras:
        handle = viewer.nodes[f"/cameras/{cam.name}"]
        np.testing.assert_allclose(handle.position, cam.c2w[:3, 3], atol=1e-6)
        assert cam.thumbnail is not None and cam.thumbnail.shape == (40, 40, 3)  # images smaller than 96 px stay
        assert np.ptp(cam.thumbnail) > 50  # the sphere on white, not a blank image
    # the mesh (written in original units) is shown in the normalised frame of the cameras
    verts = viewer.content.mesh[0]
    radii = np.linalg.norm(verts - sim.apply_points(CENTER[None])[0], axis=1)
    assert abs(np.median(radii) - RADIUS * sim.scale) < 0.05 * RADIUS * sim.scale
    # with a field to render, the mesh starts hidden (it would cover the render)
    assert viewer.nodes["/mesh"].visible is False and viewer.nodes["/points"].visible is True


def test_the_field_rendered_from_a_viser_camera_shows_the_sphere_where_it_is(viewer, viewer_workspace):
    ws, model = viewer_workspace
    cam = viewer.content.cameras[0]
    wxyz, position = c2w_to_viser(cam.c2w)
    out = viewer.render(View(tuple(wxyz), tuple(position), cam.fov_y, 16 / 9), 64)
    rgb, depth = out["rgb"], out["depth"]
    assert rgb.shape == (36, 64, 3) and rgb.dtype == np.uint8 and depth.shape == (36, 64)
    # the cameras look at the sphere's centre: the middle pixel is on the sphere, at the distance
    # of its near side; the corners are the white background, at the far depth
    centre = model.center.numpy()
    expected = np.linalg.norm(cam.c2w[:3, 3] - centre) - model.radius
    assert abs(depth[18, 32] - expected) < 0.02 * expected
    assert rgb[18, 32].min() < 230 and (rgb[0, 0] >= 250).all() and depth[0, 0] >= 1e3
    # the same camera at half the resolution: the sphere covers the same share of the image
    small = viewer.render(View(tuple(wxyz), tuple(position), cam.fov_y, 16 / 9), 32)["depth"]
    assert abs((small < 1e3).mean() - (depth < 1e3).mean()) < 0.05


def test_a_workspace_with_only_poses_shows_the_cameras(viewer_workspace):
    ws, _ = viewer_workspace
    shutil.rmtree(ws.root / "idr")
    (ws.root / "poses" / "points.ply").unlink()
    v = Viewer(ws.root, port=0, device="cpu")
    try:
        assert v.method is None and len(v.content.cameras) == 8
        assert all(n.startswith("/cameras/") for n in v.nodes)
        assert any("no mesh" in n for n in v.content.notes) and any("no trained field" in n for n in v.content.notes)
        assert v.render(View((1, 0, 0, 0), (0, 0, -3), 1.0, 1.0), 64) is None
    finally:
        v.stop()


def test_a_folder_with_nothing_to_show_is_one_clear_error(tmp_path):
    with pytest.raises(WorkspaceError, match="not a workspace folder"):
        load_content(tmp_path / "missing")
    with pytest.raises(WorkspaceError, match="nothing to show yet"):
        load_content(tmp_path)


def test_asking_for_a_field_the_workspace_lacks_names_what_it_has(viewer_workspace):
    ws, _ = viewer_workspace
    with pytest.raises(WorkspaceError, match="no completed nerf run; trained here: idr"):
        Viewer(ws.root, port=0, device="cpu", method="nerf")
