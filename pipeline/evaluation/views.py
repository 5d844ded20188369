"""Rendering a trained model's views and scoring them against the ground truth: the one per-view
loop of the NeRF and IDR stages' held-out views and of the eval stage.

Each view's row holds the scores asked for, in the order asked for, that its ground truth allows:
``psnr``, ``ssim``, ``lpips`` (only when the lpips package and its weights are local),
``psnr_masked`` and ``mask_iou`` (with a GT mask; the rendered mask is opacity > 0.5) and
``depth`` (AbsRel/RMSE against GT depth, :func:`pipeline.evaluation.metrics.depth_errors`) and,
for equirect panoramas only, ``ws_psnr`` (latitude-weighted PSNR, :mod:`pipeline.panoramas.metrics`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from pipeline.evaluation.metrics import depth_errors, lpips_or_reason, mask_iou, psnr, ssim
from pipeline.export.images import to_uint8, write_png
from pipeline.export.splits import select_views
from pipeline.geometry.cameras import Cameras
from pipeline.models.render import render_image
from pipeline.panoramas.metrics import ws_psnr
from pipeline.runner.log import progress
from pipeline.runner.runtime import autocast

SCORES = ("psnr", "psnr_masked", "ssim", "mask_iou", "lpips", "depth", "ws_psnr")


@dataclass
class ViewTarget:
    """One view to render and score against its ground truth."""

    name: str
    camera: Cameras  # one camera, on the model's device
    image: Any  # GT rgb (H, W, 3) in [0, 1]
    mask: Optional[Any] = None  # GT object mask (H, W) bool
    depth: Optional[np.ndarray] = None  # GT depth (H, W) in the normalised frame's units, 0 = unknown


def scene_targets(scene, indices: Sequence[int], device, masks: bool = False, depth: bool = False) -> Iterator[ViewTarget]:
    """The scene's frames ``indices`` with their images (and GT masks, depth when asked for and
    present), loaded one at a time."""
    for i in indices:
        yield ViewTarget(scene.frames[i].name, scene.cameras([i], device=device), scene.load_image(i),
                         scene.load_mask(i) if masks else None, scene.load_depth(i) if depth else None)


def render_and_score(model, targets: Iterable[ViewTarget], total: int, out_dir: Path, scores: Sequence[str],
                     chunk: int, depth_scale: float, renders: bool = True, normal_renders: bool = False,
                     depth_files: bool = False, lpips_net: Optional[str] = None, depth_in_mask: bool = True,
                     mixed_precision: bool = False, desc: str = "views",
                     supersample: int = 1) -> tuple[list[dict], Optional[str]]:
    """Render each target, write its files and score it. Returns (one row per view: ``name`` and
    ``scores``, None where unavailable; the reason LPIPS is unavailable, or None).

    Files: ``out_dir/renders/<name>.png`` (``renders``), ``renders/<name>_normal.png`` (world
    normals as colours, white where nothing is hit; ``normal_renders``) and ``depth/<name>.npy``
    (float32 depth in ORIGINAL units = rendered / ``depth_scale``, 0 where opacity < 0.5;
    ``depth_files``). ``lpips_net``: compute LPIPS with this backbone (None: not at all); after
    the first view it is unavailable for, it is not tried again. ``depth_in_mask``: depth errors
    on the GT mask's pixels when there is a mask. ``mixed_precision``: bf16 autocast of rendering.
    ``supersample`` k: colour and opacity averaged over k x k rays per pixel (see
    :func:`pipeline.models.render.render_image`)."""
    unknown = [s for s in scores if s not in SCORES]
    if unknown:
        raise ValueError(f"unknown scores {unknown}; choose from {SCORES}")
    for folder, wanted in (("renders", renders or normal_renders), ("depth", depth_files)):
        if wanted:
            (out_dir / folder).mkdir(parents=True, exist_ok=True)
    rows, lpips_reason = [], None
    for target in progress(targets, total=total, desc=desc):
        with autocast(target.camera.fx.device, mixed_precision):
            r = render_image(model, target.camera, chunk=chunk, supersample=supersample)
        rgb, acc = r["rgb"].clamp(0, 1).numpy(), r["acc"].numpy()
        gt, mask = target.image, target.mask
        if tuple(gt.shape[:2]) != rgb.shape[:2]:
            raise ValueError(f"view {target.name}: the image is {gt.shape[1]}x{gt.shape[0]} but its camera says "
                             f"{rgb.shape[1]}x{rgb.shape[0]}; fix the intrinsics in poses/transforms.json")
        if renders:
            write_png(out_dir / "renders" / f"{target.name}.png", to_uint8(rgb))
        if normal_renders:
            normal = np.where(acc[..., None] > 0.5, (r["normal"].numpy() + 1) / 2, 1.0)
            write_png(out_dir / "renders" / f"{target.name}_normal.png", to_uint8(normal))
        if depth_files:
            depth = r["depth"].numpy() / depth_scale  # normalised frame -> original units
            depth[acc < 0.5] = 0.0  # background: no depth
            np.save(out_dir / "depth" / f"{target.name}.npy", depth.astype(np.float32))
        row: dict = {"name": target.name}
        for score in scores:
            if score == "psnr":
                row["psnr"] = psnr(rgb, gt)
            elif score == "ssim":
                row["ssim"] = ssim(rgb, gt)
            elif score == "ws_psnr" and target.camera.model == "equirect":
                row["ws_psnr"] = ws_psnr(rgb, gt)
            elif score == "psnr_masked" and mask is not None:
                row["psnr_masked"] = psnr(rgb, gt, mask)
            elif score == "mask_iou" and mask is not None:
                row["mask_iou"] = mask_iou(acc > 0.5, mask)
            elif score == "lpips" and lpips_net and lpips_reason is None:
                value, lpips_reason = lpips_or_reason(rgb, gt, lpips_net)
                if value is not None:
                    row["lpips"] = value
            elif score == "depth" and target.depth is not None:
                region = mask if (depth_in_mask and mask is not None) else None
                row["depth"] = depth_errors(r["depth"].numpy() / depth_scale, target.depth / depth_scale, region)
        rows.append(row)
    return rows, lpips_reason


def finite(value):
    """JSON has no infinity: identical images (PSNR = inf) are reported as None."""
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def evaluate_views(model, scene, sim, out: Path, device, log, split: str = "eval", max_views: int = 0,
                   chunk: int = 8192, lpips_net: Optional[str] = "alex", depth_in_mask: bool = True,
                   save_renders: bool = True, supersample: int = 1) -> dict:
    """The eval stage's image, mask and depth metrics, per view and averaged, on ``split``
    (:func:`pipeline.export.splits.select_views`); renders go to ``out/renders/``."""
    note = None
    if split == "eval" and not scene.eval_split():
        note = "the scene has no test/val split: image metrics are on TRAINING views (optimistic)"
        log.warning(f"eval: {note}")
    indices = select_views(scene, split, max_views)
    per_view, lpips_reason = render_and_score(
        model, scene_targets(scene, indices, device, masks=True, depth=True), len(indices), out,
        ("psnr", "ssim", "lpips", "mask_iou", "psnr_masked", "depth", "ws_psnr"), chunk, sim.scale,
        renders=save_renders, lpips_net=lpips_net, depth_in_mask=depth_in_mask, desc="eval views",
        supersample=supersample)
    for row in per_view:
        row.update({k: finite(row[k]) for k in ("psnr", "psnr_masked", "ws_psnr") if k in row})
    result: dict = {"views": len(per_view), "split": split, "supersample": supersample, "per_view": per_view}
    if note:
        result["note"] = note
    for key in ("psnr", "ssim", "lpips", "mask_iou", "psnr_masked", "ws_psnr"):
        values = [v[key] for v in per_view if v.get(key) is not None]
        if values:
            result[key] = float(np.mean(values))
    depths = [v["depth"] for v in per_view if v.get("depth", {}).get("abs_rel") is not None]
    if depths:
        pixels = np.array([d["pixels"] for d in depths], dtype=np.float64)
        result["depth_abs_rel"] = float(np.average([d["abs_rel"] for d in depths], weights=pixels))
        result["depth_rmse"] = float(np.sqrt(np.average([d["rmse"] ** 2 for d in depths], weights=pixels)))
        result["depth_region"] = "GT mask" if (depth_in_mask and scene.has_masks) else "valid GT pixels"
    if lpips_reason:
        result["lpips_unavailable"] = lpips_reason
    return result
