"""Panorama centres and headings as the poses stage left them (``W/poses/``), in its normalised frame.

What is read: ``transforms.json`` (camera-to-world, normalised frame, +z up), ``normalization.json``
(the similarity from the original frame -- the dataset's, or COLMAP's when poses were estimated --
to the normalised one), ``report.json`` (import or estimate), ``points.ply`` and ``sparse/`` when
the poses were estimated.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.geometry.mesh import read_ply
from pipeline.geometry.normalize import Similarity
from pipeline.runner.workspace import Workspace


@dataclass
class PosedPanoramas:
    """The poses stage's panoramas: names (N,), c2w (N, 4, 4) OpenCV in the normalised frame."""

    names: list[str]
    c2w: np.ndarray
    normalization: Similarity  # x_normalised = normalization(x_original)
    mode: str  # "import" | "estimate" (report.json)
    source: Optional[Path]  # the dataset folder the poses stage read (transforms.json meta recon.source)
    points: Optional[np.ndarray]  # (M, 3) sparse points, normalised frame; None without points.ply
    sparse_dir: Optional[Path]  # the COLMAP model (W/poses/sparse/, or its single sub-model)
    image_paths: list[Path] = field(default_factory=list)  # (N,) the panoramas (transforms.json file_path)

    @property
    def centres(self) -> np.ndarray:
        """(N, 3) camera centres in the normalised frame."""
        return self.c2w[:, :3, 3]


def yaw_deg(c2w: np.ndarray) -> np.ndarray:
    """World heading of the camera's +z (panorama longitude 0) in the xy plane, from +x towards +y,
    in degrees (-180, 180]. c2w: (..., 4, 4) -> (...)."""
    forward = np.asarray(c2w)[..., :3, 2]
    return np.degrees(np.arctan2(forward[..., 1], forward[..., 0]))


def level_c2w(centre, yaw: float) -> np.ndarray:
    """OpenCV c2w (4, 4) of a levelled panorama at ``centre`` whose longitude 0 looks along the
    horizontal heading ``yaw`` degrees (camera -y = world +z)."""
    forward = np.array([math.cos(math.radians(yaw)), math.sin(math.radians(yaw)), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2] = np.cross(down, forward), down, forward
    c2w[:3, 3] = centre
    return c2w


def find_sparse_model(poses_dir: Path) -> Optional[Path]:
    """``poses/sparse`` itself when it holds a model, else its only (or first) numbered sub-model."""
    sparse = poses_dir / "sparse"
    if not sparse.is_dir():
        return None
    if (sparse / "images.bin").exists() or (sparse / "images.txt").exists():
        return sparse
    subs = sorted(p for p in sparse.iterdir() if p.is_dir() and ((p / "images.bin").exists()
                                                                 or (p / "images.txt").exists()))
    return subs[0] if subs else None


def read_posed_panoramas(workspace: Workspace) -> PosedPanoramas:
    """Everything the centres stage needs from ``W/poses/``."""
    scene = workspace.load_scene()
    poses_dir = workspace.stage_dir("poses")
    posed = [f for f in scene.frames if f.c2w is not None]
    c2w = np.stack([np.asarray(f.c2w, dtype=np.float64) for f in posed])
    report_path = poses_dir / "report.json"
    mode = json.loads(report_path.read_text()).get("mode", "import") if report_path.exists() else "import"
    source = scene.meta.get("recon", {}).get("source")
    points = None
    if (poses_dir / "points.ply").exists():
        points = np.asarray(read_ply(poses_dir / "points.ply")[0], dtype=np.float64)
    return PosedPanoramas(names=[f.name for f in posed], c2w=c2w, normalization=workspace.normalization(),
                          mode=mode, source=Path(source) if source else None, points=points,
                          sparse_dir=find_sparse_model(poses_dir), image_paths=[f.image_path for f in posed])


def distance_matrix(centres: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances of centres (N, 3) -> (N, N)."""
    diff = centres[:, None, :] - centres[None, :, :]
    return np.linalg.norm(diff, axis=-1)
