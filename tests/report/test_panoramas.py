"""The report of a panorama workspace (estimated poses of the analytic room, the centres stage run
with a camera height): the plan, the scale and the distances table with their 1-sigma, the
panoramas drawn as axis crosses in the camera view."""
from __future__ import annotations

import json

import numpy as np

from pipeline.runner.stage import run_stage
from pipeline.runner.workspace import Workspace
from stages.centres import STAGE as CENTRES
from stages.report import STAGE as REPORT
from tests.panorama_room import write_estimated_workspace


def test_the_report_shows_the_plan_and_the_distances(tmp_path):
    ws = tmp_path / "W"
    write_estimated_workspace(ws, count=5)
    run_stage(CENTRES, Workspace(ws), CENTRES.load_config(None, ["camera_height_m=1.5", "floor_sweep=false"]))
    result = run_stage(REPORT, Workspace(ws))
    assert result.manifest["metrics"]["stages"] == "poses, centres"
    html = (ws / "report" / "index.html").read_text()
    assert '<section id="panoramas">' in html and 'src="assets/centres-plan.png"' in html
    assert (ws / "report" / "assets" / "centres-plan.png").exists()
    centres = json.loads((ws / "centres" / "centres.json").read_text())
    assert centres["units"] == "m" and "Distances (m, ± 1-sigma)" in html
    names, matrix = centres["distances"]["names"], np.array(centres["distances"]["matrix"])
    sigma = np.array(centres["distances"]["sigma"])
    assert f"{matrix[0, 1]:.3g} ± {sigma[0, 1]:.2g}" in html  # a distance with its 1-sigma
    assert all(f"<th>{n}</th>" in html for n in names)
    assert "5 cameras" in html and 'class="section-error"' not in html
