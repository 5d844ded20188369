"""A scene's ground-truth surface and the object radius that scales its mesh metrics: one lookup
for the IDR and eval stages."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from datasets.scene import Scene, SceneError
from pipeline.geometry.mesh import read_ply

# GT files looked for beside the dataset when its metadata names none
GT_FILE_NAMES = ("mesh_gt.ply", "gt_mesh.ply")


@dataclass
class GroundTruthSurface:
    """The reference surface in ORIGINAL units."""

    verts: np.ndarray  # (V, 3)
    faces: Optional[np.ndarray]  # (F, 3); None for a point cloud
    path: Path
    radius: float  # the object radius (:func:`object_radius`)
    radius_from: str  # where the radius came from


def dataset_folder(scene: Scene) -> Optional[Path]:
    """The dataset folder the workspace was posed from (``recon.source``), or None."""
    source = scene.meta.get("recon", {}).get("source")
    if not source:
        return None
    p = Path(source)
    return p.parent if p.is_file() else p


def find_ground_truth(scene: Scene, explicit: str = "") -> Optional[Path]:
    """The GT mesh or point cloud (PLY): ``explicit`` when given, else the file the scene's
    metadata names (``recon.mesh_gt`` or ``recon.points_gt``, in the dataset folder), else a
    ``mesh_gt.ply`` / ``gt_mesh.ply`` beside the dataset; None when there is none. A file that is
    named but missing is an error."""
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise SceneError(f"gt_mesh {path} does not exist; give a PLY file or leave gt_mesh empty")
        return path
    recon = scene.meta.get("recon", {})
    folder = dataset_folder(scene)
    if folder is None:
        return None
    name = recon.get("mesh_gt") or recon.get("points_gt")
    if name:
        path = folder / name
        if not path.exists():
            raise SceneError(f"{path}: the scene names this GT surface but the file is missing; "
                             "re-create the dataset or remove recon.mesh_gt from its transforms")
        return path
    return next((folder / n for n in GT_FILE_NAMES if (folder / n).exists()), None)


def object_radius(scene: Scene, gt_verts: np.ndarray, gt_path: Path) -> tuple[float, str]:
    """(radius, where it came from): the scene metadata's ``recon.object_radius``, else the
    dataset's ``scene_info.json`` beside the GT file, else the farthest GT point from the centre
    of the GT bounding box."""
    radius = scene.meta.get("recon", {}).get("object_radius")
    if radius:
        return float(radius), "scene metadata"
    info = gt_path.parent / "scene_info.json"
    if info.exists():
        data = json.loads(info.read_text())
        for key in ("object_radius", "radius", "bounding_radius"):
            if isinstance(data.get(key), (int, float)):
                return float(data[key]), f"{info.name} ({key})"
    center = 0.5 * (gt_verts.min(0) + gt_verts.max(0))
    return float(np.linalg.norm(gt_verts - center, axis=1).max()), "farthest GT point from its bounding-box centre"


def load_ground_truth(scene: Scene, explicit: str = "") -> Optional[GroundTruthSurface]:
    """The scene's GT surface (:func:`find_ground_truth`) with its object radius, or None."""
    path = find_ground_truth(scene, explicit)
    if path is None:
        return None
    verts, faces, _ = read_ply(path)
    radius, radius_from = object_radius(scene, verts, path)
    return GroundTruthSurface(verts, faces, path, radius, radius_from)
