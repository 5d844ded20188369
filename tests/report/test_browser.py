"""The report in a real browser (headless Chromium, driven over the DevTools protocol: see
``tests/report/browser.py`` for why): it loads from ``file://`` with no console error and no
request outside its folder, every plot is drawn, and each one's data really drew pixels (the
plot's screenshot against the same plot with its traces made transparent, so axes and grid alone
do not count), every picture decodes. Skipped where no Chromium is installed."""
from __future__ import annotations

import numpy as np
import pytest

from tests.report.browser import Browser, find_chromium, pixel_stats, save_small_png

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="no chromium on PATH (Debian: apt-get install chromium)")

PLOTS_JS = """Array.from(document.querySelectorAll('.js-plotly-plot')).map((d, i) => {
  const r = d.getBoundingClientRect();
  return {i: i, x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height,
          section: d.closest('section').id, types: d.data.map(t => t.type),
          drawn: d.querySelectorAll('.main-svg').length > 0};
})"""
HIDE_TRACES_JS = ("Plotly.restyle(document.querySelectorAll('.js-plotly-plot')[{i}], {{opacity: 0}})"
                  ".then(() => new Promise(done => setTimeout(done, 300)))")
VIDEO_JS = """new Promise(done => {
  const v = document.querySelector('video');
  const answer = () => done([v.getAttribute('src'), v.videoWidth, v.videoHeight, v.duration]);
  if (v.readyState >= 1) answer(); else { v.onloadedmetadata = answer; v.onerror = () => done(String(v.error.message)); v.load(); }
})"""
# the least fraction of a plot's pixels its data must draw (measured on the tiny workspace: cameras
# 0.3%, curves 0.8%, mesh 7%; a plot whose data drew nothing: 0)
MIN_DRAWN = {"scatter3d": 0.001, "scatter": 0.003, "mesh3d": 0.02, "histogram": 0.01}


def drawn_by_data(browser: Browser, plot: dict) -> float:
    """The fraction of the plot's pixels that change when its traces are made transparent."""
    clip = {k: plot[k] for k in ("x", "y", "width", "height")}
    with_data = browser.screenshot(clip).astype(int)
    browser.evaluate(HIDE_TRACES_JS.format(i=plot["i"]))
    without = browser.screenshot(clip).astype(int)
    return float(np.mean(np.abs(with_data - without).max(-1) > 30))


def check_page(browser: Browser, index, expected_plots: dict[str, set]) -> list[dict]:
    browser.open(index.as_uri())
    assert browser.errors() == []
    requests = browser.requests()  # the page, plotly.min.js, the pictures: all in the report's folder
    assert index.as_uri() in requests and (index.parent / "plotly.min.js").as_uri() in requests
    assert all(url.startswith(index.parent.as_uri() + "/") for url in requests), requests
    images = browser.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && "
                              "i.naturalWidth > 0])")
    assert all(ok for _, ok in images), [src for src, ok in images if not ok]
    plots = browser.evaluate(PLOTS_JS)
    found: dict[str, set] = {}
    for plot in plots:
        found.setdefault(plot["section"], set()).update(plot["types"])
    assert found == expected_plots
    assert all(p["drawn"] and p["width"] > 300 and p["height"] > 200 for p in plots)
    return plots


def test_the_trained_report_loads_without_errors_and_draws_every_plot(trained, tmp_path):
    index = trained / "report" / "index.html"
    with Browser(1280, 900) as browser:
        plots = check_page(browser, index, {"poses": {"scatter3d"}, "nerf": {"scatter"}, "surface": {"mesh3d"}})
        # the orbit video decodes in the browser: its frame size and length (4 frames at 24 fps)
        video = browser.evaluate(VIDEO_JS)
        assert video[:3] == ["assets/nerf-orbit.mp4", 32, 24] and video[3] == pytest.approx(4 / 24, abs=0.02)
        browser.evaluate("scrollTo(0, 0)")
        top = browser.screenshot()  # what a reader first sees: the header, the overview, the cameras
        for plot in plots:
            fraction = drawn_by_data(browser, plot)
            least = min(MIN_DRAWN[t] for t in plot["types"])
            assert fraction > least, (plot["section"], plot["types"], fraction)
        assert browser.errors() == []
    # the first screen is a page, not a blank or an error text (measured: 1029 colours, 14% not white;
    # the plots' own pixels are checked above)
    stats = pixel_stats(top)
    assert top.shape == (900, 1280, 3) and stats["colours"] > 200 and stats["non_white"] > 0.1, stats
    size = save_small_png(top, tmp_path / "report.png")
    assert size < 150_000


def test_the_poses_only_report_draws_its_histogram_and_cameras(poses_only):
    with Browser(1280, 900) as browser:
        plots = check_page(browser, poses_only / "report" / "index.html", {"poses": {"histogram", "scatter3d"}})
        for plot in plots:
            assert drawn_by_data(browser, plot) > min(MIN_DRAWN[t] for t in plot["types"]), plot["types"]
        assert browser.errors() == []
