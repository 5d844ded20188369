"""Peak memory of chunked whole-image rendering at growing resolutions (the "1080p frame with
bounded memory" target), plus the timing of the export pieces on an analytic NeRF-like scene.

    python bench/export.py [--resolutions 270,540,1080] [--chunk 8192] [--samples 64]

Each resolution renders in a fresh subprocess so its peak resident memory (ru_maxrss) is its own.
The process first renders a small frame of one full chunk (``chunk_working_mb``: what one chunk
costs); the baseline is taken after it. What must stay near 0 at every resolution is
``growth_beyond_buffers_mb``: peak minus baseline minus the image buffers the frame itself needs
(outputs gathered on the CPU: rgb + t + depth + acc, float32, held once as chunk parts and once
concatenated). On CUDA the peak allocated device memory is also
reported (it holds only the chunk). Results: bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESOLUTIONS = {270: (480, 270), 540: (960, 540), 1080: (1920, 1080), 2160: (3840, 2160)}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def measure_one(height: int, chunk: int, samples: int, device: str) -> dict:
    """Render one frame of the analytic density sphere; runs inside a fresh process."""
    import numpy as np
    import torch

    from pipeline.geometry.camera_paths import intrinsics_from_fov
    from pipeline.geometry.cameras import Cameras, look_at
    from pipeline.models.render import render_image
    from tests.analytic_sphere import SphereDensity

    width, height = RESOLUTIONS[height]
    model = SphereDensity([0, 0, 0], 0.5, n_samples=samples)
    cam = Cameras.from_intrinsics([intrinsics_from_fov(width, height, 40.0)],
                                  look_at([2.5, 0, 0.8], [0, 0, 0])[None], device=device)
    # warm up torch's allocator and kernels on a small frame of at least one full chunk, so the
    # chunk's working set is already in the baseline's process image, then take the baseline
    warm_h = chunk // 128 + 1
    before_warmup = rss_mb()
    render_image(model, Cameras.from_intrinsics([intrinsics_from_fov(128, warm_h, 40.0)], cam.c2w.cpu().numpy(),
                                                device=device), chunk=chunk)
    base = rss_mb()  # peak so far: the process plus one chunk's working set
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    out = render_image(model, cam, chunk=chunk)
    seconds = time.time() - t0
    peak = rss_mb()
    channels = sum(int(np.prod(v.shape[2:])) if v.ndim > 2 else 1 for v in out.values())
    buffers_mb = 2 * width * height * channels * 4 / 2 ** 20  # parts + concatenated copy
    result = {"resolution": f"{width}x{height}", "pixels": width * height, "chunk": chunk, "samples": samples,
              "seconds": round(seconds, 2), "chunk_working_mb": round(base - before_warmup, 1),
              "baseline_mb": round(base, 1), "peak_mb": round(peak, 1),
              "image_buffers_mb": round(buffers_mb, 1),
              "growth_beyond_buffers_mb": round(peak - base - buffers_mb, 1), "coverage": float(out["acc"].mean())}
    if device == "cuda":
        result["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return result


def run_subprocess(height: int, chunk: int, samples: int, device: str) -> dict:
    cmd = [sys.executable, __file__, "--one", str(height), "--chunk", str(chunk), "--samples", str(samples),
           "--device", device]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", default="270,540,1080")
    parser.add_argument("--chunks", default="8192")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=8192, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.chunk, args.samples, args.device)))
        return
    rows = []
    for chunk in (int(c) for c in args.chunks.split(",")):
        for h in (int(r) for r in args.resolutions.split(",")):
            rows.append(run_subprocess(h, chunk, args.samples, args.device))
            print(json.dumps(rows[-1]), file=sys.stderr)
    keys = ["resolution", "chunk", "samples", "seconds", "chunk_working_mb", "baseline_mb", "peak_mb",
            "image_buffers_mb", "growth_beyond_buffers_mb"]
    if args.device == "cuda":
        keys.append("cuda_peak_mb")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
