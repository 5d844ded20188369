"""The analytic stand-ins of ``tests/analytic_sphere.py`` follow ``pipeline.models.render``'s
protocols and render the sphere right: every export/eval test built on them depends on it."""
import numpy as np
import pytest
import torch

from pipeline.models.render import DensityModel, SDFModel
from tests.analytic_sphere import SphereDensity, SphereSDF


def test_analytic_models_follow_the_render_protocols():
    sdf, dens = SphereSDF([0, 0, 0], 0.5), SphereDensity([0, 0, 0], 0.5)
    assert isinstance(sdf, SDFModel) and isinstance(dens, DensityModel)
    o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 2.0, -3.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    for model in (sdf, dens):
        out = model.render_rays(o, d)
        assert out["t"][0] == pytest.approx(2.5, abs=0.02)
        assert out["acc"][0] > 0.99 and out["acc"][1] < 0.01
        np.testing.assert_allclose(out["rgb"][1].numpy(), 1.0, atol=1e-3)  # white background
        np.testing.assert_allclose(out["rgb"][0].numpy(), model.color(torch.tensor([[0, 0, -0.5]]))[0].numpy(),
                                   atol=0.03)
    assert float(dens.query_density(torch.tensor([[0.5, 0, 0]]))) == pytest.approx(200.0)
