"""NeRF: volume rendering, sampling, occupancy grid, fitting, resume, and the stage end to end."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.geometry.cameras import Intrinsics, look_at
from pipeline.models.components.hashgrid import HashGridConfig
from pipeline.models.nerf.model import NeRFModel, NeRFModelConfig, _eval_front_first
from pipeline.models.components.occupancy import OccupancyGrid, march_rays, march_schedule
from pipeline.models.components.volume_rendering import (composite_dense, composite_packed, distortion_loss_packed, gate_gradients,
                                          ray_aabb, sample_pdf, stratified_samples, transmittance_packed)
from pipeline.models.nerf import io as nerf_io
from pipeline.models.nerf.model import default_aabb
from pipeline.models.render import DensityModel
from pipeline.training import nerf as nerf_training
from pipeline.training.common import settings_from
from pipeline.training.nerf import NeRFTrainSettings
from pipeline.training.nerf_data import PixelData

TINY_GRID = HashGridConfig(levels=6, features_per_level=2, log2_table_size=12, base_resolution=4,
                           finest_resolution=64, backend="torch")


def slab_closed_form(sigma, a, b):
    """Ray from t=0 through a slab of constant density sigma between t=a and t=b."""
    acc = 1 - math.exp(-sigma * (b - a))
    # integral of t * sigma * exp(-sigma (t - a)) dt over [a, b]
    t_weighted = (a + 1 / sigma) - (b + 1 / sigma) * math.exp(-sigma * (b - a))
    return acc, t_weighted


@pytest.mark.parametrize("layout", ["dense", "packed"])
def test_constant_density_slab_matches_the_closed_form(layout):
    sigma, a, b, n = 3.0, 1.0, 1.8, 4000
    color = torch.tensor([0.2, 0.5, 0.9])
    edges = torch.linspace(0.0, 3.0, n + 1)
    t = 0.5 * (edges[1:] + edges[:-1])
    deltas = edges[1:] - edges[:-1]
    density = torch.where((t >= a) & (t < b), torch.tensor(sigma), torch.tensor(0.0))
    if layout == "dense":
        out = composite_dense(density[None], color.expand(1, n, 3), t[None], deltas[None])
    else:  # two rays, the first with no samples at all, only occupied samples kept
        keep = density > 0
        ray_index = torch.ones(int(keep.sum()), dtype=torch.long)
        out = composite_packed(density[keep], color.expand(int(keep.sum()), 3), t[keep], deltas[keep], ray_index, 2)
        assert float(out["acc"][0]) == 0.0
        out = {k: v[1:] for k, v in out.items() if k != "weights"}
    acc, t_weighted = slab_closed_form(sigma, a, b)
    assert abs(float(out["acc"][0]) - acc) < 1e-3
    assert abs(float(out["t"][0]) - t_weighted) < 2e-3
    assert torch.allclose(out["rgb"][0], color * acc, atol=1e-3)


def test_packed_compositing_matches_dense_and_has_the_same_gradients():
    gen = torch.Generator().manual_seed(0)
    sigma = torch.rand(3, 10, generator=gen).mul(5).requires_grad_()
    rgb = torch.rand(3, 10, 3, generator=gen)
    t = torch.sort(torch.rand(3, 10, generator=gen) * 2, -1).values
    deltas = torch.full((3, 10), 0.1)
    dense = composite_dense(sigma, rgb, t, deltas)
    ray_index = torch.arange(3).repeat_interleave(10)
    packed = composite_packed(sigma.reshape(-1), rgb.reshape(-1, 3), t.reshape(-1), deltas.reshape(-1), ray_index, 3)
    for key in ("rgb", "acc", "t"):
        assert torch.allclose(dense[key], packed[key], atol=1e-5)
    g_dense = torch.autograd.grad(dense["rgb"].sum(), sigma)[0]
    g_packed = torch.autograd.grad(packed["rgb"].sum(), sigma)[0]
    assert torch.allclose(g_dense, g_packed, atol=1e-5)


def test_samples_behind_an_opaque_wall_can_be_left_out_of_the_backward_only():
    # one ray: two samples in front of a wall, the wall, two samples behind it
    sigma = torch.tensor([0.5, 0.5, 200.0, 3.0, 3.0], requires_grad=True)
    rgb = torch.rand(5, 3, requires_grad=True)
    t, deltas, ray_index = torch.arange(5.0) * 0.1, torch.full((5,), 0.1), torch.zeros(5, dtype=torch.long)
    transmittance = transmittance_packed(sigma, deltas, ray_index)
    weights = composite_packed(sigma, rgb, t, deltas, ray_index, 1)["weights"]
    assert torch.allclose(transmittance * (1 - torch.exp(-sigma * deltas)), weights)
    visible = transmittance >= 1e-4
    assert visible.tolist() == [True, True, True, False, False]
    gated_sigma, gated_rgb = gate_gradients(visible, sigma, rgb)
    plain = composite_packed(sigma, rgb, t, deltas, ray_index, 1)["rgb"]
    gated = composite_packed(gated_sigma, gated_rgb, t, deltas, ray_index, 1)["rgb"]
    assert torch.equal(plain, gated)  # the forward is exact
    g_plain = torch.autograd.grad(plain.sum(), [sigma, rgb])
    g_gated = torch.autograd.grad(gated.sum(), [sigma, rgb])
    for ours, theirs in zip(g_gated, g_plain):
        assert torch.equal(ours[:3], theirs[:3])  # the visible samples' gradients are untouched
        assert torch.count_nonzero(ours[3:]) == 0 and theirs[3:].abs().max() < 1e-7  # the hidden: ~0 -> 0


def test_training_evaluates_samples_behind_an_opaque_front_never():
    class Wall(torch.nn.Module):  # density 200 for 0.45 < z < 0.55, 0.5 elsewhere; colour from the position
        def __init__(self):
            super().__init__()
            self.gain = torch.nn.Parameter(torch.tensor(1.0))
            self.evaluated = 0

        def forward(self, points, dirs, ray_index=None):
            self.evaluated += points.shape[0]
            wall = (points[:, 2] > 0.45) & (points[:, 2] < 0.55)
            return self.gain * torch.where(wall, 200.0, 0.5), torch.sigmoid(self.gain * points)

    # ray 0 meets the wall in the back half of its samples, ray 1 in the front half, ray 2 has one sample
    z = torch.cat([torch.arange(10) * 0.1, 0.3 + torch.arange(10) * 0.1, torch.tensor([0.2])])
    ray_index = torch.tensor([0] * 10 + [1] * 10 + [2])
    points = torch.stack([torch.zeros(21), torch.zeros(21), z], -1)
    rays_d, deltas = torch.tensor([0.0, 0.0, 1.0]).expand(3, 3), torch.full((21,), 0.1)
    field = Wall()
    kept, sigma, rgb = _eval_front_first(field, points, rays_d, ray_index, deltas, split=0.5, min_transmittance=1e-4)
    assert kept.tolist() == list(range(15)) + [20]  # ray 1's back half (behind the wall) is left out
    assert field.evaluated == 16
    full_sigma, full_rgb = field(points, rays_d[ray_index])
    assert torch.equal(sigma, full_sigma[kept]) and torch.equal(rgb, full_rgb[kept])
    split = composite_packed(sigma, rgb, z[kept], deltas[kept], ray_index[kept], 3)
    full = composite_packed(full_sigma, full_rgb, z, deltas, ray_index, 3)
    assert torch.allclose(split["rgb"], full["rgb"], atol=1e-4) and torch.allclose(split["acc"], full["acc"], atol=1e-4)
    split["rgb"].sum().backward()
    assert field.gain.grad is not None and torch.isfinite(field.gain.grad)
    with pytest.raises(ValueError, match="hidden_split"):
        NeRFModel(NeRFModelConfig(hidden_split=1.0), torch.tensor([[-1.0] * 3, [1.0] * 3]))


def test_distortion_loss_matches_the_double_sum_and_prefers_compact_weights():
    gen = torch.Generator().manual_seed(1)
    counts = [4, 1, 7]
    ray_index = torch.cat([torch.full((c,), r) for r, c in enumerate(counts)])
    t = torch.cat([torch.sort(torch.rand(c, generator=gen) * 3).values for c in counts])
    deltas = torch.rand(len(t), generator=gen) * 0.1
    weights = (torch.rand(len(t), generator=gen) / 3).requires_grad_()
    loss = distortion_loss_packed(weights, t, deltas, ray_index, len(counts))
    for r in range(len(counts)):
        m = ray_index == r
        w, tt, d = weights[m], t[m], deltas[m]
        expected = (w[:, None] * w[None] * (tt[:, None] - tt[None]).abs()).sum() + (w * w * d).sum() / 3
        assert torch.allclose(loss[r], expected, atol=1e-6)
    assert weights.grad is None and torch.autograd.grad(loss.sum(), weights)[0].abs().sum() > 0
    # the same total weight in one interval costs less than spread along the ray
    t4, d4, one_ray = torch.tensor([0.5, 1.0, 1.5, 2.0]), torch.full((4,), 0.1), torch.zeros(4, dtype=torch.long)
    compact = distortion_loss_packed(torch.tensor([0.0, 0.9, 0.0, 0.0]), t4, d4, one_ray, 1)
    spread = distortion_loss_packed(torch.tensor([0.3, 0.3, 0.0, 0.3]), t4, d4, one_ray, 1)
    assert float(compact) < 0.1 * float(spread)


def test_ray_box_intersection_and_stratified_samples():
    rays_o = torch.tensor([[0.0, 0.0, -3.0], [5.0, 5.0, -3.0]])
    rays_d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far = ray_aabb(rays_o, rays_d, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    assert torch.allclose(near[0], torch.tensor(2.0)) and torch.allclose(far[0], torch.tensor(4.0))
    assert far[1] <= near[1]  # misses
    t = stratified_samples(near[:1], far[:1], 8, perturb=True, generator=torch.Generator().manual_seed(0))
    bins = torch.linspace(2, 4, 9)
    assert ((t[0] >= bins[:-1]) & (t[0] <= bins[1:])).all()


def test_hierarchical_samples_follow_the_weights():
    bins = torch.linspace(0, 1, 11)[None]
    weights = torch.zeros(1, 10)
    weights[0, 7] = 1.0  # all mass in [0.7, 0.8]
    t = sample_pdf(bins, weights, 64, deterministic=False, generator=torch.Generator().manual_seed(0))
    assert float(((t >= 0.7) & (t <= 0.8)).float().mean()) > 0.95


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


def _camera_rays(size=16):
    """The rays of a 16x16 pinhole camera at z = -2 looking at the origin (OpenCV axes)."""
    from pipeline.geometry.cameras import Cameras, image_rays

    K = Intrinsics("pinhole", size, size, 20.0, 20.0, size / 2, size / 2)
    cams = Cameras.from_intrinsics([K], look_at((0, 0, -2.0), (0, 0, 0), up=(0, -1, 0))[None])
    rays_o, rays_d, _, _ = image_rays(cams, 0)
    return rays_o, rays_d


@pytest.mark.parametrize("kind,sampler,grid_backend,gate", [
    ("hash", "auto", "torch", 0.0), ("hash", "auto", "cpu", 1e-4), ("fourier", "auto", None, 0.0),
    ("fourier", "occupancy", None, 0.0), ("fourier", "occupancy", None, 1e-4), ("fourier", "occupancy", None, "split")])
def test_a_tiny_model_overfits_a_16x16_patch(kind, sampler, grid_backend, gate, one_thread):
    torch.manual_seed(0)
    grid = HashGridConfig(**{**TINY_GRID.__dict__, "backend": grid_backend or "torch"})  # cpu: the C++ kernels
    config = NeRFModelConfig(kind=kind, sampler=sampler, grid=grid, width=32, occupancy_resolution=8, march_steps=16,
                             fourier_width=64, fourier_depth=3, pos_freqs=4, num_coarse=8, num_fine=8,
                             grad_min_transmittance=1e-4 if gate == "split" else gate,
                             hidden_split=0.5 if gate == "split" else 0.0)
    model = NeRFModel(config, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    assert isinstance(model, DensityModel)
    rays_o, rays_d = _camera_rays()
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    target = torch.stack([xx, yy, 0.5 * (xx + yy)], -1).reshape(-1, 3)  # a smooth colour ramp
    opt = torch.optim.Adam(model.parameters(), lr=1e-2 if kind == "hash" else 2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150 if kind == "hash" else 250):
        out = model.render_rays(rays_o, rays_d, perturb=True, generator=gen)
        loss = ((out["rgb"] - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        rgb = model.render_rays(rays_o, rays_d)["rgb"]
    psnr = -10 * math.log10(float(((rgb - target) ** 2).mean()))
    assert psnr > 25.0, f"{kind}/{sampler}: {psnr:.1f} dB"


def test_autocast_runs_matrix_products_in_bf16_only_where_the_hardware_has_them():
    from pipeline.runner.runtime import autocast, cpu_has_bf16_matmul

    layer = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with autocast(torch.device("cpu"), enabled=False):
        assert layer(x).dtype == torch.float32
    with autocast(torch.device("cpu")):
        expected = torch.bfloat16 if cpu_has_bf16_matmul() else torch.float32
        assert layer(x).dtype == expected


def test_freed_memory_is_kept_for_the_next_step_where_the_c_library_is_glibc():
    import platform
    import subprocess
    import sys

    # in a fresh interpreter: the setting is for the whole process, as run.py makes it
    code = ("from pipeline.runner.runtime import keep_freed_memory; import torch; ok = keep_freed_memory(); "
            "x = [torch.ones(1 << 22) for _ in range(3)]; del x; print(ok, float(torch.ones(1 << 22).sum()))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=str(Path(__file__).resolve().parent.parent))
    assert result.returncode == 0, result.stderr
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert result.stdout.split() == [str(glibc), str(float(1 << 22))]


@pytest.mark.parametrize("kind,sampler", [("hash", "occupancy"), ("fourier", "hierarchical"), ("fourier", "occupancy")])
def test_mixed_precision_renders_float32_close_to_full_precision(kind, sampler, one_thread):
    """Under bf16 autocast only the networks' matrix products lose precision: outputs come back in
    float32 and compositing stays in float32, so the render is close to the float32 one."""
    torch.manual_seed(0)
    config = NeRFModelConfig(kind=kind, sampler=sampler, grid=TINY_GRID, width=32, occupancy_resolution=8,
                             march_steps=16, fourier_width=64, fourier_depth=3, pos_freqs=4, num_coarse=8,
                             num_fine=8)
    model = NeRFModel(config, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    if kind == "fourier":  # a half-transparent fog rather than the untrained near-vacuum
        with torch.no_grad():
            model.field.trunk.out.bias[0] += 0.4
    rays_o, rays_d = _camera_rays()
    with torch.no_grad():
        full = model.render_rays(rays_o, rays_d)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.render_rays(rays_o, rays_d)
    assert 0.2 < float(full["acc"].mean()) < 0.8
    for key in ("rgb", "acc", "t"):
        assert mixed[key].dtype == torch.float32, key
    assert float((mixed["rgb"] - full["rgb"]).abs().max()) < 0.03
    assert float((mixed["acc"] - full["acc"]).abs().max()) < 0.03


def test_marched_samples_are_padded_to_buckets_only_under_cpu_autocast(one_thread):
    from pipeline.models.nerf.model import _field_in_buckets

    calls = []

    def field(points, dirs, ray_index=None):
        calls.append(points.shape[0])
        return points.sum(-1), (dirs if ray_index is None else dirs[ray_index]) * 2

    points, dirs = torch.randn(1000, 3), torch.randn(1000, 3)
    sigma, rgb = _field_in_buckets(field, points, dirs, bucket=256)
    assert calls == [1000]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sigma_b, rgb_b = _field_in_buckets(field, points, dirs, bucket=256)
    assert calls[-1] == 1024  # one fixed shape for oneDNN instead of a new one per batch
    assert torch.equal(sigma_b, sigma) and torch.equal(rgb_b, rgb)
    # directions per ray: the padding repeats the last sample's ray
    rays_d, ray_index = torch.randn(40, 3), torch.arange(1000) // 25
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sigma_r, rgb_r = _field_in_buckets(field, points, rays_d, ray_index, bucket=256)
    assert calls[-1] == 1024 and torch.equal(sigma_r, sigma) and torch.equal(rgb_r, rays_d[ray_index] * 2)


def test_siren_mlp_uses_sine_activations_with_its_initialisation():
    from pipeline.models.components.mlp import MLP, Sine

    mlp = MLP(3, 1, width=64, num_hidden=3, activation="siren", siren_omega=30.0)
    assert isinstance(mlp.act, Sine)
    first = mlp.hidden[0].weight
    assert float(first.detach().abs().max()) <= 1 / 3 + 1e-6
    later = mlp.hidden[1].weight
    assert float(later.detach().abs().max()) <= math.sqrt(6 / 64) / 30 + 1e-6


# --- the stage on a tiny scene ------------------------------------------------------------


def _tiny_workspace(tmp_path, views=6, size=16):
    """A workspace whose poses/transforms.json holds a coloured ball seen from a ring of cameras."""
    import imageio.v3 as iio

    from datasets.nerfstudio import write_nerfstudio
    from datasets.scene import Frame, Scene
    from pipeline.runner.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    K = Intrinsics("pinhole", size, size, 18.0, 18.0, size / 2, size / 2)
    frames = []
    for i in range(views):
        angle = 2 * math.pi * i / views
        eye = (2.5 * math.cos(angle), 2.5 * math.sin(angle), 0.5)
        c2w = look_at(eye, (0, 0, 0))
        yy, xx = np.mgrid[0:size, 0:size]
        inside = (xx - size / 2 + 0.5) ** 2 + (yy - size / 2 + 0.5) ** 2 < (size / 3) ** 2
        rgba = np.zeros((size, size, 4), np.uint8)
        rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 60 + 20 * i, 40
        rgba[..., 3] = inside * 255
        path = img_dir / f"v{i}.png"
        iio.imwrite(path, rgba)
        frames.append(Frame(path, K, c2w))
    scene = Scene(frames, {"train": list(range(1, views)), "test": [0]})
    (ws.root / "poses").mkdir(parents=True)
    write_nerfstudio(scene, ws.root / "poses" / "transforms.json", relative_to=ws.root / "poses")
    return ws


def _tiny_config(**overrides):
    from stages.nerf import NerfConfig

    cfg = NerfConfig(model=NeRFModelConfig(grid=TINY_GRID, width=16, occupancy_resolution=8, march_steps=32))
    cfg.samples_per_batch, cfg.initial_rays, cfg.max_time_s, cfg.max_steps = 2048, 128, 0.0, 8
    cfg.occupancy_warmup_steps, cfg.occupancy_update_every, cfg.checkpoint_every = 4, 2, 3
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def _model(cfg, aabb):
    return nerf_io.build_model(cfg.model, aabb, "white", cfg.background)


def _train(model, data, cfg, resume_dir):
    return nerf_training.train(model, data, settings_from(NeRFTrainSettings, cfg), torch.device("cpu"), resume_dir)


def _interrupt_at_call(model, n):
    """Make model.render_rays raise KeyboardInterrupt on its n-th call (a user pressing Ctrl-C)."""
    calls = {"n": 0}
    original = model.render_rays

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    model.render_rays = flaky


def test_resume_after_an_interruption_restores_step_optimiser_and_rng(tmp_path, one_thread):
    ws = _tiny_workspace(tmp_path)
    scene = ws.load_scene()
    data = PixelData(scene, scene.split("train"), torch.device("cpu"), use_alpha=True)
    aabb = default_aabb(scene.bounds, _tiny_config().scene_radius)

    def fresh():
        torch.manual_seed(0)
        return _model(_tiny_config(), aabb)

    straight = fresh()
    _train(straight, data, _tiny_config(), None)

    resume_dir = tmp_path / "resume"
    resume_dir.mkdir()
    interrupted = fresh()
    _interrupt_at_call(interrupted, 6)
    with pytest.raises(KeyboardInterrupt):
        _train(interrupted, data, _tiny_config(), resume_dir)
    saved = torch.load(resume_dir / nerf_training.CHECKPOINT_NAME, weights_only=False)
    assert saved["step"] == 5
    assert all(int(s["step"]) == 5 for s in saved["optimizer"]["state"].values())

    torch.manual_seed(123)  # disturb the global RNG: the checkpoint must restore its own
    resumed = _model(_tiny_config(), aabb)
    stats = _train(resumed, data, _tiny_config(), resume_dir)
    assert stats["steps"] == 8
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_from_a_periodic_checkpoint_after_a_kill_repeats_nothing(tmp_path, one_thread, monkeypatch):
    """A killed process leaves only the last periodic checkpoint; resuming from it (with the
    error map and edge rays on, whose state is saved too) ends where an uninterrupted run ends."""
    import shutil

    ws = _tiny_workspace(tmp_path)
    scene = ws.load_scene()
    cfg = _tiny_config(error_fraction=0.5, edge_fraction=0.25)

    def data():
        return PixelData(scene, scene.split("train"), torch.device("cpu"), True, cfg.edge_fraction, cfg.edge_width)

    aabb = default_aabb(scene.bounds, cfg.scene_radius)
    torch.manual_seed(0)
    straight = _model(cfg, aabb)
    run_dir, killed_dir = tmp_path / "run", tmp_path / "killed"
    run_dir.mkdir()
    killed_dir.mkdir()
    save = nerf_training.save_checkpoint

    def save_and_keep_step_3(path, state):  # the file a kill after step 3 would leave
        save(path, state)
        if state["step"] == 3:
            shutil.copy(path, killed_dir / nerf_training.CHECKPOINT_NAME)

    monkeypatch.setattr(nerf_training, "save_checkpoint", save_and_keep_step_3)
    _train(straight, data(), cfg, run_dir)
    monkeypatch.setattr(nerf_training, "save_checkpoint", save)

    torch.manual_seed(0)
    resumed = _model(cfg, aabb)
    stats = _train(resumed, data(), cfg, killed_dir)
    assert stats["steps"] == 8
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_edge_and_error_rays_go_where_they_are_asked(tmp_path):
    from pipeline.geometry.masks import mask_edges

    ws = _tiny_workspace(tmp_path)
    scene = ws.load_scene()
    data = PixelData(scene, scene.split("train"), torch.device("cpu"), True, edge_fraction=0.5)
    generator = torch.Generator().manual_seed(0)
    alpha = data.colors[:, 3] > 0.5
    edge = torch.zeros(data.num_pixels, dtype=torch.bool)
    for v, (h, w) in enumerate(data.sizes):
        start = int(data.offsets[v])
        edge[start:start + h * w] = mask_edges(alpha[start:start + h * w].view(h, w), 2).reshape(-1)
    pixels = data.sample(1000, generator)[3]
    assert bool(edge[pixels[:500]].all())
    assert float(edge[pixels[500:]].float().mean()) < 0.9  # the rest stays uniform

    data = PixelData(scene, scene.split("train"), torch.device("cpu"), True)
    data.enable_error_map(0.5)
    hot = torch.arange(10, 20)
    data.record_error(torch.arange(data.num_pixels), torch.zeros(data.num_pixels))
    data.record_error(hot, torch.ones(10))
    pixels = data.sample(1000, generator)[3]
    assert bool(torch.isin(pixels[:500], hot).all())


def test_the_stage_trains_evaluates_and_reloads(tmp_path, one_thread):
    from pipeline.runner.stage import run_stage
    from stages.nerf import STAGE

    ws = _tiny_workspace(tmp_path)
    result = run_stage(STAGE, ws, _tiny_config(max_steps=30))
    out = ws.stage_dir("nerf")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 30 and metrics["psnr"] > 10 and metrics["samples_per_s"] > 0
    assert metrics["lpips"] is not None or metrics["lpips_reason"]
    assert (out / "renders" / "v0.png").exists()
    depth = np.load(out / "depth" / "v0.npy")
    assert depth.shape == (16, 16)
    assert result.manifest["metrics"]["psnr"] == metrics["psnr"]
    model = nerf_io.load_trained(ws)
    assert isinstance(model, DensityModel)
    sigma = model.query_density(torch.zeros(4, 3))
    assert sigma.shape == (4,)
    assert not (ws.root / ".resume" / "nerf").exists()  # cleared on success


def test_config_files_load():
    from stages.nerf import STAGE

    for name in (None, "nerf-hash", "nerf-fourier", "nerf-siren", "nerf-hash-gpu"):
        cfg = STAGE.load_config(name)
        assert cfg.model.kind in ("hash", "fourier")
    assert STAGE.load_config("nerf-siren").model.activation == "siren"
    assert STAGE.load_config("nerf-hash") == STAGE.load_config()  # the named default adds nothing


def test_a_model_file_reloads_with_its_config_and_background(tmp_path):
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    cfg = _tiny_config(background="learned")
    torch.manual_seed(0)
    model = _model(cfg, aabb)
    nerf_io.save_model(tmp_path / "model.pt", model, cfg.background, "black", {"max_steps": 8})
    loaded = nerf_io.load_model_file(tmp_path / "model.pt")
    assert loaded.config == cfg.model and loaded.learn_background and not loaded.training
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    saved = torch.load(tmp_path / "model.pt", weights_only=False)
    assert saved["config"]["max_steps"] == 8 and saved["scene_background"] == "black"


def test_a_negative_time_budget_is_an_error_naming_the_key(tmp_path):
    ws = _tiny_workspace(tmp_path)
    scene = ws.load_scene()
    data = PixelData(scene, scene.split("train"), torch.device("cpu"), True)
    cfg = _tiny_config(max_time_s=-1.0)
    with pytest.raises(ValueError, match="max_time_s"):
        _train(_model(cfg, default_aabb(scene.bounds, cfg.scene_radius)), data, cfg, None)


def test_the_density_activation_is_exp_with_its_gradient_clamped_at_plus_minus_15():
    from pipeline.models.nerf.field import trunc_exp

    x = torch.tensor([-20.0, -3.0, 0.0, 2.5, 15.0, 30.0], requires_grad=True)
    y = trunc_exp(x)
    assert torch.equal(y, torch.exp(x.detach()))
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(grad, torch.exp(x.detach().clamp(-15, 15)), rtol=1e-6)


@pytest.mark.parametrize("kind", ["hash", "fourier"])
def test_fields_take_directions_per_ray_or_per_sample_alike(kind):
    # the renderer passes each ray's direction once with the samples' ray indices
    from pipeline.models.nerf.field import FourierNeRFField, HashNeRFField

    torch.manual_seed(0)
    box = torch.tensor([[-1.0] * 3, [1.0] * 3])
    field = HashNeRFField(box, TINY_GRID) if kind == "hash" else FourierNeRFField(box, width=32, depth=3, skips=(2,))
    rays_d = torch.nn.functional.normalize(torch.randn(30, 3), dim=-1)
    ray_index = torch.sort(torch.randint(0, 30, (500,))).values
    points = torch.rand(500, 3) * 2 - 1
    per_sample = field(points, rays_d[ray_index])
    per_ray = field(points, rays_d, ray_index)
    for a, b in zip(per_sample, per_ray):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    head = torch.randn(500, 3)
    grads = [torch.autograd.grad((rgb * head).sum() + sigma.sum(), list(field.parameters()))
             for sigma, rgb in (per_sample, per_ray)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, a.abs().amax().item()))
