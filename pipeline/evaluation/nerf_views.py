"""Held-out views of a trained NeRF, as the NeRF stage reports them: renders, raw depth and image
metrics."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pipeline.evaluation.views import render_and_score, scene_targets
from pipeline.models.nerf.model import NeRFModel


def evaluate(model: NeRFModel, scene, indices: list[int], out_dir: Path, depth_unit_scale: float, chunk: int,
             with_lpips: bool, mixed_precision: bool, device: torch.device) -> dict:
    """Render ``indices``, write renders/*.png and depth/*.npy, return mean metrics."""
    model.eval()
    t0 = time.time()
    per_view, lpips_reason = render_and_score(
        model, scene_targets(scene, indices, device), len(indices), out_dir, ("psnr", "ssim", "lpips", "ws_psnr"),
        chunk, depth_unit_scale, depth_files=True, lpips_net="alex" if with_lpips else None,
        mixed_precision=mixed_precision, desc="nerf eval")
    render_time = time.time() - t0
    if with_lpips:
        for row in per_view:
            row.setdefault("lpips", None)
    lpips_values = [v["lpips"] for v in per_view if v.get("lpips") is not None]
    ws = [v["ws_psnr"] for v in per_view if "ws_psnr" in v]  # equirect views only
    return {"psnr": float(np.mean([v["psnr"] for v in per_view])) if per_view else None,
            **({"ws_psnr": float(np.mean(ws))} if ws else {}),
            "ssim": float(np.mean([v["ssim"] for v in per_view])) if per_view else None,
            "lpips": float(np.mean(lpips_values)) if lpips_values else None,
            "lpips_reason": None if lpips_values else (lpips_reason or "LPIPS disabled (lpips=false)"),
            "eval_views": len(per_view), "eval_render_s": render_time,
            "eval_s_per_view": render_time / max(1, len(per_view)), "per_view": per_view}
