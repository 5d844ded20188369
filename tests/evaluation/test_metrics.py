"""Geometry metrics (``pipeline.evaluation.metrics``): Chamfer-L1 and F-score of meshes whose
distance is known."""
import pytest

from pipeline.evaluation.metrics import mesh_chamfer_fscore
from tests.analytic_sphere import CENTER, RADIUS, sphere_mesh


def test_chamfer_of_a_mesh_against_itself_is_zero_and_against_a_scaled_copy_known():
    verts, faces = sphere_mesh(resolution=64)
    same = mesh_chamfer_fscore(verts, faces, verts, faces, threshold=0.01 * RADIUS, samples=20000)
    assert same["chamfer_l1"] < 1e-12 and same["fscore"] == 1.0
    # a copy scaled by 1.05 about the centre: every point is 0.05 r from the other surface
    scaled = CENTER + 1.05 * (verts - CENTER)
    far = mesh_chamfer_fscore(verts, faces, scaled, faces, threshold=0.01 * RADIUS, samples=20000)
    assert far["chamfer_l1"] == pytest.approx(0.05 * RADIUS, rel=0.01)
    assert far["fscore"] == 0.0  # 5% of the radius is far beyond a 1% threshold
    near = mesh_chamfer_fscore(verts, faces, scaled, faces, threshold=0.06 * RADIUS, samples=20000)
    assert near["fscore"] == 1.0
