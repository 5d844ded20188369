"""Eval stage: every metric the scene's ground truth allows, in one ``W/eval/metrics.json``.

``python run.py eval --workspace W`` measures the trained NeRF or IDR model (newest, or
``method=``) against:
- held-out images (test split, else val; else the training views, flagged): PSNR, SSIM, LPIPS
  (only when the lpips package and its weights are on disk; otherwise the reason is recorded);
  mask IoU of the rendered opacity against GT masks;
- GT depth maps: AbsRel and RMSE (ORIGINAL units), inside the GT mask when the scene has masks;
- a GT mesh or point cloud (``scene.meta["recon"]["mesh_gt"]`` in the dataset folder, original
  units): Chamfer-L1 and F-score at a stated threshold (default 1% of the object radius), from
  points sampled on both surfaces; plus how many mesh components no training camera sees;
- reference cameras, when the poses were estimated: rotation / centre errors after a similarity
  alignment (``pipeline.geometry.alignment.pose_errors``).
Metrics the scene has no ground truth for are listed under ``skipped`` with the reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pipeline.runner.runtime import pick_device
from pipeline.geometry.cameras import Cameras, visibility_counts
from pipeline.runner.log import progress
from pipeline.evaluation.metrics import depth_errors, lpips_or_reason, mask_iou, mesh_chamfer_fscore, psnr, ssim
from pipeline.models.render import render_image
from pipeline.runner.stage import Stage, StageContext
from pipeline.runner.io import write_json
from pipeline.runner.workspace import Workspace
from stages import export


@dataclass
class EvalConfig:
    method: str = "auto"  # auto (newest of W/nerf, W/idr) | nerf | idr
    device: str = "auto"
    chunk: int = 8192
    split: str = "eval"  # eval (test, else val, else train) | train | val | test | all
    max_views: int = 0  # 0 = all views of the split
    lpips: bool = True  # computed only when its weights are local
    lpips_net: str = "alex"
    depth_in_mask: bool = True  # depth errors on GT-mask pixels only (when masks exist)
    save_renders: bool = True  # eval/renders/<name>.png beside the metrics
    mesh: bool = True  # Chamfer / F-score when the scene has a GT mesh or point cloud
    mesh_resolution: int = 256  # when no exported mesh of this method exists and one is extracted
    mesh_samples: int = 200000  # points sampled on each surface
    fscore_threshold: float = 0.0  # ORIGINAL units; 0 = fscore_fraction * object radius
    fscore_fraction: float = 0.01
    poses: bool = True  # pose errors when the poses were estimated and the dataset has reference poses


# ----------------------------------------------------------------------------------------------
# Images and depth.


def _finite(value):
    """JSON has no infinity: identical images (PSNR = inf) are reported as None with a note."""
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def evaluate_views(model, scene, sim, cfg: EvalConfig, out: Path, device, log) -> dict:
    """Per-view and mean image, mask and depth metrics on the chosen split."""
    import imageio.v3 as iio

    note = None
    if cfg.split == "eval" and not scene.eval_split():
        note = "the scene has no test/val split: image metrics are on TRAINING views (optimistic)"
        log.warning(f"eval: {note}")
    indices = export.select_views(scene, cfg.split, cfg.max_views)
    if cfg.save_renders:
        (out / "renders").mkdir(parents=True, exist_ok=True)
    per_view, lpips_reason = [], None
    for i in progress(indices, desc="eval views"):
        frame = scene.frames[i]
        camera = Cameras.from_intrinsics([frame.intrinsics], frame.c2w[None], device=device)
        r = render_image(model, camera, chunk=cfg.chunk)
        rgb, acc = r["rgb"].numpy(), r["acc"].numpy()
        gt = scene.load_image(i)
        row: dict = {"name": frame.name}
        if gt.shape[:2] != rgb.shape[:2]:
            raise ValueError(f"{frame.image_path}: image is {gt.shape[1]}x{gt.shape[0]} but its camera says "
                             f"{rgb.shape[1]}x{rgb.shape[0]}; fix the intrinsics in poses/transforms.json")
        row["psnr"], row["ssim"] = _finite(psnr(rgb, gt)), ssim(rgb, gt)
        if cfg.lpips and lpips_reason is None:
            value, lpips_reason = lpips_or_reason(rgb, gt, cfg.lpips_net)
            if value is not None:
                row["lpips"] = value
        mask = scene.load_mask(i)
        if mask is not None:
            row["mask_iou"] = mask_iou(acc > 0.5, mask)
            row["psnr_masked"] = _finite(psnr(rgb, gt, mask))
        gt_depth = scene.load_depth(i)
        if gt_depth is not None:
            region = mask if (cfg.depth_in_mask and mask is not None) else None
            # both in normalised units; dividing by the scale gives RMSE in original units
            row["depth"] = depth_errors(r["depth"].numpy() / sim.scale, gt_depth / sim.scale, region)
        if cfg.save_renders:
            iio.imwrite(out / "renders" / f"{frame.name}.png", export.to_uint8(rgb))
        per_view.append(row)
    result: dict = {"views": len(per_view), "split": cfg.split, "per_view": per_view}
    if note:
        result["note"] = note
    for key in ("psnr", "ssim", "lpips", "mask_iou", "psnr_masked"):
        values = [v[key] for v in per_view if v.get(key) is not None]
        if values:
            result[key] = float(np.mean(values))
    depths = [v["depth"] for v in per_view if v.get("depth", {}).get("abs_rel") is not None]
    if depths:
        pixels = np.array([d["pixels"] for d in depths], dtype=np.float64)
        result["depth_abs_rel"] = float(np.average([d["abs_rel"] for d in depths], weights=pixels))
        result["depth_rmse"] = float(np.sqrt(np.average([d["rmse"] ** 2 for d in depths], weights=pixels)))
        result["depth_region"] = "GT mask" if (cfg.depth_in_mask and scene.has_masks) else "valid GT pixels"
    if lpips_reason:
        result["lpips_unavailable"] = lpips_reason
    return result


# ----------------------------------------------------------------------------------------------
# Geometry.


def dataset_folder(scene) -> Optional[Path]:
    source = scene.meta.get("recon", {}).get("source")
    if not source:
        return None
    p = Path(source)
    return p.parent if p.is_file() else p


def ground_truth_geometry(scene) -> tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[Path]]:
    """(verts, faces or None for a point cloud, path) of the GT surface, original units; Nones if none."""
    from pipeline.geometry.mesh import read_ply

    recon = scene.meta.get("recon", {})
    folder = dataset_folder(scene)
    name = recon.get("mesh_gt") or recon.get("points_gt")
    if folder is None or not name:
        return None, None, None
    path = folder / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: the scene names this GT surface but the file is missing; "
                                "re-create the dataset or remove recon.mesh_gt from its transforms")
    verts, faces, _ = read_ply(path)
    return verts, faces, path


def object_radius(scene, gt_verts: np.ndarray) -> tuple[float, str]:
    radius = scene.meta.get("recon", {}).get("object_radius")
    if radius:
        return float(radius), "scene metadata"
    return float(np.linalg.norm(gt_verts.max(0) - gt_verts.min(0)) / 2), "half the GT bounding-box diagonal"


def reconstructed_mesh(workspace: Workspace, model, method: str, scene, sim, cfg: EvalConfig, device, log):
    """The exported mesh of this method (original units) if there is one, else a fresh extraction
    with the export defaults. Returns (verts, faces, source description)."""
    from pipeline.geometry.mesh import read_ply

    manifest = workspace.manifest("export") or {}
    exported = workspace.stage_dir("export") / "mesh.ply"
    if exported.exists() and manifest.get("metrics", {}).get("mesh", {}).get("method") == method:
        verts, faces, _ = read_ply(exported)
        return verts, faces, str(exported)
    defaults = export.ExportConfig()
    bounds = export.mesh_bounds(scene, model, sim, [])
    train = scene.splits.get("train") or list(range(len(scene)))
    cameras = scene.cameras(train, device=device) if method == "nerf" else None
    log.info(f"eval: no exported {method} mesh; extracting one at {cfg.mesh_resolution}^3")
    mesh = export.extract_mesh(model, method, bounds, cfg.mesh_resolution, defaults.density_threshold, cameras,
                               defaults.carve_min_views, defaults.min_component_fraction, colors=False, device=device)
    return sim.inverse().apply_points(mesh["verts"]), mesh["faces"], f"extracted at {cfg.mesh_resolution}^3"


def components_outside_frusta(verts: np.ndarray, faces: np.ndarray, scene, sim) -> int:
    """Connected components of the mesh (original units) that no training camera sees at all."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(verts)
    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    _, labels = connected_components(coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)), directed=False)
    train = scene.splits.get("train") or list(range(len(scene)))
    points = torch.as_tensor(sim.apply_points(verts), dtype=torch.float32)
    seen = visibility_counts(points, scene.cameras(train)).numpy() > 0
    used = np.unique(faces)
    seen_labels = set(labels[used][seen[used]].tolist())
    return int(len(set(labels[used].tolist()) - seen_labels))


def evaluate_geometry(workspace, model, method, scene, sim, cfg: EvalConfig, device, log) -> dict:
    gt_verts, gt_faces, gt_path = ground_truth_geometry(scene)
    if gt_verts is None:
        return {"skipped": "the scene has no GT mesh or point cloud (recon.mesh_gt)"}
    verts, faces, source = reconstructed_mesh(workspace, model, method, scene, sim, cfg, device, log)
    if len(faces) == 0:
        return {"skipped": f"the reconstructed mesh ({source}) is empty"}
    radius, radius_from = object_radius(scene, gt_verts)
    threshold = cfg.fscore_threshold or cfg.fscore_fraction * radius
    result = mesh_chamfer_fscore(verts, faces, gt_verts, gt_faces, threshold, cfg.mesh_samples)
    result.update(chamfer_l1_over_radius=result["chamfer_l1"] / radius, object_radius=radius,
                  object_radius_from=radius_from, threshold_note=(
                      f"F-score threshold {threshold:.4g} original units"
                      + ("" if cfg.fscore_threshold else f" = {cfg.fscore_fraction:g} x object radius")),
                  distances=("point-to-surface from area-uniform samples on each mesh" if gt_faces is not None
                             else "mesh samples to GT points, GT points to the mesh surface"),
                  samples=cfg.mesh_samples, mesh=source, gt=str(gt_path), mesh_faces=int(len(faces)),
                  components_outside_frusta=components_outside_frusta(verts, faces, scene, sim))
    return result


def evaluate_poses(workspace: Workspace, scene, sim) -> dict:
    """Pose errors against the dataset's own cameras, when the poses stage estimated them."""
    import json

    report_path = workspace.stage_dir("poses") / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if report.get("mode", "import") == "import":
        return {"skipped": "poses were imported from the dataset (they are the reference)"}
    try:
        from pipeline.geometry.alignment import pose_errors
    except ImportError as exc:
        return {"skipped": f"pose error helper unavailable ({exc})"}
    folder = dataset_folder(scene)
    if folder is None:
        return {"skipped": "the workspace does not record its dataset folder"}
    from datasets import read_scene

    reference = read_scene(folder)
    ref_by_name = {f.name: f.c2w for f in reference.frames if f.c2w is not None}
    if not ref_by_name:
        return {"skipped": f"the dataset {folder} has no reference cameras"}
    inv = sim.inverse()
    pairs = [(inv.apply_c2w(f.c2w), ref_by_name[f.name]) for f in scene.frames if f.name in ref_by_name]
    if len(pairs) < 3:
        return {"skipped": f"only {len(pairs)} estimated cameras match reference cameras by name"}
    est, ref = (np.stack(x) for x in zip(*pairs))
    errors = pose_errors(est, ref)
    errors["reference"] = str(folder)
    errors["registered"] = f"{len(pairs)}/{len(reference.frames)}"
    return errors


# ----------------------------------------------------------------------------------------------
# The table and the stage.


def format_table(metrics: dict) -> str:
    """The headline metrics as an aligned two-column table."""
    rows = [("method", metrics.get("method", "?"))]
    views = metrics.get("views", {})

    def fmt(value, digits=4):
        return "n/a" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)

    for key, label in (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("lpips", "LPIPS"), ("mask_iou", "mask IoU"),
                       ("depth_abs_rel", "depth AbsRel"), ("depth_rmse", "depth RMSE (orig. units)")):
        if key in views:
            rows.append((label, fmt(views[key])))
    if "lpips_unavailable" in views:
        rows.append(("LPIPS", "unavailable (weights not local)"))
    if views:
        rows.append(("views", f"{views.get('views')} ({views.get('split')})"))
    geo = metrics.get("geometry", {})
    if "chamfer_l1" in geo:
        rows += [("Chamfer-L1 (orig. units)", fmt(geo["chamfer_l1"])),
                 ("Chamfer-L1 / object radius", fmt(geo["chamfer_l1_over_radius"])),
                 (f"F-score @ {geo['threshold']:.3g}", fmt(geo["fscore"])),
                 ("components outside frusta", fmt(geo["components_outside_frusta"]))]
    poses = metrics.get("poses", {})
    if "rotation_deg_median" in poses:
        rows += [("pose rotation err (deg, median)", fmt(poses["rotation_deg_median"])),
                 ("pose centre err (/ring radius)", fmt(poses["center_rel_median"]))]
    for key, value in metrics.get("skipped", {}).items():
        rows.append((f"{key}: skipped", value))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {name.ljust(width)}  {value}" for name, value in rows)


def run(ctx: StageContext) -> dict:
    cfg: EvalConfig = ctx.config
    method = export.resolve_method(ctx.workspace, cfg.method)
    device = pick_device(cfg.device)
    scene = ctx.workspace.load_scene()
    sim = ctx.workspace.normalization()
    model = export.load_model(ctx.workspace, method, device)
    metrics: dict = {"method": method, "skipped": {}}
    metrics["views"] = evaluate_views(model, scene, sim, cfg, ctx.out_dir, device, ctx.log)
    if cfg.mesh:
        geometry = evaluate_geometry(ctx.workspace, model, method, scene, sim, cfg, device, ctx.log)
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
    geometry = {k: v for k, v in metrics.get("geometry", {}).items()}
    poses = {k: v for k, v in metrics.get("poses", {}).items() if k not in ("rotation_deg", "center_rel")}
    return {"method": method, "views": views, "geometry": geometry, "poses": poses, "skipped": metrics["skipped"]}


def eval_inputs(workspace: Workspace, config) -> list[str]:
    """The model's inputs, plus the export folder when there is one (its mesh is what is measured)."""
    inputs = export.model_inputs(workspace, config)
    return inputs + (["export"] if (workspace.stage_dir("export") / "manifest.json").exists() else [])


STAGE = Stage(name="eval", config_cls=EvalConfig, run=run, inputs=eval_inputs, default_config="eval.yaml",
              description="PSNR/SSIM/LPIPS, depth AbsRel/RMSE, Chamfer/F-score, pose errors -> eval/metrics.json",
              produced_by=export.STAGE.produced_by)
