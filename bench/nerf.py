"""NeRF benchmark: hash-grid training-step throughput (reference vs naive, torch.compile, GPU
backends) and test PSNR within a training budget. Prints a markdown table.

    python bench/nerf.py                         # speed rows only (about a minute on CPU)
    python bench/nerf.py --quality lego,builtin,fourier --budget 600 --fourier-budget 1200
    flock /tmp/recon-bench.lock python bench/nerf.py --quality lego   # on a shared machine

Quality rows train the nerf stage in a scratch workspace (``--workdir``) on ``../shared/data/lego-200``
(white background) or the built-in synthetic scene (``datasets.synthetic``), and report the test
PSNR written to ``nerf/metrics.json``. ``--from-workspace NAME=W`` reads an existing run instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.models.components.hashgrid import HashGridConfig  # noqa: E402
from pipeline.models.nerf.field import HashNeRFField  # noqa: E402
from pipeline.models.nerf.model import NeRFModelConfig  # noqa: E402
from pipeline.runner.runtime import autocast, cpu_has_bf16_matmul, flush_denormals, keep_freed_memory  # noqa: E402
from pipeline.training.common import adam  # noqa: E402

NO_GPU = "not measured: no GPU in this session"
LEGO = ROOT.parent / "shared" / "data" / "lego-200"
GPU_GRID = HashGridConfig()  # instant-ngp's defaults: L=16, F=2, T=2^19, resolutions 16..2048
CPU_GRID = NeRFModelConfig().grid  # the default NeRF's grid: T=2^17, resolutions 16..1024


def ray_samples(num_rays: int, per_ray: int, device, seed: int = 0):
    """Points along random rays through the unit box, in marching order (like real training): points
    (N, 3), each ray's direction (R, 3) and each point's ray (N,), as the renderer gives the field."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    origins = torch.rand(num_rays, 3, generator=gen) * 2 - 1
    dirs = torch.nn.functional.normalize(torch.randn(num_rays, 3, generator=gen), dim=-1)
    t = torch.linspace(0, 1.0, per_ray)
    points = (origins[:, None] + dirs[:, None] * t[None, :, None]).clamp(-1, 1).reshape(-1, 3)
    ray_index = torch.arange(num_rays).repeat_interleave(per_ray)
    return points.to(device), dirs.to(device), ray_index.to(device)


class ConstantEncoding(torch.nn.Module):
    """A stand-in for the hash grid that costs (almost) nothing: one learnable feature vector for
    every point. A training step with it is the ceiling any grid backend can approach."""

    def __init__(self, out_dim: int):
        super().__init__()
        self.out_dim = out_dim
        self.feature = torch.nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3) -> (N, out_dim)
        return self.feature.expand(x.shape[0], -1)


def make_step(backend: str, device, num_rays=1024, per_ray=64, compile_field=False,
              grid=CPU_GRID, mixed=False, free_grid=False,
              mlp_backend="torch"):
    """One full training step as a closure (field forward, backward and Adam), warmed up, and its
    sample count. ``mixed``: the MLPs under the stage's bf16 autocast (``pipeline.runner.runtime.autocast``:
    CUDA or AMX CPUs). ``free_grid``: the hash grid replaced by :class:`ConstantEncoding` (the rest
    of the step alone). ``mlp_backend``: torch (one op per layer) or auto (the fused C++ MLP on CPU,
    ``mlp_cpu.cpp``)."""
    torch.manual_seed(0)
    grid = HashGridConfig(**{**grid.__dict__, "backend": backend})
    field = HashNeRFField(torch.tensor([[-1.0] * 3, [1.0] * 3]), grid, mlp_backend=mlp_backend).to(device)
    if free_grid:
        field.encoding = ConstantEncoding(field.encoding.out_dim).to(device)
    # the training loop's optimiser (pipeline.training.nerf.make_optimizer): fused Adam where it exists
    opt = adam([{"params": list(field.parameters())}], lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    forward = torch.compile(field) if compile_field else field
    points, dirs, ray_index = ray_samples(num_rays, per_ray, device)
    target = torch.rand(points.shape[0], 3, device=device)

    def step():
        with autocast(device, mixed):
            sigma, rgb = forward(points, dirs, ray_index)
        loss = ((rgb.float() - target) ** 2).mean() + 1e-3 * sigma.float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up: compilation, and the allocator's heap growing to its steady size
        step()  # (the first steps fault in ~20000 fresh pages; pipeline.runner.runtime.keep_freed_memory)
    return step, points.shape[0]


def step_throughput(backend: str, device, repeats=5, **options) -> float:
    """Samples per second of one training step (median of ``repeats``); options: :func:`make_step`."""
    return interleaved_throughputs({"step": make_step(backend, device, **options)}, repeats)["step"]


def interleaved_throughputs(steps: dict, rounds: int = 5) -> dict:
    """Samples per second of each ``name: (step, samples)``, timed in turn, one step of each per
    round (median over rounds): on a machine whose speed drifts from minute to minute (the
    development VM: up to 2x), ratios between steps timed minutes apart mean little."""
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, (step, _) in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return {name: steps[name][1] / sorted(t)[len(t) // 2] for name, t in times.items()}


def encoding_fwd_bwd_time(backend: str, device, n=1 << 20, repeats=10, grid=HashGridConfig()) -> float:
    """Seconds for one forward + backward of the hash grid alone on n random points (median)."""
    from pipeline.models.components.hashgrid import HashGridEncoding

    grid = HashGridEncoding(HashGridConfig(**{**grid.__dict__, "backend": backend})).to(device)
    x = torch.rand(n, 3, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        grid(x).sum().backward()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        grid(x).sum().backward()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def gpu_rows(gpu: torch.device) -> list[tuple]:
    """Hash-grid kernel and training-step speed on CUDA (instant-ngp's grid sizes)."""
    name = torch.cuda.get_device_name(gpu)
    rows = []
    n = 1 << 20
    times = {}
    for backend in ("torch", "triton"):
        try:  # a failing backend is reported in the table instead of losing the other rows
            times[backend] = encoding_fwd_bwd_time(backend, gpu, n, 20, GPU_GRID)
        except Exception as exc:
            rows.append((f"GPU hash grid fwd+bwd, {backend}", "failed", f"{type(exc).__name__}: {exc}"[:160]))
    if len(times) == 2:
        t_ref, t_tri = times["torch"], times["triton"]
        rows.append(("GPU hash grid fwd+bwd 2^20 pts, triton vs torch reference", f"{t_ref / t_tri:.1f}x",
                     f"{name}: triton {t_tri * 1e3:.3f} ms ({n / t_tri:.3g} pts/s), torch {t_ref * 1e3:.3f} ms "
                     f"(L=16, F=2, T=2^19, 16..2048)"))
    for backend, per_ray, mixed in (("torch", 64, False), ("triton", 64, False), ("triton", 64, True),
                                    ("triton", 256, True), ("triton", 256, False)):
        rays = 4096
        try:
            sps = step_throughput(backend, gpu, num_rays=rays, per_ray=per_ray, repeats=20, grid=GPU_GRID,
                                  mixed=mixed)
            rows.append((f"GPU train step, {backend} grid, {rays * per_ray} samples, "
                         f"{'bf16 MLPs' if mixed else 'float32'} (samples/s)", f"{sps:.3g}",
                         f"{name}; goal >= 2.5e8 on an H100"))
        except Exception as exc:
            rows.append((f"GPU train step, {backend}, {rays * per_ray} samples", "failed",
                         f"{type(exc).__name__}: {exc}"[:160]))
    return rows


def posed_workspace(folder: Path, data: Path):
    """A workspace at ``folder`` whose poses stage has imported the dataset ``data``."""
    from pipeline.runner.stage import run_stage
    from pipeline.runner.workspace import Workspace
    from stages.poses import STAGE as POSES
    from stages.poses import PosesConfig

    ws = Workspace(folder)
    run_stage(POSES, ws, PosesConfig(data=str(data)))
    return ws


def training_loop_rates(workdir: Path, lego: Path, warmup=300, steps=300) -> dict:
    """Samples/s of the nerf stage's own training loop (``pipeline.training.nerf.train``, default config) on
    lego-200, with the C++ CPU kernels (hash grid, ray marcher, MLPs, SH: "kernels") and without them
    ("pytorch"): ``warmup`` steps first (the occupancy grid's dense warm-up updates), then ``steps``
    timed steps. Real batches: marched samples, occupancy updates, Adam."""
    import contextlib

    from pipeline.kernels import cpu_kernels
    from pipeline.models.nerf.io import build_model
    from pipeline.models.nerf.model import default_aabb
    from pipeline.training.common import settings_from
    from pipeline.training.nerf import NeRFTrainSettings, train
    from pipeline.training.nerf_data import PixelData
    from stages.nerf import STAGE as NERF

    scene = posed_workspace(workdir / "lego-loop", lego).load_scene()
    train_idx = scene.split("train")
    cpu = torch.device("cpu")
    rates = {}
    for name in ("pytorch", "kernels"):
        with cpu_kernels.disabled() if name == "pytorch" else contextlib.nullcontext():
            torch.manual_seed(0)
            cfg = NERF.load_config(None, ["max_time_s=0", f"max_steps={warmup}"])
            settings = settings_from(NeRFTrainSettings, cfg)
            data = PixelData(scene, train_idx, cpu, True)
            model = build_model(cfg.model, default_aabb(scene.bounds, cfg.scene_radius), scene.background,
                                cfg.background)
            model.occupancy.restrict_to_views(data.cameras, cfg.occupancy_min_views)
            train(model, data, settings, cpu, None)
            settings.max_steps = steps
            rates[name] = train(model, data, settings, cpu, None)["samples_per_s"]
    return rates


def train_quality(name: str, workdir: Path, budget: float, extra: list[str], lego: Path = LEGO) -> dict:
    from pipeline.runner.stage import run_stage
    from stages.nerf import STAGE as NERF

    if name.startswith("lego"):
        data = lego
    else:
        from datasets.synthetic import SyntheticConfig, generate

        data = generate(workdir / "synthetic-data", SyntheticConfig())
    ws = posed_workspace(workdir / name, data)
    config_name = {"fourier": "nerf-fourier", "gpu": "nerf-hash-gpu"}.get(name.rsplit("-", 1)[-1])  # None: default
    cfg = NERF.load_config(config_name, [f"max_time_s={budget}", *extra])
    run_stage(NERF, ws, cfg, force=True)
    return json.loads((ws.stage_dir("nerf") / "metrics.json").read_text())


def main():
    flush_denormals()  # before torch starts its threads (see pipeline.runner.runtime)
    keep_freed_memory()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quality", default="", help="comma list of lego, builtin, lego-fourier, lego-gpu (nerf-hash-gpu.yaml)")
    parser.add_argument("--budget", type=float, default=600.0)
    parser.add_argument("--fourier-budget", type=float, default=1200.0)
    parser.add_argument("--workdir", default="/tmp/recon-bench-nerf")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--from-workspace", action="append", default=[], help="NAME=W: report W/nerf/metrics.json")
    parser.add_argument("--skip-speed", action="store_true", help="no CPU speed rows")
    parser.add_argument("--skip-gpu", action="store_true", help="no GPU speed rows (when CUDA is present)")
    parser.add_argument("--skip-loop", action="store_true", help="no lego-200 training-loop row (~1 minute)")
    parser.add_argument("--lego", default=str(LEGO), help="the lego-200 folder")
    parser.add_argument("--set", action="append", default=[], help="extra nerf config override key=value")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("RECON_QUIET", "1")
    rows = []
    cpu = torch.device("cpu")
    load = os.getloadavg()[0]
    machine = f"{os.cpu_count()}-core CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, load {load:.1f}"
    if not args.skip_speed:
        from pipeline.kernels import hashgrid_cpu

        # the rows that the 10x target compares, timed interleaved (interleaved_throughputs)
        kernels_ok = hashgrid_cpu.available()
        steps = {"ref": make_step("torch", cpu), "naive": make_step("naive", cpu)}
        if kernels_ok:
            steps["grid_only"] = make_step("cpu", cpu)
            steps["kernels"] = make_step("cpu", cpu, mlp_backend="auto")
        steps["free_torch"] = make_step("torch", cpu, free_grid=True)
        if kernels_ok:
            steps["free_fused"] = make_step("torch", cpu, free_grid=True, mlp_backend="auto")
        rate = interleaved_throughputs(steps, rounds=5)
        del steps
        ref, naive = rate["ref"], rate["naive"]
        rows.append(("CPU train step, reference hash grid (samples/s)", f"{ref:.3g}", machine))
        rows.append(("CPU train step, naive hash grid (samples/s)", f"{naive:.3g}", machine))
        rows.append(("CPU reference / naive", f"{ref / naive:.1f}x", "target >= 10x"))
        if cpu_has_bf16_matmul():
            mixed = step_throughput("torch", cpu, mixed=True)
            rows.append(("CPU train step, reference + bf16 autocast on AMX (samples/s)", f"{mixed:.3g}",
                         f"{mixed / naive:.1f}x naive (float32), {mixed / ref:.2f}x float32 reference"))
        if kernels_ok:
            grid_only, kernel = rate["grid_only"], rate["kernels"]
            rows.append(("CPU train step, C++ hash grid, torch MLPs (samples/s)", f"{grid_only:.3g}",
                         f"{grid_only / naive:.1f}x naive, {grid_only / ref:.2f}x the reference"))
            rows.append(("CPU train step, C++ kernels: hash grid and fused MLPs (the default on CPU) (samples/s)",
                         f"{kernel:.3g}", f"**{kernel / naive:.1f}x naive**, {kernel / ref:.2f}x the reference"))
        else:
            rows.append(("CPU train step, C++ kernels (backend `cpu`)", "-",
                         f"unavailable: {hashgrid_cpu.unavailable_reason()}"[:160]))
        for name in ("free_torch", "free_fused") if kernels_ok else ("free_torch",):
            ceiling = rate[name]
            rows.append((f"CPU train step, hash grid replaced by a constant, {name.split('_')[1]} "
                         "MLPs (samples/s): the ceiling of any grid", f"{ceiling:.3g}",
                         f"{ceiling / naive:.1f}x naive: MLPs, encodings of directions, loss and Adam alone"))
        t_ref = encoding_fwd_bwd_time("torch", cpu, 1 << 16, 5, CPU_GRID)
        t_naive = encoding_fwd_bwd_time("naive", cpu, 1 << 16, 3, CPU_GRID)
        rows.append(("CPU hash grid alone, fwd+bwd 65k points, reference / naive", f"{t_naive / t_ref:.1f}x",
                     f"{t_ref * 1e3:.0f} ms vs {t_naive * 1e3:.0f} ms (L=16, F=2, T=2^17)"))
        if hashgrid_cpu.available():
            t_kernel = encoding_fwd_bwd_time("cpu", cpu, 1 << 16, 5, CPU_GRID)
            rows.append(("CPU hash grid alone, fwd+bwd 65k points, C++ kernels / naive", f"{t_naive / t_kernel:.1f}x",
                         f"{t_kernel * 1e3:.0f} ms ({t_ref / t_kernel:.1f}x the reference)"))
        if Path(args.lego).is_dir() and not args.skip_loop and hashgrid_cpu.available():
            rates = training_loop_rates(Path(args.workdir), Path(args.lego))
            rows.append(("CPU nerf training loop on lego-200, 300 steps after 300 (samples/s)",
                         f"{rates['kernels']:.3g} vs {rates['pytorch']:.3g}",
                         f"C++ kernels (grid, marcher, MLPs, SH) vs PyTorch: {rates['kernels'] / rates['pytorch']:.2f}x"))
        try:  # the reference's CPU work compiled kernel by kernel (backend "compiled")
            kernels = step_throughput("compiled", cpu)
            t_kernels = encoding_fwd_bwd_time("compiled", cpu, 1 << 16, 5, CPU_GRID)
            from pipeline.kernels.hashgrid_compiled import fused_available

            label = "compiled hash-grid kernels" if fused_available() else "compiled kernels UNAVAILABLE (ran eager)"
            rows.append((f"CPU train step, {label} (samples/s)", f"{kernels:.3g}",
                         f"{kernels / ref:.2f}x of eager, {kernels / naive:.1f}x naive; grid fwd+bwd "
                         f"{t_kernels * 1e3:.0f} ms"))
        except Exception as exc:
            rows.append(("CPU train step, compiled hash-grid kernels", "failed", f"{type(exc).__name__}"))
        try:
            compiled = step_throughput("torch", cpu, compile_field=True)
            rows.append(("CPU train step, torch.compile(field) (samples/s)", f"{compiled:.3g}",
                         f"{compiled / ref:.2f}x of eager"))
        except Exception as exc:  # inductor needs a C++ compiler; report why not
            rows.append(("CPU train step, torch.compile(field)", "failed", f"{type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:80] if str(exc) else ''}"))
    if torch.cuda.is_available() and not args.skip_gpu:
        rows += gpu_rows(torch.device("cuda"))
    elif not torch.cuda.is_available():
        rows.append(("GPU triton vs torch hash grid", "-", NO_GPU))
        rows.append(("GPU train step (samples/s)", "-", NO_GPU))
        rows.append(("GPU lego-200 PSNR in 60 s", "-", NO_GPU))
    for item in [q for q in args.quality.split(",") if q]:
        budget = args.fourier_budget if item.endswith("fourier") else args.budget
        extra = list(args.set) + ([f"cpu_threads={args.threads}"] if args.threads else [])
        m = train_quality(item, Path(args.workdir), budget, extra, Path(args.lego))
        rows.append((f"{item} test PSNR, {budget:.0f} s budget", f"{m['psnr']:.2f} dB",
                     f"SSIM {m['ssim']:.3f}, {m['steps']} steps, {m['samples_per_s']:.3g} samples/s, "
                     f"{m['device']}, load {os.getloadavg()[0]:.1f}"))
    for spec in args.from_workspace:
        name, path = spec.split("=", 1)
        m = json.loads((Path(path) / "nerf" / "metrics.json").read_text())
        rows.append((f"{name} test PSNR ({m['train_time_s']:.0f} s trained)", f"{m['psnr']:.2f} dB",
                     f"SSIM {m['ssim']:.3f}, {m['steps']} steps, {m['samples_per_s']:.3g} samples/s, {m['device']}"))
    print("| measurement | value | notes |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
