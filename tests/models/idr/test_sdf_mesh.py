"""The SDF grid for meshing (``pipeline.models.idr.sdf_mesh``): coarse to fine, it matches the dense
grid near the surface for a fraction of the evaluations."""
import numpy as np
import torch


def test_coarse_to_fine_grid_matches_the_dense_grid_near_the_surface():
    from pipeline.geometry.mesh import sample_grid
    from pipeline.models.idr.sdf_mesh import sample_sdf_grid

    calls = []

    def two_spheres(p):
        calls.append(len(p))
        return torch.minimum(p.norm(dim=-1) - 0.5, (p - torch.tensor([0.5, 0.0, 0.0])).norm(dim=-1) - 0.2)

    bounds = np.array([[-1.0] * 3, [1.0] * 3])
    sparse = sample_sdf_grid(two_spheres, bounds, 120, coarse=32)
    evaluated = sum(calls)
    dense = sample_grid(two_spheres, bounds, sparse.shape[0])
    assert sparse.shape == (129, 129, 129)
    assert evaluated < 0.25 * 129 ** 3
    assert np.array_equal(sparse > 0, dense > 0)
    near = np.abs(dense) < 0.05
    assert np.abs(sparse - dense)[near].max() < 1e-6
