"""Export stage: raw depth, novel-view videos and coloured meshes from a trained NeRF or IDR model.

``python run.py export --workspace W --what depth,views,mesh`` writes ``W/export/``:

- ``depth/``: per view ``<name>.npy`` (float32 raw depth in ORIGINAL scene units: z-depth for
  perspective cameras, range for panoramas), ``<name>_depth16.png`` (16-bit, ``depth = value *
  png_scale``, 0 = no surface; ``png_scale`` in ``depth/depth_scale.json``), ``<name>_preview.png``
  (turbo colour map, near = red... far = blue), ``<name>_rgb.png``, optionally ``<name>_normal.npy``
  / ``_normal.png`` (world normals, original frame) and ``<name>_opacity.npy`` / ``.png``;
  ``points.ply``: the depth maps fused into one coloured point cloud, outliers removed
  (see ``pipeline/geometry/fusion.py``).
- ``views/``: ``frame_00000.png``..., ``video.mp4`` (H.264) and ``camera_path.json`` (nerfstudio
  format, normalised frame) along an orbit / spiral / smooth path / given nerfstudio camera path.
- ``mesh.ply`` (binary, vertex colours and normals) and ``mesh.obj``, in original scene units:
  marching cubes of the IDR SDF at level 0, or of NeRF density at ``density_threshold`` after
  carving away everything no training camera sees.
- ``panoramas/``: new equirect panoramas (RGB PNG + range ``.npy``, original units) ``between=a,b``
  (``steps``), ``at=x,y,z``, or a walk through all panoramas (``video.mp4`` of the panoramas and
  ``video_forward.mp4`` of a forward-looking view); ``panoramas/panoramas.json`` lists their poses
  (and centres in metres when ``centres/centres.json`` is metric); see ``pipeline/export/panoramas.py``.

Parts not asked for in ``what`` are kept from the previous export.
Everything renders in the normalised frame and is written back with ``normalization().inverse()``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.export.config import ExportConfig
from pipeline.export.depth import export_depth
from pipeline.export.meshing import export_mesh
from pipeline.export.methods import MODEL_PRODUCED_BY, load_model, model_inputs, resolve_method
from pipeline.export.novel_views import export_views
from pipeline.export.panoramas import export_panoramas
from pipeline.models.render import check_supersample
from pipeline.runner.runtime import pick_device
from pipeline.runner.stage import Stage, StageContext
from pipeline.runner.workspace import Workspace

PARTS = ("depth", "views", "mesh", "panoramas")
# files and folders of each part inside W/export (kept when a later export skips the part)
PART_OUTPUTS = {"depth": ("depth", "points.ply"), "views": ("views",), "mesh": ("mesh.ply", "mesh.obj"),
                "panoramas": ("panoramas",)}


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
    if (cfg.between or cfg.at) and "panoramas" not in parts:
        raise ValueError("between= and at= place new panoramas: use them with --what panoramas")
    check_supersample(cfg.supersample)
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
    if "panoramas" in parts:
        metrics["panoramas"] = export_panoramas(model, scene, sim, cfg, ctx.out_dir, device, ctx.log,
                                                ctx.workspace.stage_dir("centres") / "centres.json")
    return metrics


STAGE = Stage(name="export", config_cls=ExportConfig, run=run, inputs=model_inputs,
              description="raw depth + fused point cloud, novel-view video, coloured mesh (original units)",
              produced_by=MODEL_PRODUCED_BY)
