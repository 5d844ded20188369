"""DDP benchmark: a training stage (nerf by default; ``--stage idr`` or ``sdf``) on the built-in
scene with one process and with ``torchrun --nproc_per_node N`` at the same global batch (same steps, same samples per step), interleaved
(A, B, A, B) so that a shared machine's load falls on every configuration alike. Prints a markdown
table: trained seconds, steps/s, samples/s, the overhead per step against one process, and the
test PSNR (a DDP run should train like one process: within 0.3 dB).

    python bench/distributed.py                                  # CPU: 1 process x 1 thread vs 2 x 1 thread
    python bench/distributed.py --steps 1000 --seeds 0,1,2 --out /tmp/ddp-bench
    python bench/distributed.py --stage sdf --steps 1000 --seeds 0,1,2 --out /tmp/ddp-bench
    python bench/distributed.py --gpus 1,2 --config nerf-hash-gpu   # a machine with CUDA GPUs: 1 vs N GPUs

Results (table + JSON) go to --out (default /tmp/recon-bench-ddp); nothing is written to the repo.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(out: Path, views: int, size: int) -> Path:
    """The built-in scene and a workspace with its poses imported (kept between runs of the bench)."""
    ws = out / f"ws-{views}x{size}"
    if (ws / "poses" / "transforms.json").exists():
        return ws
    scene = out / f"scene-{views}x{size}"
    py = sys.executable
    subprocess.run([py, str(ROOT / "run.py"), "synthetic", "--out", str(scene), "--views", str(views),
                    "--size", str(size)], check=True, cwd=ROOT)
    subprocess.run([py, str(ROOT / "run.py"), "poses", "--data", str(scene), "--workspace", str(ws)], check=True,
                   cwd=ROOT)
    return ws


def run_once(base: Path, out: Path, name: str, procs: int, threads: int, args: list[str], device: str,
             stage: str = "nerf") -> dict:
    """One run of ``stage`` in a fresh copy of the workspace; returns its metrics plus the wall time."""
    ws = out / f"run-{name}"
    shutil.rmtree(ws, ignore_errors=True)
    shutil.copytree(base / "poses", ws / "poses")
    env = dict(os.environ, RECON_QUIET="1", OMP_NUM_THREADS=str(threads))
    if procs > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
                    "--master_port", str(free_port())]
    else:
        launcher = [sys.executable]
    cmd = launcher + [str(ROOT / "run.py"), stage, "--workspace", str(ws), f"cpu_threads={threads}",
                      f"device={device}", *args]
    t0 = time.time()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if result.returncode != 0:
        raise SystemExit(f"{name} failed ({' '.join(cmd)}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    metrics = json.loads((ws / stage / "metrics.json").read_text())
    metrics.setdefault("steps", metrics.get("iterations"))  # idr and sdf call them iterations
    return {"name": name, "procs": procs, "threads": threads, "wall_s": wall, **{
        k: metrics.get(k) for k in ("steps", "train_time_s", "samples", "samples_per_s", "psnr", "processes")}}


def _allreduce_worker(rank: int, world: int, port: int, numel: int, repeats: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    grad = torch.ones(numel)
    dist.all_reduce(grad)  # warm-up (connections)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(grad)
    elapsed = (time.perf_counter() - t0) / repeats
    if rank == 0:
        Path(out).write_text(json.dumps({"ms": 1000 * elapsed}))
    dist.destroy_process_group()


def allreduce_ms(numel: int, world: int = 2, repeats: int = 20) -> float:
    """Milliseconds of one gloo all-reduce of ``numel`` float32 over ``world`` CPU processes: what
    DDP adds to every step for the gradients (the model's parameter count)."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ms.json"
        mp.spawn(_allreduce_worker, args=(world, free_port(), numel, repeats, str(out)), nprocs=world, join=True)
        return json.loads(out.read_text())["ms"]


def default_parameters(stage: str) -> int:
    """The parameter count of ``stage``'s default model (what DDP all-reduces every step)."""
    sys.path.insert(0, str(ROOT))
    import torch

    if stage == "nerf":
        from pipeline.models.nerf.io import build_model
        from stages.nerf import NerfConfig

        cfg = NerfConfig()
        model = build_model(cfg.model, torch.tensor([[-1.0] * 3, [1.0] * 3]), "white", cfg.background)
    elif stage == "idr":
        from pipeline.models.idr.io import build_model
        from stages.idr import IDRConfig

        cfg = IDRConfig()
        model = build_model(cfg.sdf, cfg.renderer, cfg.tracing, (1.0, 1.0, 1.0))
    else:
        from pipeline.models.sdf.io import build_model
        from pipeline.models.sdf.model import SDFModelConfig
        from stages.sdf import SDFStageConfig

        cfg = SDFStageConfig()
        sampling = dataclasses.replace(cfg.sampling, spacing="linear")  # the object seen from outside
        model = build_model(SDFModelConfig(cfg.field, sampling, cfg.sdf, cfg.renderer, cfg.background_field,
                                           cfg.sample_gradients), (1.0, 1.0, 1.0))
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", default="nerf", choices=("nerf", "idr", "sdf"))
    parser.add_argument("--out", default="/tmp/recon-bench-ddp")
    parser.add_argument("--views", type=int, default=50)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", default="0,1", help="one repeat of every configuration per seed (interleaved)")
    parser.add_argument("--gpus", default="", help="e.g. 1,2: GPU runs with 1 and 2 processes (one GPU each)")
    parser.add_argument("--two-threads", action="store_true", help="CPU: also 1 process with 2 threads")
    parser.add_argument("--config", default="", help="a config of configs/ for every run (e.g. nerf-hash-gpu)")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value overrides")
    opts = parser.parse_args()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    base = prepare(out, opts.views, opts.size)
    args = [f"max_steps={opts.steps}", "max_time_s=0", "eval_max_views=4", *opts.set]
    if opts.stage == "nerf":
        args.append("lpips=false")
    else:  # the mesh is not what this bench compares
        args.append("mesh_resolution=64")
    if opts.config:
        args += ["--config", opts.config]
    if opts.gpus:
        configs = [(f"{n} GPU{'s' if int(n) > 1 else ''}", int(n), 1, "cuda") for n in opts.gpus.split(",")]
    else:
        configs = [("1 process x 1 thread", 1, 1, "cpu"), ("2 processes x 1 thread", 2, 1, "cpu")]
        if opts.two_threads:  # on a busy 2-core machine 2 threads wait on each other (pipeline.runner.runtime)
            configs.insert(1, ("1 process x 2 threads", 1, 2, "cpu"))
    rows = []
    seeds = [int(k) for k in opts.seeds.split(",")]
    for seed in seeds:
        for label, procs, threads, device in configs:  # interleaved: A, B, A, B
            row = run_once(base, out, f"{opts.stage}-{procs}p{threads}t-{seed}", procs, threads,
                           args + [f"seed={seed}"], device, opts.stage)
            row["label"], row["seed"] = label, seed
            rows.append(row)
            print(f"{label} (seed {seed}): {row['steps']} steps in {row['train_time_s']:.1f} s, "
                  f"{_num(row['samples_per_s'])} samples/s, PSNR {row['psnr']:.2f} dB", flush=True)
    (out / f"results-{opts.stage}.json").write_text(json.dumps(rows, indent=1))
    first = configs[0][0]
    ref_step = sum(r["train_time_s"] / r["steps"] for r in rows if r["label"] == first) / len(seeds)
    ref_psnr = sum(r["psnr"] for r in rows if r["label"] == first) / len(seeds)
    print(f"\n{opts.stage} stage, built-in scene {opts.views} views x {opts.size} px, {opts.steps} steps at the same "
          f"global batch; seeds {opts.seeds}, interleaved\n")
    print("| configuration | trained s (each seed) | ms/step | steps/s | samples/s | overhead/step vs "
          f"{first} | test PSNR dB (each seed) | mean PSNR - {first} |")
    print("|---|---|---|---|---|---|---|---|")
    for label, *_ in configs:
        runs = [r for r in rows if r["label"] == label]
        ms = 1000 * sum(r["train_time_s"] / r["steps"] for r in runs) / len(runs)
        sps = (sum(r["samples_per_s"] for r in runs) / len(runs)
               if all(r["samples_per_s"] is not None for r in runs) else None)
        psnr = sum(r["psnr"] for r in runs) / len(runs)
        times = ", ".join(f"{r['train_time_s']:.1f}" for r in runs)
        psnrs = ", ".join(f"{r['psnr']:.2f}" for r in runs)
        print(f"| {label} | {times} | {ms:.1f} | {1000 / ms:.2f} | {_num(sps)} | {ms - 1000 * ref_step:+.1f} ms | "
              f"{psnrs} | {psnr - ref_psnr:+.2f} |")
    if not opts.gpus:
        numel = default_parameters(opts.stage)
        times = [allreduce_ms(numel) for _ in range(3)]
        print(f"\nDDP's gradient all-reduce alone (gloo, 2 CPU processes, the default {opts.stage} model's "
              f"{numel / 1e6:.2f} M "
              f"parameters = {numel * 4 / 2 ** 20:.1f} MiB): {', '.join(f'{t:.1f}' for t in times)} ms per step")


def _num(value) -> str:
    return "-" if value is None else f"{value:.3g}"


if __name__ == "__main__":
    main()
