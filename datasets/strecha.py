"""Strecha ``.camera`` reader (the Strecha et al. CVPR 2008 multi-view benchmark: Herz-Jesu,
Fountain, Castle, Entry; also openMVG's SfM_quality_evaluation copies).

One text file per image, named ``<image name>.camera`` (``0000.jpg.camera``; ``<stem>.camera`` is
accepted too), in ``cameras/`` (or ``gt_dense_cameras/``) beside the images or in the image folder
itself as in the original download. Nine lines of numbers::

    fx  s   cx        K, 3 rows
    0   fy  cy
    0   0   1
    k1  k2  k3        radial distortion (0 0 0: the published images are undistorted)
    r11 r12 r13       R, 3 rows: camera-to-world rotation, its columns are the camera's
    r21 r22 r23       x, y, z axes in world coordinates (OpenCV axes: x right, y down, z forward)
    r31 r32 r33
    cx  cy  cz        C, the camera centre in world coordinates
    w   h             image size

So ``c2w = [[R, C], [0, 0, 0, 1]]`` with no axis flip, and a world point X projects to
``K R^T (X - C)``. K is used as given (recon's pixel centres are at +0.5): the format does not
say where its pixel centres are, and on Herz-Jesu-P8 the epipolar residuals of SIFT matches under
the calibrated cameras are flat to 0.001 px between keypoints shifted by 0 and by +0.5 px, so
the data cannot tell either. A non-zero distortion row becomes the ``opencv`` model
``(k1, k2, 0, 0, k3)``.

Images without a camera file and camera files without an image are skipped with one warning each;
a pose that is not finite or not a rotation, or a K that is not upper-triangular with ``0 0 1``
last, is a SceneError naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from datasets.readers_common import (check_intrinsics, check_pose, every_nth_splits, fit_intrinsics_to_image,
                                     image_size, list_images, warn_skipped)
from datasets.scene import Frame, Scene, SceneError
from pipeline.geometry.cameras import Intrinsics

CAMERA_SUFFIX = ".camera"
CAMERA_FOLDERS = ("cameras", "gt_dense_cameras", "camera")
IMAGE_FOLDERS = ("", "images")
# |skew| / fx above this cannot be dropped silently (recon's cameras have no skew)
_SKEW_TOLERANCE = 1e-4


def parse_camera_file(path: str | Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray, np.ndarray, tuple[int, int]]:
    """(K (3, 3), distortion (0..3 values), R (3, 3) camera-to-world, C (3,), (width, height)) of one
    ``.camera`` file. Raises SceneError naming the file for a wrong layout or non-numbers."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SceneError(f"{path}: cannot read the camera file ({exc})") from exc
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append([float(v) for v in line.split()])
        except ValueError:
            raise SceneError(f"{path}:{line_no}: non-numeric value in {line.strip()!r}; a Strecha .camera file "
                             "holds only numbers (K, distortion, R, C, width height)") from None
    shape = [len(r) for r in rows]
    if len(rows) != 9 or shape[:3] != [3, 3, 3] or len(rows[3]) > 3 or shape[4:8] != [3, 3, 3, 3] or shape[8] != 2:
        raise SceneError(f"{path}: expected 9 lines of 3, 3, 3, <=3 (distortion), 3, 3, 3, 3 (centre) and 2 "
                         f"(width height) numbers, got {len(rows)} lines of {shape}; is this a Strecha .camera file?")
    K = np.array(rows[0:3], dtype=np.float64)
    dist = tuple(rows[3])
    R = np.array(rows[4:7], dtype=np.float64)
    C = np.array(rows[7], dtype=np.float64)
    w, h = rows[8]
    if w != int(w) or h != int(h) or w <= 0 or h <= 0:
        raise SceneError(f"{path}: image size {w:g} {h:g} (last line) must be two positive whole numbers; fix it")
    return K, dist, R, C, (int(w), int(h))


def intrinsics_from_camera_file(path: str | Path) -> Intrinsics:
    """The intrinsics a ``.camera`` file declares, at the size it declares (its last line)."""
    K, dist, _, _, (w, h) = parse_camera_file(path)
    return _intrinsics(K, dist, w, h, path)


def _intrinsics(K: np.ndarray, dist: tuple[float, ...], w: int, h: int, path) -> Intrinsics:
    if not np.isfinite(K).all() or not all(np.isfinite(dist)):
        raise SceneError(f"{path}: K or the distortion row holds NaN or infinite values; fix the file")
    if np.abs(K[2] - [0.0, 0.0, 1.0]).max() > 1e-9 or K[1, 0] != 0.0:
        raise SceneError(f"{path}: K must be upper-triangular with last row 0 0 1, got {K.tolist()}; fix the file")
    if abs(K[0, 1]) > _SKEW_TOLERANCE * abs(K[0, 0]):
        raise SceneError(f"{path}: K has skew {K[0, 1]:g}, which recon's camera models cannot hold; "
                         "resample the images to square pixels without skew, or drop the skew term")
    k = tuple(dist) + (0.0,) * (3 - len(dist))
    if any(k):
        intr = Intrinsics("opencv", w, h, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]),
                          (k[0], k[1], 0.0, 0.0, k[2]))
    else:
        intr = Intrinsics("pinhole", w, h, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    return check_intrinsics(intr, path, Path(path).name)


def find_camera_file(image_path: Path, camera_dirs: list[Path]) -> Optional[Path]:
    """The ``.camera`` file of an image: ``<name>.camera`` or ``<stem>.camera`` in the first of
    ``camera_dirs`` that has one."""
    for folder in camera_dirs:
        for name in (image_path.name + CAMERA_SUFFIX, image_path.stem + CAMERA_SUFFIX):
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def camera_folders(root: Path, image_root: Path) -> list[Path]:
    """Folders that may hold the ``.camera`` files, in the order they are searched."""
    folders = [root / name for name in CAMERA_FOLDERS] + [image_root, root]
    seen, out = set(), []
    for folder in folders:
        if folder.is_dir() and folder.resolve() not in seen:
            seen.add(folder.resolve())
            out.append(folder)
    return out


def has_camera_files(folder: Path) -> bool:
    """True when ``folder`` looks like a Strecha dataset: ``.camera`` files in it or in one of
    :data:`CAMERA_FOLDERS` (used by :func:`datasets.detect_format`)."""
    folder = Path(folder)
    return any(any(d.glob("*" + CAMERA_SUFFIX)) for d in [folder, *(folder / n for n in CAMERA_FOLDERS)]
               if d.is_dir())


def _image_root(root: Path) -> Path:
    for sub in IMAGE_FOLDERS:
        folder = root / sub if sub else root
        if folder.is_dir() and list_images(folder):
            return folder
    raise SceneError(f"{root}: no images (.jpg, .jpeg, .png) in the folder or in images/; a Strecha dataset "
                     "holds the images beside cameras/<image name>.camera")


def read_strecha(path: str | Path, background: str = "white", test_every: int = 0) -> Scene:
    """Read a Strecha benchmark folder: images (in ``path`` or ``path/images``) and one
    ``<image name>.camera`` per image (in ``cameras/``, ``gt_dense_cameras/`` or beside the images).

    Poses become OpenCV camera-to-world 4x4 (``[[R, C], [0, 0, 0, 1]]``), checked finite and rigid;
    intrinsics come from K and the distortion row, rescaled when the image on disk is a resized
    copy of the declared size. test_every: hold out every n-th view as test (0: all train).
    """
    root = Path(path)
    if root.is_file():  # one .camera file given: its dataset folder
        root = root.parent.parent if root.parent.name in CAMERA_FOLDERS else root.parent
    if not root.is_dir():
        raise SceneError(f"{root}: no such folder; give the Strecha dataset folder")
    image_root = _image_root(root)
    dirs = camera_folders(root, image_root)
    frames, no_camera, used = [], [], set()
    for image_path in list_images(image_root):
        cam_path = find_camera_file(image_path, dirs)
        if cam_path is None:
            no_camera.append(image_path.name)
            continue
        used.add(cam_path.resolve())
        K, dist, R, C, (w, h) = parse_camera_file(cam_path)
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = R, C
        c2w = check_pose(c2w, cam_path, image_path.name)
        intr = _intrinsics(K, dist, w, h, cam_path)
        # Strecha also publishes downscaled copies of the images with the full-size cameras
        intr = fit_intrinsics_to_image(intr, *image_size(image_path), cam_path, image_path.name)
        frames.append(Frame(image_path=image_path, intrinsics=intr, c2w=c2w, name=image_path.stem))
    orphans = sorted(p.name for d in dirs for p in d.glob("*" + CAMERA_SUFFIX) if p.resolve() not in used)
    warn_skipped(root, "image(s) without a .camera file", no_camera)
    warn_skipped(root, ".camera file(s) without an image", orphans)
    if not frames:
        raise SceneError(f"{root}: none of the images in {image_root} has a .camera file (looked for "
                         f"<image name>.camera in {', '.join(str(d) for d in dirs)})")
    return Scene(frames, every_nth_splits(len(frames), test_every), None, background,
                 {"camera_files": str(dirs[0])}, source=root)
