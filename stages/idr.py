"""IDR stage: implicit differentiable rendering (Yariv et al. 2020) of the workspace's scene.

Geometry is the zero level set of an SDF network, appearance a neural renderer, and cameras can
be refined jointly (``train_cameras=true``). Trains on object masks (dataset, folder or plain
background threshold: ``mask_source``).

Outputs in ``W/idr/``: ``model.pt`` (the mean of the weights over the last ``average_tail`` of
training; load with :func:`pipeline.models.idr.io.load_trained`),
``renders/`` (RGB and normal PNGs of the held-out views), ``depth/*.npy`` (z-depth in the dataset's
original units, 0 = no surface), ``mesh.ply`` (marching cubes of f, original units, vertex colours),
``metrics.json`` (PSNR, SSIM, mask IoU, Chamfer when a ground-truth mesh is known, times), and
``cameras.json`` (refined poses) when cameras are trained.

Checkpoints go to the stage's resume folder every ``checkpoint_every_s`` seconds of training (30 by
default, so a kill loses at most that), on Ctrl-C and at the end of training; re-running resumes
from the last one, its trained seconds counting against ``max_time_s``. A checkpoint made with
another training config or on other views is set aside with a warning (``checkpoint.stale.pt``),
an unreadable one likewise (``checkpoint.corrupt.pt``), and training starts afresh.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from pipeline.evaluation.geometry import mesh_metrics
from pipeline.evaluation.ground_truth import load_ground_truth
from pipeline.evaluation.idr_views import evaluate_views
from pipeline.export.meshing import bounding_sphere_mesh
from pipeline.geometry.mesh import is_watertight, write_ply
from pipeline.models.idr.cameras import PoseCorrections
from pipeline.models.idr.io import build_model, save_model
from pipeline.models.idr.losses import LossConfig
from pipeline.models.idr.model import RendererConfig
from pipeline.models.idr.sdf_network import SDFNetworkConfig
from pipeline.models.idr.sphere_tracing import TracingConfig
from pipeline.runner.io import write_json
from pipeline.runner.runtime import pick_device, torch_threads
from pipeline.runner.stage import Stage, StageContext
from pipeline.training import distributed
from pipeline.training.averaging import check_tail
from pipeline.training.common import (DEFAULT_CHECKPOINT_EVERY_S, check_budget, resume_config, settings_from,
                                      views_fingerprint)
from pipeline.training.idr import NOT_RESUME_KEYS, TrainSettings, train, training_renderer
from pipeline.training.idr_data import (MaskOptions, RayBank, background_color, load_masks, load_views,
                                        train_test_split)


@dataclass
class IDRConfig:
    """The default is a fast CPU setting: the IDR geometry MLP at reduced width, a small renderer
    with an appearance grid, short sphere tracing; configs/idr-paper.yaml has the paper's sizes,
    configs/idr-hash.yaml the geometry on a hash grid. Nested keys: ``sdf.hidden_dim=256``."""

    renamed_keys: ClassVar[dict[str, str]] = {"iterations": "max_steps", "max_eval_views": "eval_max_views"}

    max_steps: int = 20000  # an upper bound (>= 1): the time budget usually ends training first
    # training budget in seconds, counted across resumes (0 = no time budget, train to max_steps;
    # negative is an error); renders and mesh come after
    max_time_s: float = 780.0
    batch_rays: int = 512  # rays per step; mask_fraction of them inside the object masks
    mask_fraction: float = 0.6  # share of each batch drawn inside the masks
    # share of each batch drawn within edge_width px of a silhouette edge, either side: the thin gaps
    # between an object's parts carve out (bench/RESULTS.md)
    edge_fraction: float = 0.25
    edge_width: int = 2
    eikonal_points: int = 256  # uniform points in the bounding sphere per step (plus the surface points)
    lr: float = 1e-3  # MLPs
    lr_grid: float = 1e-2  # hash-grid tables (sdf.encoding=hashgrid, the renderer's appearance grid)
    lr_final_factor: float = 0.1  # learning rates decay exponentially to this factor
    # the saved model is the mean of the weights over this last share of the training budget (tail
    # averaging, SWA): one step's weights swing by +-0.7 dB held-out step to step, their mean is
    # 1-2 dB better (bench/RESULTS.md); 0 = the last step's weights
    average_tail: float = 0.2
    train_cameras: bool = False  # IDR's "trained cameras": per-view pose corrections (axis-angle + translation)
    lr_cameras: float = 1e-3
    # trained cameras: remove the similarity by which all cameras (and the scene) can drift together
    camera_gauge: bool = True
    # trained cameras: the appearance grid's levels fade in over this fraction of training
    # (renderer.coarse_to_fine, BARF), so the poses settle on coarse appearance first; 0 = the
    # renderer's own value
    camera_coarse_to_fine: float = 0.7
    downscale: int = 1  # train on images downscaled by this integer factor
    eval_downscale: int = 1  # render the held-out views at this factor
    holdout_every: int = 8  # scenes without a test/val split hold back every k-th view (0: none)
    eval_max_views: int = 0  # 0 = all held-out views
    background: str = "auto"  # colour of rays that miss: auto (median colour outside the masks) | white | black
    # Masks (IDR trains on object silhouettes):
    #   auto      = the dataset's masks (alpha of RGBA images, mask/ of IDR/DTU data, mask_path), or
    #               mask_folder when it is set
    #   dataset   = the dataset's masks only
    #   folder    = mask_folder: one image per view named like the view (white = object)
    #   threshold = a plain background: pixels differing from mask_background (black | white) by more
    #               than mask_threshold in some channel are object; largest region kept, small holes
    #               (<= 0.2% of the image) filled, larger ones (gaps through the object) kept.
    #               For the Middlebury temple: mask_source=threshold mask_background=black
    mask_source: str = "auto"
    mask_folder: str = ""  # masks named like the views (white = object)
    # threshold masks: a pixel is object if it differs from the background by more; 0.2, not 0.1,
    # keeps the Middlebury temple's dark-grey cloth out of the mask
    mask_threshold: float = 0.2
    mask_background: str = "black"  # threshold masks: the plain background colour, black | white
    mesh_resolution: int = 256  # marching-cubes grid over the bounding sphere's cube
    mesh_min_component: float = 0.01  # drop mesh pieces smaller than this share of the faces
    mesh_colors: bool = True
    gt_mesh: str = ""  # reference mesh (original units) for Chamfer; default: mesh_gt.ply beside the data
    render_chunk: int = 16384
    checkpoint_every: int = 0  # steps between checkpoints (0 = off: the time-based ones below suffice)
    # seconds of training between checkpoints (0 = off): a kill loses at most this much training
    checkpoint_every_s: float = DEFAULT_CHECKPOINT_EVERY_S
    seed: int = 0
    # torch CPU threads while the stage runs (restored after); 0 = torch's default. 1 is several
    # times faster than 2 on a busy 2-core CPU (threads wait on each other)
    cpu_threads: int = 1
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    # the IDR geometry MLP (8 layers, skip at the middle, softplus, geometric init) at reduced width;
    # the paper's 512 wide, feature 256 with weight norm (3x slower gradients on a CPU): idr-paper.yaml
    sdf: SDFNetworkConfig = field(default_factory=lambda: SDFNetworkConfig(
        hidden_dim=128, feature_dim=64, weight_norm=False))
    # a small renderer that also sees an appearance hash grid of x (not in IDR, whose renderer sees x
    # itself): texture lives in the grid instead of being carved into the surface as bumps
    # (bench/RESULTS.md); position_encoding=none is the paper's renderer
    renderer: RendererConfig = field(default_factory=lambda: RendererConfig(
        hidden_dim=128, num_layers=3, weight_norm=False, position_encoding="hashgrid"))
    # short sphere tracing with secant refinement
    tracing: TracingConfig = field(default_factory=lambda: TracingConfig(steps=10, samples=24, secant_steps=6))
    # normal smoothness (loss.smoothness_weight) stays off: no better with the appearance grid
    loss: LossConfig = field(default_factory=LossConfig)


def run(ctx: StageContext) -> dict:
    cfg: IDRConfig = ctx.config
    check_budget(cfg)  # before any work
    check_tail(cfg.average_tail)
    with torch_threads(cfg.cpu_threads):
        return _run(ctx, cfg)


def _run(ctx: StageContext, cfg: IDRConfig) -> dict:
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    scene = ctx.workspace.load_scene()
    train_idx, test_idx = train_test_split(scene, cfg.holdout_every, cfg.eval_max_views, ctx.workspace.transforms_path)
    mask_options = MaskOptions(cfg.mask_source, cfg.mask_folder, cfg.mask_threshold, cfg.mask_background)
    train_views = load_views(scene, train_idx, load_masks(scene, train_idx, mask_options), cfg.downscale,
                             cache_dir=ctx.resume_dir)  # a memory-mapped pixel table goes there
    background = background_color(cfg.background, train_views)
    bank = RayBank(train_views, cfg.tracing.radius, cfg.mask_fraction, cfg.edge_fraction, cfg.edge_width)
    ctx.log.info(f"idr: {len(train_idx)} training views ({len(bank)} rays), {len(test_idx)} held out, "
                 f"encoding {cfg.sdf.encoding}, background {np.round(background, 3).tolist()}")

    device = pick_device(cfg.device)
    renderer = training_renderer(cfg.renderer, cfg.train_cameras, cfg.camera_coarse_to_fine)
    model = build_model(cfg.sdf, renderer, cfg.tracing, background).to(device)
    corrections = PoseCorrections(len(train_idx)).to(device) if cfg.train_cameras else None
    train_cameras = train_views.cameras.to(device)
    resume = resume_config(cfg, NOT_RESUME_KEYS, device=str(device), views=views_fingerprint(scene, train_idx))
    settings = settings_from(TrainSettings, cfg, resume_config=resume)
    summary = train(model, train_cameras, corrections, bank, cfg.loss, settings, ctx.resume_dir, ctx.log)
    if not distributed.is_main():  # under torchrun rank 0 alone saves, evaluates and meshes
        return {}
    model.eval()

    extra = {}
    metrics: dict = {"iterations": summary["steps"], "train_time_s": round(summary["train_time_s"], 1),
                     "stopped_by_time": summary["stopped_by_time"], "averaged_steps": summary["averaged_steps"],
                     "encoding": cfg.sdf.encoding}
    if corrections is not None:
        with torch.no_grad():
            refined = corrections.apply(train_cameras.c2w, torch.arange(len(train_idx), device=device)).cpu().numpy()
        extra["cameras"] = {"indices": train_idx, "c2w": refined}
        write_json(ctx.out_dir / "cameras.json", {
            "frame": "normalised (see poses/normalization.json), OpenCV camera-to-world",
            "views": [{"name": scene.frames[i].name, "c2w": refined[v].tolist(),
                       "c2w_initial": scene.frames[i].c2w.tolist()} for v, i in enumerate(train_idx)]})
    save_model(ctx.out_dir / "model.pt", model, cfg.sdf, cfg.renderer, cfg.tracing, extra)

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
        mesh = bounding_sphere_mesh(model, cfg.tracing.radius, cfg.tracing.lipschitz, cfg.mesh_resolution,
                                    cfg.mesh_min_component, cfg.mesh_colors)
        verts, faces, colors = sim_inverse.apply_points(mesh["verts"]), mesh["faces"], mesh["colors"]
        write_ply(ctx.out_dir / "mesh.ply", verts, faces, colors)
        metrics.update(mesh_vertices=len(verts), mesh_faces=len(faces), mesh_watertight=is_watertight(faces))
        gt = load_ground_truth(scene, cfg.gt_mesh)
        if gt is not None:
            metrics["mesh"] = mesh_metrics(verts, faces, gt)
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
              produced_by={"poses/transforms.json": "python run.py poses --data DATA --workspace W"},
              description="IDR: SDF surface + neural renderer (+ trainable cameras) from masked views",
              distributed=True)
