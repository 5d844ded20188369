"""A reconstructed mesh against the scene's ground-truth surface: Chamfer-L1 and F-score, scaled
by the object radius; the one path of the IDR stage's mesh metrics and the eval stage's."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from pipeline.evaluation.ground_truth import GroundTruthSurface, load_ground_truth
from pipeline.evaluation.metrics import mesh_chamfer_fscore
from pipeline.export.config import ExportConfig
from pipeline.export.meshing import extract_mesh, mesh_bounds
from pipeline.geometry.cameras import visibility_counts
from pipeline.geometry.mesh import read_ply
from pipeline.runner.workspace import Workspace

FSCORE_FRACTION = 0.01  # default F-score threshold: this fraction of the object radius


def surface_metrics(verts: np.ndarray, faces: np.ndarray, gt: GroundTruthSurface, threshold: Optional[float] = None,
                    samples: int = 100000) -> dict:
    """Chamfer-L1 and F-score at ``threshold`` (ORIGINAL units; None = :data:`FSCORE_FRACTION` x
    the object radius) of a mesh (original units) against the GT surface, from ``samples``
    points on each surface measured to the other surface itself
    (:func:`pipeline.evaluation.metrics.mesh_chamfer_fscore`), plus the Chamfer distance over
    the object radius and where that radius came from."""
    threshold = FSCORE_FRACTION * gt.radius if threshold is None else threshold
    result = mesh_chamfer_fscore(verts, faces, gt.verts, gt.faces, threshold, samples)
    result.update(chamfer_l1_over_radius=result["chamfer_l1"] / gt.radius, object_radius=gt.radius,
                  object_radius_from=gt.radius_from)
    return result


def mesh_metrics(verts: np.ndarray, faces: np.ndarray, gt: GroundTruthSurface) -> dict:
    """The training stages' mesh metrics: :func:`surface_metrics` with its defaults, and the GT file."""
    return dict(surface_metrics(verts, faces, gt), gt_mesh=str(gt.path))


def reconstructed_mesh(workspace: Workspace, model, method: str, scene, sim, resolution: int, device, log):
    """The exported mesh of this method (original units) if there is one, else a fresh extraction
    at ``resolution`` with the export defaults. Returns (verts, faces, source description)."""
    manifest = workspace.manifest("export") or {}
    exported = workspace.stage_dir("export") / "mesh.ply"
    if exported.exists() and manifest.get("metrics", {}).get("mesh", {}).get("method") == method:
        verts, faces, _ = read_ply(exported)
        return verts, faces, str(exported)
    defaults = ExportConfig()
    bounds = mesh_bounds(scene, model, sim, [])
    train = scene.splits.get("train") or list(range(len(scene)))
    cameras = scene.cameras(train, device=device) if method == "nerf" else None
    log.info(f"eval: no exported {method} mesh; extracting one at {resolution}^3")
    mesh = extract_mesh(model, method, bounds, resolution, defaults.density_threshold, cameras,
                        defaults.carve_min_views, defaults.min_component_fraction, colors=False, device=device,
                        cull_hidden=defaults.cull_hidden, cull_tolerance=defaults.cull_tolerance, chunk=defaults.chunk)
    return sim.inverse().apply_points(mesh["verts"]), mesh["faces"], f"extracted at {resolution}^3"


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


def evaluate_geometry(workspace: Workspace, model, method: str, scene, sim, device, log, mesh_resolution: int = 256,
                      samples: int = 200000, fscore_threshold: float = 0.0,
                      fscore_fraction: float = FSCORE_FRACTION) -> dict:
    """The eval stage's geometry metrics of the method's mesh, or ``{"skipped": reason}``.
    ``fscore_threshold``: ORIGINAL units; 0 = ``fscore_fraction`` x the object radius."""
    gt = load_ground_truth(scene)
    if gt is None:
        return {"skipped": "the scene has no GT mesh or point cloud (recon.mesh_gt)"}
    verts, faces, source = reconstructed_mesh(workspace, model, method, scene, sim, mesh_resolution, device, log)
    if len(faces) == 0:
        return {"skipped": f"the reconstructed mesh ({source}) is empty"}
    threshold = fscore_threshold or fscore_fraction * gt.radius
    result = surface_metrics(verts, faces, gt, threshold, samples)
    result.update(threshold_note=(f"F-score threshold {threshold:.4g} original units"
                                  + ("" if fscore_threshold else f" = {fscore_fraction:g} x object radius")),
                  distances=("point-to-surface from area-uniform samples on each mesh" if gt.faces is not None
                             else "mesh samples to GT points, GT points to the mesh surface"),
                  samples=samples, mesh=source, gt=str(gt.path), mesh_faces=int(len(faces)),
                  components_outside_frusta=components_outside_frusta(verts, faces, scene, sim))
    return result
