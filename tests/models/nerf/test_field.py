"""The NeRF fields (``pipeline.models.nerf.field``): the truncated exponential density activation,
directions per ray or per sample alike."""
import pytest
import torch

from tests.tiny_configs import TINY_GRID


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
