"""What a workspace has to show, and the viser scene nodes that show it.

Everything is shown in the NORMALISED frame of ``poses/transforms.json``, the frame the trained
fields live in, so the field's renders and the nodes line up without converting each render.
Meshes (``export/mesh.ply``, ``idr/mesh.ply``) are written in the original units and are mapped
into it with ``poses/normalization.json``; ``poses/points.ply`` is already in it. Whatever a
workspace lacks is left out (a workspace with only ``poses/`` shows cameras and points).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pipeline.geometry.camera_paths import camera_up, scene_center
from pipeline.runner.workspace import Workspace, WorkspaceError
from pipeline.viewer.camera import c2w_to_viser, vertical_fov

THUMBNAIL_SIDE = 96  # pixels on the longer side of a frustum's image: ~3 KB of JPEG per camera
MAX_POINTS = 300_000  # sparse points sent to the browser (a random subset beyond this)
MAX_MESH_FACES = 2_000_000  # above this the browser gets the mesh's vertices as points instead
TRAIN_COLOUR, TEST_COLOUR = (40, 90, 220), (230, 120, 20)
INITIAL_PULL_BACK = 1.6  # new browsers start this many times further from the centre than the first camera
INITIAL_LIFT = math.radians(20)  # ... and this much higher up
INITIAL_ELEVATION = math.radians(15)  # ... than the training camera nearest this elevation
MESH_SOURCES = ("export/mesh.ply", "idr/mesh.ply", "sdf/mesh.ply")  # the first that exists is shown


@dataclass
class Camera:
    name: str
    c2w: np.ndarray  # (4, 4) OpenCV, normalised frame
    fov_y: float  # radians
    aspect: float  # width / height
    split: str
    image_path: Path
    thumbnail: Optional[np.ndarray] = None  # (h, w, 3) uint8


@dataclass
class Content:
    """What a workspace holds that the viewer shows."""

    root: Path
    cameras: list[Camera] = field(default_factory=list)
    points: Optional[tuple[np.ndarray, np.ndarray]] = None  # (N, 3) float32, (N, 3) uint8
    mesh: Optional[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]] = None  # verts, faces, colours
    mesh_source: Optional[str] = None
    methods: list[str] = field(default_factory=list)  # trained fields, newest first
    up: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    notes: list[str] = field(default_factory=list)  # what is missing and why, for the GUI

    @property
    def empty(self) -> bool:
        return not (self.cameras or self.points is not None or self.mesh is not None or self.methods)


def thumbnail(path: Path, side: int = THUMBNAIL_SIDE, load=None) -> Optional[np.ndarray]:
    """A small RGB uint8 copy of an image (transparency composited on white). JPEGs decode at a
    reduced size (PIL's draft mode), so hundreds of large photos load in seconds. ``load`` (the
    scene's own loader) reads what PIL cannot show directly (16-bit, CMYK, ...)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.draft("RGB", (side * 2, side * 2))  # JPEG only; a no-op for other formats
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGB", "RGBA", "L", "LA", "P", "1"):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba).convert("RGB")
            elif load is not None:
                im = Image.fromarray((np.clip(load()[..., :3], 0, 1) * 255 + 0.5).astype(np.uint8))
            else:
                return None
            im.thumbnail((side, side))
            return np.asarray(im, dtype=np.uint8)
    except Exception:  # an unreadable image only loses its thumbnail; the poses stage named it already
        return None


def load_cameras(ws: Workspace, content: Content, thumbnails: bool = True) -> None:
    from datasets.scene import SceneError

    if not ws.transforms_path.exists():
        content.notes.append(f"no cameras: {ws.transforms_path} is missing (run the poses stage)")
        return
    try:
        scene = ws.load_scene()
    except (SceneError, OSError, ValueError) as exc:
        content.notes.append(f"no cameras: {' '.join(str(exc).split())}")
        return
    split_of = {i: name for name in ("train", "val", "test") for i in scene.splits.get(name, [])}
    for i, frame in enumerate(scene.frames):
        if frame.c2w is None or frame.intrinsics is None:
            continue
        k = frame.intrinsics
        # a panorama has no field of view: a square 90-degree frustum marks where it was taken
        fov, aspect = (vertical_fov(k), k.width / k.height) if k.model != "equirect" else (math.pi / 2, 2.0)
        cam = Camera(frame.name, frame.c2w, fov, aspect, split_of.get(i, "train"), frame.image_path)
        if thumbnails:
            cam.thumbnail = thumbnail(frame.image_path, load=lambda i=i: scene.load_image(i))
        content.cameras.append(cam)
    c2w = np.stack([c.c2w for c in content.cameras]) if content.cameras else None
    if c2w is not None:
        content.up = camera_up(c2w)
        content.center = scene_center(c2w, scene.bounds)


def load_points(ws: Workspace, content: Content, rng: np.random.Generator) -> None:
    from pipeline.geometry.mesh import read_ply

    path = ws.stage_dir("poses") / "points.ply"
    if not path.exists():
        return  # imported poses have no sparse points: nothing to say
    verts, _, colours = read_ply(path)
    if len(verts) > MAX_POINTS:
        keep = rng.choice(len(verts), MAX_POINTS, replace=False)
        verts, colours = verts[keep], None if colours is None else colours[keep]
    colours = np.full((len(verts), 3), 80, np.uint8) if colours is None else colours.astype(np.uint8)
    content.points = (verts.astype(np.float32), colours)


def load_mesh(ws: Workspace, content: Content) -> None:
    from pipeline.geometry.mesh import read_ply

    for relative in MESH_SOURCES:
        path = ws.root / relative
        if path.exists():
            verts, faces, colours = read_ply(path)
            # meshes are in the original units: into the normalised frame of the cameras and fields
            verts = ws.normalization().apply_points(verts)
            content.mesh, content.mesh_source = (verts, faces, colours), relative
            return
    content.notes.append("no mesh: run `python run.py export --workspace W --what mesh` (or the idr stage)")


def load_content(workspace, thumbnails: bool = True, seed: int = 0) -> Content:
    """Read everything the viewer shows from ``workspace``; a missing part is noted, not an error.
    A folder that does not exist, or holds nothing to show, is a :class:`WorkspaceError`."""
    from pipeline.export.methods import trained_methods

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace, create=False)
    if not ws.root.is_dir():
        raise WorkspaceError(f"{ws.root} is not a workspace folder; make one with "
                             f"`python run.py poses --data DATA --workspace {ws.root}`")
    content = Content(ws.root)
    load_cameras(ws, content, thumbnails)
    load_points(ws, content, np.random.default_rng(seed))
    load_mesh(ws, content)
    content.methods = trained_methods(ws)
    if not content.methods:
        content.notes.append("no trained field: run `python run.py nerf --workspace W` (or idr)")
    if content.empty:
        raise WorkspaceError(f"{ws.root} has nothing to show yet (no poses/, mesh or trained model); "
                             f"run `python run.py poses --data DATA --workspace {ws.root}` first")
    return content


def frustum_scale(content: Content) -> float:
    """A frustum size that reads well: 7% of the cameras' median distance from the scene centre
    (larger ones hide the object behind 50 images on a ring)."""
    if not content.cameras:
        return 0.1
    dist = [np.linalg.norm(c.c2w[:3, 3] - content.center) for c in content.cameras]
    return max(0.07 * float(np.median(dist)), 1e-3)


def add_nodes(server, content: Content, show_mesh: bool = True) -> dict[str, Any]:
    """Add the workspace's cameras, points and mesh to a viser server: node name -> handle."""
    import trimesh

    scene = server.scene
    scene.set_up_direction(tuple(float(x) for x in content.up))
    nodes: dict[str, Any] = {}
    scale = frustum_scale(content)
    for cam in content.cameras:
        wxyz, position = c2w_to_viser(cam.c2w)
        name = f"/cameras/{cam.name}"
        nodes[name] = scene.add_camera_frustum(
            name, fov=cam.fov_y, aspect=cam.aspect, scale=scale, thickness=0.02 * scale,
            color=TEST_COLOUR if cam.split == "test" else TRAIN_COLOUR, image=cam.thumbnail,
            format="jpeg", jpeg_quality=80, wxyz=wxyz, position=position)
    if content.points is not None:
        points, colours = content.points
        nodes["/points"] = scene.add_point_cloud("/points", points, colours, point_size=0.05 * scale,
                                                 point_shape="rounded")
    if content.mesh is not None:
        verts, faces, colours = content.mesh
        if faces is not None and 0 < len(faces) <= MAX_MESH_FACES:
            mesh = trimesh.Trimesh(verts, faces, vertex_colors=colours, process=False)
            nodes["/mesh"] = scene.add_mesh_trimesh("/mesh", mesh, visible=show_mesh)
        else:  # too large for a browser (or no faces): its vertices as points
            keep = np.random.default_rng(0).permutation(len(verts))[:MAX_POINTS]
            cols = colours[keep] if colours is not None else np.full((len(keep), 3), 160, np.uint8)
            nodes["/mesh"] = scene.add_point_cloud("/mesh", verts[keep].astype(np.float32), cols,
                                                   point_size=0.03 * scale, visible=show_mesh)
    return nodes


def lift(offset: np.ndarray, up: np.ndarray, angle: float) -> np.ndarray:
    """``offset`` turned by ``angle`` (radians) towards ``up``, keeping its length (unchanged when
    it points along up already)."""
    length = np.linalg.norm(offset)
    d = offset / length
    side = up - (up @ d) * d
    if np.linalg.norm(side) < 1e-6:
        return offset
    side /= np.linalg.norm(side)
    return length * (math.cos(angle) * d + math.sin(angle) * side)


def view_camera(content: Content) -> Camera:
    """The training camera new browsers start behind: the one seeing the centre from nearest
    INITIAL_ELEVATION above the horizon (not one looking straight down on it)."""
    train = [c for c in content.cameras if c.split == "train"] or content.cameras

    def off(cam: Camera) -> float:
        d = cam.c2w[:3, 3] - content.center
        n = np.linalg.norm(d)
        return abs(math.asin(np.clip(d @ content.up / n, -1, 1)) - INITIAL_ELEVATION) if n > 1e-9 else math.pi

    return min(train, key=off)


def initial_view(server, content: Content) -> None:
    """New browsers start at the first camera, looking at the scene centre, with its field of view."""
    if not content.cameras:
        return
    cam = view_camera(content)
    eye, target = cam.c2w[:3, 3], content.center
    if np.linalg.norm(eye - target) < 1e-6:  # a panorama at the centre: look along its axis
        target = eye + cam.c2w[:3, 2]
    else:  # behind and above the first camera, so it and the cameras around the object are in view too
        eye = target + INITIAL_PULL_BACK * lift(eye - target, content.up, INITIAL_LIFT)
    server.initial_camera.position = tuple(float(x) for x in eye)
    server.initial_camera.look_at = tuple(float(x) for x in target)
    server.initial_camera.up = tuple(float(x) for x in content.up)
    server.initial_camera.fov = float(cam.fov_y)
