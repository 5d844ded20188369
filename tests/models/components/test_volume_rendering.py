"""Volume rendering (``pipeline.models.components.volume_rendering``): compositing against the
closed form, packed against dense, gradients gated behind opaque walls, the distortion loss, ray-box
intersection, stratified and hierarchical samples."""
import math

import pytest
import torch

from pipeline.models.components.batch_rows import BatchRows
from pipeline.models.components.volume_rendering import (composite_dense, composite_packed, distortion_loss_packed,
                                                         gate_gradients, ray_aabb, sample_pdf, stratified_samples,
                                                         transmittance_packed)


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


def test_samples_drawn_for_rows_of_a_batch_are_those_rows_of_the_whole_draw():
    """DDP: a rank's stratified and importance samples of its rows are those rows of one process's."""
    gen = torch.Generator().manual_seed(0)
    near = torch.rand(10, generator=gen)
    far = near + 1.0
    weights = torch.rand(10, 8, generator=gen)
    bins = near[:, None] + torch.linspace(0, 1, 9)[None] * (far - near)[:, None]

    def draw(rows=None):
        g = torch.Generator().manual_seed(1)
        s = slice(None) if rows is None else rows.slice
        return (stratified_samples(near[s], far[s], 8, True, g, rows),
                sample_pdf(bins[s], weights[s], 16, False, g, rows))

    whole = draw()
    for rows in (BatchRows.of_rank(10, 0, 3), BatchRows.of_rank(10, 2, 3)):
        for got, want in zip(draw(rows), whole):
            assert torch.equal(got, want[rows.slice])
    with pytest.raises(ValueError, match="4 rays given for 3 rows of a batch of 10"):
        stratified_samples(near[:4], far[:4], 8, True, gen, BatchRows(0, 3, 10))
