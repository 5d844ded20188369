"""Raw depth of a trained model's views, in the original scene units, and the depth maps fused
into one coloured point cloud."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.export.config import ExportConfig
from pipeline.export.images import depth_preview, to_uint8, write_png
from pipeline.export.splits import select_views
from pipeline.geometry.cameras import Cameras
from pipeline.geometry.fusion import DepthView, fuse_depth_maps
from pipeline.geometry.mesh import write_ply
from pipeline.models.render import render_image
from pipeline.runner.io import write_json
from pipeline.runner.log import progress
from pipeline.runner.workspace import WorkspaceError


def export_depth(model, scene, sim, cfg: ExportConfig, out: Path, device, log) -> dict:
    """Render depth for the chosen views; write raw/16-bit/preview files and the fused cloud."""
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
