"""The progressive render loop: a small image at once for each new camera, sharper ones once the
camera rests, a refinement abandoned when the camera moves again, a failed render reported and
not retried in a loop."""
from __future__ import annotations

import threading
import time

from pipeline.viewer.render import ProgressiveRenderer, View


def view(x: float) -> View:
    return View((1.0, 0.0, 0.0, 0.0), (x, 0.0, -3.0), 1.0, 1.0)


class Recorder:
    """A fake renderer: takes ``seconds`` per image (checking ``cancelled`` as a real one does between
    bands) and records what it rendered and what was shown."""

    def __init__(self, seconds: float = 0.02, fail: bool = False):
        self.seconds, self.fail = seconds, fail
        self.rendered, self.shown, self.errors = [], [], []
        self.lock = threading.Lock()

    def render(self, v, side, cancelled):
        if self.fail:
            raise RuntimeError("boom")
        for _ in range(4):
            time.sleep(self.seconds / 4)
            if cancelled():
                return None
        with self.lock:
            self.rendered.append((v.position[0], side))
        return {"side": side, "x": v.position[0]}

    def show(self, image, side, seconds, error=None):
        with self.lock:
            (self.errors if error else self.shown).append(error or (image["x"], side))


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_a_resting_camera_gets_every_level_in_order():
    rec = Recorder()
    r = ProgressiveRenderer(rec.render, rec.show, levels=(16, 32, 64), settle_s=0.05)
    try:
        r.update(view(0.0))
        assert wait_for(lambda: len(rec.shown) == 3)
        time.sleep(0.2)  # and nothing more while the camera rests
        assert rec.shown == [(0.0, 16), (0.0, 32), (0.0, 64)]
    finally:
        r.close()


def test_a_moving_camera_gets_quick_previews_and_only_its_last_view_is_refined():
    rec = Recorder(seconds=0.02)
    r = ProgressiveRenderer(rec.render, rec.show, levels=(16, 32, 64), settle_s=0.1)
    try:
        for i in range(10):  # a drag: a new camera every 30 ms, faster than the camera can rest
            r.update(view(float(i)))
            time.sleep(0.03)
        assert wait_for(lambda: (9.0, 64) in rec.shown)
        time.sleep(0.2)
        refined = [(x, side) for x, side in rec.shown if side > 16]
        assert refined == [(9.0, 32), (9.0, 64)], rec.shown
        assert len([s for s in rec.shown if s[1] == 16]) >= 3  # previews kept coming while it moved
    finally:
        r.close()


def test_a_new_camera_abandons_a_slow_refinement():
    rec = Recorder(seconds=0.4)
    r = ProgressiveRenderer(rec.render, rec.show, levels=(16, 64), settle_s=0.0)
    try:
        r.update(view(0.0))
        assert wait_for(lambda: (0.0, 16) in rec.shown)
        time.sleep(0.15)  # the 64-px render of view 0 is under way
        r.update(view(1.0))
        assert wait_for(lambda: (1.0, 64) in rec.shown)
        assert (0.0, 64) not in rec.rendered  # stopped at its next band, never finished
    finally:
        r.close()


def test_a_failing_render_is_reported_once_per_view_not_retried_forever():
    rec = Recorder(fail=True)
    r = ProgressiveRenderer(rec.render, rec.show, levels=(16, 32), settle_s=0.0)
    try:
        r.update(view(0.0))
        assert wait_for(lambda: rec.errors)
        time.sleep(0.2)
        assert rec.errors == ["RuntimeError: boom"] and rec.shown == []
    finally:
        r.close()


def test_close_ends_the_thread():
    rec = Recorder()
    r = ProgressiveRenderer(rec.render, rec.show)
    r.close()
    assert not r._thread.is_alive()


def test_no_image_to_show_ends_the_view_without_spinning():
    calls = []

    def render(v, side, cancelled):
        calls.append(side)
        return None  # the field is switched off

    r = ProgressiveRenderer(render, lambda *a, **k: None, levels=(16, 32), settle_s=0.0)
    try:
        r.update(view(0.0))
        time.sleep(0.2)
        assert calls == [16]
    finally:
        r.close()


def test_previews_of_a_nerf_march_coarser_steps_and_leave_the_model_as_it_was():
    import numpy as np
    import torch

    from pipeline.geometry.cameras import look_at
    from pipeline.viewer.camera import c2w_to_viser
    from pipeline.viewer.render import march_step_scale, render_view
    from tests.tiny_configs import build_nerf_model, tiny_nerf_config

    torch.manual_seed(0)
    model = build_nerf_model(tiny_nerf_config(), torch.tensor([[-1.0] * 3, [1.0] * 3])).eval()
    schedule = model.schedule
    with march_step_scale(model, 2.0):
        coarse = model.schedule
        assert coarse is not schedule and abs(float(coarse[-1]) - float(schedule[-1])) < 2 * 2 * model.step_size
        assert abs(len(coarse) / len(schedule) - 0.5) < 0.05
    assert model.schedule is schedule
    wxyz, position = c2w_to_viser(look_at([2.5, 0.5, 1.0], [0.0, 0.0, 0.0]))
    v = View(tuple(wxyz), tuple(position), 0.8, 1.0)
    full, quick = render_view(model, v, 24), render_view(model, v, 24, step_scale=2.0)
    assert model.schedule is schedule
    # the same field, integrated in longer steps: close to the full render (random weights, so not exact)
    assert np.abs(full["rgb"].astype(float) - quick["rgb"]).mean() < 6  # measured 2.3
    # a model without an occupancy schedule (IDR, analytic stand-ins) renders as it is
    plain = object()
    with march_step_scale(plain, 2.0):
        pass
