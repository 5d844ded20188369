"""SDF stage: a surface from photos by volume rendering an implicit field (NeuS, Wang et al. 2021;
``field=occupancy``: UNISURF's occupancy, Oechsle et al. 2021), no masks needed.

The object's sphere is the region of interest (``roi``, :mod:`pipeline.geometry.roi`): ``auto``
takes the dataset's box of the object, else the sparse points of pose estimation
(``W/poses/points.ply``), else the cameras' common view; ``box`` a box in the original units
(``roi_box``); ``sphere`` the normalised frame's ball. A similarity moves the cameras so that it
becomes the origin-centred ball of ``sampling.radius``, where the model trains; ``model.pt``
remembers it, so loaded models render in the normalised frame like the other methods'.
When most training cameras stand inside that ball (a street, a room: ``inside_out=auto``), the
ball grows to hold every camera and the field starts inside out (free space inside, surfaces
around), as Neuralangelo's ``inside_outside``; its samples then take equal steps in log distance
(``sampling.spacing=auto``), and the mesh is cut, open, at the box of the sparse points the
cameras saw (a street keeps its facades and ground, not the starting sphere painted with sky);
``foreground_box=auto`` also keeps the surface field to that box (rays beyond it see the
background field).
When pose estimation left sparse points, ``points_weight`` pulls the surface through them
(Geo-NeuS's explicit SDF supervision): they fix the geometry where photos alone leave it loose.

Inside the object's sphere the field is IDR's SDF
network (hash grid by default, or Fourier features), rendered with NeuS's unbiased weights from a
learned sharpness ``s``, with uniform plus hierarchical samples that gather at the surface as ``s``
grows; outside it a small NeRF in inverted-sphere coordinates (NeRF++) explains the background,
so the surface is not dragged out to explain it. Losses: colour L1, eikonal, optionally a mask
BCE (``use_masks=true``: the same mask sources as the idr stage) and a curvature term. Without
object masks the sky (``sky=auto``: blue skies found in the photos, :mod:`pipeline.geometry.sky`;
``sky=folder``: your masks) gets no foreground opacity, so it is not painted on a surface.

Speed: once a fifth of training has passed, a grid of the cells the surface may cross
(:mod:`pipeline.models.sdf.surface_grid`, recomputed every 16 steps) limits each ray's samples to
its stretch near the surface. With ``sample_gradients=constant`` (the default) grad f at the ray
samples (NeuS's cos, the renderer's normal input) is a constant computed with first derivatives
only, and the eikonal loss takes central differences at ``eikonal_ray_points`` of the samples plus
``eikonal_points`` in the ball, so nothing needs second derivatives through the hash grid
(``differentiable`` is NeuS's exact form, about 2.4x slower per sample on a CPU: bench/sdf_speed.py).

Outputs in ``W/sdf/``: ``model.pt`` (load with :func:`pipeline.models.sdf.io.load_trained`),
``renders/`` (RGB and normal PNGs of the held-out views), ``depth/*.npy`` (z-depth in the
original units, 0 where the foreground opacity < 0.5), ``mesh.ply`` (marching cubes of the field
at 0 over the sphere's cube, original units, vertex colours; with ``mesh_clip=auto`` cut at the
object's box when the ROI came from one (the dataset's box, ``roi_box``) and closed there, so a
temple's cloth or a statue's plinth stays out of a watertight mesh; pieces smaller than
``mesh_min_component`` dropped, and with ``mesh_visibility=components`` the pieces no training
camera sees as its first surface, rendered at ``mesh_visibility_size`` px), ``metrics.json`` (PSNR,
SSIM, mask IoU when the scene has masks, Chamfer / F-score when a GT mesh is known, the ROI,
watertightness, times, samples/s).

Checkpoints and resuming as in the idr stage: every ``checkpoint_every_s`` trained seconds (30 by
default), on Ctrl-C and at the end, in the stage's resume folder; a checkpoint of another config
or other views is set aside with a warning.
"""
from __future__ import annotations

import time
import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.evaluation.geometry import mesh_metrics
from pipeline.evaluation.ground_truth import load_ground_truth
from pipeline.evaluation.sdf_views import evaluate_sdf_views
from pipeline.export.meshing import bounding_sphere_mesh, faces_inside, visible_mesh_parts
from pipeline.geometry.mesh import is_watertight, read_ply, write_ply
from pipeline.geometry.roi import (ROI_MODES, box_distance, camera_arrays, cameras_inside, choose_roi,
                                   holding_cameras, is_identity, move_scene, parse_box, points_box)
from pipeline.models.idr.model import RendererConfig
from pipeline.models.render import check_supersample
from pipeline.models.idr.sdf_network import SDFNetworkConfig
from pipeline.models.sdf.background import BACKGROUND_MODELS, BackgroundConfig
from pipeline.models.sdf.io import build_model, save_model
from pipeline.models.sdf.model import FIELDS, SAMPLE_GRADIENTS, SPACINGS, SamplingConfig, SDFModelConfig
from pipeline.runner.config import ConfigError
from pipeline.runner.io import write_json
from pipeline.runner.runtime import pick_device, torch_threads
from pipeline.runner.stage import Stage, StageContext
from pipeline.training.common import (DEFAULT_CHECKPOINT_EVERY_S, check_budget, resume_config, settings_from,
                                      views_fingerprint)
from pipeline.training.idr_data import MaskOptions, background_color, load_masks, load_views, train_test_split
from pipeline.training import distributed
from pipeline.training.sdf import NOT_RESUME_KEYS, SDFTrainSettings, train
from pipeline.training.sdf_data import SKY_SOURCES, PixelRays, anchors_for_training, full_masks, sky_masks


@dataclass
class SDFStageConfig:
    """A CPU-sized default: geometry on a hash grid (levels fading in coarse to fine) with a
    one-layer MLP, a small renderer with an appearance hash grid, 16 uniform + 16 hierarchical
    samples per ray over the stretch the skipping grid keeps, 16 background samples, 512 rays per
    step. Nested keys: ``sdf.encoding=fourier``, ``sampling.importance=64``."""

    max_steps: int = 20000  # an upper bound (>= 1): the time budget usually ends training first
    # training budget in seconds, counted across resumes (0 = no time budget; negative is an
    # error); renders and mesh come after
    max_time_s: float = 600.0
    # (the key shadows dataclasses.field in this class body, hence dataclasses.field below)
    field: str = "sdf"  # sdf (NeuS) | occupancy (UNISURF: alpha = occupancy = sigmoid(-s f); surface at 0.5)
    batch_rays: int = 512  # rays per step (x 32 foreground + 16 background samples)
    eikonal_points: int = 256  # uniform points in the sphere per step, besides the ray samples below
    # grad f at the ray samples: constant (first derivatives only: the C++ hash-grid kernels; the
    # eikonal loss then takes eikonal_ray_points of the samples) | differentiable (NeuS: second
    # derivatives at every sample, several times slower on a CPU)
    sample_gradients: str = "constant"
    eikonal_ray_points: int = 512  # with sample_gradients=constant: ray samples per step in the eikonal loss
    eikonal_weight: float = 0.1  # NeuS: 0.1
    # masks are optional: with use_masks=true a BCE of the foreground opacity against them
    use_masks: bool = False
    mask_weight: float = 0.1  # NeuS: 0.1
    mask_source: str = "auto"  # as the idr stage: auto | dataset | folder | threshold
    mask_folder: str = ""
    mask_threshold: float = 0.2
    mask_background: str = "black"
    # share of each batch drawn in proportion to the pixels' last colour errors (instant-ngp's error
    # map): regions few views see (a pit between parts, a crease) get rays until they are right
    # (built-in scene, 840 s: 0.63% r alone, 0.47% with 0.5, 0.24% with 0.5 and curvature 0.02)
    error_sampling: float = 0.5
    # normals at each ray's surface point and at a jittered neighbour agree (keeps texture out of
    # the geometry: the bumps the base plate grew without it; 0 = off)
    curvature_weight: float = 0.02
    curvature_std: float = 0.01
    curvature_fade: float = 0.0  # > 0: the weight falls linearly to 0 at this share of training
    # |f| at the sparse points of pose estimation (Geo-NeuS's explicit SDF supervision; only when
    # the poses stage estimated poses and left W/poses/points.ply): the points seen by >= 2
    # training cameras inside the ROI, points_per_step of them per step (0 = off)
    points_weight: float = 1.0
    points_per_step: int = 256
    # the rays along which training cameras saw those points (their tracks, W/poses/points_views.npy)
    # end at them: relative depth error + the opacity they lack (DS-NeRF's depth from SfM; 0 = off)
    depth_weight: float = 0.1
    depth_rays: int = 128  # of those rays per step, rendered with the batch
    # a cost on the foreground's opacity per ray: what the background field explains as well (the sky
    # over a street, seen from inside) is left to it instead of painted on a surface (0 = off)
    opacity_weight: float = 0.0
    # training rays through a random point of their pixel, not its centre (instant-ngp's); off:
    # on lego-200 it lost 0.2-0.4 dB on both seeds tried
    pixel_jitter: bool = False
    # the sky gets no foreground opacity (the background field's alone): auto = blue skies found in
    # the photos (pipeline.geometry.sky; none on the built-in scene, temple, lego, Herz-Jesu) |
    # folder = sky_folder's masks, one per view named like it, white = sky | off. Not with use_masks
    # (object masks already say it).
    sky: str = "auto"
    sky_folder: str = ""
    sky_weight: float = 0.1
    lr: float = 1e-3  # MLPs and the sharpness s
    lr_grid: float = 1e-2  # hash-grid tables
    lr_final_factor: float = 0.1  # learning rates decay exponentially to this factor
    warmup_steps: int = 100
    downscale: int = 1  # train on images downscaled by this integer factor
    holdout_every: int = 8  # scenes without a test/val split hold back every k-th view (0: none)
    eval_max_views: int = 0  # 0 = all held-out views
    eval_downscale: int = 1
    # held-out renders: colour and opacity averaged over k x k rays per pixel (anti-aliased, as a
    # photo's pixel averages its area; depth and normals: the centre ray's); 1 = the centre ray
    eval_supersample: int = 1
    # the colour behind the background field (all of the background with background_field.model=none):
    # white | black | auto (the median colour outside the masks; white without masks)
    background: str = "white"
    mesh_resolution: int = 256  # marching-cubes grid over the sphere's cube
    mesh_min_component: float = 0.01  # drop mesh pieces smaller than this share of the faces
    mesh_colors: bool = True
    # visibility cleaning: components (drop mesh pieces no training camera sees as its first surface;
    # keeps closed surfaces closed) | faces (drop every face no camera sees: opens hidden parts) | off
    mesh_visibility: str = "components"
    mesh_visibility_views: int = 16  # training cameras rendered for it (evenly spread)
    mesh_visibility_size: int = 64  # long side (px) of their depth maps
    # cut the mesh at the object's box and close it there (a temple's cloth, a statue's plinth, the
    # table under a shoe): auto = when the ROI came from a box (the dataset's box of the object, or
    # roi_box) | off
    mesh_clip: str = "auto"
    # the field starts as a sphere around the cameras (free space inside, Neuralangelo's
    # inside_outside) instead of a ball of matter: auto = when most training cameras stand inside
    # the region of interest (a street, a room) | on | off
    inside_out: str = "auto"
    # auto: seen from inside, the surface field only within the box of the sparse points the cameras
    # saw, the background field beyond it | off: the whole sphere (lund, 2 seeds: no change, the
    # sky stayed on a ceiling inside the box, 14.80 / 15.35 dB against 15.04 / 15.36)
    foreground_box: str = "off"
    # region of interest (see the module docstring): auto | sphere | box
    roi: str = "auto"
    roi_box: list[float] = dataclasses.field(default_factory=list)  # [xmin,ymin,zmin,xmax,ymax,zmax], original units
    roi_margin: float = 0.1  # an estimated ROI (sparse points, cameras) grows by this share of its radius
    gt_mesh: str = ""  # reference mesh (original units) for Chamfer; default: mesh_gt.ply beside the data
    checkpoint_every: int = 0  # steps (0 = off: the time-based ones suffice)
    checkpoint_every_s: float = DEFAULT_CHECKPOINT_EVERY_S  # seconds of training (0 = off)
    seed: int = 0
    cpu_threads: int = 1  # torch CPU threads during the stage (0 = torch's default)
    device: str = "auto"  # auto | cpu | cuda
    # sampling.spacing=auto: linear steps along the ray for an object seen from outside, log steps
    # for a scene seen from inside (inside_out)
    sampling: SamplingConfig = dataclasses.field(default_factory=lambda: SamplingConfig(spacing="auto"))
    # geometry: a hash grid (its levels fade in over the first 30% of training) and one hidden
    # layer; backend auto: the C++ kernels on a CPU, Triton on CUDA (values and table gradients),
    # the PyTorch reference wherever a gradient to the points is needed
    sdf: SDFNetworkConfig = dataclasses.field(default_factory=lambda: SDFNetworkConfig(
        encoding="hashgrid", hash_backend="auto", hidden_dim=64, num_layers=2, skip_layers=[], feature_dim=15,
        init_radius=0.5, weight_norm=False, hash_levels=12, hash_log2_size=15, hash_max_resolution=512,
        coarse_to_fine=0.3))
    renderer: RendererConfig = dataclasses.field(default_factory=lambda: RendererConfig(
        hidden_dim=64, num_layers=3, weight_norm=False, position_encoding="hashgrid"))
    background_field: BackgroundConfig = dataclasses.field(default_factory=BackgroundConfig)


def run(ctx: StageContext) -> dict:
    cfg: SDFStageConfig = ctx.config
    check_budget(cfg)  # before any work
    check_settings(cfg)
    with torch_threads(cfg.cpu_threads):
        return _run(ctx, cfg)


MESH_VISIBILITY = ("components", "faces", "off")
MESH_CLIP_MODES = ("auto", "off")


def check_settings(cfg: SDFStageConfig) -> None:
    """A ConfigError naming the first bad setting (before any work)."""
    choices = {"field": FIELDS, "sample_gradients": SAMPLE_GRADIENTS, "background_field.model": BACKGROUND_MODELS,
               "inside_out": INSIDE_OUT_MODES, "foreground_box": ("auto", "off"), "mesh_clip": MESH_CLIP_MODES,
               "roi": ROI_MODES, "sampling.spacing": ("auto",) + SPACINGS, "sky": SKY_SOURCES,
               "mesh_visibility": MESH_VISIBILITY}
    for key, allowed in choices.items():
        value = functools.reduce(getattr, key.split("."), cfg)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    if not 0.0 <= cfg.error_sampling < 1.0:
        raise ConfigError(f"error_sampling must be in [0, 1) (a share of each batch), got {cfg.error_sampling:g}")
    check_supersample(cfg.eval_supersample, "eval_supersample")
    if cfg.roi == "box" or cfg.roi_box:
        parse_box(cfg.roi_box)
    for key in ("points_weight", "depth_weight", "opacity_weight", "sky_weight"):
        if not getattr(cfg, key) >= 0:
            raise ConfigError(f"{key} must be >= 0 (0 = off), got {getattr(cfg, key)}")
INSIDE_OUT_MODES = ("auto", "on", "off")
INSIDE_OUT_INIT = 0.95  # share of the sphere's radius the inside-out field starts at


def sparse_points(workspace) -> np.ndarray | None:
    """The poses stage's sparse points (M, 3), normalised frame, when it estimated poses."""
    path = workspace.stage_dir("poses") / "points.ply"
    return read_ply(path)[0] if path.exists() else None


def _run(ctx: StageContext, cfg: SDFStageConfig) -> dict:
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    original = ctx.workspace.load_scene()
    normalization = ctx.workspace.normalization()
    train_idx, test_idx = train_test_split(original, cfg.holdout_every, cfg.eval_max_views,
                                           ctx.workspace.transforms_path)
    points = sparse_points(ctx.workspace)
    roi = choose_roi(cfg.roi, original, normalization, cfg.sampling.radius, points, cfg.roi_box, cfg.roi_margin,
                     train_idx)
    centres = np.stack([original.frames[i].c2w[:3, 3] for i in train_idx])
    inside_out, why = cameras_inside(roi, centres, cfg.inside_out)
    if inside_out and roi.box is None:  # seen from inside: every camera must stand in the modelled ball
        roi = holding_cameras(roi, centres, cfg.roi_margin)
    to_model = roi.similarity(cfg.sampling.radius)  # normalised frame -> the frame the model trains in
    scene = move_scene(original, to_model)
    ctx.log.info(f"sdf: {roi.describe()}")
    to_original = to_model.compose(normalization).inverse()  # model frame -> original units
    mask_options = MaskOptions(cfg.mask_source, cfg.mask_folder, cfg.mask_threshold, cfg.mask_background)
    tracks_path = ctx.workspace.stage_dir("poses") / "points_views.npy"  # the points' tracks, when written
    tracks = np.load(tracks_path) if tracks_path.exists() else None
    sky = None if cfg.use_masks or cfg.sky_weight <= 0 else sky_masks(original, train_idx, cfg.sky, cfg.sky_folder,
                                                                      points, tracks)
    masks = (load_masks(scene, train_idx, mask_options) if cfg.use_masks else  # else: false on the sky, when found
             full_masks(scene, train_idx) if sky is None else [~m for m in sky])
    sky_share = 0.0 if sky is None else float(np.mean([m.mean() for m in sky]))
    if sky is not None:
        ctx.log.info(f"sdf: sky ({cfg.sky}) in {sum(bool(m.any()) for m in sky)} of {len(sky)} training views, "
                     f"{100 * sky_share:.1f}% of their pixels: no foreground there (weight {cfg.sky_weight:g})")
    views = load_views(scene, train_idx, masks, cfg.downscale, cache_dir=ctx.resume_dir)  # memory-mapped when large
    background = background_color(cfg.background, views)
    rays = PixelRays(views)
    device = pick_device(cfg.device)
    ctx.log.info(f"sdf: field starts {'inside out (free space inside its sphere)' if inside_out else 'as a ball'}: {why}")
    sdf_cfg = dataclasses.replace(cfg.sdf, inside_out=inside_out)
    if inside_out:  # the starting sphere must hold the cameras: they stand in free space
        sdf_cfg.init_radius = max(cfg.sdf.init_radius, INSIDE_OUT_INIT * cfg.sampling.radius)
    spacing = cfg.sampling.spacing if cfg.sampling.spacing != "auto" else "log" if inside_out else "linear"
    # seen from inside: the box of the sparse points the cameras saw (the foreground's and the mesh's)
    seen_box = None if roi.box is not None or not inside_out or points is None else points_box(
        points, *camera_arrays(original, train_idx), cfg.roi_margin)
    fg_box = (to_model.apply_box(seen_box).reshape(-1).tolist()
              if seen_box is not None and cfg.foreground_box == "auto" else list(cfg.sampling.box))
    model_cfg = SDFModelConfig(cfg.field, dataclasses.replace(cfg.sampling, spacing=spacing, box=fg_box), sdf_cfg,
                               cfg.renderer, cfg.background_field, cfg.sample_gradients)
    model = build_model(model_cfg, background).to(device)
    ctx.log.info(f"sdf: {cfg.field} field, {len(train_idx)} training views ({len(rays)} rays, masks "
                 f"{'used' if cfg.use_masks else 'not used'}), {len(test_idx)} held out, encoding {cfg.sdf.encoding}, "
                 f"background field {cfg.background_field.model}, device {device}")
    resume = resume_config(cfg, NOT_RESUME_KEYS, device=str(device), views=views_fingerprint(scene, train_idx))
    settings = settings_from(SDFTrainSettings, cfg, resume_config=resume,
                             mask_weight=cfg.mask_weight if cfg.use_masks else 0.0,
                             sky_weight=0.0 if sky is None else cfg.sky_weight)
    anchors = None if points is None or (cfg.points_weight <= 0 and cfg.depth_weight <= 0) else anchors_for_training(
        points, tracks, original, train_idx, to_model, 0.98 * cfg.sampling.radius, box=fg_box)
    if anchors is not None:
        ctx.log.info(f"sdf: {len(anchors.points)} sparse points anchor the surface (f = 0 there, weight "
                     f"{cfg.points_weight:g}), {anchors.num_rays} training rays end at them (weight {cfg.depth_weight:g})")
    summary = train(model, views.cameras.to(device), rays, settings, ctx.resume_dir, ctx.log,
                    anchors=None if anchors is None else anchors.to(device))
    if not distributed.is_main():  # under torchrun rank 0 alone saves, evaluates and meshes
        return {}
    model.eval()
    grid_pad = 4 * cfg.sampling.radius / cfg.mesh_resolution  # two cells of the meshing grid
    open_region = (to_model.apply_box(seen_box, grid_pad)
                   if seen_box is not None and cfg.mesh_clip == "auto" else None)
    # export meshes that box too (its grid ends there, so the mesh is open at it like the stage's)
    save_model(ctx.out_dir / "model.pt", model, None if is_identity(to_model) else to_model, bounds=open_region)
    metrics: dict = {"iterations": summary["steps"], "train_time_s": round(summary["train_time_s"], 1),
                     "stopped_by_time": summary["stopped_by_time"], "samples_per_s": round(summary["samples_per_s"]),
                     "step_time_ms": round(1000 * summary["train_time_s"] / max(1, summary["steps"]), 1),
                     "inv_s": round(float(model.inv_s().detach()), 1), "field": cfg.field, "encoding": cfg.sdf.encoding,
                     "inside_out": inside_out, "spacing": spacing, "foreground_box": fg_box,
                     "anchor_points": 0 if anchors is None else len(anchors.points),
                     "sky_share": round(sky_share, 4),
                     "anchor_rays": 0 if anchors is None else anchors.num_rays,
                     "masks_used": cfg.use_masks, "torch_threads": torch.get_num_threads(),
                     "roi": {"source": roi.source, "center": roi.center.tolist(), "radius": roi.radius,
                             "reason": roi.reason}}

    t_eval = time.time()
    eval_idx, eval_on = (test_idx, "held-out") if test_idx else (train_idx[:3], "training")
    true_masks = [scene.load_mask(i) for i in eval_idx]  # None where a view has none (RGB PNGs)
    with_masks = all(m is not None for m in true_masks)
    eval_views = load_views(scene, eval_idx, true_masks if with_masks else full_masks(scene, eval_idx),
                            cfg.eval_downscale)
    view_metrics = evaluate_sdf_views(model, eval_views, [scene.frames[i].name for i in eval_idx], with_masks,
                                      ctx.out_dir, 1.0 / to_original.scale, supersample=cfg.eval_supersample)
    metrics.update({k: v for k, v in view_metrics.items() if k != "views"}, eval_views=eval_on,
                   eval_supersample=cfg.eval_supersample, eval_time_s=round(time.time() - t_eval, 1))

    t_mesh = time.time()
    try:
        clip = region = open_cut = None
        if cfg.mesh_clip == "auto" and roi.box is not None:
            clip = functools.partial(box_distance, box=roi.box, to_original=to_original)
            region = to_original.inverse().apply_box(roi.box, grid_pad)
            metrics["mesh_clip_box"] = roi.box.tolist()
            ctx.log.info(f"sdf: the mesh is cut at the {roi.source} box {roi.box.reshape(-1).round(4).tolist()} "
                         "(original units; mesh_clip=off keeps what lies outside)")
        elif cfg.mesh_clip == "auto" and seen_box is not None:
            # seen from inside, the field's starting sphere is still there far out, painted with sky:
            # keep what the sparse points say the cameras saw, open at the cut (a street has no roof)
            open_cut = functools.partial(box_distance, box=seen_box, to_original=to_model.inverse())
            region = open_region
            metrics["mesh_clip_box_normalised"] = seen_box.tolist()
            ctx.log.info(f"sdf: the mesh is cut at the sparse points' box {seen_box.reshape(-1).round(4).tolist()} "
                         "(normalised frame; mesh_clip=off keeps what lies outside)")
        mesh = bounding_sphere_mesh(model, cfg.sampling.radius, 1.5, cfg.mesh_resolution, cfg.mesh_min_component,
                                    cfg.mesh_colors, clip=clip, region=region)
        if open_cut is not None:
            mesh = faces_inside(mesh, open_cut)
        if cfg.mesh_visibility != "off":
            mesh, stats = visible_mesh_parts(model, mesh, _visibility_cameras(scene, train_idx, cfg, device),
                                             cfg.mesh_visibility, tolerance=0.02 * cfg.sampling.radius)
            metrics["mesh_visibility"] = stats
            ctx.log.info(f"sdf: visibility cleaning ({cfg.mesh_visibility}) removed {stats['faces_removed']} of "
                         f"{stats['faces_before']} faces in {stats['time_s']:.0f}s")
        verts = to_original.apply_points(mesh["verts"])
        write_ply(ctx.out_dir / "mesh.ply", verts, mesh["faces"], mesh["colors"])
        metrics.update(mesh_vertices=len(verts), mesh_faces=len(mesh["faces"]),
                       mesh_watertight=bool(len(mesh["faces"])) and is_watertight(mesh["faces"]))
        gt = load_ground_truth(original, cfg.gt_mesh)
        if gt is not None:
            metrics["mesh"] = mesh_metrics(verts, mesh["faces"], gt)
    except ValueError as exc:  # no zero crossing: training found no surface
        ctx.log.warning(f"sdf: no mesh: {exc}")
        metrics["mesh_error"] = str(exc)
    metrics["mesh_time_s"] = round(time.time() - t_mesh, 1)
    metrics["total_time_s"] = round(time.time() - t_start, 1)
    write_json(ctx.out_dir / "metrics.json", {**metrics, "views": view_metrics.get("views", [])})
    chamfer = metrics.get("mesh", {}).get("chamfer_l1_over_radius")
    ctx.log.info(f"sdf: {metrics['iterations']} steps in {metrics['train_time_s']:.0f}s; PSNR "
                 f"{metrics.get('psnr', float('nan')):.2f} dB on {eval_on} views"
                 + (f", Chamfer-L1 {chamfer:.4f} x radius" if chamfer is not None else ""))
    return {k: v for k, v in metrics.items() if not isinstance(v, (list, dict)) or k == "mesh"}


def _visibility_cameras(scene, train_idx: list[int], cfg: SDFStageConfig, device):
    """Up to ``mesh_visibility_views`` training cameras, evenly spread, shrunk to a long side of
    ``mesh_visibility_size`` px (the depth maps only need to tell which piece is in front)."""
    count = max(1, min(cfg.mesh_visibility_views, len(train_idx)))
    picked = [train_idx[int(i)] for i in np.linspace(0, len(train_idx) - 1, count).round()]
    frames = list(scene.frames)
    for i in picked:
        k = frames[i].intrinsics
        factor = min(1.0, cfg.mesh_visibility_size / max(k.width, k.height))
        frames[i] = dataclasses.replace(frames[i], intrinsics=k.scaled(factor))
    return dataclasses.replace(scene, frames=frames).cameras(picked, device=device)


STAGE = Stage(name="sdf", config_cls=SDFStageConfig, run=run, inputs=("poses/transforms.json",),
              produced_by={"poses/transforms.json": "python run.py poses --data DATA --workspace W"},
              description="volume-rendered SDF (NeuS) or occupancy surface + NeRF++ background; masks optional",
              distributed=True)
