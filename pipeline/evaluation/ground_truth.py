"""The ground-truth surface of a scene and the object radius that scales its mesh metrics."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from datasets.scene import Scene, SceneError
from pipeline.evaluation.metrics import mesh_chamfer_fscore
from pipeline.geometry.mesh import read_ply


def find_gt_mesh(gt_mesh: str, scene: Scene) -> Optional[Path]:
    """``gt_mesh`` when given, else a ``mesh_gt.ply`` / ``gt_mesh.ply`` beside the dataset."""
    if gt_mesh:
        path = Path(gt_mesh)
        if not path.exists():
            raise SceneError(f"gt_mesh {path} does not exist; give a PLY file or leave gt_mesh empty")
        return path
    source = scene.meta.get("recon", {}).get("source")
    if source:
        folder = Path(source) if Path(source).is_dir() else Path(source).parent
        for name in ("mesh_gt.ply", "gt_mesh.ply"):
            if (folder / name).exists():
                return folder / name
    return None


def object_radius(gt_verts: np.ndarray, gt_path: Path) -> float:
    info = gt_path.parent / "scene_info.json"
    if info.exists():
        data = json.loads(info.read_text())
        for key in ("object_radius", "radius", "bounding_radius"):
            if isinstance(data.get(key), (int, float)):
                return float(data[key])
    center = 0.5 * (gt_verts.min(0) + gt_verts.max(0))
    return float(np.linalg.norm(gt_verts - center, axis=1).max())


def mesh_metrics(verts, faces, gt_path: Path) -> dict:
    """Chamfer-L1 and F-score (1% of the object radius) against the reference mesh, measured as the
    eval stage does: points sampled on each surface, distances to the other surface's triangles
    (point-to-point distances between two samplings have a floor of ~0.7% r here)."""
    gt_verts, gt_faces, _ = read_ply(gt_path)
    radius = object_radius(gt_verts, gt_path)
    result = mesh_chamfer_fscore(verts, faces, gt_verts, gt_faces, threshold=0.01 * radius)
    result.update(object_radius=radius, chamfer_l1_over_radius=result["chamfer_l1"] / radius, gt_mesh=str(gt_path))
    return result
