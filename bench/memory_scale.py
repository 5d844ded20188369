"""Training data in bounded memory (issue #29): the NeRF stage on the built-in scene at 1,000 views
of 400 px against the 50-view scene, same config and a fixed step count.

For each run the stage runs in a child process (``run.py nerf``); its peak resident memory is the
child's own ``ru_maxrss`` (``os.wait4``), and RssAnon / RssFile are polled from
``/proc/<pid>/status`` (RssFile: clean file pages, e.g. a memory-mapped pixel table, which the
kernel drops under pressure). ms/step is the stage's training time over its steps
(``metrics.json``: ``train_time_s``, which counts the training loop only). Targets: peak RSS <=
1.5 x the uint8 pixel bytes + model + 1 GiB, and ms/step within 10% of the 50-view scene. The runs
are interleaved (50, 1000, 50, 1000, ...) so that load on a shared machine hits both alike.

    python bench/memory_scale.py --root /tmp/memory_scale [--views 50 1000 --size 400 --steps 300
                                 --repeats 2 --mapped-gb 0.25]

``--mapped-gb G`` adds a run of the largest scene with ``data_memory_gb=G`` (below its pixel
bytes), which forces the memory-mapped table. Scenes and poses are generated once under --root.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 1 << 30


def run(cmd: list[str], log) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)


def prepare(root: Path, views: int, size: int, log) -> Path:
    """The synthetic scene and its poses workspace (reused when present)."""
    scene, ws = root / f"scene-{views}-{size}", root / f"ws-{views}-{size}"
    if not (scene / "scene_info.json").exists():
        t0 = time.perf_counter()
        run([sys.executable, "run.py", "synthetic", "--out", str(scene), "--views", str(views), "--size", str(size)],
            log)
        print(f"generated {views} views of {size} px in {time.perf_counter() - t0:.0f}s", flush=True)
    if not (ws / "poses" / "transforms.json").exists():
        run([sys.executable, "run.py", "poses", "--data", str(scene), "--workspace", str(ws)], log)
    return ws


def pixel_bytes(ws: Path, background: str = "random") -> tuple[int, int, int]:
    """(training views, uint8 bytes of their pixels, channels) as the nerf stage stores them."""
    from pipeline.runner.workspace import Workspace
    from pipeline.training.nerf_fit import uses_alpha

    scene = Workspace(ws, create=False).load_scene()
    train = scene.split("train")
    channels = 4 if uses_alpha(scene, train, background) else 3
    pixels = sum(scene.frames[i].intrinsics.width * scene.frames[i].intrinsics.height for i in train)
    return len(train), pixels * channels, channels


def _poll(pid: int, peaks: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    key = line.split(":")[0]
                    if key in ("RssAnon", "RssFile", "VmHWM"):
                        peaks[key] = max(peaks.get(key, 0), int(line.split()[1]) * 1024)
        except OSError:
            return
        stop.wait(0.2)


def nerf_run(ws: Path, steps: int, overrides: list[str], log) -> dict:
    """One nerf stage run (forced) in a child; its peak RSS and speed."""
    cmd = [sys.executable, "run.py", "nerf", "--workspace", str(ws), "--force", f"max_steps={steps}", "max_time_s=0",
           "eval_max_views=1", "lpips=false", "cpu_threads=1", "checkpoint_every_s=0", *overrides]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    peaks: dict = {}
    stop = threading.Event()
    poller = threading.Thread(target=_poll, args=(child.pid, peaks, stop), daemon=True)
    poller.start()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    poller.join()
    if child.returncode != 0:
        raise RuntimeError(f"nerf stage failed ({child.returncode}); see the log")
    metrics = json.loads((ws / "nerf" / "metrics.json").read_text())
    return {"peak_rss": usage.ru_maxrss * 1024, "rss_anon": peaks.get("RssAnon", 0),
            "rss_file": peaks.get("RssFile", 0),
            "ms_step": 1000 * metrics["train_time_s"] / metrics["steps"], "steps": metrics["steps"],
            "model_bytes": (ws / "nerf" / "model.pt").stat().st_size, "psnr": metrics.get("psnr")}


def within(row: dict, ratio: float) -> str:
    """The speed target, for the larger scenes (the baseline's own runs show the run-to-run spread)."""
    return "baseline" if row.get("baseline") else ("yes" if abs(ratio - 1) <= 0.10 else "NO")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/memory_scale")
    parser.add_argument("--views", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mapped-gb", type=float, default=0.0, help="also run the largest scene memory-mapped")
    args = parser.parse_args(argv)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "runs.log", "a") as log:
        spaces = {v: prepare(root, v, args.size, log) for v in args.views}
        plan = [(v, []) for _ in range(args.repeats) for v in args.views]
        if args.mapped_gb > 0:
            plan.append((max(args.views), [f"data_memory_gb={args.mapped_gb}"]))
        rows = []
        for views, overrides in plan:
            result = nerf_run(spaces[views], args.steps, overrides, log)
            train, nbytes, channels = pixel_bytes(spaces[views])
            result.update(views=views, train=train, pixel_bytes=nbytes, channels=channels,
                          mode="memory-mapped" if overrides else "RAM")
            result["bound"] = 1.5 * nbytes + result["model_bytes"] + GIB
            rows.append(result)
            print(f"{views} views ({result['mode']}): peak RSS {result['peak_rss'] / GIB:.2f} GiB, "
                  f"{result['ms_step']:.1f} ms/step", flush=True)
    small = min(args.views)
    for r in rows:
        r["baseline"] = r["views"] == small and r["mode"] == "RAM"
    base = sum(r["ms_step"] for r in rows if r["views"] == small and r["mode"] == "RAM") / max(
        1, sum(1 for r in rows if r["views"] == small and r["mode"] == "RAM"))
    print(f"\nNeRF stage, built-in scene at {args.size} px, {args.steps} steps, cpu_threads=1; "
          f"ratio = ms/step / mean ms/step of the {small}-view runs\n")
    print("| views (train) | table | pixel bytes uint8 | model | peak RSS | RssAnon / RssFile | bound | RSS <= bound "
          "| ms/step | ratio | within 10% |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["ms_step"] / base
        print(f"| {r['views']} ({r['train']}) | {r['mode']} | {r['pixel_bytes'] / 2**20:.0f} MiB "
              f"(float32: {4 * r['pixel_bytes'] / 2**20:.0f}) | {r['model_bytes'] / 2**20:.0f} MiB "
              f"| {r['peak_rss'] / 2**20:.0f} MiB | {r['rss_anon'] / 2**20:.0f} / {r['rss_file'] / 2**20:.0f} MiB "
              f"| {r['bound'] / 2**20:.0f} MiB | {'yes' if r['peak_rss'] <= r['bound'] else 'NO'} "
              f"| {r['ms_step']:.1f} | {ratio:.2f} | {within(r, ratio)} |")
    print()
    for mode in ("RAM", "memory-mapped"):
        big = [r["ms_step"] for r in rows if r["views"] != small and r["mode"] == mode]
        if big:
            mean = sum(big) / len(big)
            verdict = "within" if abs(mean / base - 1) <= 0.10 else "NOT within"
            print(f"mean ms/step, {mode}: {mean:.1f} over {len(big)} run(s) of the larger scene vs {base:.1f} for the "
                  f"{small}-view scene: ratio {mean / base:.2f} ({verdict} 10%)")


if __name__ == "__main__":
    main()
