"""The viewer in a real browser (headless Chromium, WebGL on SwiftShader): the page loads without
console errors, the browser connects and receives renders of the field, the 3-D canvas is not
blank, and the camera the browser reports is the one the server set (so viser's camera convention
is what ``pipeline/viewer/camera.py`` assumes, in a real client).

``RECON_VIEWER_WORKSPACE=W`` shows that workspace instead of the analytic sphere and
``RECON_VIEWER_FIGURE=path.png`` saves the screenshot (the README's is made with both:
``bench/figures/viewer.png``)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.viewer.camera import viser_camera, viser_to_c2w
from pipeline.viewer.server import Viewer
from tests.viewer.browser import Browser, find_chromium

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="needs Chromium (Debian's `chromium` package; .ci/run installs it)")
WIDTH, HEIGHT = 1000, 560  # wide enough that the GUI panel leaves the centre free


def save_figure(image: np.ndarray, path: Path) -> None:
    """A small PNG for the README: 256 colours (~100 KB at 1000x560)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


@pytest.fixture
def workspace(request, tmp_path, monkeypatch):
    env = os.environ.get("RECON_VIEWER_WORKSPACE")
    if env:
        return Path(env)
    ws, _ = request.getfixturevalue("viewer_workspace")
    return ws.root


def test_the_viewer_in_a_real_browser(workspace, tmp_path):
    viewer = Viewer(workspace, port=0, device="cpu")
    try:
        with Browser(WIDTH, HEIGHT) as browser:
            browser.navigate(f"http://localhost:{viewer.port}/")
            # every level rendered and shown for the browser (64, 128, 256 px), then a moment to draw it
            refined = browser.pump(60, until=lambda: len(viewer.stats["render_s"].get(viewer.levels[-1], [])) >= 1)
            browser.pump(1.5)
            # the software-WebGL notice is Chromium-without-a-GPU's own; close it as a user would
            browser.evaluate("document.querySelectorAll('.mantine-Notification-closeButton, "
                             "button.mantine-CloseButton-root').forEach(b => b.click())")
            browser.pump(0.5)
            shot = browser.screenshot()
            first_view = dict(viewer.stats["views"])
            # what a click on a frustum does: the browser's camera moves to that camera, and the pose
            # the browser then reports back is that camera's (viser's client keeps our convention)
            client = next(iter(viewer.server.get_clients().values()))
            target = viewer.content.cameras[-1]
            viewer.look_through(client, target)
            reported = lambda: viewer.stats["views"][client.client_id]  # noqa: E731
            browser.pump(20, until=lambda: np.allclose(reported().position, target.c2w[:3, 3], atol=1e-4))
            through = reported()
            errors, console = browser.errors(), browser.console()
            webgl = [line for line in console if line.startswith("WebGL support")]
        stats = dict(viewer.stats)
        content = viewer.content
    finally:
        viewer.stop()
    figure = os.environ.get("RECON_VIEWER_FIGURE")
    save_figure(shot, Path(figure) if figure else tmp_path / "viewer.png")

    assert errors == [], errors
    assert webgl and webgl[0].startswith("WebGL support: true") and "contextCreationFailed: false" in webgl[0], webgl
    assert stats["connected"] >= 1 and stats["previews"] >= 3 and refined, stats
    assert stats["errors"] == []
    # not blank: many distinct colours and no colour covering most of the page
    assert shot.shape == (HEIGHT, WIDTH, 3)
    colours, counts = np.unique(shot.reshape(-1, 3), axis=0, return_counts=True)
    assert len(colours) > 500 and counts.max() < 0.9 * shot.shape[0] * shot.shape[1], (len(colours), counts.max())
    # the browser reports the camera the server set for new browsers: the scene centre is at the
    # middle of its view (viser's client and camera.py agree on the convention)
    view = next(iter(first_view.values()))
    cam = viser_camera(view.wxyz, view.position, view.fov_y, view.aspect, long_side=WIDTH)
    uv, depth = cam.project_world(torch.as_tensor(content.center[None], dtype=torch.float32))
    assert float(depth[0]) > 0
    np.testing.assert_allclose(uv[0].numpy(), [cam.width[0] / 2, cam.height[0] / 2], atol=0.01 * WIDTH)
    np.testing.assert_allclose(viser_to_c2w(through.wxyz, through.position), target.c2w, atol=1e-4)
    assert abs(through.fov_y - target.fov_y) < 1e-4
    # the canvas fills the page: the browser reports the page's aspect
    assert abs(view.aspect - WIDTH / HEIGHT) < 0.05
