"""The multiresolution hash grid: gradients, backend agreement, dense levels."""
import pytest
import torch

from pipeline.kernels.hashgrid_torch import hashgrid_torch
from pipeline.models.components.hashgrid import HashGridConfig, HashGridEncoding, level_layout
from tests.conftest import requires_cuda

# 6 levels: the coarse ones are dense, the fine ones hashed (table 2^10 rows)
SMALL = HashGridConfig(levels=6, features_per_level=2, log2_table_size=10, base_resolution=2,
                       finest_resolution=64, backend="torch")


def _grid(config=SMALL, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    grid = HashGridEncoding(config).to(dtype)
    with torch.no_grad():
        grid.table.normal_()  # large values, so that errors would show
    return grid


def test_layout_has_dense_coarse_levels_and_hashed_fine_levels():
    layout = level_layout(SMALL)
    assert layout["dense"].tolist()[:2] == [True, True] and not bool(layout["dense"][-1])
    assert int(layout["size"][-1]) == 1 << 10
    assert HashGridEncoding(SMALL).out_dim == 12


def test_gradients_match_finite_differences_in_float64():
    # a tiny table (64 rows per level) keeps the numerical Jacobian cheap; level 0 is dense
    grid = _grid(HashGridConfig(levels=3, features_per_level=2, log2_table_size=6, base_resolution=2,
                                finest_resolution=16, backend="torch"), dtype=torch.float64)
    assert bool(grid.dense[0]) and not bool(grid.dense[-1])
    x = torch.rand(16, 3, dtype=torch.float64, requires_grad=True)

    def fn(points, table):
        return hashgrid_torch(points, table, grid.scale.double(), grid.stride, grid.dense, grid.offset,
                              grid.table_mask)

    assert torch.autograd.gradcheck(fn, (x, grid.table), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("features", [1, 2, 4])
def test_reference_and_naive_backends_agree(features):
    config = HashGridConfig(**{**SMALL.__dict__, "features_per_level": features})
    grid = _grid(config)
    x = torch.rand(500, 3, requires_grad=True)
    _assert_backends_agree(grid, x, "torch", "naive", x_rtol=1e-3, x_atol=1e-2)



@pytest.mark.parametrize("features", [2, 4])
def test_reference_taking_levels_a_group_at_a_time_gives_the_same_results(monkeypatch, features):
    # big batches go through the reference a few levels at a time (small temporaries); here one
    # level per group, second derivatives included, against the naive backend
    from pipeline.kernels import hashgrid_torch as reference

    monkeypatch.setattr(reference, "_GROUP_BYTES", 1)
    assert len(reference._level_groups(500, 6, features, 4, torch.device("cpu"))) == 6
    grid = _grid(HashGridConfig(**{**SMALL.__dict__, "features_per_level": features}))
    x = torch.rand(500, 3, requires_grad=True)
    _assert_backends_agree(grid, x, "torch", "naive", x_rtol=1e-3, x_atol=1e-2)
    eikonal = [(torch.autograd.grad(grid(x, backend=b).sum(), x, create_graph=True)[0] ** 2).sum()
               for b in ("torch", "naive")]
    second = [torch.autograd.grad(e, grid.table)[0] for e in eikonal]
    assert torch.allclose(second[0], second[1], rtol=1e-4, atol=1e-3)

def _assert_backends_agree(grid, x, backend, other, x_rtol, x_atol):
    """Same features, same table gradients and (to x_rtol / x_atol) the same input gradients."""
    a, b = grid(x, backend=backend), grid(x, backend=other)
    assert torch.allclose(a, b, atol=1e-5)
    weights = torch.randn_like(a)
    g_a = torch.autograd.grad((a * weights).sum(), [x, grid.table])
    g_b = torch.autograd.grad((b * weights).sum(), [x, grid.table])
    assert torch.allclose(g_a[1], g_b[1], atol=1e-4)
    assert torch.allclose(g_a[0], g_b[0], rtol=x_rtol, atol=x_atol)


def test_compiled_cpu_kernels_agree_with_the_eager_reference():
    from pipeline.kernels import hashgrid_compiled

    if not hashgrid_compiled.fused_available():
        pytest.skip("torch.compile fast path unavailable here (no C++ compiler or RECON_HASHGRID_COMPILE=0)")
    grid = _grid(HashGridConfig(**{**SMALL.__dict__, "features_per_level": 2}))
    x = torch.rand(hashgrid_compiled.MIN_POINTS + 100, 3, requires_grad=True)  # large enough to take the fast path
    _assert_backends_agree(grid, x, "compiled", "torch", x_rtol=1e-4, x_atol=1e-3)
    assert hashgrid_compiled.fused_available(), "the compiled path failed and fell back"


def _require_cpu_kernels():
    from pipeline.kernels import hashgrid_cpu

    if not hashgrid_cpu.available():
        pytest.skip(f"C++ hash-grid kernels unavailable: {hashgrid_cpu.unavailable_reason()}")


@pytest.mark.parametrize("features", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_kernels_agree_with_the_reference(features, dtype):
    _require_cpu_kernels()
    grid = _grid(HashGridConfig(**{**SMALL.__dict__, "features_per_level": features}), dtype=dtype)
    x = torch.rand(3000, 3, dtype=dtype, requires_grad=True)
    a, b = grid(x, backend="cpu"), grid(x, backend="torch")
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(a, b, rtol=tol, atol=tol)
    weights = torch.randn_like(a)
    g_cpu = torch.autograd.grad((a * weights).sum(), [x, grid.table])
    g_ref = torch.autograd.grad((b * weights).sum(), [x, grid.table])
    for ours, ref in zip(g_cpu, g_ref):
        assert torch.allclose(ours, ref, rtol=100 * tol, atol=100 * tol)


def test_cpu_kernels_skip_points_without_gradient_and_give_the_same_gradients():
    # a renderer zeroes the gradients of hidden samples: the backward runs the other points only
    _require_cpu_kernels()
    grid = _grid()
    x = torch.rand(3000, 3, requires_grad=True)
    weights = torch.randn(3000, grid.out_dim) * (torch.rand(3000, 1) < 0.3)
    g_cpu = torch.autograd.grad((grid(x, backend="cpu") * weights).sum(), [x, grid.table])
    g_ref = torch.autograd.grad((grid(x, backend="torch") * weights).sum(), [x, grid.table])
    for ours, ref in zip(g_cpu, g_ref):
        assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-4)
    hidden = weights.eq(0).all(1)
    assert torch.count_nonzero(g_cpu[0][hidden]) == 0


def test_cpu_kernel_table_gradient_is_the_same_for_any_thread_count():
    _require_cpu_kernels()
    grid = _grid()
    x = torch.rand(5000, 3)
    grads = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            grads.append(torch.autograd.grad(grid(x, backend="cpu").square().sum(), grid.table)[0])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0], grads[1])  # each level is scattered by one thread, in point order


def test_cpu_kernels_give_second_derivatives_for_an_eikonal_loss():
    _require_cpu_kernels()
    grid = _grid(dtype=torch.float64)
    head = torch.randn(grid.out_dim, dtype=torch.float64)
    x = torch.rand(200, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for backend in ("cpu", "torch"):
        f = torch.tanh(grid(x, backend=backend)) @ head
        (grad_x,) = torch.autograd.grad(f.sum(), x, create_graph=True)
        eikonal = ((grad_x.norm(dim=-1) - 1) ** 2).mean()
        results.append(torch.autograd.grad(eikonal, [grid.table, x]))
    for ours, ref in zip(*results):
        assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-9)


def test_cpu_kernels_stay_in_bounds_for_points_outside_the_box_and_nan():
    _require_cpu_kernels()
    from pipeline.kernels.hashgrid_cpu import hashgrid_cpu

    grid = _grid()
    args = (grid.table, grid.scale, grid.stride, grid.dense, grid.offset, grid.table_mask)
    outside = torch.tensor([[1.5, -0.2, 0.5], [1e30, -1e30, 2.0]])
    clamped = outside.clamp(0, 1)
    assert torch.allclose(hashgrid_cpu(outside, *args), hashgrid_cpu(clamped, *args))  # the kernel clamps too
    nan_out = hashgrid_cpu(torch.tensor([[float("nan"), 0.5, 0.5]]), *args)  # no stray read: NaN features
    assert nan_out.shape == (1, grid.out_dim)


def test_auto_uses_the_cpu_kernels_and_falls_back_to_the_reference_without_a_compiler(monkeypatch, tmp_path):
    from pipeline.kernels import cpu_kernels
    from pipeline.kernels import hashgrid_cpu

    grid = _grid(HashGridConfig(**{**SMALL.__dict__, "backend": "auto"}))
    expected = "cpu" if hashgrid_cpu.available() else "torch"
    assert grid.resolve_backend(torch.device("cpu")) == expected
    with cpu_kernels.disabled():  # for A/B runs: the PyTorch versions inside, the kernels after
        assert grid.resolve_backend(torch.device("cpu")) == "torch"
    assert grid.resolve_backend(torch.device("cpu")) == expected
    # a machine without a working compiler: a clear log line, and the reference runs
    monkeypatch.setattr(cpu_kernels, "_state", {"lib": None, "error": None})
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("RECON_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_kernels.shutil, "which", lambda name: None)
    assert not hashgrid_cpu.available() and "no C++ compiler" in hashgrid_cpu.unavailable_reason()
    assert grid.resolve_backend(torch.device("cpu")) == "torch"
    x = torch.rand(100, 3)
    assert torch.allclose(grid(x, backend="cpu"), grid(x, backend="torch"))


def test_second_derivatives_for_an_eikonal_loss_match_the_naive_backend():
    # IDR's eikonal loss differentiates grad_x f again (create_graph=True): the reference backend
    # must give the same second-order gradients as plain autograd, for the table and for x
    grid = _grid(dtype=torch.float64)
    head = torch.randn(grid.out_dim, dtype=torch.float64)
    x = torch.rand(300, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for backend in ("torch", "naive"):
        f = torch.tanh(grid(x, backend=backend)) @ head  # a nonlinear head, so the Hessian has mixed terms
        (grad_x,) = torch.autograd.grad(f.sum(), x, create_graph=True)
        eikonal = ((grad_x.norm(dim=-1) - 1) ** 2).mean()
        results.append((grad_x.detach(), *torch.autograd.grad(eikonal, [grid.table, x])))
    for ours, naive in zip(*results):
        assert torch.allclose(ours, naive, rtol=1e-9, atol=1e-9)
    assert results[0][1].abs().sum() > 0


def test_gradcheck_of_the_gradient_in_float64():
    grid = _grid(HashGridConfig(levels=2, features_per_level=2, log2_table_size=6, base_resolution=2,
                                finest_resolution=8, backend="torch"), dtype=torch.float64)
    x = torch.rand(8, 3, dtype=torch.float64, requires_grad=True)

    def fn(points, table):
        out = hashgrid_torch(points, table, grid.scale.double(), grid.stride, grid.dense, grid.offset,
                             grid.table_mask)
        return (out ** 2).sum(-1)

    assert torch.autograd.gradgradcheck(fn, (x, grid.table), eps=1e-6, atol=1e-5)


def test_interpolation_is_exact_at_grid_vertices_and_linear_between():
    grid = _grid(HashGridConfig(levels=1, features_per_level=1, log2_table_size=12, base_resolution=4,
                                finest_resolution=4, backend="torch"))
    table = grid.table.detach()[:, 0]
    stride = int(grid.stride[0])  # 6 vertices per axis, dense
    vertex = torch.tensor([[1 / 4, 2 / 4, 3 / 4]])  # vertex (1, 2, 3)
    assert torch.allclose(grid(vertex)[0, 0], table[1 + 2 * stride + 3 * stride ** 2], atol=1e-6)
    mid = torch.tensor([[1.5 / 4, 2 / 4, 3 / 4]])  # halfway to vertex (2, 2, 3)
    expected = 0.5 * (table[1 + 2 * stride + 3 * stride ** 2] + table[2 + 2 * stride + 3 * stride ** 2])
    assert torch.allclose(grid(mid)[0, 0], expected, atol=1e-6)


def test_inputs_outside_the_unit_cube_are_clamped_and_batch_shapes_kept():
    grid = _grid()
    x = torch.rand(2, 5, 3)
    assert grid(x).shape == (2, 5, 12)
    assert torch.allclose(grid(torch.tensor([[1.5, -0.2, 0.5]])), grid(torch.tensor([[1.0, 0.0, 0.5]])))


def test_a_hash_grid_fits_a_3d_function():
    grid = HashGridEncoding(HashGridConfig(levels=8, features_per_level=2, log2_table_size=14, base_resolution=4,
                                           finest_resolution=128, backend="torch"))
    head = torch.nn.Linear(grid.out_dim, 1)
    opt = torch.optim.Adam(list(grid.parameters()) + list(head.parameters()), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    target = lambda p: torch.sin(6 * p[:, :1]) * torch.cos(4 * p[:, 1:2]) + p[:, 2:]  # noqa: E731
    for _ in range(150):
        p = torch.rand(1024, 3, generator=gen)
        loss = ((head(grid(p)) - target(p)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    p = torch.rand(4096, 3, generator=gen)
    with torch.no_grad():
        assert float(((head(grid(p)) - target(p)) ** 2).mean()) < 5e-3


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        HashGridEncoding(HashGridConfig(backend="magic"))


@requires_cuda
def test_triton_backend_matches_the_reference_on_cuda():
    grid = _grid(HashGridConfig(**{**SMALL.__dict__, "log2_table_size": 14})).cuda()
    x = torch.rand(4096, 3, device="cuda")  # no input gradient: the Triton kernel itself runs
    ref, tri = grid(x, backend="torch"), grid(x, backend="triton")
    assert torch.allclose(ref, tri, atol=1e-5)
    w = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * w).sum(), [grid.table])[0]
    g_tri = torch.autograd.grad((tri * w).sum(), [grid.table])[0]
    assert torch.allclose(g_ref, g_tri, atol=1e-4)
    assert grid.resolve_backend(x.device) in ("triton", "tcnn")


@requires_cuda
def test_triton_backend_gives_input_gradients_through_the_reference_on_cuda():
    grid = _grid(HashGridConfig(**{**SMALL.__dict__, "log2_table_size": 14})).cuda()
    x = torch.rand(1024, 3, device="cuda", requires_grad=True)
    (g_tri,) = torch.autograd.grad(grid(x, backend="triton").sum(), [x])
    (g_ref,) = torch.autograd.grad(grid(x, backend="torch").sum(), [x])
    assert torch.allclose(g_tri, g_ref, atol=1e-4)


_INTERPRETER_CHECK = """
import torch
from pipeline.models.components.hashgrid import HashGridConfig, level_layout
from pipeline.kernels.hashgrid_torch import hashgrid_torch
from pipeline.kernels.hashgrid_triton import hashgrid_triton
torch.manual_seed(0)
layout = level_layout(HashGridConfig(levels=6, log2_table_size=10, base_resolution=4, finest_resolution=64))
table = torch.randn(int(layout["size"].sum()), 2).requires_grad_(True)
x = torch.rand(300, 3)
args = (layout["scale"], layout["stride"], layout["dense"], layout["offset"], int(layout["table_mask"]))
weights = torch.randn(300, 12)
ref = hashgrid_torch(x, table, *args)
out = hashgrid_triton(x, table, *args)
(g_ref,) = torch.autograd.grad((ref * weights).sum(), table)
(g_out,) = torch.autograd.grad((out * weights).sum(), table)
print(float((out - ref).norm() / ref.norm()), float((g_out - g_ref).norm() / g_ref.norm()))
"""


def test_triton_kernels_match_the_reference_in_the_triton_interpreter():
    """The Triton kernels' index and interpolation logic, run on the CPU by Triton's interpreter
    (needs the triton package; it is not a dependency, so CI skips this)."""
    import importlib.util
    import os
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (pip install triton to run the kernels in its interpreter)")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(
        [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    done = subprocess.run([sys.executable, "-c", _INTERPRETER_CHECK], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    forward_error, gradient_error = map(float, done.stdout.split())
    assert forward_error < 1e-6 and gradient_error < 1e-6


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_the_input_gradient_alone_equals_autograds(backend):
    torch.manual_seed(0)
    enc = HashGridEncoding(HashGridConfig(levels=5, features_per_level=2, log2_table_size=10, base_resolution=4,
                                          finest_resolution=64, backend=backend))
    with torch.no_grad():
        enc.table.normal_(0.0, 0.1)
    x = torch.rand(400, 3).requires_grad_(True)
    grad_out = torch.randn(400, enc.out_dim)
    (expected,) = torch.autograd.grad(enc(x), x, grad_out)
    got = enc.input_gradient(x, grad_out)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert not got.requires_grad and enc.table.grad is None
