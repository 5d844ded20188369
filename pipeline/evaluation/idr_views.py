"""Held-out views of a trained IDR model, as the IDR stage reports them: renders, normals, raw
depth and image/mask metrics."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.scene import Scene
from pipeline.evaluation.views import ViewTarget, render_and_score
from pipeline.models.idr.model import IDRModel

SCORES = ("psnr", "psnr_masked", "ssim", "mask_iou")


def evaluate_views(model: IDRModel, views, scene: Scene, out_dir: Path, depth_scale: float,
                   chunk: int) -> dict:
    """Render held-out views (``pipeline.training.idr_data.Views``: cameras, images and masks as
    loaded for training), write renders/ and depth/, return mean metrics and the per-view rows
    (``views``)."""
    device = model.background.device
    targets = (ViewTarget(scene.frames[i].name, views.cameras[v].to(device), views.images[v], views.masks[v])
               for v, i in enumerate(views.indices))
    per_view, _ = render_and_score(model, targets, len(views.indices), out_dir, SCORES, chunk, depth_scale,
                                   normal_renders=True, depth_files=True, desc="idr eval")
    if not per_view:
        return {}
    return {**{k: float(np.mean([p[k] for p in per_view])) for k in SCORES}, "views": per_view}
