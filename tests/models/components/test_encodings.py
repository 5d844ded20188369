"""Fourier features, Gaussian Fourier features and spherical harmonics."""
import math

import pytest
import torch

from pipeline.models.components.encodings import FourierEncoding, GaussianFourierEncoding, SphericalHarmonics


def test_fourier_encoding_is_x_then_sin_cos_of_octaves():
    enc = FourierEncoding(in_dim=3, num_freqs=4)
    x = torch.tensor([[0.1, -0.2, 0.3]])
    out = enc(x)
    assert enc.out_dim == 3 + 3 * 2 * 4 == out.shape[1]
    assert torch.allclose(out[:, :3], x)
    for k in range(4):
        block = out[:, 3 + 6 * k: 3 + 6 * (k + 1)]
        assert torch.allclose(block[:, :3], torch.sin(2.0 ** k * x), atol=1e-6)
        assert torch.allclose(block[:, 3:], torch.cos(2.0 ** k * x), atol=1e-6)


def test_fourier_encoding_without_input_and_linear_sampling():
    enc = FourierEncoding(in_dim=2, num_freqs=3, include_input=False, log_sampling=False)
    assert enc.out_dim == 12
    assert torch.allclose(enc.freqs, torch.tensor([1.0, 2.5, 4.0]))


def test_gaussian_fourier_features_are_seeded_and_scale_with_sigma():
    a, b = GaussianFourierEncoding(3, 64, sigma=10.0, seed=1), GaussianFourierEncoding(3, 64, sigma=10.0, seed=1)
    assert torch.equal(a.B, b.B)
    assert not torch.equal(a.B, GaussianFourierEncoding(3, 64, sigma=10.0, seed=2).B)
    wide = GaussianFourierEncoding(3, 4096, sigma=10.0)
    assert abs(float(wide.B.std()) - 10.0) < 0.5
    x = torch.rand(5, 3)
    out = a(x)
    assert out.shape == (5, 128) and a.out_dim == 128
    # sin^2 + cos^2 = 1 per feature
    assert torch.allclose(out[:, :64] ** 2 + out[:, 64:] ** 2, torch.ones(5, 64), atol=1e-5)
    assert GaussianFourierEncoding(3, 8, include_input=True).out_dim == 19


def test_spherical_harmonics_are_orthonormal_on_the_sphere():
    sh = SphericalHarmonics(4)
    gen = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(100_000, 3, generator=gen, dtype=torch.float64), dim=-1)
    y = sh(dirs)
    assert y.shape == (100_000, 16)
    gram = 4 * math.pi * (y.T @ y) / dirs.shape[0]  # Monte Carlo integral of Y_i Y_j over the sphere
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=0.06)


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_spherical_harmonics_cpu_kernel_gives_the_torch_formulas(degree):
    from pipeline.kernels import cpu_kernels

    if not cpu_kernels.available():
        pytest.skip(f"C++ CPU kernels unavailable: {cpu_kernels.unavailable_reason()}")
    sh = SphericalHarmonics(degree)
    dirs = torch.nn.functional.normalize(torch.randn(20_000, 3), dim=-1)
    fast = sh(dirs)  # float32 directions that need no gradient: the kernel
    with cpu_kernels.disabled():
        formulas = sh(dirs)
    assert fast.shape == formulas.shape == (20_000, degree * degree)
    assert torch.allclose(fast, formulas, rtol=1e-6, atol=1e-6)


def test_encodings_pass_gradients_to_their_input():
    x = torch.rand(4, 3, requires_grad=True)
    for enc in (FourierEncoding(), GaussianFourierEncoding(num_features=8), SphericalHarmonics(3)):
        enc(x).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        x.grad = None
