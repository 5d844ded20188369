"""Export stage: raw depth, novel-view videos and coloured meshes from a trained NeRF or IDR model.

``python run.py export --workspace W --what depth,views,mesh`` writes ``W/export/``:

- ``depth/``: per view ``<name>.npy`` (float32 raw depth in ORIGINAL scene units: z-depth for
  perspective cameras, range for panoramas), ``<name>_depth16.png`` (16-bit, ``depth = value *
  png_scale``, 0 = no surface; ``png_scale`` in ``depth/depth_scale.json``), ``<name>_preview.png``
  (turbo colour map, near = red... far = blue), ``<name>_rgb.png``, optionally ``<name>_normal.npy``
  / ``_normal.png`` (world normals, original frame) and ``<name>_opacity.npy`` / ``.png``;
  ``points.ply``: the depth maps fused into one coloured point cloud, outliers removed
  (see ``pipeline/fusion.py``).
- ``views/``: ``frame_00000.png``..., ``video.mp4`` (H.264) and ``camera_path.json`` (nerfstudio
  format, normalised frame) along an orbit / spiral / smooth path / given nerfstudio camera path.
- ``mesh.ply`` (binary, vertex colours and normals) and ``mesh.obj``, in original scene units:
  marching cubes of the IDR SDF at level 0, or of NeRF density at ``density_threshold`` after
  carving away everything no training camera sees.

Parts not asked for in ``what`` are kept from the previous export.
Everything renders in the normalised frame and is written back with ``normalization().inverse()``.
"""
from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from pipeline.geometry.cameras import Cameras, visibility_counts
from pipeline.runner.log import progress
from pipeline.models.render import render_image
from pipeline.runner.runtime import pick_device
from pipeline.runner.stage import Stage, StageContext
from pipeline.runner.io import write_json
from pipeline.runner.workspace import Workspace, WorkspaceError

METHODS = ("nerf", "idr")
PARTS = ("depth", "views", "mesh")
# files and folders of each part inside W/export (kept when a later export skips the part)
PART_OUTPUTS = {"depth": ("depth", "points.ply"), "views": ("views",), "mesh": ("mesh.ply", "mesh.obj")}


@dataclass
class ExportConfig:
    method: str = "auto"  # auto (newest of W/nerf, W/idr) | nerf | idr
    what: str = "depth,views,mesh"  # comma-separated parts: depth, views, mesh
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    chunk: int = 8192  # rays per rendering batch: bounds peak memory at any resolution

    # depth
    depth_split: str = "eval"  # eval (test, else val, else train) | train | val | test | all
    depth_max_views: int = 0  # 0 = every view of the split
    depth_resolution: float = 1.0  # factor applied to each view's resolution
    normals: bool = True  # also write normals when the model gives them
    opacity: bool = True  # also write accumulated opacity
    min_opacity: float = 0.5  # pixels below it have no surface (0 in the PNG, left out of the cloud)
    point_cloud: bool = True  # fuse the depth maps into points.ply
    fusion_min_views: int = 1  # other views that must confirm a point (0 = no check)
    fusion_tolerance: float = 0.01  # relative depth difference that counts as confirmation
    fusion_outlier_k: int = 16  # neighbours of the statistical outlier filter (0 = off)
    fusion_outlier_std: float = 2.0
    fusion_voxel: float = 0.0  # voxel size in ORIGINAL units to average points in (0 = keep all)

    # novel views
    path: str = "orbit"  # orbit | spiral | smooth | file
    path_file: str = ""  # nerfstudio camera_path.json for path=file
    frames: int = 48
    width: int = 0  # 0 = the first training camera's width
    height: int = 0  # 0 = the first training camera's height (or width * its aspect)
    fov_deg: float = 0.0  # vertical field of view; 0 = the first training camera's
    fps: int = 24
    orbit_radius: Optional[float] = None  # ORIGINAL units; None = median training camera distance
    orbit_elevation_deg: Optional[float] = None  # None = median training camera elevation
    smooth_keyframes: int = 12  # training cameras the smooth path passes through (0 = all)
    video: bool = True
    save_frames: bool = True  # PNG per frame
    view_depth: bool = False  # also write raw depth (.npy) per path frame

    # mesh
    mesh_resolution: int = 256  # marching cubes grid per axis
    mesh_bounds: list[float] = field(default_factory=list)  # xmin ymin zmin xmax ymax zmax, ORIGINAL units;
    # empty = the scene bounds (else the model's, else the normalised cube [-1, 1]^3)
    density_threshold: float = 25.0  # NeRF iso-level of sigma (1 / normalised unit): a layer 1/25
    # thick absorbs 63% of light; lower it for fuzzy surfaces, raise it to shed haze
    carve_min_views: int = 1  # NeRF: density is kept only where this many training cameras see it
    min_component_fraction: float = 0.01  # drop mesh pieces with fewer faces than this fraction
    cull_hidden: bool = True  # NeRF: drop faces no training view sees as its first surface (the inside of solids)
    # voxels behind a view's rendered depth that still count as seen; raise it when a pixel spans
    # several mesh voxels (coarse images, fine mesh) or the density is soft, else culling trims
    # grazing parts of the true surface (bench/RESULTS.md: wider rules measured worse on the demo)
    cull_tolerance: float = 2.0
    mesh_colors: bool = True  # vertex colours from the radiance field, viewed along the normal
    obj: bool = True  # also write mesh.obj


# ----------------------------------------------------------------------------------------------
# The trained model.


def trained_methods(workspace: Workspace) -> list[str]:
    """Methods with a completed stage folder in the workspace, newest first."""
    found = []
    for method in METHODS:
        manifest = workspace.manifest(method)
        if manifest and manifest.get("status") == "done":
            when = (workspace.stage_dir(method) / "manifest.json").stat().st_mtime
            found.append((when, method))
    return [m for _, m in sorted(found, reverse=True)]


def resolve_method(workspace: Workspace, method: str) -> str:
    """``auto`` -> the newest trained method; otherwise check the requested one exists."""
    if method not in ("auto",) + METHODS:
        raise ValueError(f"method must be auto, nerf or idr, got {method!r}")
    available = trained_methods(workspace)
    if method == "auto":
        if not available:
            raise WorkspaceError(f"{workspace.root} has no trained model (no completed nerf/ or idr/ folder); "
                                 f"run `python run.py nerf --workspace {workspace.root}` (or idr) first")
        return available[0]
    if method not in available:
        raise WorkspaceError(f"{workspace.stage_dir(method)} holds no completed {method} run; "
                             f"run `python run.py {method} --workspace {workspace.root}` first")
    return method


def model_inputs(workspace: Workspace, config: Any) -> list[str]:
    """The stage inputs: the normalised poses and the trained model's folder."""
    inputs = ["poses/transforms.json"]
    try:
        inputs.append(resolve_method(workspace, config.method))
    except WorkspaceError:
        inputs.append("nerf" if config.method == "auto" else config.method)  # the runner says it is missing
    return inputs


def load_model(workspace: Workspace, method: str, device: torch.device):
    """The trained model of ``method`` via ``stages.<method>.load_trained(workspace, device)``."""
    try:
        module = importlib.import_module(f"stages.{method}")
    except ModuleNotFoundError as exc:
        raise WorkspaceError(f"the {method} stage is not available in this recon ({exc})") from exc
    loader = getattr(module, "load_trained", None)
    if loader is None:
        raise WorkspaceError(f"stages.{method} has no load_trained(workspace, device); cannot export its model")
    return loader(workspace, device)


# ----------------------------------------------------------------------------------------------
# Images.


def turbo(x: np.ndarray) -> np.ndarray:
    """Google's Turbo colour map (polynomial fit) of values in [0, 1]: (..., 3) float in [0, 1]."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0, 1)
    kr = np.array([0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943])
    kg = np.array([0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604])
    kb = np.array([0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973])
    powers = x[..., None] ** np.arange(6)  # (..., 6)
    return np.clip(np.stack([powers @ kr, powers @ kg, powers @ kb], -1), 0, 1)


def depth_preview(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) colour-mapped depth (near red, far blue; black where not valid), robust range."""
    out = np.zeros(depth.shape + (3,), dtype=np.uint8)
    if valid.any():
        lo, hi = np.percentile(depth[valid], [1, 99])
        x = 1.0 - (depth - lo) / max(hi - lo, 1e-12)
        out[valid] = (turbo(x[valid]) * 255 + 0.5).astype(np.uint8)
    return out


def to_uint8(img) -> np.ndarray:
    return (np.clip(np.asarray(img, dtype=np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


def write_png(path: Path, img: np.ndarray) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, img)


# ----------------------------------------------------------------------------------------------
# Depth.


def select_views(scene, split: str, max_views: int) -> list[int]:
    if split == "eval":
        indices = scene.eval_split() or scene.splits.get("train", list(range(len(scene))))
    elif split == "all":
        indices = list(range(len(scene)))
    else:
        indices = scene.split(split)
    if max_views > 0 and len(indices) > max_views:
        indices = [indices[i] for i in np.linspace(0, len(indices) - 1, max_views).round().astype(int)]
    return list(indices)


def export_depth(model, scene, sim, cfg: ExportConfig, out: Path, device, log) -> dict:
    """Render depth for the chosen views; write raw/16-bit/preview files and the fused cloud."""
    from pipeline.geometry.fusion import DepthView, fuse_depth_maps
    from pipeline.geometry.mesh import write_ply

    depth_dir = out / "depth"
    depth_dir.mkdir(parents=True, exist_ok=True)
    indices = select_views(scene, cfg.depth_split, cfg.depth_max_views)
    if not indices:
        raise WorkspaceError(f"split {cfg.depth_split!r} has no views to export depth for")
    inv = sim.inverse()
    views, raw = [], []
    for i in progress(indices, desc="depth"):
        frame = scene.frames[i]
        k = frame.intrinsics if cfg.depth_resolution == 1.0 else frame.intrinsics.scaled(cfg.depth_resolution)
        camera = Cameras.from_intrinsics([k], frame.c2w[None], device=device)
        r = render_image(model, camera, chunk=cfg.chunk)
        depth_norm = r["depth"].numpy()
        acc = r["acc"].numpy()
        valid = acc >= cfg.min_opacity
        depth = (depth_norm / sim.scale).astype(np.float32)  # back to original units
        np.save(depth_dir / f"{frame.name}.npy", depth)
        write_png(depth_dir / f"{frame.name}_rgb.png", to_uint8(r["rgb"].numpy()))
        write_png(depth_dir / f"{frame.name}_preview.png", depth_preview(depth, valid))
        if cfg.opacity:
            np.save(depth_dir / f"{frame.name}_opacity.npy", acc.astype(np.float32))
            write_png(depth_dir / f"{frame.name}_opacity.png", to_uint8(acc))
        if cfg.normals and "normal" in r:
            normal = r["normal"].numpy() @ inv.rotation.T  # world normals of the original frame
            np.save(depth_dir / f"{frame.name}_normal.npy", normal.astype(np.float32))
            write_png(depth_dir / f"{frame.name}_normal.png", to_uint8(np.where(valid[..., None], normal * 0.5 + 0.5, 0)))
        raw.append((frame.name, depth, valid))
        if cfg.point_cloud:
            views.append(DepthView(depth_norm, camera.to("cpu"), r["rgb"].numpy(), valid))
    # one 16-bit scale for all views so they stay comparable
    max_depth = max((float(d[v].max()) for _, d, v in raw if v.any()), default=1.0)
    png_scale = max_depth / 65000.0
    for name, depth, valid in raw:
        q = np.where(valid, np.round(depth / png_scale), 0).clip(0, 65535).astype(np.uint16)
        write_png(depth_dir / f"{name}_depth16.png", q)
    write_json(depth_dir / "depth_scale.json", {
        "png_scale": png_scale, "units": "original scene units (those of the dataset's camera poses)",
        "meaning": "depth = png_value * png_scale; 0 = no surface (opacity below min_opacity)",
        "depth_kind": "z-depth along the optical axis (range along the ray for equirect panoramas)",
        "npy": "<name>.npy holds the raw float32 depth of every pixel; mask it with <name>_opacity.npy",
        "min_opacity": cfg.min_opacity})
    metrics = {"views": len(indices), "png_scale": png_scale}
    if cfg.point_cloud:
        points, colors = fuse_depth_maps(views, min_consistent_views=cfg.fusion_min_views,
                                         consistency_tol=cfg.fusion_tolerance, outlier_k=cfg.fusion_outlier_k,
                                         outlier_std_ratio=cfg.fusion_outlier_std,
                                         voxel_size=cfg.fusion_voxel * sim.scale)
        write_ply(out / "points.ply", inv.apply_points(points), colors=colors)
        metrics["points"] = int(len(points))
        log.info(f"export: fused {len(points)} points from {len(views)} depth maps -> points.ply")
    return metrics


# ----------------------------------------------------------------------------------------------
# Novel views.


def path_intrinsics(scene, cfg: ExportConfig):
    from pipeline.geometry.camera_paths import intrinsics_from_fov, vertical_fov_deg

    first = scene.frames[scene.splits.get("train", [0])[0] if scene.splits.get("train") else 0].intrinsics
    perspective = first.model != "equirect"
    width = cfg.width or (first.width if perspective else 640)
    height = cfg.height or (round(width * first.height / first.width) if perspective else round(width * 3 / 4))
    fov = cfg.fov_deg or (vertical_fov_deg(first) if perspective else 50.0)
    return intrinsics_from_fov(width, height, fov)


def make_camera_path(scene, sim, cfg: ExportConfig):
    from pipeline.geometry.camera_paths import make_path

    train = scene.splits.get("train") or list(range(len(scene)))
    train_c2w = np.stack([scene.frames[i].c2w for i in train])
    path = make_path(cfg.path, train_c2w, cfg.frames, path_intrinsics(scene, cfg), bounds=scene.bounds,
                     path_file=cfg.path_file, fps=cfg.fps,
                     radius=None if cfg.orbit_radius is None else cfg.orbit_radius * sim.scale,
                     elevation_deg=cfg.orbit_elevation_deg, keyframes=cfg.smooth_keyframes)
    if cfg.path == "file" and (cfg.width or cfg.height or cfg.fov_deg):
        path = path.with_intrinsics(path_intrinsics(scene, cfg))
    return path


def open_video(path: Path, fps: float):
    import imageio.v2 as iio2

    # macro_block_size=2: H.264 (yuv420p) needs even sizes; other sizes are padded by 1 pixel at most
    return iio2.get_writer(str(path), fps=fps, codec="libx264", quality=8, macro_block_size=2,
                           ffmpeg_log_level="error")


def export_views(model, scene, sim, cfg: ExportConfig, out: Path, device, log) -> dict:
    from pipeline.geometry.camera_paths import write_nerfstudio_camera_path

    views_dir = out / "views"
    views_dir.mkdir(parents=True, exist_ok=True)
    path = make_camera_path(scene, sim, cfg)
    write_nerfstudio_camera_path(views_dir / "camera_path.json", path)
    writer = open_video(views_dir / "video.mp4", path.fps) if cfg.video else None
    try:
        for i in progress(range(len(path)), desc=f"views ({cfg.path})"):
            r = render_image(model, path.camera(i, device=device), chunk=cfg.chunk)
            frame = to_uint8(r["rgb"].numpy())
            if cfg.save_frames:
                write_png(views_dir / f"frame_{i:05d}.png", frame)
            if cfg.view_depth:
                np.save(views_dir / f"depth_{i:05d}.npy", (r["depth"].numpy() / sim.scale).astype(np.float32))
            if writer is not None:
                writer.append_data(frame)
    finally:
        if writer is not None:
            writer.close()
    k = path.intrinsics[0]
    log.info(f"export: {len(path)} frames ({cfg.path}, {k.width}x{k.height}) -> {views_dir}")
    return {"frames": len(path), "path": cfg.path, "width": k.width, "height": k.height, "fps": path.fps}


# ----------------------------------------------------------------------------------------------
# Mesh.


def mesh_bounds(scene, model, sim, cfg_bounds) -> np.ndarray:
    """(2, 3) meshing box in the normalised frame."""
    if cfg_bounds:
        b = np.asarray(cfg_bounds, dtype=np.float64).reshape(2, 3)
        corners = np.stack(np.meshgrid(*zip(b[0], b[1]), indexing="ij"), -1).reshape(-1, 3)
        c = sim.apply_points(corners)
        return np.stack([c.min(0), c.max(0)])
    if scene is not None and scene.bounds is not None:
        return np.asarray(scene.bounds, dtype=np.float64)
    for attr in ("bounds", "aabb"):  # the box the model was trained in (the NeRF's aabb)
        box = getattr(model, attr, None)
        if box is not None:
            return np.asarray(box.detach().cpu() if isinstance(box, torch.Tensor) else box,
                              dtype=np.float64).reshape(2, 3)
    return np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def field_function(model, method: str, density_threshold: float, cameras: Optional[Cameras],
                   carve_min_views: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], float]:
    """(fn(points) -> values, level) whose iso-surface at ``level`` is the surface, oriented so
    values increase outwards (the winding marching cubes gives then points normals outwards).

    IDR: the SDF, level 0. NeRF: minus the density, level minus the threshold; density is zeroed
    where fewer than ``carve_min_views`` training cameras see the point (floaters outside every
    view go away; only points above the threshold are projected, so carving is cheap)."""
    if method == "idr":
        return (lambda p: model.query_sdf(p).reshape(-1)), 0.0

    def neg_density(points: torch.Tensor) -> torch.Tensor:
        sigma = model.query_density(points).reshape(-1).float()
        if cameras is not None and carve_min_views > 0:
            dense = torch.nonzero(sigma > density_threshold).reshape(-1)
            if len(dense):
                seen = visibility_counts(points[dense], cameras) >= carve_min_views
                sigma[dense[~seen]] = 0.0
        return -sigma

    return neg_density, -density_threshold


def finite_difference_normals(fn, points: torch.Tensor, eps: float, chunk: int = 65536) -> torch.Tensor:
    """Unit gradients of ``fn`` at points (N, 3) by central differences: (N, 3)."""
    out = []
    offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps
    for start in range(0, len(points), chunk):
        p = points[start:start + chunk]
        grads = [(fn(p + offsets[a]) - fn(p - offsets[a])) / (2 * eps) for a in range(3)]
        g = torch.stack(grads, -1)
        out.append(g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return torch.cat(out) if out else torch.zeros(0, 3, dtype=points.dtype, device=points.device)


@torch.no_grad()
def query_vertex_colors(model, verts: torch.Tensor, normals: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Radiance at each vertex seen from outside along its normal (view direction = -normal)."""
    out = [model.query_color(verts[s:s + chunk], -normals[s:s + chunk]).float().cpu()
           for s in range(0, len(verts), chunk)]
    return torch.cat(out).clamp(0, 1) if out else torch.zeros(0, 3)


def render_depth_maps(model, cameras: Cameras, chunk: int = 8192) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(depth (H, W), opacity (H, W)) of each camera of the batch, rendered by the model."""
    maps = []
    for i in progress(range(len(cameras)), desc="visibility depth"):
        r = render_image(model, cameras[i], chunk=chunk)
        maps.append((r["depth"], r["acc"]))
    return maps


def first_surface_vertices(verts: torch.Tensor, cameras: Cameras, depth_maps, tolerance: float,
                           min_opacity: float = 0.5) -> torch.Tensor:
    """(V,) bool: vertices (V, 3) that some camera sees as its first surface, i.e. they project
    inside its image onto a pixel of opacity >= ``min_opacity`` and lie no more than ``tolerance``
    behind that pixel's rendered depth (z-depth, or range for equirect cameras; units of verts)."""
    seen = torch.zeros(len(verts), dtype=torch.bool)
    for i, (depth, opacity) in enumerate(depth_maps):
        cam = cameras[i]
        pc = cam.world_to_camera(verts.to(cam.fx.device)).cpu()
        distance = pc.norm(dim=-1) if cam.model == "equirect" else pc[:, 2]
        in_front = distance > 1e-6
        uv = cam.project(torch.where(in_front[:, None], pc, torch.ones_like(pc)).to(cam.fx.device)).cpu()
        h, w = depth.shape
        px, py = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        inside = in_front & (px >= 0) & (px < w) & (py >= 0) & (py < h)
        px, py = px.clamp(0, w - 1), py.clamp(0, h - 1)
        seen |= inside & (opacity[py, px] >= min_opacity) & (distance <= depth[py, px] + tolerance)
    return seen


def extract_mesh(model, method: str, bounds: np.ndarray, resolution: int, density_threshold: float = 25.0,
                 cameras: Optional[Cameras] = None, carve_min_views: int = 1, min_component_fraction: float = 0.01,
                 colors: bool = True, device="cpu", cull_hidden: bool = True, cull_tolerance: float = 2.0,
                 chunk: int = 8192) -> dict:
    """The surface of a trained model in the normalised frame: dict of verts (V, 3), faces (F, 3),
    normals (V, 3) outward, colors (V, 3) in [0, 1] or None, and stats.

    ``cull_hidden`` (NeRF, with ``cameras``): keep only faces with a vertex that some camera sees as
    its first surface (within ``cull_tolerance`` voxels of its rendered depth). A NeRF's density
    inside a solid is never observed and is often low in places, so the iso-surface also runs
    through the inside; on the built-in scene half of the unculled mesh's area lay inside the object
    and culling it cut the Chamfer distance three-fold (bench/RESULTS.md)."""
    from pipeline.geometry.mesh import keep_large_components, marching_cubes, sample_grid, select_faces

    fn, level = field_function(model, method, density_threshold, cameras, carve_min_views)
    with torch.no_grad():
        values = sample_grid(fn, bounds, resolution, device=device)
    try:
        verts, faces = marching_cubes(values, bounds, level)
    except ValueError as exc:
        hint = (f"the NeRF density never reaches density_threshold={density_threshold:g} inside the box "
                f"(max {-values.min():.3g}): the model may be under-trained, or lower density_threshold"
                if method == "nerf" else "the IDR SDF has no zero crossing inside the box: the model may be "
                "under-trained, or widen mesh_bounds")
        raise ValueError(f"{hint} ({exc})") from None
    n_raw = len(faces)
    voxel = float(np.min((bounds[1] - bounds[0]) / (resolution - 1)))
    n_hidden = 0
    if cull_hidden and method == "nerf" and cameras is not None and len(faces):
        depth_maps = render_depth_maps(model, cameras, chunk)
        seen = first_surface_vertices(torch.as_tensor(verts, dtype=torch.float32), cameras, depth_maps,
                                      cull_tolerance * voxel).numpy()
        keep = seen[faces].any(1)
        n_hidden = int((~keep).sum())
        verts, faces = select_faces(verts, faces, keep)
    verts, faces = keep_large_components(verts, faces, min_component_fraction)
    v = torch.as_tensor(verts, dtype=torch.float32, device=device)
    with torch.no_grad():
        normals = finite_difference_normals(fn, v, eps=0.5 * voxel)
        rgb = query_vertex_colors(model, v, normals).numpy() if colors else None
    return {"verts": verts, "faces": faces, "normals": normals.cpu().numpy().astype(np.float64), "colors": rgb,
            "stats": {"vertices": int(len(verts)), "faces": int(len(faces)), "faces_before_cleanup": int(n_raw),
                      "resolution": resolution, "level": level, "voxel_normalised": voxel,
                      "hidden_faces_culled": n_hidden}}


def export_mesh(model, method: str, scene, sim, cfg: ExportConfig, out: Path, device, log) -> dict:
    from pipeline.geometry.mesh import is_watertight, write_obj, write_ply

    bounds = mesh_bounds(scene, model, sim, cfg.mesh_bounds)
    train = scene.splits.get("train") or list(range(len(scene)))
    cameras = scene.cameras(train, device=device) if method == "nerf" else None
    log.info(f"export: meshing {method} at {cfg.mesh_resolution}^3 over {bounds.tolist()} (normalised frame)")
    mesh = extract_mesh(model, method, bounds, cfg.mesh_resolution, cfg.density_threshold, cameras,
                        cfg.carve_min_views, cfg.min_component_fraction, cfg.mesh_colors, device,
                        cfg.cull_hidden, cfg.cull_tolerance, cfg.chunk)
    inv = sim.inverse()
    verts = inv.apply_points(mesh["verts"])
    normals = mesh["normals"] @ inv.rotation.T
    write_ply(out / "mesh.ply", verts, mesh["faces"], colors=mesh["colors"], normals=normals)
    if cfg.obj:
        write_obj(out / "mesh.obj", verts, mesh["faces"], colors=mesh["colors"])
    stats = dict(mesh["stats"], watertight=is_watertight(mesh["faces"]) if len(mesh["faces"]) else False,
                 method=method)
    if method == "nerf":
        stats["density_threshold"] = cfg.density_threshold
    log.info(f"export: mesh {stats['vertices']} vertices, {stats['faces']} faces -> mesh.ply")
    return stats


# ----------------------------------------------------------------------------------------------
# The stage.


def parse_parts(what: str) -> list[str]:
    parts = [p.strip() for p in what.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"what={what!r}: choose a comma-separated list of {', '.join(PARTS)}")
    return parts


def keep_previous_parts(workspace: Workspace, parts: list[str], out: Path) -> dict:
    """Copy the outputs (and metrics) of parts not re-exported from the previous export."""
    previous_dir = workspace.stage_dir(STAGE.name)
    previous = (workspace.manifest(STAGE.name) or {}).get("metrics", {})
    kept = {}
    for part, names in PART_OUTPUTS.items():
        if part in parts:
            continue
        for name in names:
            src = previous_dir / name
            if src.is_dir():
                shutil.copytree(src, out / name)
            elif src.exists():
                shutil.copy2(src, out / name)
        if part in previous:
            kept[part] = previous[part]
    return kept


def run(ctx: StageContext) -> dict:
    cfg: ExportConfig = ctx.config
    parts = parse_parts(cfg.what)
    method = resolve_method(ctx.workspace, cfg.method)
    device = pick_device(cfg.device)
    scene = ctx.workspace.load_scene()
    sim = ctx.workspace.normalization()
    model = load_model(ctx.workspace, method, device)
    metrics: dict = keep_previous_parts(ctx.workspace, parts, ctx.out_dir)
    metrics["method"] = method
    if "depth" in parts:
        metrics["depth"] = export_depth(model, scene, sim, cfg, ctx.out_dir, device, ctx.log)
    if "views" in parts:
        metrics["views"] = export_views(model, scene, sim, cfg, ctx.out_dir, device, ctx.log)
    if "mesh" in parts:
        metrics["mesh"] = export_mesh(model, method, scene, sim, cfg, ctx.out_dir, device, ctx.log)
    return metrics


STAGE = Stage(name="export", config_cls=ExportConfig, run=run, inputs=model_inputs, default_config="export.yaml",
              description="raw depth + fused point cloud, novel-view video, coloured mesh (original units)",
              produced_by={"poses/transforms.json": "`python run.py poses --data DATA --workspace W`",
                           "nerf": "`python run.py nerf --workspace W` (or idr)",
                           "idr": "`python run.py idr --workspace W`"})
