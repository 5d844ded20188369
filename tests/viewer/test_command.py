"""The viewer as a command (``python -m pipeline.viewer``, what ``run.py view`` calls): it serves
for ``--max-seconds`` and exits 0; a model that cannot load leaves the rest on show with a warning;
a wrong folder is one line and exit code 2."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_viewer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, RECON_QUIET="1")
    return subprocess.run([sys.executable, "-m", "pipeline.viewer", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_serves_for_max_seconds_and_shows_the_rest_when_the_model_cannot_load(viewer_workspace):
    ws, _ = viewer_workspace  # its idr/ run is a fake without model.pt: in a new process it cannot load
    proc = run_viewer("--workspace", str(ws.root), "--port", "0", "--max-seconds", "1")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^viewer: http://localhost:\d+ showing .* \(field: idr; Ctrl-C stops\)$", proc.stdout, re.M), proc.stdout
    assert "cannot load the idr model" in proc.stderr and "Traceback" not in proc.stderr


def test_a_folder_that_is_not_a_workspace_is_one_line_and_exit_2(tmp_path):
    proc = run_viewer("--workspace", str(tmp_path / "nope"), "--port", "0")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a workspace folder" in lines[0], proc.stderr
