"""Workspaces for the report tests, built once for the package through the command line as a user
types it: a tiny trained NeRF chain (synthetic -> poses -> nerf -> export -> eval -> report, ~20 s)
and a poses-only workspace whose poses/ is made to look estimated (sparse points, per-image
reprojection errors, an unregistered image) without the minute structure from motion takes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli_chain import SIZE, TINY_EVAL, TINY_EXPORT, TINY_NERF, VIEWS, run_cli

NERF_STEPS = 300
FACE_BUDGET = 500  # below the tiny mesh's ~1400 faces: the page shows a simplified mesh


@pytest.fixture(scope="package")
def scene_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report scene")  # a space in the path, as users have
    run_cli("synthetic", "--out", "scene", "--views", str(VIEWS), "--size", str(SIZE), cwd=root)
    return root / "scene"


@pytest.fixture(scope="package")
def trained(tmp_path_factory, scene_dir) -> Path:
    """The workspace of the tiny NeRF chain, its report written."""
    root = tmp_path_factory.mktemp("report trained")
    run_cli("poses", "--data", str(scene_dir), "--workspace", "W", cwd=root)
    run_cli("nerf", "--workspace", "W", *TINY_NERF, f"max_steps={NERF_STEPS}", "max_time_s=60", cwd=root)
    run_cli("export", "--workspace", "W", *TINY_EXPORT, cwd=root)
    run_cli("eval", "--workspace", "W", *TINY_EVAL, cwd=root)
    run_cli("report", "--workspace", "W", f"mesh_face_budget={FACE_BUDGET}", cwd=root)
    return root / "W"


@pytest.fixture(scope="package")
def poses_only(tmp_path_factory, scene_dir) -> Path:
    """A workspace with the poses stage alone, dressed as an estimate: 2000 sparse points on the
    true surface, per-image reprojection errors, one image not registered. Its report is written."""
    from pipeline.geometry.mesh import read_ply, write_ply
    from pipeline.geometry.normalize import Similarity

    root = tmp_path_factory.mktemp("report poses")
    run_cli("poses", "--data", str(scene_dir), "--workspace", "W", cwd=root)
    poses = root / "W" / "poses"
    verts, _, _ = read_ply(scene_dir / "mesh_gt.ply")
    rng = np.random.default_rng(0)
    points = Similarity.load(poses / "normalization.json").apply_points(verts[rng.choice(len(verts), 2000)])
    write_ply(poses / "points.ply", points, colors=rng.integers(0, 256, (2000, 3), dtype=np.uint8))
    report = json.loads((poses / "report.json").read_text())
    names = [f["name"] for f in json.loads((poses / "transforms.json").read_text())["frames"]]
    errors = dict(zip(names, np.linspace(0.3, 1.2, len(names)).tolist()))
    report.update(mode="estimate", images_registered=len(names) - 1,
                  unregistered={"r_extra": "too few matches: 12 inliers with its best neighbour (15 needed)"},
                  per_image={n: {"registered": True, "reprojection_error_px": e, "points": 50} for n, e in errors.items()},
                  summary={"mean_reprojection_error_px": float(np.mean(list(errors.values())))})
    (poses / "report.json").write_text(json.dumps(report))
    run_cli("report", "--workspace", "W", cwd=root)
    return root / "W"


@pytest.fixture
def copy_of(tmp_path):
    """A private copy of a package workspace, for tests that change it."""
    def make(workspace: Path) -> Path:
        target = tmp_path / "W"
        shutil.copytree(workspace, target)
        return target
    return make
