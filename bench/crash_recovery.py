"""kill -9 at a random moment of a real NeRF / IDR run with the default checkpoint period, then the same
command again: how much training was lost, and did the re-run resume and finish its budget?

    python bench/crash_recovery.py [--trials 3] [--stages nerf idr] [--max-time 60] [--seed 0]

"lost (s)" is the wall time between the last checkpoint write (or the stage's start, when none had
been written) and the kill: an upper bound on the training lost. The re-run must log "resuming from
step N" (when a checkpoint existed) and end with ``train_time_s`` close to the budget, which shows the
seconds trained before the kill were counted.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRA = {"nerf": ["lpips=false"], "idr": []}  # LPIPS needs weights that may be absent: not what is measured


def run_py(*args, **kwargs):
    env = {**os.environ, "RECON_QUIET": "1"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *map(str, args)], env=env, text=True,
                          capture_output=True, **kwargs)


def trial(ws: Path, stage: str, max_time: float, kill_after: float) -> dict:
    shutil.rmtree(ws / stage, ignore_errors=True)
    shutil.rmtree(ws / ".resume" / stage, ignore_errors=True)
    log = ws / "logs" / "run.log"
    mark = log.stat().st_size if log.exists() else 0
    env = {**os.environ, "RECON_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), stage, "--workspace", str(ws),
                             f"max_time_s={max_time}", "eval_max_views=2", *EXTRA[stage]],
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    started = None
    while proc.poll() is None:
        if started is None and log.exists() and f"{stage}: running" in log.read_text()[mark:]:
            started = time.time()
        if started is not None and time.time() - started >= kill_after:
            break
        time.sleep(0.05)
    killed_at = time.time()
    if proc.poll() is not None:
        err = proc.stderr.read().strip().splitlines()
        raise RuntimeError(f"{stage} ended before the kill (exit {proc.returncode}): {err[-1] if err else ''}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpt = ws / ".resume" / stage / "checkpoint.pt"
    saved_at = ckpt.stat().st_mtime if ckpt.exists() else None
    lost = killed_at - (saved_at if saved_at is not None else started)
    t0 = time.time()
    mark = log.stat().st_size
    rerun = run_py(stage, "--workspace", ws, f"max_time_s={max_time}", "eval_max_views=2", *EXTRA[stage])
    text = log.read_text()[mark:]
    resumed = re.search(rf"{stage}: resuming from step (\d+) \(([\d.]+)s trained\)", text)
    metrics = json.loads((ws / stage / "metrics.json").read_text()) if rerun.returncode == 0 else {}
    return {"stage": stage, "kill_after_s": kill_after, "checkpoint": saved_at is not None,
            "lost_s": lost, "resumed_step": int(resumed.group(1)) if resumed else None,
            "resumed_trained_s": float(resumed.group(2)) if resumed else 0.0,
            "final_steps": metrics.get("steps", metrics.get("iterations")), "train_time_s": metrics.get("train_time_s"),
            "psnr": metrics.get("psnr"), "rerun_s": time.time() - t0, "rc": rerun.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--stages", nargs="+", default=["nerf", "idr"])
    parser.add_argument("--max-time", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        scene, ws = Path(tmp) / "scene", Path(tmp) / "ws"
        assert run_py("synthetic", "--out", scene, "--views", args.views, "--size", args.size).returncode == 0
        assert run_py("poses", "--data", scene, "--workspace", ws).returncode == 0
        rows = []
        for stage in args.stages:
            for _ in range(args.trials):
                row = trial(ws, stage, args.max_time, rng.uniform(3.0, args.max_time - 3.0))
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n| stage | killed at (s after start) | checkpoint then | lost (s, upper bound) | resumed from step "
          f"(trained s) | final steps | train_time_s (budget {args.max_time:.0f}) | PSNR |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        resumed = f"{r['resumed_step']} ({r['resumed_trained_s']:.1f})" if r["resumed_step"] is not None else "fresh"
        psnr = f"{r['psnr']:.2f}" if r["psnr"] is not None else "-"
        print(f"| {r['stage']} | {r['kill_after_s']:.1f} | {'yes' if r['checkpoint'] else 'no'} | {r['lost_s']:.1f} | "
              f"{resumed} | {r['final_steps']} | {r['train_time_s']} | {psnr} |")


if __name__ == "__main__":
    main()
