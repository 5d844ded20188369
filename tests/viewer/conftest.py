"""A workspace for the viewer tests: the analytic sphere posed by the real poses stage, a finished
fake IDR run (the exact sphere, ``tests/analytic_sphere.py``), its mesh in the original units and
sparse points in the normalised frame, as the stages write them."""
from __future__ import annotations

import numpy as np
import pytest

from tests.analytic_sphere import CENTER, RADIUS, make_sphere_workspace, sphere_mesh


def add_mesh_and_points(ws, n_points: int = 500, seed: int = 0) -> None:
    from pipeline.geometry.mesh import write_ply

    verts, faces = sphere_mesh(resolution=24)
    colours = (np.clip(0.5 + 0.5 * (verts - CENTER) / RADIUS, 0, 1) * 255).astype(np.uint8)
    write_ply(ws.root / "idr" / "mesh.ply", verts, faces, colors=colours)  # original units, like the idr stage
    dirs = np.random.default_rng(seed).normal(size=(n_points, 3))
    on_sphere = CENTER + RADIUS * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    write_ply(ws.root / "poses" / "points.ply", ws.normalization().apply_points(on_sphere),  # normalised, like poses
              colors=np.full((n_points, 3), 200, np.uint8))


@pytest.fixture
def viewer_workspace(tmp_path, monkeypatch):
    """(workspace, the fake IDR model in the normalised frame)."""
    ws, model = make_sphere_workspace(tmp_path, monkeypatch, "idr", n_views=8, size=40)
    add_mesh_and_points(ws)
    return ws, model
