"""The NeRF model (``pipeline.models.nerf.model``): samples behind an opaque front left out of
training, a tiny model of each kind and sampler overfitting a patch, mixed precision close to full
precision, marched samples padded to buckets under CPU autocast."""
import math

import pytest
import torch

from pipeline.geometry.cameras import Intrinsics, look_at
from pipeline.models.components.hashgrid import HashGridConfig
from pipeline.models.components.volume_rendering import composite_packed
from pipeline.models.nerf.model import NeRFModel, NeRFModelConfig, _eval_front_first
from pipeline.models.render import DensityModel
from tests.tiny_configs import TINY_GRID


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
