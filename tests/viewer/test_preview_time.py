"""How long the viewer's previews take on a trained field: the issue asks for a 128-px preview in
<= 0.5 s on a 2-core CPU. Timings on a shared machine swing several-fold with its load, so this
runs only on request, on a workspace you name (its newest trained field):

    RECON_VIEWER_WORKSPACE=outputs/demo/workspace-nerf python -m pytest -q -s tests/viewer/test_preview_time.py

It prints the best and median of several renders per size from the workspace's test cameras and
asserts the best 128-px render of each is within the target (best-of-N: other processes can only
slow a render down)."""
from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from pipeline.export.methods import load_model, trained_methods
from pipeline.runner.runtime import torch_threads
from pipeline.runner.workspace import Workspace
from pipeline.viewer.camera import c2w_to_viser, vertical_fov
from pipeline.viewer.render import LEVELS, PREVIEW_STEP_SCALE, View, render_view
from pipeline.viewer.server import RENDER_THREADS

TARGET_S = 0.5
REPEATS = 5


def preview_times(workspace, sides=(64, 128, 256), aspects=(1.0, 16 / 9), views: int = 3, repeats: int = REPEATS):
    """{(camera name, aspect, side): [seconds, ...]} for the newest trained field of ``workspace``,
    rendered from its first ``views`` test cameras on the CPU."""
    ws = Workspace(workspace, create=False)
    model = load_model(ws, trained_methods(ws)[0], torch.device("cpu"))
    scene = ws.load_scene()
    times = {}
    for i in (scene.splits.get("test") or list(range(len(scene))))[:views]:
        frame = scene.frames[i]
        wxyz, position = c2w_to_viser(frame.c2w)
        for aspect in aspects:
            view = View(tuple(wxyz), tuple(position), vertical_fov(frame.intrinsics), aspect)
            render_view(model, view, sides[0])  # warm-up: kernels, caches
            for side in sides:
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    # as the viewer does: previews below the sharpest level march coarser steps
                    with torch_threads(RENDER_THREADS):
                        render_view(model, view, side, step_scale=PREVIEW_STEP_SCALE if side < LEVELS[-1] else 1.0)
                    times.setdefault((frame.name, aspect, side), []).append(time.perf_counter() - t0)
    return times


@pytest.mark.skipif(not os.environ.get("RECON_VIEWER_WORKSPACE"),
                    reason="timing on request: set RECON_VIEWER_WORKSPACE to a workspace with a trained field")
def test_a_128_px_preview_takes_at_most_half_a_second():
    times = preview_times(os.environ["RECON_VIEWER_WORKSPACE"])
    for (name, aspect, side), t in sorted(times.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        print(f"{name:>12} aspect {aspect:.2f} {side:>4} px: best {min(t):.3f} s, median {statistics.median(t):.3f} s")
    slow = {k: min(t) for k, t in times.items() if k[2] == 128 and min(t) > TARGET_S}
    assert not slow, slow
