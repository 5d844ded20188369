"""IDR stage: implicit differentiable rendering (Yariv et al. 2020) of the workspace's scene.

Geometry is the zero level set of an SDF network, appearance a neural renderer, and cameras can
be refined jointly (``train_cameras=true``). Trains on object masks (dataset, folder or plain
background threshold, see ``configs/idr.yaml``).

Outputs in ``W/idr/``: ``model.pt`` (load with :func:`load_trained`), ``renders/`` (RGB and normal
PNGs of the held-out views), ``depth/*.npy`` (z-depth in the dataset's original units, 0 = no
surface), ``mesh.ply`` (marching cubes of f, original units, vertex colours), ``metrics.json``
(PSNR, SSIM, mask IoU, Chamfer when a ground-truth mesh is known, times), and ``cameras.json``
(refined poses) when cameras are trained.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from datasets.scene import Scene, SceneError
from pipeline.evaluation.ground_truth import find_gt_mesh, mesh_metrics
from pipeline.evaluation.idr_views import evaluate_views
from pipeline.export.idr_mesh import extract_mesh
from pipeline.geometry.mesh import write_ply
from pipeline.runner.config import config_hash
from pipeline.models.idr.cameras import PoseCorrections
from pipeline.models.idr.losses import LossConfig
from pipeline.models.idr.model import IDRModel, RendererConfig
from pipeline.models.idr.sdf_network import SDFNetworkConfig
from pipeline.models.idr.sphere_tracing import TracingConfig
from pipeline.runner.runtime import pick_device, torch_threads
from pipeline.runner.stage import Stage, StageContext
from pipeline.runner.io import write_json
from pipeline.runner.workspace import Workspace, WorkspaceError
from pipeline.training.idr_data import MaskOptions, RayBank, estimate_background, load_masks, load_views
from pipeline.training.idr import TrainSettings, train

MODEL_FORMAT = "recon-idr-1"


@dataclass
class IDRConfig:
    iterations: int = 20000
    max_time_s: float = 780.0  # training budget in seconds (counted across resumes); outputs come after
    batch_rays: int = 512  # rays per step
    mask_fraction: float = 0.6  # share of each batch drawn inside the masks
    # share of each batch drawn within edge_width px of a silhouette edge (lego-200: +1.7 dB, thin gaps carve out)
    edge_fraction: float = 0.25
    edge_width: int = 2
    eikonal_points: int = 256  # uniform points in the bounding sphere per step (plus the surface points)
    lr: float = 1e-3  # MLPs
    lr_grid: float = 1e-2  # hash-grid table (encoding=hashgrid)
    lr_final_factor: float = 0.1  # learning rates decay exponentially to this factor
    train_cameras: bool = False  # IDR's "trained cameras": per-view pose corrections
    lr_cameras: float = 1e-3
    camera_gauge: bool = True  # remove the similarity by which all trained cameras drift together
    # with trained cameras the appearance grid's levels fade in over this fraction of training
    # (renderer.coarse_to_fine, BARF); measured 0.47 -> 0.30 / 0.27 deg with 0.5 / 0.7 (0 = renderer's value)
    camera_coarse_to_fine: float = 0.7
    downscale: int = 1  # train on images downscaled by this integer factor
    eval_downscale: int = 1  # render the held-out views at this factor
    holdout_every: int = 8  # scenes without a test/val split hold back every k-th view (0: none)
    max_eval_views: int = 0  # 0 = all held-out views
    background: str = "auto"  # colour of rays that miss: auto (median outside the masks) | white | black
    mask_source: str = "auto"  # auto (dataset, or mask_folder when set) | dataset | folder | threshold
    mask_folder: str = ""  # masks named like the views (white = object)
    mask_threshold: float = 0.2  # threshold masks: a pixel is object if it differs from the background by more
    mask_background: str = "black"  # threshold masks: the plain background colour, black | white
    mesh_resolution: int = 256  # marching-cubes grid over the bounding sphere's cube
    mesh_min_component: float = 0.01  # drop mesh pieces smaller than this share of the faces
    mesh_colors: bool = True
    gt_mesh: str = ""  # reference mesh (original units) for Chamfer; default: mesh_gt.ply beside the data
    render_chunk: int = 16384
    checkpoint_every_s: float = 60.0
    seed: int = 0
    cpu_threads: int = 1  # torch CPU threads while the stage runs (restored after); 0 = torch's default
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    sdf: SDFNetworkConfig = field(default_factory=SDFNetworkConfig)
    renderer: RendererConfig = field(default_factory=RendererConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    loss: LossConfig = field(default_factory=LossConfig)


# --- splits, model I/O -----------------------------------------------------------------------


def train_test_split(scene: Scene, holdout_every: int) -> tuple[list[int], list[int]]:
    """Training and held-out views: the scene's own split when it has one."""
    test = list(scene.eval_split())
    if test:
        held = set(test) | set(scene.splits.get("val", []))
        train_idx = [i for i in scene.splits.get("train", range(len(scene))) if i not in held]
        return train_idx, test
    train_idx = list(scene.splits.get("train", range(len(scene))))
    if holdout_every > 0 and len(train_idx) >= 2 * holdout_every:
        test = train_idx[holdout_every - 1::holdout_every]
        train_idx = [i for i in train_idx if i not in set(test)]
    return train_idx, test


def build_model(cfg: IDRConfig, background) -> IDRModel:
    renderer = cfg.renderer
    if cfg.train_cameras and cfg.camera_coarse_to_fine > 0:
        renderer = dataclasses.replace(renderer, coarse_to_fine=cfg.camera_coarse_to_fine)
    return IDRModel(cfg.sdf, renderer, cfg.tracing, background)


def save_model(path: Path, model: IDRModel, cfg: IDRConfig, extra: Optional[dict] = None) -> None:
    torch.save({"format": MODEL_FORMAT, "sdf": dataclasses.asdict(cfg.sdf),
                "renderer": dataclasses.asdict(cfg.renderer), "tracing": dataclasses.asdict(cfg.tracing),
                "background": model.background.tolist(), "state_dict": model.state_dict(), **(extra or {})}, path)


def load_model_file(path: Path, device="cpu") -> IDRModel:
    path = Path(path)
    if not path.exists():
        raise WorkspaceError(f"{path} is missing; run `python run.py idr --workspace W` first")
    blob = torch.load(path, map_location=device, weights_only=False)
    if blob.get("format") != MODEL_FORMAT:
        raise WorkspaceError(f"{path}: not an IDR model file (format {blob.get('format')!r}); re-run the idr stage")
    model = IDRModel(SDFNetworkConfig(**blob["sdf"]), RendererConfig(**blob["renderer"]),
                     TracingConfig(**blob["tracing"]), blob["background"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()


def load_trained(workspace: Workspace | str | Path, device="cpu") -> IDRModel:
    """The trained IDR model of a workspace (an :class:`pipeline.models.render.SDFModel`, normalised frame)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    return load_model_file(ws.stage_dir("idr") / "model.pt", device)


# --- outputs -----------------------------------------------------------------------------------


# --- the stage ---------------------------------------------------------------------------------


def _background(cfg: IDRConfig, views) -> np.ndarray:
    if cfg.background == "white":
        return np.ones(3, dtype=np.float32)
    if cfg.background == "black":
        return np.zeros(3, dtype=np.float32)
    if cfg.background != "auto":
        raise SceneError(f"background must be auto, white or black, got {cfg.background!r}")
    return estimate_background(views)


def run(ctx: StageContext) -> dict:
    cfg: IDRConfig = ctx.config
    with torch_threads(cfg.cpu_threads):
        return _run(ctx, cfg)


def _run(ctx: StageContext, cfg: IDRConfig) -> dict:
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    scene = ctx.workspace.load_scene()
    train_idx, test_idx = train_test_split(scene, cfg.holdout_every)
    if not train_idx:
        raise SceneError(f"{ctx.workspace.transforms_path}: no training views")
    if cfg.max_eval_views > 0:
        test_idx = test_idx[:cfg.max_eval_views]
    mask_options = MaskOptions(cfg.mask_source, cfg.mask_folder, cfg.mask_threshold, cfg.mask_background)
    train_views = load_views(scene, train_idx, load_masks(scene, train_idx, mask_options), cfg.downscale)
    background = _background(cfg, train_views)
    bank = RayBank(train_views, cfg.tracing.radius, cfg.mask_fraction, cfg.edge_fraction, cfg.edge_width)
    ctx.log.info(f"idr: {len(train_idx)} training views ({len(bank)} rays), {len(test_idx)} held out, "
                 f"encoding {cfg.sdf.encoding}, background {np.round(background, 3).tolist()}")

    device = pick_device(cfg.device)
    model = build_model(cfg, background).to(device)
    corrections = PoseCorrections(len(train_idx)).to(device) if cfg.train_cameras else None
    train_cameras = train_views.cameras.to(device)
    settings = TrainSettings(cfg.iterations, cfg.max_time_s, cfg.batch_rays, cfg.eikonal_points, cfg.lr,
                             cfg.lr_grid, cfg.lr_cameras, cfg.lr_final_factor, cfg.checkpoint_every_s, cfg.seed,
                             config_hash(cfg), cfg.camera_gauge)
    summary = train(model, train_cameras, corrections, bank, cfg.loss, settings, ctx.resume_dir, ctx.log)
    model.eval()

    extra = {}
    metrics: dict = {"iterations": summary["iterations"], "train_time_s": round(summary["train_time_s"], 1),
                     "stopped_by_time": summary["stopped_by_time"], "encoding": cfg.sdf.encoding}
    if corrections is not None:
        with torch.no_grad():
            refined = corrections.apply(train_cameras.c2w, torch.arange(len(train_idx), device=device)).cpu().numpy()
        extra["cameras"] = {"indices": train_idx, "c2w": refined}
        write_json(ctx.out_dir / "cameras.json", {
            "frame": "normalised (see poses/normalization.json), OpenCV camera-to-world",
            "views": [{"name": scene.frames[i].name, "c2w": refined[v].tolist(),
                       "c2w_initial": scene.frames[i].c2w.tolist()} for v, i in enumerate(train_idx)]})
    save_model(ctx.out_dir / "model.pt", model, cfg, extra)

    sim_inverse = ctx.workspace.normalization().inverse()
    t_eval = time.time()
    eval_on = "held-out"
    eval_idx = test_idx
    if not eval_idx:  # nothing held out: report training views, and say so
        eval_idx, eval_on = train_idx[:3], "training"
    eval_masks = load_masks(scene, eval_idx, mask_options)
    eval_views = load_views(scene, eval_idx, eval_masks, cfg.eval_downscale)
    view_metrics = evaluate_views(model, eval_views, scene, ctx.out_dir, ctx.workspace.normalization().scale,
                                  cfg.render_chunk)
    metrics.update({k: v for k, v in view_metrics.items() if k != "views"}, eval_views=eval_on,
                   eval_time_s=round(time.time() - t_eval, 1))

    t_mesh = time.time()
    try:
        verts, faces, colors = extract_mesh(model, cfg.tracing.radius, cfg.tracing.lipschitz, cfg.mesh_resolution,
                                           cfg.mesh_min_component, cfg.mesh_colors, sim_inverse.apply_points)
        write_ply(ctx.out_dir / "mesh.ply", verts, faces, colors)
        from pipeline.geometry.mesh import is_watertight

        metrics.update(mesh_vertices=len(verts), mesh_faces=len(faces), mesh_watertight=is_watertight(faces))
        gt_path = find_gt_mesh(cfg.gt_mesh, scene)
        if gt_path is not None:
            metrics["mesh"] = mesh_metrics(verts, faces, gt_path)
    except ValueError as exc:  # the field has no zero crossing: training failed to find a surface
        ctx.log.warning(f"idr: no mesh: {exc}")
        metrics["mesh_error"] = str(exc)
    metrics["mesh_time_s"] = round(time.time() - t_mesh, 1)
    metrics["total_time_s"] = round(time.time() - t_start, 1)
    write_json(ctx.out_dir / "metrics.json", {**metrics, "views": view_metrics.get("views", [])})
    ctx.log.info(f"idr: PSNR {metrics.get('psnr', float('nan')):.2f} dB, mask IoU "
                 f"{metrics.get('mask_iou', float('nan')):.3f} on {eval_on} views"
                 + (f", Chamfer-L1 {metrics['mesh']['chamfer_l1_over_radius']:.4f} x radius" if "mesh" in metrics else ""))
    return metrics


STAGE = Stage(name="idr", config_cls=IDRConfig, run=run, inputs=("poses/transforms.json",),
              default_config="idr.yaml", produced_by={"poses/transforms.json": "python run.py poses --data DIR"},
              description="IDR: SDF surface + neural renderer (+ trainable cameras) from masked views")

__all__ = ["IDRConfig", "STAGE", "run", "load_trained", "load_model_file", "train_test_split", "build_model"]
