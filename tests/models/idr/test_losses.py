"""IDR's losses (``pipeline.models.idr.losses``): eikonal, smoothness, and the mask loss with its
alpha schedule."""
import torch

from pipeline.models.idr.losses import LossConfig, eikonal_loss, mask_alpha, mask_loss, smoothness_loss


def test_eikonal_loss_is_zero_for_an_exact_sdf_only():
    points = torch.randn(2000, 3, dtype=torch.float64).requires_grad_(True)
    for scale, expected in ((1.0, 0.0), (3.0, 4.0)):
        sdf = scale * (points.norm(dim=-1) - 0.5)
        (grad,) = torch.autograd.grad(sdf.sum(), points)
        assert abs(float(eikonal_loss(grad)) - expected) < 1e-8


def test_smoothness_loss_is_small_on_a_sphere_and_large_on_a_bumpy_surface():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(2000, 3, dtype=torch.float64, generator=g)
    points = 0.5 * points / points.norm(dim=-1, keepdim=True)
    nearby = points + 0.01 * torch.randn(points.shape, dtype=torch.float64, generator=g)

    def normals(sdf, x):
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(sdf(x).sum(), x)
        return grad

    def sphere(x):
        return x.norm(dim=-1) - 0.5

    def bumpy(x):  # the sphere with 40 bumps per radian of amplitude 0.01
        return sphere(x) + 0.01 * torch.sin(40 * x).prod(dim=-1)

    smooth = float(smoothness_loss(normals(sphere, points), normals(sphere, nearby)))
    rough = float(smoothness_loss(normals(bumpy, points), normals(bumpy, nearby)))
    assert smooth < 0.03 < 0.1 < rough  # neighbours 0.01 apart on r = 0.5 differ by ~0.02 rad


def test_mask_loss_and_alpha_schedule():
    config = LossConfig()
    assert mask_alpha(config, 0.0) == 50.0
    assert mask_alpha(config, 0.3) == 200.0
    assert mask_alpha(config, 1.0) == 50.0 * 2 ** 5
    # a ray in the mask whose smallest SDF is negative costs little; positive costs a lot
    good = mask_loss(torch.tensor([-0.1]), torch.tensor([True]), 50.0, 1)
    bad = mask_loss(torch.tensor([0.1]), torch.tensor([True]), 50.0, 1)
    assert float(good) < 0.01 < float(bad)
