"""Held-out views of a trained IDR model: renders, normals, raw depth and image/mask metrics."""
from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np

from datasets.scene import Scene
from pipeline.evaluation.metrics import mask_iou, psnr, ssim
from pipeline.models.idr.model import IDRModel
from pipeline.models.render import render_image


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def evaluate_views(model: IDRModel, views, scene: Scene, out_dir: Path, depth_scale: float, chunk: int) -> dict:
    """Render held-out views, write renders/ and depth/, return mean metrics."""
    (out_dir / "renders").mkdir(parents=True, exist_ok=True)
    (out_dir / "depth").mkdir(parents=True, exist_ok=True)
    per_view = []
    for v, i in enumerate(views.indices):
        out = render_image(model, views.cameras[v].to(model.background.device), chunk=chunk)
        rgb, acc = out["rgb"].numpy(), out["acc"].numpy() > 0.5
        name = scene.frames[i].name
        normal = np.where(acc[..., None], (out["normal"].numpy() + 1) / 2, 1.0)
        iio.imwrite(out_dir / "renders" / f"{name}.png", _to_uint8(rgb))
        iio.imwrite(out_dir / "renders" / f"{name}_normal.png", _to_uint8(normal))
        depth = np.where(acc, out["depth"].numpy() / depth_scale, 0.0).astype(np.float32)
        np.save(out_dir / "depth" / f"{name}.npy", depth)
        gt, gt_mask = views.images[v], views.masks[v]
        per_view.append({"name": name, "psnr": psnr(rgb, gt), "psnr_masked": psnr(rgb, gt, gt_mask),
                         "ssim": ssim(rgb, gt), "mask_iou": mask_iou(acc, gt_mask)})
    if not per_view:
        return {}
    keys = ("psnr", "psnr_masked", "ssim", "mask_iou")
    return {**{k: float(np.mean([p[k] for p in per_view])) for k in keys}, "views": per_view}
