"""Held-out views of a trained NeRF: renders, raw depth and image metrics."""
from __future__ import annotations

import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from pipeline.evaluation.metrics import lpips_or_reason, psnr, ssim
from pipeline.models.nerf.model import NeRFModel
from pipeline.models.render import render_image
from pipeline.runner.log import progress
from pipeline.runner.runtime import autocast


def evaluate(model: NeRFModel, scene, indices: list[int], out_dir: Path, depth_unit_scale: float, chunk: int,
             with_lpips: bool, mixed_precision: bool, device: torch.device) -> dict:
    """Render ``indices``, write renders/*.png and depth/*.npy, return mean metrics."""
    (out_dir / "renders").mkdir(parents=True, exist_ok=True)
    (out_dir / "depth").mkdir(parents=True, exist_ok=True)
    model.eval()
    per_view, lpips_reason = [], None
    t0 = time.time()
    for i in progress(indices, desc="nerf eval"):
        cam = scene.cameras([i], device=device)
        with autocast(device, mixed_precision):
            out = render_image(model, cam, chunk=chunk)
        pred = out["rgb"].clamp(0, 1).numpy()
        gt = scene.load_image(i)
        name = scene.frames[i].name
        iio.imwrite(out_dir / "renders" / f"{name}.png", (pred * 255 + 0.5).astype(np.uint8))
        depth = out["depth"].numpy() / depth_unit_scale  # normalised frame -> original units
        depth[out["acc"].numpy() < 0.5] = 0.0  # background: no depth
        np.save(out_dir / "depth" / f"{name}.npy", depth.astype(np.float32))
        entry = {"name": name, "psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}
        if with_lpips:
            value, lpips_reason = lpips_or_reason(pred, gt)
            entry["lpips"] = value
        per_view.append(entry)
    render_time = time.time() - t0
    lpips_values = [v["lpips"] for v in per_view if v.get("lpips") is not None]
    return {"psnr": float(np.mean([v["psnr"] for v in per_view])) if per_view else None,
            "ssim": float(np.mean([v["ssim"] for v in per_view])) if per_view else None,
            "lpips": float(np.mean(lpips_values)) if lpips_values else None,
            "lpips_reason": None if lpips_values else (lpips_reason or "LPIPS disabled (lpips=false)"),
            "eval_views": len(per_view), "eval_render_s": render_time,
            "eval_s_per_view": render_time / max(1, len(per_view)), "per_view": per_view}
