"""Held-out views of a trained volume-rendered SDF, as the sdf stage reports them: renders,
normals, raw depth, PSNR / SSIM, and mask IoU and masked PSNR where the views have true masks
(which training need not have used)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.evaluation.views import ViewTarget, render_and_score

SCORES = ("psnr", "ssim", "psnr_masked", "mask_iou")


def evaluate_sdf_views(model, views, names: list[str], with_masks: bool, out_dir: Path, depth_scale: float,
                       chunk: int = 4096, supersample: int = 1) -> dict:
    """Render the views (``pipeline.training.idr_data.Views``: cameras and images as loaded, and
    masks that are scored only when ``with_masks``), write renders/ and depth/, return the mean of
    each score and the per-view rows (``views``). ``names``: one per view, for the files.
    ``supersample`` k: colour and opacity are the means of k x k rays per pixel."""
    if not names:
        return {}
    device = model.background.device
    targets = (ViewTarget(name, views.cameras[v].to(device), views.images[v], views.masks[v] if with_masks else None)
               for v, name in enumerate(names))
    per_view, _ = render_and_score(model, targets, len(names), out_dir, SCORES, chunk, depth_scale,
                                   normal_renders=True, depth_files=True, desc="sdf eval",
                                   supersample=supersample)
    means = {k: float(np.mean([row[k] for row in per_view])) for k in SCORES if all(k in row for row in per_view)}
    return {**means, "views": per_view}
