"""The viewer on a really trained NeRF (the tiny one of tests/test_cli_chain.py, trained in seconds): seen from a test camera, through viser's camera convention, it renders exactly
the image the nerf stage wrote for that camera, and the viewer's previews (coarser march steps)
stay close to it."""
from __future__ import annotations

import math

import imageio.v3 as iio
import numpy as np
import pytest

from pipeline.runner.workspace import Workspace
from pipeline.viewer.camera import c2w_to_viser, vertical_fov
from pipeline.viewer.render import PREVIEW_STEP_SCALE, View
from pipeline.viewer.server import Viewer
from tests.test_cli_chain import SIZE, TINY_NERF, VIEWS


@pytest.fixture(scope="module")
def tiny_nerf_workspace(tmp_path_factory):
    """The synthetic scene, posed and trained with test_cli_chain's tiny NeRF settings, in this process
    (three fresh processes would cost more than the training)."""
    from datasets.synthetic import SyntheticConfig, generate
    from pipeline.runner.stage import run_stage
    from stages import nerf, poses

    root = tmp_path_factory.mktemp("viewer nerf")
    generate(root / "scene", SyntheticConfig(views=VIEWS, size=SIZE))
    ws = Workspace(root / "W")
    run_stage(poses.STAGE, ws, poses.STAGE.load_config(overrides=[f"data={root / 'scene'}"]))
    run_stage(nerf.STAGE, ws, nerf.STAGE.load_config(overrides=TINY_NERF + ["max_steps=200", "max_time_s=60"]))
    return ws.root


def test_from_a_test_camera_the_viewer_renders_what_the_nerf_stage_rendered(tiny_nerf_workspace):
    ws = Workspace(tiny_nerf_workspace, create=False)
    scene = ws.load_scene()
    viewer = Viewer(ws.root, port=0, device="cpu", thumbnails=False, levels=(16, SIZE))
    try:
        assert viewer.method == "nerf"
        for i in scene.splits["test"]:
            frame = scene.frames[i]
            k = frame.intrinsics
            wxyz, position = c2w_to_viser(frame.c2w)  # as viser holds a camera
            view = View(tuple(wxyz), tuple(position), vertical_fov(k), k.width / k.height)
            ours = viewer.render(view, max(k.width, k.height))  # the sharpest level: the model's full march
            stage = iio.imread(ws.root / "nerf" / "renders" / f"{frame.name}.png")[..., :3]
            assert ours["rgb"].shape == stage.shape
            assert np.abs(ours["rgb"].astype(int) - stage).max() <= 1  # the same image, up to rounding
            quick = viewer.render(view, 16)  # a preview: coarser steps, a quarter of the pixels
            assert quick["rgb"].shape == (16, 16, 3)
            small = stage.reshape(16, 2, 16, 2, 3).mean((1, 3))
            assert np.abs(quick["rgb"] - small).mean() < 12, np.abs(quick["rgb"] - small).mean()
    finally:
        viewer.stop()
    assert PREVIEW_STEP_SCALE > 1 and math.isfinite(PREVIEW_STEP_SCALE)
