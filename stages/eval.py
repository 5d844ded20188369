"""Eval stage: every metric the scene's ground truth allows, in one ``W/eval/metrics.json``.

``python run.py eval --workspace W`` measures the trained NeRF or IDR model (newest, or
``method=``; with no trained model yet and estimated poses, the pose errors alone) against:
- held-out images (test split, else val; else the training views, flagged): PSNR, SSIM, LPIPS
  (only when the lpips package and its weights are on disk; otherwise the reason is recorded);
  mask IoU of the rendered opacity against GT masks;
- GT depth maps: AbsRel and RMSE (ORIGINAL units), inside the GT mask when the scene has masks;
- a GT mesh or point cloud (``pipeline.evaluation.ground_truth.find_ground_truth``, original
  units): Chamfer-L1 and F-score at a stated threshold (default 1% of the object radius), from
  points sampled on both surfaces; plus how many mesh components no training camera sees;
- reference cameras, when the poses were estimated: rotation / centre errors after a similarity
  alignment (``pipeline.geometry.alignment.pose_errors``).
Metrics the scene has no ground truth for are listed under ``skipped`` with the reason.

``holdout=c`` (a panorama's stem, or several comma-separated): leave-one-out evaluation instead of
the views' metrics (``pipeline.evaluation.holdout``): a field trained without c (the nerf stage's
when it was trained with ``holdout`` naming c, else one trained here for ``holdout_max_time_s``
with the nerf stage's settings) rendered at c's pose, WS-PSNR / PSNR / SSIM / WS-SSIM against the
real panorama beside the nearest-panorama baseline, images side by side in ``eval/holdout/``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.evaluation.geometry import evaluate_geometry
from pipeline.evaluation.holdout import evaluate_holdout
from pipeline.evaluation.poses import evaluate_poses
from pipeline.evaluation.table import format_table
from pipeline.evaluation.views import evaluate_views
from pipeline.export.methods import MODEL_PRODUCED_BY, load_model, model_inputs, resolve_method, trained_methods
from pipeline.models.render import check_supersample
from pipeline.runner.io import write_json
from pipeline.runner.runtime import pick_device, torch_threads
from pipeline.runner.stage import Stage, StageContext
from pipeline.runner.workspace import Workspace
from pipeline.training.common import check_non_negative


@dataclass
class EvalConfig:
    method: str = "auto"  # auto (newest of W/nerf, W/idr, W/sdf) | nerf | idr | sdf
    device: str = "auto"  # auto | cpu | cuda
    cpu_threads: int = 0  # torch threads on CPU (0 = torch's default); 1 is faster on a busy machine
    chunk: int = 8192  # rays per batch
    split: str = "eval"  # eval (test, else val, else train) | train | val | test | all
    max_views: int = 0  # 0 = all views of the split
    # colour and opacity averaged over k x k rays per pixel (anti-aliased edges; depth stays the
    # pixel centre's); 1 = one ray through each pixel's centre, as most NeRF benchmarks score
    supersample: int = 1
    lpips: bool = True  # computed only when the lpips package and its weights are local (never downloaded)
    lpips_net: str = "alex"
    depth_in_mask: bool = True  # depth errors on GT-mask pixels only (when masks exist)
    save_renders: bool = True  # eval/renders/<name>.png beside the metrics
    mesh: bool = True  # Chamfer / F-score when the scene has a GT mesh or point cloud
    mesh_resolution: int = 256  # when no exported mesh of this method exists and one is extracted
    mesh_samples: int = 200000  # points sampled on each surface
    fscore_threshold: float = 0.0  # ORIGINAL units; 0 = fscore_fraction * object radius
    fscore_fraction: float = 0.01
    poses: bool = True  # pose errors when the poses were estimated and the dataset has reference poses
    holdout: str = ""  # panorama stems (comma-separated) to evaluate leave-one-out instead of the views
    # training budget in seconds of each leave-one-out field trained here (0 = no time budget: the nerf
    # stage's max_steps; negative is an error)
    holdout_max_time_s: float = 300.0


def poses_only(workspace: Workspace, config) -> bool:
    """No trained model yet, but estimated poses to score: ``eval`` reports the pose errors alone."""
    if config.method != "auto" or trained_methods(workspace) or config.holdout:
        return False
    report = workspace.stage_dir("poses") / "report.json"
    return report.exists() and json.loads(report.read_text()).get("mode") == "estimate"


def run(ctx: StageContext) -> dict:
    cfg: EvalConfig = ctx.config
    check_non_negative(holdout_max_time_s=cfg.holdout_max_time_s)  # before any work
    check_supersample(cfg.supersample)
    with torch_threads(cfg.cpu_threads):
        return _run(ctx, cfg)


def _run(ctx: StageContext, cfg: EvalConfig) -> dict:
    if poses_only(ctx.workspace, cfg):
        return run_poses_only(ctx)
    method = resolve_method(ctx.workspace, cfg.method)
    device = pick_device(cfg.device)
    scene = ctx.workspace.load_scene()
    sim = ctx.workspace.normalization()
    model = load_model(ctx.workspace, method, device)
    metrics: dict = {"method": method, "skipped": {}}
    if cfg.holdout:
        metrics["holdout"] = evaluate_holdout(ctx.workspace, scene, sim, cfg.holdout, ctx.out_dir, ctx.resume_dir,
                                              device, ctx.log, cfg.holdout_max_time_s, cfg.chunk)
        metrics["views"] = {}
        metrics["skipped"]["views"] = "holdout evaluation instead (eval/metrics.json: holdout)"
        # centre / distance errors against ground truth: the centres stage's (pipeline.panoramas)
    else:
        metrics["views"] = evaluate_views(model, scene, sim, ctx.out_dir, device, ctx.log, split=cfg.split,
                                          max_views=cfg.max_views, chunk=cfg.chunk,
                                          lpips_net=cfg.lpips_net if cfg.lpips else None,
                                          depth_in_mask=cfg.depth_in_mask, save_renders=cfg.save_renders,
                                          supersample=cfg.supersample)
    if cfg.mesh:
        geometry = evaluate_geometry(ctx.workspace, model, method, scene, sim, device, ctx.log,
                                     mesh_resolution=cfg.mesh_resolution, samples=cfg.mesh_samples,
                                     fscore_threshold=cfg.fscore_threshold, fscore_fraction=cfg.fscore_fraction)
        if "skipped" in geometry:
            metrics["skipped"]["geometry"] = geometry["skipped"]
        else:
            metrics["geometry"] = geometry
    if cfg.poses:
        poses = evaluate_poses(ctx.workspace, scene, sim)
        if "skipped" in poses:
            metrics["skipped"]["poses"] = poses["skipped"]
        else:
            metrics["poses"] = poses
    if not scene.frames[0].depth_path:
        metrics["skipped"]["depth"] = "the scene has no GT depth maps"
    write_json(ctx.out_dir / "metrics.json", metrics)
    table = format_table(metrics)
    print(f"eval ({method}):\n{table}", flush=True)  # the table once, on stdout
    headline = {k: metrics["views"].get(k) for k in ("psnr", "ssim", "depth_abs_rel") if k in metrics["views"]}
    if "geometry" in metrics:
        headline.update(chamfer_l1=metrics["geometry"]["chamfer_l1"], fscore=metrics["geometry"]["fscore"])
    ctx.log.info(f"eval ({method}): {headline} -> eval/metrics.json")
    # the manifest keeps the headline numbers; per-view lists stay in metrics.json
    views = {k: v for k, v in metrics["views"].items() if k != "per_view"}
    geometry = dict(metrics.get("geometry", {}))
    poses = {k: v for k, v in metrics.get("poses", {}).items() if k not in ("rotation_deg", "center_rel")}
    result = {"method": method, "views": views, "geometry": geometry, "poses": poses, "skipped": metrics["skipped"]}
    if "holdout" in metrics:
        result["holdout"] = {k: v for k, v in metrics["holdout"].items() if k != "panoramas"}
    return result


def run_poses_only(ctx: StageContext) -> dict:
    poses = evaluate_poses(ctx.workspace, ctx.workspace.load_scene(), ctx.workspace.normalization())
    skipped = {"views": "no trained model (run nerf or idr first)", "geometry": "no trained model"}
    if "skipped" in poses:
        skipped["poses"] = poses.pop("skipped")
    metrics = {"method": None, "views": {}, "poses": poses, "skipped": skipped}
    write_json(ctx.out_dir / "metrics.json", metrics)
    print(f"eval (poses only: no trained model yet):\n{format_table(metrics)}", flush=True)
    return {"method": None, "poses": {k: v for k, v in poses.items() if k not in ("rotation_deg", "center_rel")},
            "skipped": skipped}


def eval_inputs(workspace: Workspace, config) -> list[str]:
    """The model's inputs, plus the export folder when there is one (its mesh is what is measured)."""
    if poses_only(workspace, config):
        return ["poses/transforms.json", "poses/report.json"]
    inputs = model_inputs(workspace, config)
    return inputs + (["export"] if (workspace.stage_dir("export") / "manifest.json").exists() else [])


STAGE = Stage(name="eval", config_cls=EvalConfig, run=run, inputs=eval_inputs,
              description="PSNR/SSIM/LPIPS, depth AbsRel/RMSE, Chamfer/F-score, pose errors -> eval/metrics.json",
              produced_by=MODEL_PRODUCED_BY)
