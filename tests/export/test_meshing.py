"""Mesh extraction from a density field (``pipeline.export.meshing``) with cameras: floaters that
no camera sees are carved away, surfaces that no camera sees are culled."""
import numpy as np
import torch

from pipeline.export.meshing import extract_mesh
from pipeline.geometry.cameras import Cameras, visibility_counts
from pipeline.geometry.mesh import is_watertight
from tests.analytic_sphere import SphereDensity, ring_cameras


def test_nerf_mesh_carves_floaters_that_no_camera_sees():
    k, poses = ring_cameras(8, distance=3.0, size=32, fov_deg=30.0, center=np.zeros(3))
    cameras = Cameras.from_intrinsics([k] * len(poses), poses)
    floater = np.array([0.0, 0.0, 1.6])  # above the ring: outside every view
    assert int(visibility_counts(torch.tensor(floater[None], dtype=torch.float32), cameras)[0]) == 0
    assert int(visibility_counts(torch.zeros(1, 3), cameras)[0]) == 8
    model = SphereDensity([0, 0, 0], 0.5, floaters=[(floater, 0.2)])
    bounds = np.array([[-2.0, -2, -2], [2, 2, 2]])
    kept = extract_mesh(model, "nerf", bounds, 96, density_threshold=200.0, cameras=cameras, carve_min_views=1,
                        cull_hidden=False)
    uncarved = extract_mesh(model, "nerf", bounds, 96, density_threshold=200.0, cameras=None, colors=False)
    # without carving the floater survives as its own component
    assert np.any(np.linalg.norm(uncarved["verts"] - floater, axis=1) < 0.3)
    assert not np.any(np.linalg.norm(kept["verts"] - floater, axis=1) < 0.3)
    radii = np.linalg.norm(kept["verts"], axis=1)
    assert abs(radii.mean() - 0.5) / 0.5 < 0.01  # threshold sigma_max / 2 is exactly the sphere
    assert is_watertight(kept["faces"])
    # normals point outwards although density grows inwards
    assert np.mean(np.sum(kept["normals"] * kept["verts"], axis=1) > 0) > 0.99


class HollowSphereDensity(SphereDensity):
    """A shell between ``inner`` and ``radius``: its density iso-surface has an inner sphere that no
    camera outside can see (like the low-density inside of a solid a NeRF never observes)."""

    def __init__(self, center, radius, inner: float, **kwargs):
        super().__init__(center, radius, **kwargs)
        self.inner = inner

    def query_sdf(self, points: torch.Tensor) -> torch.Tensor:
        return torch.maximum(super().query_sdf(points), self.inner - (points - self.center.to(points)).norm(dim=-1))


def test_nerf_mesh_culls_surfaces_no_camera_sees_first():
    k, poses = ring_cameras(8, distance=3.0, size=32, fov_deg=30.0, center=np.zeros(3))
    cameras = Cameras.from_intrinsics([k] * len(poses), poses)
    model = HollowSphereDensity([0, 0, 0], 0.5, inner=0.3, n_samples=96)
    bounds = np.array([[-0.7, -0.7, -0.7], [0.7, 0.7, 0.7]])
    both = extract_mesh(model, "nerf", bounds, 64, density_threshold=200.0, cameras=cameras, cull_hidden=False,
                        colors=False)
    culled = extract_mesh(model, "nerf", bounds, 64, density_threshold=200.0, cameras=cameras, colors=False)
    radius_both = np.linalg.norm(both["verts"], axis=1)
    radius_culled = np.linalg.norm(culled["verts"], axis=1)
    assert np.any(radius_both < 0.35)  # the hidden inner sphere is meshed without culling
    assert np.all(radius_culled > 0.45)  # and gone with it
    # the outer sphere's upper half (all cameras look down on it) is kept whole
    upper_outer = lambda v: np.sum((np.linalg.norm(v, axis=1) > 0.45) & (v[:, 2] > 0.1))  # noqa: E731
    assert upper_outer(culled["verts"]) >= 0.95 * upper_outer(both["verts"])
    assert culled["stats"]["hidden_faces_culled"] > 0


def test_visibility_cleaning_drops_hidden_and_unseen_pieces_and_keeps_the_seen_one_closed():
    from pipeline.export.meshing import visible_mesh_parts
    from tests.analytic_sphere import SphereSDF, sphere_mesh

    k, poses = ring_cameras(8, distance=3.0, size=32, fov_deg=30.0, center=np.zeros(3))
    cameras = Cameras.from_intrinsics([k] * len(poses), poses)
    pieces = [sphere_mesh(np.zeros(3), 0.5, 32), sphere_mesh(np.zeros(3), 0.3, 24),  # outer, hidden inner shell
              sphere_mesh(np.array([0.0, 0.0, 2.5]), 0.2, 16)]  # above every view
    verts = np.concatenate([v for v, _ in pieces])
    offsets = np.cumsum([0] + [len(v) for v, _ in pieces])[:-1]
    faces = np.concatenate([f + o for (_, f), o in zip(pieces, offsets)])
    mesh = {"verts": verts, "faces": faces, "colors": verts.astype(np.float32), "normals": None}
    model = SphereSDF([0, 0, 0], 0.5)  # renders the outer sphere's depth
    kept, stats = visible_mesh_parts(model, mesh, cameras, "components", tolerance=0.02)
    np.testing.assert_allclose(np.linalg.norm(kept["verts"], axis=1), 0.5, atol=0.02)
    assert len(kept["faces"]) == len(pieces[0][1]) and is_watertight(kept["faces"])
    np.testing.assert_allclose(kept["colors"], kept["verts"], atol=1e-6)  # colours re-indexed with their vertices
    assert stats["faces_removed"] == len(faces) - len(pieces[0][1])
    # per face, the never-seen underside of the outer sphere goes too: no longer closed
    faces_only, _ = visible_mesh_parts(model, mesh, cameras, "faces", tolerance=0.02)
    assert 0 < len(faces_only["faces"]) < len(pieces[0][1]) and not is_watertight(faces_only["faces"])
