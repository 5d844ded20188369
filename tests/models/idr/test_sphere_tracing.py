"""Sphere tracing (``pipeline.models.idr.sphere_tracing``) against the analytic sphere, and the
sample network (``pipeline.models.idr.model``) that makes the traced surface points differentiable."""
import pytest
import torch

from pipeline.models.idr.model import sample_network
from pipeline.models.idr.sdf_network import SDFNetwork, SDFNetworkConfig
from pipeline.models.idr.sphere_tracing import TracingConfig, trace_surface
from tests.scenes import analytic_first_hit


def sphere_sdf(radius=0.5):
    return lambda p: p.norm(dim=-1) - radius


def rays_towards_origin(count=400, distance=3.0, spread=0.2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    rays_o = torch.tensor([0.0, 0.0, -distance], dtype=dtype).repeat(count, 1)
    rays_d = torch.tensor([0.0, 0.0, 1.0], dtype=dtype) + spread * torch.randn(count, 3, generator=g, dtype=dtype)
    return rays_o, rays_d / rays_d.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("scale", [1.0, 3.0, 0.3])  # exact SDF, overshooting field, slow field
def test_sphere_tracing_hits_analytic_sphere(scale):
    rays_o, rays_d = rays_towards_origin()
    sdf = sphere_sdf(0.5)
    # the tracer may trust fronts that pass each other only for fields with |grad f| <= lipschitz
    config = TracingConfig(radius=1.0, steps=12, lipschitz=max(1.0, scale))
    hits = trace_surface(lambda p: scale * sdf(p), rays_o, rays_d, config)
    t_true, hit_true = analytic_first_hit(rays_o, rays_d, 0.5)
    assert 50 < int(hit_true.sum()) < 400
    assert torch.equal(hits.hit, hit_true)
    assert (hits.t - t_true)[hit_true].abs().max() < 1e-4


def test_sphere_tracing_misses_report_the_smallest_sdf_point():
    rays_o = torch.tensor([[0.0, 0.7, -3.0]])
    rays_d = torch.tensor([[0.0, 0.0, 1.0]])
    hits = trace_surface(sphere_sdf(0.5), rays_o, rays_d, TracingConfig(radius=1.0))
    assert not hits.hit[0]
    closest = rays_o + hits.t[:, None] * rays_d  # the ray passes closest to the sphere at z = 0
    assert abs(float(closest[0, 2])) < 0.1


# --- sample network ----------------------------------------------------------------------------


def _tiny_net():
    torch.manual_seed(0)
    net = SDFNetwork(SDFNetworkConfig(num_freqs=2, hidden_dim=8, num_layers=3, skip_layers=[], feature_dim=1,
                                      init_radius=0.5, softplus_beta=20.0)).double()
    with torch.no_grad():  # move away from the symmetric init so every parameter matters
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
        net._calibrate_init()  # and keep the zero level set near radius 0.5
    return net


def test_sample_network_gradient_matches_finite_differences(one_thread):
    net = _tiny_net()
    rays_o, rays_d = rays_towards_origin(count=5, spread=0.05, dtype=torch.float64)
    precise = TracingConfig(radius=1.0, steps=10, threshold=1e-12, samples=16, secant_steps=12)
    weights = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)

    def surface_objective():
        hits = trace_surface(net.sdf, rays_o, rays_d, precise)
        assert bool(hits.hit.all())
        return (rays_o + hits.t[:, None] * rays_d) @ weights, hits

    hits = trace_surface(net.sdf, rays_o, rays_d, precise)
    assert int(hits.hit.sum()) >= 3
    rays_o, rays_d = rays_o[hits.hit], rays_d[hits.hit]
    _, hits = surface_objective()
    x0 = rays_o + hits.t[:, None] * rays_d
    sdf, _, grad = net.sdf_and_gradient(x0, create_graph=True)
    points = sample_network(x0, rays_d, sdf, grad)
    assert torch.allclose(points, x0)  # same value, new gradients
    params = list(net.parameters())
    analytic = torch.autograd.grad((points @ weights).sum(), params)
    eps = 1e-6
    checked = 0
    for p, g in zip(params, analytic):
        for k in range(min(p.numel(), 2)):
            with torch.no_grad():
                p.view(-1)[k] += eps
            plus = surface_objective()[0].sum()
            with torch.no_grad():
                p.view(-1)[k] -= 2 * eps
            minus = surface_objective()[0].sum()
            with torch.no_grad():
                p.view(-1)[k] += eps
            numeric = float(plus - minus) / (2 * eps)
            assert abs(numeric - float(g.view(-1)[k])) < 1e-4 + 1e-3 * abs(numeric)
            checked += 1
    assert checked >= 6


def test_a_grazing_ray_moves_the_surface_point_a_bounded_amount():
    from pipeline.models.idr.model import MIN_INCIDENCE

    x0 = torch.zeros(2, 3)
    rays_d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    # unit normals: one facing the ray, one at 89.97 deg to it (n . v = -5e-4)
    grad = torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, -5e-4]])
    sdf = torch.zeros(2, requires_grad=True)
    points = sample_network(x0, rays_d, sdf, grad)
    (dz_frontal,) = torch.autograd.grad(points[0, 2], sdf, retain_graph=True)
    (dz_grazing,) = torch.autograd.grad(points[1, 2], sdf)
    assert float(dz_frontal[0]) == pytest.approx(1.0)  # f up by e: the hit moves e further along the ray
    assert float(dz_grazing[1]) == pytest.approx(1.0 / MIN_INCIDENCE)  # not 1 / 5e-4 = 2000
