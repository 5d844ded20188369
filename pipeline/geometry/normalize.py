"""Scene normalisation: a similarity x' = s * R @ x + t that puts the region of interest in a unit
sphere (IDR) or a box (NeRF), kept so outputs can be written back in the original units."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np


def box_corners(box: np.ndarray) -> np.ndarray:
    """The 8 corners (8, 3) of an axis-aligned box (2, 3): [min, max]."""
    lo, hi = np.asarray(box, dtype=np.float64).reshape(2, 3)
    return np.stack(np.meshgrid(*zip(lo, hi), indexing="ij"), -1).reshape(-1, 3)


@dataclass
class Similarity:
    """x_normalised = scale * rotation @ x_original + translation."""

    scale: float = 1.0
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self):
        self.rotation = np.asarray(self.rotation, dtype=np.float64).reshape(3, 3)
        self.translation = np.asarray(self.translation, dtype=np.float64).reshape(3)
        self.scale = float(self.scale)

    def matrix(self) -> np.ndarray:
        """(4, 4) homogeneous matrix of the similarity."""
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = self.translation
        return m

    def inverse(self) -> "Similarity":
        r_inv = self.rotation.T
        return Similarity(1.0 / self.scale, r_inv, -(r_inv @ self.translation) / self.scale)

    def compose(self, first: "Similarity") -> "Similarity":
        """The similarity that applies ``first`` and then ``self``."""
        return Similarity(self.scale * first.scale, self.rotation @ first.rotation,
                          self.scale * (self.rotation @ first.translation) + self.translation)

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        """points: (N, 3) -> (N, 3)."""
        return self.scale * np.asarray(points) @ self.rotation.T + self.translation

    def apply_box(self, box: np.ndarray, pad: float = 0.0) -> np.ndarray:
        """An axis-aligned box (2, 3) -> the axis-aligned box (2, 3) around its 8 moved corners
        (larger than the box itself when the rotation is not axis-aligned), grown by ``pad``."""
        moved = self.apply_points(box_corners(box))
        return np.stack([moved.min(0) - pad, moved.max(0) + pad])

    def apply_c2w(self, c2w: np.ndarray) -> np.ndarray:
        """Camera-to-world (..., 4, 4) -> the same cameras in the new frame (rotation stays orthonormal)."""
        c2w = np.asarray(c2w, dtype=np.float64)
        out = c2w.copy()
        out[..., :3, :3] = self.rotation @ c2w[..., :3, :3]
        out[..., :3, 3] = self.scale * c2w[..., :3, 3] @ self.rotation.T + self.translation
        return out

    def apply_depth(self, depth: np.ndarray) -> np.ndarray:
        """Depths scale with the similarity (rotation and translation leave them unchanged)."""
        return depth * self.scale

    def to_dict(self) -> dict:
        return {"scale": self.scale, "rotation": self.rotation.tolist(), "translation": self.translation.tolist(),
                "convention": "x_normalised = scale * rotation @ x_original + translation"}

    @classmethod
    def from_dict(cls, d: dict) -> "Similarity":
        return cls(d["scale"], d["rotation"], d["translation"])

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "Similarity":
        return cls.from_dict(json.loads(Path(path).read_text()))


def rotation_aligning(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector a onto unit vector b (3x3)."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if c < -1 + 1e-9:  # opposite: rotate by pi around any axis perpendicular to a
        axis = np.cross(a, [1.0, 0, 0]) if abs(a[0]) < 0.9 else np.cross(a, [0, 1.0, 0])
        axis /= np.linalg.norm(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


def focus_point(c2w: np.ndarray) -> np.ndarray:
    """The point closest (least squares) to all optical axes: where the cameras look. c2w: (N, 4, 4)."""
    origins, dirs = c2w[:, :3, 3], c2w[:, :3, 2]
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for o, d in zip(origins, dirs):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ o
    return np.linalg.lstsq(A, b, rcond=None)[0]


def normalizing_similarity(c2w: np.ndarray, points: Optional[np.ndarray] = None, mode: str = "sphere",
                           align_up: bool = True, target_radius: float = 1.0,
                           center: Optional[np.ndarray] = None) -> Similarity:
    """A similarity putting the region of interest at the origin with radius ``target_radius``.

    c2w: (N, 4, 4) OpenCV cameras. points: optional (M, 3) sparse points of the scene (then the
    region of interest is their robust extent); otherwise the cameras' focus point and the camera
    distance (object-centric captures: the object fits inside the camera ring). ``align_up`` rotates
    the mean camera up (-y in OpenCV) onto +z. ``mode`` "sphere" fits a ball of radius
    ``target_radius``, "box" fits the cube [-target_radius, target_radius]^3.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    rotation = np.eye(3)
    if align_up:
        mean_up = -c2w[:, :3, 1].mean(0)
        if np.linalg.norm(mean_up) > 1e-6:
            rotation = rotation_aligning(mean_up, np.array([0.0, 0.0, 1.0]))
    if points is not None and len(points) >= 8:
        lo, hi = np.percentile(points, 2, axis=0), np.percentile(points, 98, axis=0)
        c = (lo + hi) / 2 if center is None else np.asarray(center)
        radius = np.linalg.norm(hi - lo) / 2 if mode == "sphere" else np.max(np.abs(rotation @ (hi - lo))) / 2
    else:
        c = focus_point(c2w) if center is None and len(c2w) >= 2 else (
            np.asarray(center) if center is not None else c2w[:, :3, 3].mean(0))
        # object-centric default: the object lies well inside the camera ring
        radius = 0.5 * np.median(np.linalg.norm(c2w[:, :3, 3] - c, axis=1))
    radius = max(float(radius), 1e-9)
    scale = target_radius / radius
    return Similarity(scale, rotation, -scale * rotation @ c)


# panoramas without known bounds: the room is taken to reach this many times as far from the
# middle of the cameras as the outermost camera (NeRF's occupancy cascades hold what lies further)
PANORAMA_ROOM_FACTOR = 2.0


def _panorama_similarity(c2w: np.ndarray, rotation: np.ndarray, mode: str, target_radius: float) -> Similarity:
    """Panoramas look outwards from inside the scene: the middle of their centres (bounding-box
    centre) goes to the origin and ``PANORAMA_ROOM_FACTOR`` x the farthest centre's distance (sphere)
    or coordinate (box) to ``target_radius``; one panorama (or coincident ones) keeps the scale."""
    centres = c2w[:, :3, 3] @ rotation.T
    middle = (centres.min(0) + centres.max(0)) / 2
    offsets = centres - middle
    spread = np.linalg.norm(offsets, axis=1).max() if mode == "sphere" else np.abs(offsets).max()
    scale = target_radius / (PANORAMA_ROOM_FACTOR * spread) if spread > 1e-9 else 1.0
    return Similarity(scale, rotation, -scale * middle)


def normalize_scene(scene, mode: str = "sphere", target_radius: float = 1.0):
    """The scene moved into the normalised frame, and the similarity that did it.

    ``scene``: a posed :class:`datasets.scene.Scene`. ``mode``: "sphere", "box" (see
    :func:`normalizing_similarity`) or "none" (unchanged). When the scene has bounds, its box is
    what fits the sphere or box; otherwise the cameras decide. Depth scales are updated in
    ``meta["recon"]["depth_scale"]``. Returns (the normalised scene, :class:`Similarity`).
    """
    if mode == "none":
        return scene, Similarity()
    if mode not in ("sphere", "box"):
        raise ValueError(f"normalize must be sphere, box or none, got {mode!r}")
    c2w = np.stack([f.c2w for f in scene.frames])
    center = None
    points = None
    if scene.bounds is not None:  # a known region of interest beats a guess from the cameras
        lo, hi = scene.bounds
        points = box_corners(scene.bounds)
        center = (lo + hi) / 2
    sim = normalizing_similarity(c2w, points=None, mode=mode, target_radius=target_radius, center=center)
    if points is None and all(f.intrinsics is not None and f.intrinsics.model == "equirect" for f in scene.frames):
        sim = _panorama_similarity(c2w, sim.rotation, mode, target_radius)
    if points is not None:
        radius = np.linalg.norm(points - center, axis=1).max() if mode == "sphere" else \
            np.abs(sim.rotation @ (points - center).T).max()
        scale = target_radius / radius
        sim = Similarity(scale, sim.rotation, -scale * sim.rotation @ center)
    frames = [replace(f, c2w=sim.apply_c2w(f.c2w)) for f in scene.frames]
    bounds = None
    if scene.bounds is not None:
        corners = sim.apply_points(points)
        bounds = np.stack([corners.min(0), corners.max(0)])
    meta = dict(scene.meta)
    recon = dict(meta.get("recon", {}))
    recon["depth_scale"] = recon.get("depth_scale", 1.0) * sim.scale
    meta["recon"] = recon
    return replace(scene, frames=frames, bounds=bounds, meta=meta), sim
