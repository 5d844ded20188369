"""The occupancy grid and the ray marcher (``pipeline.models.components.occupancy``): occupied
cells, empty space skipped, the C++ marcher against the tensor one, the occupied box, cells seen by
too few views, cascades."""
import numpy as np
import pytest
import torch

from pipeline.geometry.cameras import Intrinsics, look_at
from pipeline.models.components.batch_rows import BatchRows
from pipeline.models.components.occupancy import OccupancyGrid, march_rays, march_schedule
from pipeline.models.components.volume_rendering import ray_aabb


def test_occupancy_grid_marks_the_dense_region_and_the_marcher_skips_empty_space():
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=16)

    def ball(points):  # density 50 inside a ball of radius 0.3
        return 50.0 * (points.norm(dim=-1) < 0.3).float()

    for _ in range(3):
        grid.update(ball, step_size=0.01, all_cells=True, generator=torch.Generator().manual_seed(0))
    assert 0.0 < grid.occupancy_fraction() < 0.05
    rays_o = torch.tensor([[0.0, 0.0, -2.0], [0.9, 0.9, -2.0]])
    rays_d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far = ray_aabb(rays_o, rays_d, grid.aabb)
    ray_index, t, _ = march_rays(grid, march_schedule(5.0, 0.01), rays_o, rays_d, near, far, perturb=False)
    assert (ray_index == 0).all() and ray_index.numel() > 0  # the ray beside the ball gets no samples
    z = -2.0 + t
    assert float(z.min()) > -0.45 and float(z.max()) < 0.45  # within the ball's occupied cells


@pytest.mark.parametrize("cascades", [1, 3])
@pytest.mark.parametrize("perturb", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_cpu_marcher_keeps_the_same_samples_as_the_tensor_marcher(cascades, perturb, threads):
    from pipeline.kernels import cpu_kernels

    if not cpu_kernels.available():
        pytest.skip(f"C++ kernels unavailable: {cpu_kernels.unavailable_reason()}")
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=16, cascades=cascades)
    gen = torch.Generator().manual_seed(0)
    grid.occupied.copy_(torch.rand(grid.occupied.shape, generator=gen) < 0.3)
    rays = 2000  # enough candidates for the kernel to split the rays between threads
    rays_o = torch.randn(rays, 3, generator=gen) * 0.5 * cascades
    rays_d = torch.nn.functional.normalize(torch.randn(rays, 3, generator=gen), dim=-1)
    near = torch.rand(rays, generator=gen)
    far = near + 4 * torch.rand(rays, generator=gen)
    schedule = march_schedule(8.0, 0.02, cone_angle=0.004 if cascades > 1 else 0.0)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        kernel, tensors = (march_rays(grid, schedule, rays_o, rays_d, near, far, perturb, 256,
                                      torch.Generator().manual_seed(1), use_kernel=use) for use in (True, False))
    finally:
        torch.set_num_threads(saved_threads)
    assert kernel[0].numel() > 10000
    assert torch.equal(kernel[0], tensors[0])  # the same samples of the same rays, in the same order
    assert torch.allclose(kernel[1], tensors[1]) and torch.allclose(kernel[2], tensors[2])


@pytest.mark.parametrize("use_kernel", [True, False])
def test_marching_a_batch_in_rows_gives_the_rows_of_the_whole_march(use_kernel):
    """DDP: each rank marches its rows of the global batch with the jitter drawn for all of it, so
    the ranks' samples together are one process's samples, and each generator ends alike."""
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=16)
    gen = torch.Generator().manual_seed(0)
    grid.occupied.copy_(torch.rand(grid.occupied.shape, generator=gen) < 0.3)
    rays = 301
    rays_o = torch.randn(rays, 3, generator=gen) * 0.5
    rays_d = torch.nn.functional.normalize(torch.randn(rays, 3, generator=gen), dim=-1)
    near = torch.rand(rays, generator=gen)
    far = near + 4 * torch.rand(rays, generator=gen)
    schedule = march_schedule(8.0, 0.02)
    whole_gen = torch.Generator().manual_seed(1)
    whole = march_rays(grid, schedule, rays_o, rays_d, near, far, True, 256, whole_gen, use_kernel=use_kernel)
    parts, generators = [], []
    for rank in range(3):
        rows = BatchRows.of_rank(rays, rank, 3)
        generators.append(torch.Generator().manual_seed(1))
        index, t, deltas = march_rays(grid, schedule, rays_o, rays_d, near, far, True, 256, generators[-1],
                                      use_kernel=use_kernel, rows=rows)
        parts.append((index + rows.start, t, deltas))
    for k in range(3):
        assert torch.equal(torch.cat([p[k] for p in parts]), whole[k])
    assert all(torch.equal(g.get_state(), whole_gen.get_state()) for g in generators)


def test_the_occupied_box_follows_every_change_of_the_grid():
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=4)
    assert torch.equal(grid.occupied_box(), grid.aabb)  # all occupied at first
    grid.occupied.zero_()
    grid.occupied.view(4, 4, 4)[1, 2, 3] = True  # changed in place
    assert torch.allclose(grid.occupied_box(), torch.tensor([[-0.5, 0.0, 0.5], [0.0, 0.5, 1.0]]))
    grid.update(lambda p: (p[:, 0] < -0.6).float() * 100, step_size=0.01, all_cells=True)
    assert torch.allclose(grid.occupied_box(), torch.tensor([[-1.0, -1.0, -1.0], [-0.5, 1.0, 1.0]]))
    restored = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=4)
    restored.occupied_box()
    restored.load_state_dict(grid.state_dict())  # resume
    assert torch.equal(restored.occupied_box(), grid.occupied_box())


def test_occupancy_update_gives_the_same_grid_for_any_chunk_of_points():
    grids, calls = [], []
    for chunk in (None, 1000):  # default (2^14 points per call on the CPU) and small chunks
        grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=32)

        def density(p):
            calls.append(p.shape[0])
            return (p.norm(dim=-1) < 0.5).float() * 100

        seeded = torch.Generator().manual_seed(0)  # the same jitter in both
        grid.update(density, step_size=0.01, all_cells=True, chunk=chunk, generator=seeded)
        grids.append(grid.density.clone())
    assert max(calls) == 1 << 14 and 1000 in calls
    assert torch.equal(grids[0], grids[1])


def test_a_field_of_uniform_density_keeps_every_cell_occupied():
    # an untrained field evaluated in bf16 returns one density everywhere: nothing may be skipped yet
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=8)
    grid.update(lambda p: torch.full((p.shape[0],), 0.37), step_size=0.01, all_cells=True)
    assert grid.occupancy_fraction() == 1.0


def test_occupancy_cells_fewer_than_two_views_see_stay_empty():
    from pipeline.geometry.cameras import Cameras

    # two narrow cameras on the x and y axes, both looking at the origin: only the region around
    # the origin is seen twice; the far end of each view's cone is seen once
    K = Intrinsics("pinhole", 16, 16, 40.0, 40.0, 8.0, 8.0)
    poses = np.stack([look_at((3.0, 0, 0), (0, 0, 0)), look_at((0, 3.0, 0), (0, 0, 0))])
    cameras = Cameras.from_intrinsics([K, K], poses)
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=16)
    grid.restrict_to_views(cameras, min_views=2)
    grid.update(lambda p: torch.full((p.shape[0],), 100.0), step_size=0.01, all_cells=True)
    assert bool(grid.is_occupied(torch.zeros(1, 3))[0])
    seen_once = torch.tensor([[-0.9, 0.0, 0.0], [0.0, -0.9, 0.0]])  # in one camera's cone only
    unseen = torch.tensor([[0.0, 0.0, 0.9]])
    assert not grid.is_occupied(torch.cat([seen_once, unseen])).any()
    grid.restrict_to_views(cameras, min_views=1)
    grid.update(lambda p: torch.full((p.shape[0],), 100.0), step_size=0.01, all_cells=True)
    assert grid.is_occupied(seen_once).all() and not grid.is_occupied(unseen).any()
    # the mask travels with the weights
    reloaded = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=16)
    reloaded.load_state_dict(grid.state_dict())
    assert torch.equal(reloaded.visible, grid.visible)


def test_cascades_cover_a_larger_box():
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=8, cascades=3)
    assert torch.allclose(grid.outer_box(), torch.tensor([[-4.0] * 3, [4.0] * 3]))
    flat, inside = grid.cell_index(torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [5.0, 0.0, 0.0]]))
    assert inside.tolist() == [True, True, False]
    assert flat[0] < 8 ** 3 <= 2 * 8 ** 3 <= flat[1]  # the point at x=3 lives in cascade 2
