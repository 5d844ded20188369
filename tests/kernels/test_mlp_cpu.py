"""The fused CPU kernel of ReLU MLPs (pipeline/kernels/csrc/mlp_cpu.cpp): the same values and gradients as
one torch op per layer, whatever the shapes, thread count and order of derivatives."""
import pytest
import torch

from pipeline.kernels import cpu_kernels
from pipeline.kernels import mlp_cpu
from pipeline.models.components.mlp import MLP


@pytest.fixture(autouse=True)
def _require_kernels():
    if not cpu_kernels.available():
        pytest.skip(f"C++ CPU kernels unavailable: {cpu_kernels.unavailable_reason()}")


def _pair(in_dim, out_dim, width, hidden, skips=(), seed=0):
    """The same MLP twice: fused kernel and torch layers."""
    torch.manual_seed(seed)
    fused = MLP(in_dim, out_dim, width, hidden, skips=skips, backend="cpu")
    reference = MLP(in_dim, out_dim, width, hidden, skips=skips, backend="torch")
    reference.load_state_dict(fused.state_dict())
    with torch.no_grad():  # biases away from 0, so that ReLUs cut in different places per unit
        for layer in fused._layers():
            layer.bias.uniform_(-0.5, 0.5)
    reference.load_state_dict(fused.state_dict())
    return fused, reference


# the hash field's two MLPs, odd widths that do not fill vectors, the NeRF trunk's skip connection
# (also on odd widths), a 256-wide one, one layer only, one point, none
@pytest.mark.parametrize("in_dim,out_dim,width,hidden,skips,n", [
    (32, 16, 64, 1, (), 1000), (31, 3, 64, 2, (), 777), (5, 7, 13, 3, (), 200), (63, 257, 64, 6, (4,), 400),
    (7, 5, 13, 4, (1, 3), 300), (283, 3, 128, 1, (), 300), (4, 2, 64, 0, (), 50), (32, 16, 64, 1, (), 1),
    (32, 16, 64, 1, (), 0)])
def test_the_fused_mlp_matches_torch_layers_in_values_and_gradients(in_dim, out_dim, width, hidden, skips, n):
    fused, reference = _pair(in_dim, out_dim, width, hidden, skips)
    x = torch.randn(n, in_dim, requires_grad=True)
    assert fused.runs_fused(x) and not reference.runs_fused(x)
    a, b = fused(x), reference(x)
    assert a.shape == b.shape == (n, out_dim)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    head = torch.randn(n, out_dim)
    grads_fused = torch.autograd.grad((a * head).sum(), [x, *fused.parameters()])
    grads_torch = torch.autograd.grad((b * head).sum(), [x, *reference.parameters()])
    for ours, theirs in zip(grads_fused, grads_torch):
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4 * max(1.0, theirs.abs().amax().item() if theirs.numel() else 0.0))


def test_the_fused_mlp_gives_the_same_result_on_one_and_two_threads():
    fused, _ = _pair(32, 16, 64, 1)
    x = torch.randn(5000, 32, requires_grad=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            out = fused(x)
            results.append([out, *torch.autograd.grad(out.square().sum(), [x, *fused.parameters()])])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    for one, two in zip(results[0][2:], results[1][2:]):  # weight sums: per-thread partial sums
        assert torch.allclose(one, two, rtol=1e-5, atol=1e-5 * two.abs().amax().item())


def test_the_fused_mlp_gives_second_derivatives():
    # a gradient penalty on the input gradient differentiates the backward itself (create_graph)
    fused, reference = _pair(6, 1, 32, 3, skips=(2,))
    x = torch.randn(100, 6, requires_grad=True)
    results = []
    for mlp in (fused, reference):
        (grad_x,) = torch.autograd.grad(mlp(x).sum(), x, create_graph=True)
        penalty = (grad_x.norm(dim=-1) - 1).square().mean()
        params = list(mlp.parameters())  # the last bias does not reach grad_x: no gradient
        grads = torch.autograd.grad(penalty, params, allow_unused=True)
        results.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])
    for ours, theirs in zip(*results):
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_only_float32_relu_mlps_run_fused():
    x = torch.randn(10, 8)
    assert MLP(8, 3, 16, 2).runs_fused(x)  # backend auto
    assert not MLP(8, 3, 16, 2, activation="siren").runs_fused(x)
    assert MLP(8, 3, 16, 4, skips=(2,)).runs_fused(x)
    assert not MLP(8, 3, 16, 4, skips=(0,)).runs_fused(x)  # [x, x] into the first layer: torch layers
    assert not MLP(8, 3, 16, 2).double().runs_fused(x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not MLP(8, 3, 16, 2).runs_fused(x)
    with cpu_kernels.disabled():  # no compiler (or RECON_CPU_KERNELS=0): torch layers
        mlp = MLP(8, 3, 16, 2)
        assert not mlp.runs_fused(x) and mlp(x).shape == (10, 3)
    with pytest.raises(ValueError, match="MLP backend"):
        MLP(8, 3, backend="cuda")


def test_the_fused_mlp_trains_like_torch_layers():
    # a few Adam steps on the same data: both reach the same weights (to float rounding)
    fused, reference = _pair(3, 2, 32, 2)
    x, y = torch.randn(512, 3), torch.randn(512, 2)
    for mlp in (fused, reference):
        opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
        for _ in range(20):
            opt.zero_grad()
            (mlp(x) - y).square().mean().backward()
            opt.step()
    for ours, theirs in zip(fused.parameters(), reference.parameters()):
        assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-4)
    assert mlp_cpu.supports(x, [p for p in fused.parameters() if p.dim() == 2])


def test_rendering_without_gradients_gives_the_same_values():
    # under no_grad the kernel keeps no hidden activations (nothing will differentiate them)
    fused, reference = _pair(31, 3, 64, 2, skips=(1,))
    x = torch.randn(1000, 31)
    with torch.no_grad():
        fast, slow = fused(x), reference(x)
    assert not fast.requires_grad
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-5)
    assert torch.equal(fast, fused(x).detach())  # the same kernel with the backward's activations kept


@pytest.mark.parametrize("skips", [(), (2,)])
def test_an_input_in_parts_is_the_concatenation_and_only_parts_that_need_it_get_gradients(skips):
    # the colour MLP's input: encoded directions (data) beside geometry features (learned)
    fused, reference = _pair(16 + 15, 3, 64, 3, skips)
    directions = torch.randn(700, 16)
    features = torch.randn(700, 15, requires_grad=True)
    a = fused([directions, features])
    b = reference(torch.cat([directions, features], -1))
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    head = torch.randn_like(a)
    ours = torch.autograd.grad((a * head).sum(), [features, *fused.parameters()])
    theirs = torch.autograd.grad((b * head).sum(), [features, *reference.parameters()])
    for g_ours, g_theirs in zip(ours, theirs):
        assert torch.allclose(g_ours, g_theirs, rtol=1e-4, atol=1e-4 * max(1.0, g_theirs.abs().amax().item()))
    assert not directions.requires_grad and directions.grad is None


def test_torch_layers_take_an_input_in_parts_too():
    # siren (and CUDA, float64, autocast) run torch layers: the parts are concatenated there
    torch.manual_seed(0)
    mlp = MLP(5, 2, 16, 2, activation="siren")
    a, b = torch.randn(40, 2), torch.randn(40, 3)
    assert not mlp.runs_fused([a, b])
    assert torch.equal(mlp([a, b]), mlp(torch.cat([a, b], -1)))


def test_an_input_of_the_wrong_width_is_an_error_not_a_stray_read():
    mlp = MLP(8, 3, 16, 2, backend="cpu")
    with pytest.raises(ValueError, match="input has 7 columns"):
        mlp(torch.randn(10, 7))
    with pytest.raises(ValueError, match="input parts"):
        mlp([torch.randn(10, 4), torch.randn(10, 5)])


@pytest.mark.parametrize("share_alive", [0.4, 0.0])
def test_rows_without_gradient_are_skipped_and_the_gradients_stay_the_same(share_alive):
    # a renderer zeroes the gradients of samples hidden behind opaque ones: the kernel runs the
    # backward of the other rows only, and the parts' gradients are zero on the skipped rows
    fused, reference = _pair(16 + 15, 3, 64, 3, (2,))
    directions = torch.randn(900, 16)
    features = torch.randn(900, 15, requires_grad=True)
    head = torch.randn(900, 3) * (torch.rand(900, 1) < share_alive)
    assert (head.ne(0).any(1).float().mean() < mlp_cpu.COMPACT_BELOW)  # the gathering path runs
    ours = torch.autograd.grad((fused([directions, features]) * head).sum(), [features, *fused.parameters()])
    theirs = torch.autograd.grad((reference(torch.cat([directions, features], -1)) * head).sum(),
                                 [features, *reference.parameters()])
    for g_ours, g_theirs in zip(ours, theirs):
        assert torch.allclose(g_ours, g_theirs, rtol=1e-4, atol=1e-4 * max(1.0, g_theirs.abs().amax().item()))
    assert torch.equal(ours[0][head.eq(0).all(1)], torch.zeros(int(head.eq(0).all(1).sum()), 15))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_live_rows_are_the_rows_with_a_non_zero_entry(dtype):
    grad = torch.randn(1000, 7, dtype=dtype) * (torch.rand(1000, 1) < 0.5)
    grad[3] = 0.0
    grad[3, 6] = 1e-30  # one non-zero at the end of a row still counts
    grad[5] = -0.0
    grad[8, 2] = float("nan")  # must reach the gradients: not dropped
    expected = torch.nonzero((grad != 0).any(1) | grad.isnan().any(1))[:, 0]
    assert torch.equal(cpu_kernels.live_rows(grad.contiguous()), expected)
    assert cpu_kernels.live_rows(torch.zeros(0, 7, dtype=dtype)).numel() == 0


@pytest.mark.parametrize("hidden,order,share_alive", [(2, "sorted", 1.0), (1, "shuffled", 1.0), (2, "sorted", 0.3),
                                                      (0, "sorted", 1.0)])
def test_features_shared_by_the_samples_of_a_ray_are_the_gathered_input(hidden, order, share_alive):
    # the colour MLP's encoded directions, one row per ray: the kernel multiplies them by the first
    # layer once per ray and sums their gradient over each ray's samples
    fused, reference = _pair(16 + 15, 3 if hidden else 8, 64, hidden)
    rays = torch.randn(50, 16, requires_grad=True)
    ray_index = torch.randint(0, 50, (900,))
    ray_index = torch.sort(ray_index).values if order == "sorted" else ray_index
    features = torch.randn(900, 15, requires_grad=True)
    head = torch.randn(900, fused.out_dim) * (torch.rand(900, 1) < share_alive)
    a = fused(features, per_ray=(rays, ray_index))
    b = reference(torch.cat([rays[ray_index], features], -1))
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    ours = torch.autograd.grad((a * head).sum(), [rays, features, *fused.parameters()])
    theirs = torch.autograd.grad((b * head).sum(), [rays, features, *reference.parameters()])
    for g_ours, g_theirs in zip(ours, theirs):
        assert torch.allclose(g_ours, g_theirs, rtol=1e-4, atol=1e-4 * max(1.0, g_theirs.abs().amax().item()))
    with torch.no_grad():  # rendering
        assert torch.allclose(fused(features, per_ray=(rays, ray_index)), b, rtol=1e-5, atol=1e-5)


def test_features_per_ray_give_second_derivatives_and_refuse_a_bad_index():
    fused, reference = _pair(4 + 3, 1, 32, 2)
    rays, ray_index = torch.randn(10, 4), torch.arange(100) // 10
    x = torch.randn(100, 3, requires_grad=True)
    penalties = []
    for out in (fused(x, per_ray=(rays, ray_index)), reference(torch.cat([rays[ray_index], x], -1))):
        (grad_x,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        penalties.append(grad_x.square().sum())
    assert torch.allclose(*penalties, rtol=1e-4)
    with pytest.raises(ValueError, match="index"):
        fused(x, per_ray=(rays, ray_index + 1))  # ray 10 of 10
