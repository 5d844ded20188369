"""A folder of equirectangular panoramas (``panos/``, ``panoramas/`` or the folder itself).

Every image must be a full 360x180 panorama (width = 2 x height). Without poses the frames have
``c2w = None`` (the poses stage fills them in). With a nerfstudio ``transforms.json`` the folder is
read by :func:`datasets.nerfstudio.read_nerfstudio`. With a ZInD-style ``poses.json``
(``panoramas: [{image, center_xy_m, camera_height_m, yaw_deg}]``) the poses are built as follows.

ZInD convention, as its code (``transformations.py``) defines it: a horizontal direction at
angle ``alpha`` in the floor plan (counter-clockwise from plan +x) appears at panorama longitude
``lon = alpha - yaw - 90 deg`` (longitude -180..180 left to right, 0 at the centre column).
Longitude therefore grows counter-clockwise in the plan, the opposite of a camera seen from
above in a right-handed, z-up world: the ZInD plan is the mirror image of the room. recon's
world frame mirrors it back:

    world = (plan x, -plan y, z up), with z = 0 on the floor;
    camera centre = (x, -y, camera_height_m);
    camera up (OpenCV -y) = +z; the centre column (lon 0) looks along world angle -(yaw + 90 deg).

Verified on ``zind-room06`` (tests/datasets/test_conventions.py): landmarks located by eye in two panoramas
reproject within a few degrees in two others, and the un-mirrored alternative misses by > 90 deg.
The plan coordinates as given stay in ``scene.meta["plan_xy_m"]``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
import numpy as np

from datasets.readers_common import (check_pose, every_nth_splits, first_existing_dir, image_size, list_images,
                                     probe_image, warn_skipped)
from datasets.scene import Frame, Scene, SceneError
from pipeline.geometry.cameras import Intrinsics

PANORAMA_SUFFIXES = (".jpg", ".jpeg", ".png")


def zind_c2w(center_xy_m, camera_height_m: float, yaw_deg: float) -> np.ndarray:
    """OpenCV camera-to-world (4, 4) of a ZInD panorama in recon's world frame (see module doc)."""
    heading = -math.radians(yaw_deg + 90.0)  # world angle of the centre column
    forward = np.array([math.cos(heading), math.sin(heading), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    right = np.cross(down, forward)  # OpenCV: x = y cross z
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2] = right, down, forward
    c2w[:3, 3] = [float(center_xy_m[0]), -float(center_xy_m[1]), float(camera_height_m)]
    return c2w


def _check_equirect(path: Path, decode: bool = False) -> Intrinsics:
    """Equirect intrinsics of a 2:1 image; decode: read all of its data (a folder without poses
    skips what fails, as the photo reader does; posed files are checked by the poses stage)."""
    w, h = probe_image(path) if decode else image_size(path, apply_exif_orientation=False)
    if w != 2 * h:
        raise SceneError(f"{path}: {w}x{h} is not an equirectangular panorama (width must be 2 x height); "
                         "remove it from the folder or crop/resize it to 2:1")
    return Intrinsics("equirect", w, h)


def _read_zind_poses(poses_path: Path, root: Path) -> tuple[list[Frame], list[str], dict]:
    try:
        data = json.loads(poses_path.read_text())
        entries = data["panoramas"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SceneError(f"{poses_path}: expected JSON with a 'panoramas' list ({exc}); "
                         "see the ZInD layout in the data README") from None
    frames, missing, plan_xy = [], [], {}
    for i, entry in enumerate(entries):
        try:
            image, center, height, yaw = (entry["image"], entry["center_xy_m"], entry["camera_height_m"],
                                          entry["yaw_deg"])
        except KeyError as exc:
            raise SceneError(f"{poses_path}: panorama {i} lacks {exc}; need image, center_xy_m, "
                             "camera_height_m, yaw_deg") from None
        image_path = root / str(image)
        if not image_path.is_file():
            missing.append(image)
            continue
        try:
            c2w = zind_c2w(center, height, yaw)
        except (TypeError, ValueError, IndexError):
            raise SceneError(f"{poses_path}: panorama {i} ({image}): center_xy_m={center!r}, camera_height_m="
                             f"{height!r}, yaw_deg={yaw!r} must be numbers (center_xy_m two of them)") from None
        frame = Frame(image_path=image_path, intrinsics=_check_equirect(image_path),
                      c2w=check_pose(c2w, poses_path, f"{i} ({image})"), name=image_path.stem)
        plan_xy[frame.name] = [float(center[0]), float(center[1])]
        frames.append(frame)
    return frames, missing, plan_xy


def read_panorama_folder(path: str | Path, background: str = "white", test_every: int = 0) -> Scene:
    """Read a folder of equirectangular panoramas, with ZInD ``poses.json`` poses when present.
    test_every: hold out every n-th posed panorama as test (0: all train)."""
    root = Path(path)
    if (root / "transforms.json").exists():
        from datasets.nerfstudio import read_nerfstudio

        return read_nerfstudio(root, background=background)
    if not root.is_dir():
        raise SceneError(f"{root}: not a folder of panoramas")
    poses_path = root / "poses.json"
    if poses_path.is_file():
        frames, missing, plan_xy = _read_zind_poses(poses_path, root)
        warn_skipped(poses_path, "panorama(s) whose image is missing", missing)
        if not frames:
            raise SceneError(f"{poses_path}: none of the listed panorama images exists")
        meta = {"plan_xy_m": plan_xy, "world_from_plan": "x, -y, z up (see datasets/panoramas.py)"}
        return Scene(frames, every_nth_splits(len(frames), test_every), None, background, meta, source=poses_path)
    folder = first_existing_dir(root, ("panos", "panoramas")) or root
    paths = list_images(folder, PANORAMA_SUFFIXES)
    if not paths:
        raise SceneError(f"{folder}: no .jpg/.png panoramas found")
    frames, skipped = [], {}
    for p in paths:  # one wrong file must not cost the whole folder: name it, skip it, go on
        try:
            frames.append(Frame(image_path=p, intrinsics=_check_equirect(p, decode=True), c2w=None, name=p.stem))
        except SceneError as exc:
            skipped[p.name] = str(exc)
    warn_skipped(folder, "file(s) that are not readable 2:1 panoramas",
                 [f"{n} ({why.split(': ', 1)[-1].split(';')[0]})" for n, why in skipped.items()])
    if not frames:
        raise SceneError(f"{folder}: none of the {len(paths)} images is a 2:1 equirectangular panorama that "
                         "can be read (the warning above lists why)")
    meta = {"skipped": skipped} if skipped else {}
    return Scene(frames, {"train": list(range(len(frames)))}, None, background, meta, source=folder)


def plan_from_world(xyz: np.ndarray) -> np.ndarray:
    """Floor-plan (x, y) of world points (..., 3) (undoes the mirror of :func:`zind_c2w`)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    return np.stack([xyz[..., 0], -xyz[..., 1]], -1)
