"""The SDF-to-opacity rules against closed-form cases: along a ray through a plane, f(t) = d - t,
NeuS's weights are the logistic density of the crossing (they peak at d, sum to 1, and their
expected depth is d), where the naive density sigma = phi_s(f) is biased towards the camera; the
midpoint form NeuS trains with equals the endpoint form on a plane; the occupancy variant; the
sphere segments; and hierarchical sampling that gathers at the first zero crossing."""
import math

import pytest
import torch

from pipeline.models.sdf.rendering import (neus_alpha, neus_section_alpha, neus_upsample, occupancy_alpha,
                                           sphere_segments, weights_from_alpha)

D = 0.8317  # the plane's distance along the ray, deliberately off the sample grid


def plane(num=1025, length=2.0):
    """Samples t (1, num) on [0, length] and the plane's SDF there, f = D - t (positive in front)."""
    t = torch.linspace(0.0, length, num, dtype=torch.float64)[None]
    return t, D - t


def expected_depth(weights, t_mid):
    return float((weights * t_mid).sum() / weights.sum())


@pytest.mark.parametrize("s", [64.0, 256.0])
def test_neus_weights_on_a_plane_peak_at_the_surface_sum_to_one_and_are_unbiased(s):
    t, f = plane()
    weights = weights_from_alpha(neus_alpha(f, s))
    mid = 0.5 * (t[:, 1:] + t[:, :-1])
    spacing = float(t[0, 1] - t[0, 0])
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
    assert abs(float(mid[0, weights.argmax()]) - D) <= spacing
    assert expected_depth(weights, mid) == pytest.approx(D, abs=1e-4)
    # the weights are the logistic density's mass in each section: Phi_s(f_i) - Phi_s(f_i+1)
    exact = torch.sigmoid(s * f[:, :-1]) - torch.sigmoid(s * f[:, 1:])
    torch.testing.assert_close(weights, exact / torch.sigmoid(s * f[:, :1]), atol=1e-6, rtol=1e-5)


def naive_logistic_weights(f_mid, deltas, s):
    """The naive solution NeuS argues against: density sigma = phi_s(f), the logistic density."""
    sigmoid = torch.sigmoid(s * f_mid)
    sigma = s * sigmoid * (1 - sigmoid)
    return weights_from_alpha(1.0 - torch.exp(-sigma * deltas))


def test_the_naive_logistic_density_is_biased_towards_the_camera_and_neus_is_not():
    s = 64.0
    t, f = plane()
    mid, deltas = 0.5 * (t[:, 1:] + t[:, :-1]), t[:, 1:] - t[:, :-1]
    naive = naive_logistic_weights(D - mid, deltas, s)
    neus = weights_from_alpha(neus_alpha(f, s))
    naive_bias, neus_bias = expected_depth(naive, mid) - D, expected_depth(neus, mid) - D
    # measured: naive -7.7e-3 (its peak 6.8e-3 in front of the surface), NeuS below 1e-6
    assert naive_bias < -5e-3 and float(mid[0, naive.argmax()]) < D - 3e-3
    assert abs(neus_bias) < abs(naive_bias) / 20
    # and the naive density never becomes opaque: total opacity 1 - 1/e
    assert float(naive.sum()) == pytest.approx(1 - math.exp(-1), abs=2e-3)


def test_the_midpoint_form_equals_the_endpoint_form_on_a_plane():
    t, f = plane(num=65)
    s = torch.tensor(100.0, dtype=torch.float64)
    dists = t[:, 1:] - t[:, :-1]
    f_mid = D - (t[:, :-1] + 0.5 * dists)
    cos = -torch.ones_like(f_mid)  # the ray runs against the SDF's gradient (into the solid)
    for anneal in (0.0, 0.5, 1.0):  # at cos = -1 the annealed slope is -1 too
        torch.testing.assert_close(neus_section_alpha(f_mid, cos, dists, s, anneal), neus_alpha(f, s))


def test_cos_annealing_gives_sections_leaving_a_surface_opacity_only_early():
    f_mid, dists = torch.zeros(1, 1), torch.full((1, 1), 0.05)
    leaving = torch.full((1, 1), 0.5)  # the SDF grows along the ray
    assert float(neus_section_alpha(f_mid, leaving, dists, 100.0, anneal=1.0)) == 0.0
    # slope -(1 - 0.5) / 2: f from +0.00625 to -0.00625, alpha = 1 - Phi(-0.625) / Phi(0.625) = 0.464
    assert float(neus_section_alpha(f_mid, leaving, dists, 100.0, anneal=0.0)) == pytest.approx(0.4647, abs=1e-3)


def test_a_ray_starting_deep_inside_the_solid_is_stopped_at_once():
    """No 0/0 deep inside (Phi_s(f) underflows): the opacity there tends to 1 - exp(-s |df|)."""
    t = torch.linspace(0.0, 1.0, 33)[None]
    alpha = neus_alpha(-2.0 - t, 500.0)  # inside and going deeper
    weights = weights_from_alpha(alpha)
    assert torch.isfinite(alpha).all() and float(weights[0, 0]) > 0.99 and float(weights.sum()) <= 1.0 + 1e-6


def test_occupancy_alpha_is_the_occupancy_with_the_surface_at_one_half():
    f = torch.tensor([[1.0, 0.01, 0.0, -0.01, -1.0]], dtype=torch.float64)
    alpha = occupancy_alpha(f, 20.0)
    assert ((alpha > 0) & (alpha < 1)).all()
    assert float(alpha[0, 2]) == 0.5 and float(alpha[0, 0]) < 1e-6 and float(alpha[0, -1]) > 1 - 1e-6
    # along the plane the weights concentrate at the first samples past f = 0 and sum to 1
    t, f = plane(num=257)
    weights = weights_from_alpha(occupancy_alpha(f, 2000.0))
    spacing = float(t[0, 1] - t[0, 0])
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
    assert expected_depth(weights, t) == pytest.approx(D, abs=spacing)


def test_sphere_segments():
    rays_o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 2.0, -3.0], [0.0, 0.0, 3.0]])
    rays_d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far, hit = sphere_segments(rays_o, rays_d, 1.0)
    assert hit.tolist() == [True, False, False]
    torch.testing.assert_close(near[0], torch.tensor(2.0)) and torch.testing.assert_close(far[0], torch.tensor(4.0))
    # a miss: the background begins at the closest approach; a sphere behind the camera: at the camera
    assert float(near[1]) == float(far[1]) == 3.0 and float(near[2]) == float(far[2]) == 0.0


@pytest.mark.parametrize("occupancy", [False, True])
def test_hierarchical_sampling_gathers_at_the_first_zero_crossing(occupancy):
    radius = 0.5
    rays_o = torch.tensor([[0.0, 0.0, -3.0], [0.1, 0.0, -3.0]])
    rays_d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far, _ = sphere_segments(rays_o, rays_d, 1.0)
    coarse = near[:, None] + (far - near)[:, None] * torch.linspace(0, 1, 16)

    def sphere_sdf(points):
        return points.norm(dim=-1) - radius

    z = neus_upsample(rays_o, rays_d, coarse, sphere_sdf, 32, 4, occupancy=occupancy)
    assert z.shape == (2, 48) and (z[:, 1:] >= z[:, :-1]).all()
    first = 3.0 - torch.sqrt(radius ** 2 - rays_o[:, 0] ** 2)  # the front surface of each ray
    new = z.shape[1] - coarse.shape[1]
    near_front = ((z - first[:, None]).abs() < 0.05).sum(1)
    near_back = ((z - (6.0 - first)[:, None]).abs() < 0.05).sum(1)
    # most new samples sit at the front surface, none gather at the back one
    assert (near_front >= new // 2).all() and (near_back <= 2).all(), (near_front, near_back)
