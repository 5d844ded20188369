"""COLMAP sparse models (binary or text) through pycolmap: reader, sparse points, text writer.

COLMAP stores world-to-camera poses (``cam_from_world``) in OpenCV axes, and its pixel
convention matches recon's (the centre of the top-left pixel is (0.5, 0.5)), so the reader only
inverts the pose. Camera models map to recon models as follows:

=====================================================  =========================================
COLMAP                                                 recon
=====================================================  =========================================
SIMPLE_PINHOLE, PINHOLE                                pinhole
SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV (k4..k6=0)  opencv ``(k1, k2, p1, p2, k3)``, zeros where absent
SIMPLE_RADIAL_FISHEYE, RADIAL_FISHEYE, OPENCV_FISHEYE  fisheye ``(k1, k2, k3, k4)``, zeros where absent
=====================================================  =========================================

Any other model raises a :class:`SceneError` that suggests ``colmap image_undistorter``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from datasets.readers_common import (check_intrinsics, check_pose, every_nth_splits, fit_intrinsics_to_image,
                                     image_size, rigid_inverse, warn_skipped)
from datasets.scene import Frame, Scene, SceneError
from pipeline.geometry.cameras import Intrinsics

SPARSE_SUBFOLDERS = ("", "sparse/0", "sparse", "colmap/sparse/0")

# COLMAP model name -> (recon model, names of COLMAP params in the order recon's dist tuple wants)
_MODEL_MAP = {
    "SIMPLE_PINHOLE": ("pinhole", ()),
    "PINHOLE": ("pinhole", ()),
    "SIMPLE_RADIAL": ("opencv", ("k",)),
    "RADIAL": ("opencv", ("k1", "k2")),
    "OPENCV": ("opencv", ("k1", "k2", "p1", "p2")),
    "FULL_OPENCV": ("opencv", ("k1", "k2", "p1", "p2", "k3")),
    "SIMPLE_RADIAL_FISHEYE": ("fisheye", ("k",)),
    "RADIAL_FISHEYE": ("fisheye", ("k1", "k2")),
    "OPENCV_FISHEYE": ("fisheye", ("k1", "k2", "k3", "k4")),
}


def find_sparse_model(path: str | Path) -> Path:
    """The folder holding ``cameras.bin`` or ``cameras.txt``: ``path`` itself, ``path/sparse/0``,
    ``path/sparse`` or ``path/colmap/sparse/0``."""
    root = Path(path)
    for sub in SPARSE_SUBFOLDERS:
        folder = root / sub if sub else root
        if (folder / "cameras.bin").exists() or (folder / "cameras.txt").exists():
            return folder
    raise SceneError(f"{root}: no COLMAP model found (looked for cameras.bin/.txt in "
                     f"{', '.join(s or '.' for s in SPARSE_SUBFOLDERS)}); run COLMAP's mapper first or give "
                     "the folder that holds the model")


def _load_reconstruction(folder: Path):
    import pycolmap

    try:
        return pycolmap.Reconstruction(str(folder))
    except Exception as exc:  # pycolmap raises RuntimeError/ValueError for broken files
        raise SceneError(f"{folder}: cannot read the COLMAP model ({exc}); re-export it with "
                         "`colmap model_converter`") from exc


def _cam_from_world_matrix(image) -> np.ndarray:
    """(3, 4) world-to-camera of a pycolmap image (a method in pycolmap >= 3.12, a property before)."""
    pose = image.cam_from_world
    pose = pose() if callable(pose) else pose
    return np.asarray(pose.matrix(), dtype=np.float64)


def intrinsics_from_colmap(camera, source: Path | str = "") -> Intrinsics:
    """recon intrinsics of a pycolmap camera; raises SceneError for unsupported models."""
    name = camera.model.name if hasattr(camera.model, "name") else str(camera.model)
    if name not in _MODEL_MAP:
        raise SceneError(f"{source}: camera {camera.camera_id} uses COLMAP model {name}, which recon does not "
                         f"support (supported: {', '.join(_MODEL_MAP)}); undistort the images first with "
                         "`colmap image_undistorter` and read the undistorted model")
    model, dist_names = _MODEL_MAP[name]
    names = [n.strip() for n in camera.params_info.split(",")]
    params = dict(zip(names, (float(p) for p in camera.params)))
    if name == "FULL_OPENCV" and any(params[k] != 0.0 for k in ("k4", "k5", "k6")):
        raise SceneError(f"{source}: camera {camera.camera_id} is FULL_OPENCV with rational terms k4..k6 "
                         f"= {[params[k] for k in ('k4', 'k5', 'k6')]}, which recon does not support; "
                         "undistort the images first with `colmap image_undistorter`")
    fx = params.get("fx", params.get("f"))
    fy = params.get("fy", params.get("f"))
    dist = tuple(params[n] for n in dist_names)
    return Intrinsics(model, int(camera.width), int(camera.height), fx, fy, params["cx"], params["cy"],
                      dist if model != "pinhole" else ())


def read_colmap(path: str | Path, background: str = "white", images_dir: Optional[str] = None,
                masks_dir: Optional[str] = None, test_every: int = 8) -> Scene:
    """Read a COLMAP sparse model with its images.

    path: the dataset folder (holding ``images/`` and ``sparse/0`` or ``sparse/``) or the model folder.
    images_dir: the image folder (default ``path/images``, or ``images/`` next to ``sparse/``).
    masks_dir: optional masks, COLMAP's layout ``<masks>/<image name>.png`` or ``<masks>/<stem>.png``
    (default ``path/masks`` when it exists). test_every: every n-th image (sorted by name) becomes
    the test split (8 as in Mip-NeRF 360); 0 keeps all images for training.
    Images registered in the model but missing on disk are skipped with one warning. Poses must be
    finite and rigid; an image that is a resized copy of the one the model was made from gets its
    camera rescaled, one of another aspect ratio is a SceneError naming it.
    """
    root = Path(path)
    model_dir = find_sparse_model(root)
    rec = _load_reconstruction(model_dir)
    image_root = _find_image_root(root, model_dir, images_dir)
    mask_root = Path(masks_dir) if masks_dir else (root / "masks" if (root / "masks").is_dir() else None)

    intrinsics = {cid: intrinsics_from_colmap(cam, model_dir) for cid, cam in rec.cameras.items()}
    frames, missing = [], []
    images = sorted(rec.images.values(), key=lambda im: im.name)
    for image in images:
        if hasattr(image, "has_pose") and not image.has_pose:
            continue  # not registered
        image_path = image_root / image.name
        if not image_path.is_file():
            missing.append(image.name)
            continue
        w2c = check_pose(_cam_from_world_matrix(image), model_dir, image.name)
        intr = check_intrinsics(intrinsics[image.camera_id], model_dir, image.name)
        # images_dir may hold a downscaled copy of the images the model was made from
        intr = fit_intrinsics_to_image(intr, *image_size(image_path), model_dir, image.name)
        frames.append(Frame(image_path=image_path, intrinsics=intr, c2w=rigid_inverse(w2c),
                            mask_path=_find_mask(mask_root, image.name),
                            name=Path(image.name).with_suffix("").as_posix()))
    warn_skipped(model_dir, f"registered image(s) missing from {image_root}", missing)
    if not frames:
        raise SceneError(f"{model_dir}: no registered image was found in {image_root}; "
                         "give the image folder with images_dir=...")
    return Scene(frames, every_nth_splits(len(frames), test_every), None, background,
                 {"colmap_model": str(model_dir)}, source=root)


def _find_image_root(root: Path, model_dir: Path, images_dir: Optional[str]) -> Path:
    if images_dir is not None:
        folder = Path(images_dir)
        folder = folder if folder.is_absolute() else root / folder
        if not folder.is_dir():
            raise SceneError(f"{folder}: image folder not found (images_dir option)")
        return folder
    for candidate in (root / "images", model_dir.parent / "images", model_dir.parent.parent / "images"):
        if candidate.is_dir():
            return candidate
    raise SceneError(f"{root}: no images/ folder beside the COLMAP model; give it with images_dir=...")


def _find_mask(mask_root: Optional[Path], image_name: str) -> Optional[Path]:
    if mask_root is None:
        return None
    for candidate in (mask_root / f"{image_name}.png", (mask_root / image_name).with_suffix(".png")):
        if candidate.is_file():
            return candidate
    return None


def read_colmap_points(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The sparse points of a COLMAP model: xyz (N, 3) float64 in the model's world frame and
    rgb (N, 3) uint8. ``path`` as for :func:`read_colmap`."""
    rec = _load_reconstruction(find_sparse_model(path))
    points = list(rec.points3D.values())
    if not points:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.uint8)
    xyz = np.stack([np.asarray(p.xyz, dtype=np.float64) for p in points])
    rgb = np.stack([np.asarray(p.color, dtype=np.uint8) for p in points])
    return xyz, rgb


def _colmap_camera(intr: Intrinsics, camera_id: int):
    import pycolmap

    if intr.model == "pinhole":
        name, params = "PINHOLE", [intr.fx, intr.fy, intr.cx, intr.cy]
    elif intr.model == "opencv":
        k1, k2, p1, p2, k3 = intr.dist
        if k3 == 0.0:
            name, params = "OPENCV", [intr.fx, intr.fy, intr.cx, intr.cy, k1, k2, p1, p2]
        else:  # FULL_OPENCV with k4..k6 = 0 is exactly recon's 5-parameter model
            name, params = "FULL_OPENCV", [intr.fx, intr.fy, intr.cx, intr.cy, k1, k2, p1, p2, k3, 0.0, 0.0, 0.0]
    elif intr.model == "fisheye":
        name, params = "OPENCV_FISHEYE", [intr.fx, intr.fy, intr.cx, intr.cy, *intr.dist]
    else:
        raise SceneError(f"COLMAP export: camera model {intr.model!r} has no COLMAP equivalent in recon's writer")
    camera = pycolmap.Camera.create_from_model_name(camera_id, name, intr.fx, intr.width, intr.height)
    camera.params = params
    return camera


def scene_to_reconstruction(scene: Scene, points: Optional[tuple[np.ndarray, np.ndarray]] = None):
    """A ``pycolmap.Reconstruction`` of a posed scene (one COLMAP camera per distinct intrinsics).
    Image names are paths relative to the common image folder. points: optional (xyz, rgb)."""
    import pycolmap

    if not scene.has_poses:
        raise SceneError("COLMAP export: some frames have no pose; run the poses stage first")
    rec = pycolmap.Reconstruction()
    camera_ids: dict[Intrinsics, int] = {}
    image_root = _common_parent([f.image_path for f in scene.frames])
    for image_id, frame in enumerate(scene.frames, start=1):
        if frame.intrinsics not in camera_ids:
            camera_ids[frame.intrinsics] = len(camera_ids) + 1
            rec.add_camera_with_trivial_rig(_colmap_camera(frame.intrinsics, camera_ids[frame.intrinsics]))
        w2c = np.linalg.inv(frame.c2w)
        name = frame.image_path.resolve().relative_to(image_root).as_posix()
        image = pycolmap.Image(name=name, camera_id=camera_ids[frame.intrinsics], image_id=image_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(w2c[:3, :4]))
    if points is not None:
        for xyz, rgb in zip(*points):
            rec.add_point3D(np.asarray(xyz, dtype=np.float64), pycolmap.Track(), np.asarray(rgb, dtype=np.uint8))
    return rec


def write_colmap_text(scene: Scene, folder: str | Path, points=None) -> Path:
    """Write a posed scene as a COLMAP text model (cameras.txt, images.txt, points3D.txt, ...) in
    ``folder``; image names are relative to the frames' common image folder. Returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scene_to_reconstruction(scene, points).write_text(str(folder))
    return folder


def _common_parent(paths: list[Path]) -> Path:
    import os

    return Path(os.path.commonpath([str(Path(p).resolve().parent) for p in paths]))
