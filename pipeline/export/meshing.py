"""The surface of a trained model as a coloured triangle mesh: marching cubes of an SDF (IDR, or
the volume-rendered sdf stage's field) at level 0, or of NeRF density at a threshold after carving
away what no training camera sees, then hidden-face culling, small-piece removal, normals and
vertex colours."""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from pipeline.export.config import ExportConfig
from pipeline.export.methods import SDF_METHODS
from pipeline.geometry.cameras import Cameras, visibility_counts
from pipeline.geometry.mesh import (is_watertight, keep_large_components, marching_cubes, sample_grid, select_faces,
                                    write_obj, write_ply)
from pipeline.geometry.roi import box_distance, dataset_box_original
from pipeline.models.idr.sdf_mesh import sample_sdf_grid
from pipeline.models.render import render_image
from pipeline.runner.log import progress

DEFAULTS = ExportConfig()
NORMALS = ("finite_differences", "sdf_gradient")


def mesh_bounds(scene, model, sim, cfg_bounds) -> np.ndarray:
    """(2, 3) meshing box in the normalised frame: ``cfg_bounds`` (ORIGINAL units, 6 numbers) when
    given, else the scene bounds, else the box the model was trained in, else [-1, 1]^3."""
    if cfg_bounds:
        return sim.apply_box(np.asarray(cfg_bounds, dtype=np.float64).reshape(2, 3))
    if scene is not None and scene.bounds is not None:
        return np.asarray(scene.bounds, dtype=np.float64)
    for attr in ("bounds", "aabb"):  # the box the model was trained in (the NeRF's aabb)
        box = getattr(model, attr, None)
        if box is not None:
            return np.asarray(box.detach().cpu() if isinstance(box, torch.Tensor) else box,
                              dtype=np.float64).reshape(2, 3)
    return np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def clip_box_original(scene, sim, cfg_bounds) -> Optional[np.ndarray]:
    """The box (2, 3, ORIGINAL units) an SDF's mesh is cut at and closed on: ``cfg_bounds`` when
    given, else the dataset's box of the object (``scene.bounds``), else None (no cut)."""
    if cfg_bounds:
        return np.asarray(cfg_bounds, dtype=np.float64).reshape(2, 3)
    if scene is not None and scene.bounds is not None:
        return dataset_box_original(scene.bounds, sim)
    return None


def field_function(model, method: str, density_threshold: float, cameras: Optional[Cameras],
                   carve_min_views: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], float]:
    """(fn(points) -> values, level) whose iso-surface at ``level`` is the surface, oriented so
    values increase outwards (the winding marching cubes gives then points normals outwards).

    IDR and sdf: the SDF, level 0. NeRF: minus the density, level minus the threshold; density is zeroed
    where fewer than ``carve_min_views`` training cameras see the point (floaters outside every
    view go away; only points above the threshold are projected, so carving is cheap)."""
    if method in SDF_METHODS:
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


def _clipped(field: Callable[[torch.Tensor], torch.Tensor], clip: Callable[[torch.Tensor], torch.Tensor]
             ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The field intersected with a region (both signed distances, negative inside): max(f, clip)."""
    def clipped(points: torch.Tensor) -> torch.Tensor:
        values = field(points)
        return torch.maximum(values, clip(points).to(values.dtype))
    return clipped


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


def sdf_gradients(model, points: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """grad f (N, 3), not normalised, of an IDR model's SDF network at points (N, 3)."""
    out = [model.sdf_network.sdf_and_gradient(points[s:s + chunk])[2].detach() for s in range(0, len(points), chunk)]
    return torch.cat(out) if out else torch.zeros(0, 3, dtype=points.dtype, device=points.device)


@torch.no_grad()
def query_vertex_colors(model, verts: torch.Tensor, outward: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Radiance at each vertex (V, 3) seen from outside along ``outward`` (V, 3), any length (view
    direction = -outward): (V, 3) in [0, 1] on the CPU."""
    out = [model.query_color(verts[s:s + chunk], -outward[s:s + chunk]).float().cpu()
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


def extract_mesh(model, method: str, bounds: np.ndarray, resolution: int,
                 density_threshold: float = DEFAULTS.density_threshold, cameras: Optional[Cameras] = None,
                 carve_min_views: int = DEFAULTS.carve_min_views,
                 min_component_fraction: float = DEFAULTS.min_component_fraction, colors: bool = True,
                 device="cpu", cull_hidden: bool = DEFAULTS.cull_hidden, cull_tolerance: float = DEFAULTS.cull_tolerance,
                 chunk: int = DEFAULTS.chunk, lipschitz: Optional[float] = None, normals: str = "finite_differences",
                 query_chunk: int = 65536, clip: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> dict:
    """The surface of a trained model in the normalised frame: dict of verts (V, 3), faces (F, 3),
    normals (V, 3) outward, colors (V, 3) in [0, 1] or None, and stats.

    ``cull_hidden`` (NeRF, with ``cameras``): keep only faces with a vertex that some camera sees as
    its first surface (within ``cull_tolerance`` voxels of its rendered depth). A NeRF's density
    inside a solid is never observed and is often low in places, so the iso-surface also runs
    through the inside. ``lipschitz`` (IDR): the SDF's slope bound; the grid is then refined
    coarse to fine near the surface only (:func:`pipeline.models.idr.sdf_mesh.sample_sdf_grid`,
    whose finest grid is the next ``64 * 2^k + 1`` >= ``resolution``). ``normals``:
    ``finite_differences`` of the field at half a voxel, or the ``sdf_gradient`` of an IDR model's
    SDF network; vertex colours look along them. ``query_chunk``: points per normal/colour query.
    ``clip`` (SDF methods): a signed distance (N,) of points (N, 3) to a region (negative inside);
    the surface is that of ``max(f, clip)``, the field cut at the region's border and closed there."""
    if normals not in NORMALS:
        raise ValueError(f"normals must be one of {NORMALS}, got {normals!r}")
    if method not in SDF_METHODS and (lipschitz is not None or normals == "sdf_gradient"):
        raise ValueError(f"lipschitz and normals=sdf_gradient need an SDF (method {' or '.join(SDF_METHODS)})")
    fn, level = field_function(model, method, density_threshold, cameras, carve_min_views)
    if clip is not None:
        if method not in SDF_METHODS:
            raise ValueError(f"clip needs an SDF (method {' or '.join(SDF_METHODS)})")
        fn = _clipped(fn, clip)
    with torch.no_grad():
        if lipschitz is not None:
            values = sample_sdf_grid(lambda p: fn(p.to(device)), bounds, resolution, lipschitz=lipschitz)
        else:
            values = sample_grid(fn, bounds, resolution, device=device)
    try:
        verts, faces = marching_cubes(values, bounds, level)
    except ValueError as exc:
        hint = (f"the NeRF density never reaches density_threshold={density_threshold:g} inside the box "
                f"(max {-values.min():.3g}): the model may be under-trained, or lower density_threshold"
                if method == "nerf" else f"the {method} SDF has no zero crossing inside the box: the model may be "
                "under-trained, or the box too small (export: widen mesh_bounds)")
        raise ValueError(f"{hint} ({exc})") from None
    n_raw = len(faces)
    voxel = float(np.min((bounds[1] - bounds[0]) / (len(values) - 1)))
    n_hidden = 0
    if cull_hidden and method == "nerf" and cameras is not None and len(faces):
        depth_maps = render_depth_maps(model, cameras, chunk)
        seen = first_surface_vertices(torch.as_tensor(verts, dtype=torch.float32), cameras, depth_maps,
                                      cull_tolerance * voxel).numpy()
        keep = seen[faces].any(1)
        n_hidden = int((~keep).sum())
        verts, faces = select_faces(verts, faces, keep)
    if min_component_fraction > 0:
        verts, faces = keep_large_components(verts, faces, min_component_fraction)
    v = torch.as_tensor(verts, dtype=torch.float32, device=device)
    if normals == "sdf_gradient":
        outward = sdf_gradients(model, v, query_chunk)
        unit = outward / outward.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    else:
        with torch.no_grad():
            outward = unit = finite_difference_normals(fn, v, eps=0.5 * voxel, chunk=query_chunk)
    rgb = query_vertex_colors(model, v, outward, query_chunk).numpy() if colors else None
    return {"verts": verts, "faces": faces, "normals": unit.cpu().numpy().astype(np.float64), "colors": rgb,
            "stats": {"vertices": int(len(verts)), "faces": int(len(faces)), "faces_before_cleanup": int(n_raw),
                      "resolution": resolution, "level": level, "voxel_normalised": voxel,
                      "hidden_faces_culled": n_hidden}}


def mesh_faces(mesh: dict, keep: np.ndarray) -> dict:
    """The mesh (verts, faces, colors, normals as :func:`extract_mesh` returns them) with only the
    faces where ``keep`` (F,) is true; colours and normals travel with their vertices."""
    keys = [k for k in ("colors", "normals") if mesh.get(k) is not None]
    extra = [mesh[k] for k in keys]
    packed, faces = select_faces(np.concatenate([mesh["verts"]] + extra, axis=1), mesh["faces"], keep)
    parts = np.split(packed, np.cumsum([3] + [a.shape[1] for a in extra])[:-1], axis=1)
    return dict(mesh, verts=parts[0], faces=faces, **{k: part.astype(mesh[k].dtype) for k, part in zip(keys, parts[1:])})


def faces_inside(mesh: dict, distance: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    """An open cut: the faces whose three vertices lie inside a region (``distance``: signed, (N,)
    of points (N, 3), negative inside), as :func:`mesh_faces` gives them. Unlike ``clip`` in
    :func:`extract_mesh` nothing closes the cut: a street's mesh stops at the box's top instead of
    getting a roof."""
    if not len(mesh["faces"]):
        return mesh
    with torch.no_grad():
        inside = distance(torch.as_tensor(mesh["verts"], dtype=torch.float32)).cpu().numpy() <= 0
    return mesh_faces(mesh, inside[mesh["faces"]].all(1))


def visible_mesh_parts(model, mesh: dict, cameras: Cameras, mode: str = "components", tolerance: float = 0.02,
                       chunk: int = DEFAULTS.chunk) -> tuple[dict, dict]:
    """Visibility cleaning of a mesh (as :func:`extract_mesh` returns it, the model's frame) against
    the model's own depth maps from ``cameras``: ``components`` keeps the connected pieces with a
    vertex some camera sees as its first surface (within ``tolerance``, model units), so a closed
    surface stays closed while hidden inner shells and pieces outside every view go; ``faces``
    keeps only the faces with such a vertex (as the NeRF export's ``cull_hidden``). Returns the
    mesh (verts, faces, colors, normals re-indexed) and stats."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    start = time.time()
    verts, faces = mesh["verts"], mesh["faces"]
    stats = {"mode": mode, "views": len(cameras), "faces_before": int(len(faces)), "faces_removed": 0}
    if len(faces):
        depth_maps = render_depth_maps(model, cameras, chunk)
        seen = first_surface_vertices(torch.as_tensor(verts, dtype=torch.float32), cameras, depth_maps,
                                      tolerance).numpy()
        if mode == "faces":
            keep = seen[faces].any(1)
        else:
            n = len(verts)
            edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
            graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
            _, labels = connected_components(graph, directed=False)
            visible = np.zeros(labels.max() + 1, dtype=bool)
            visible[labels[seen]] = True
            keep = visible[labels[faces[:, 0]]]
        mesh = mesh_faces(mesh, keep)
        stats["faces_removed"] = int((~keep).sum())
    stats["time_s"] = round(time.time() - start, 1)
    return mesh, stats


def bounding_sphere_mesh(model, radius: float, lipschitz: float, resolution: int, min_component_fraction: float,
                         colors: bool, clip: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                         region: Optional[np.ndarray] = None) -> dict:
    """An IDR model's surface over the cube around its bounding sphere of ``radius``, as
    :func:`extract_mesh` returns it (normalised frame): the grid refined near the surface only
    (``lipschitz``: the SDF's slope bound), colours seen along the SDF gradient (along the
    clipped field's finite differences when ``clip`` cuts it: the cut faces have no SDF gradient).
    ``region`` (2, 3): a box that holds all of the clipped surface; the grid then spans only its
    part of the cube, so its cells are finer (a street in a ball many times wider)."""
    box = np.array([[-radius] * 3, [radius] * 3])
    if region is not None:
        box = np.stack([np.maximum(box[0], region[0]), np.minimum(box[1], region[1])])
        if not (box[1] > box[0]).all():
            raise ValueError(f"the meshing region {np.asarray(region).tolist()} misses the sphere of radius {radius:g}")
    return extract_mesh(model, "idr", box, resolution, min_component_fraction=min_component_fraction, colors=colors,
                        device=model.background.device, lipschitz=lipschitz,
                        normals="sdf_gradient" if clip is None else "finite_differences", query_chunk=32768,
                        clip=clip)


def export_mesh(model, method: str, scene, sim, cfg: ExportConfig, out: Path, device, log) -> dict:
    """``out/mesh.ply`` (and ``mesh.obj``) in the original units; returns the mesh stats."""
    bounds = mesh_bounds(scene, model, sim, cfg.mesh_bounds)
    train = scene.splits.get("train") or list(range(len(scene)))
    cameras = scene.cameras(train, device=device) if method == "nerf" else None
    log.info(f"export: meshing {method} at {cfg.mesh_resolution}^3 over {bounds.tolist()} (normalised frame)")
    # the sdf stage's field is trained to be a distance (eikonal) everywhere in its sphere: the grid is
    # refined near the surface only, as the stage's own mesh
    lipschitz = 1.5 if method == "sdf" else None
    inv = sim.inverse()
    clip_box = clip_box_original(scene, sim, cfg.mesh_bounds) if method in SDF_METHODS else None
    clip = None if clip_box is None else functools.partial(box_distance, box=clip_box, to_original=inv)
    mesh = extract_mesh(model, method, bounds, cfg.mesh_resolution, cfg.density_threshold, cameras,
                        cfg.carve_min_views, cfg.min_component_fraction, cfg.mesh_colors, device,
                        cfg.cull_hidden, cfg.cull_tolerance, cfg.chunk, lipschitz=lipschitz, clip=clip)
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
