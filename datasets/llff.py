"""LLFF ``poses_bounds.npy`` reader (forward-facing scenes of the NeRF paper).

``poses_bounds.npy`` is (N, 17): per image a flattened 3x5 matrix ``[R | t | (h, w, f)]``
(camera-to-world, rotation columns = camera axes (down, right, backwards) in world
coordinates) followed by the near and far depth bounds. In OpenCV axes (right, down, forward)
the rotation is ``(col1, col0, -col2)``. The principal point is the image centre.
Rows follow the sorted image files of ``images/``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.readers_common import (PHOTO_SUFFIXES, check_pose, every_nth_splits, fit_intrinsics_to_image,
                                     image_size, list_images)
from datasets.scene import Frame, Scene, SceneError
from pipeline.geometry.cameras import Intrinsics


def llff_to_opencv(poses: np.ndarray) -> np.ndarray:
    """LLFF camera-to-world (N, 3, 4+) with (down, right, backwards) columns -> OpenCV (N, 4, 4)."""
    poses = np.asarray(poses, dtype=np.float64)
    c2w = np.tile(np.eye(4), (poses.shape[0], 1, 1))
    c2w[:, :3, 0] = poses[:, :, 1]
    c2w[:, :3, 1] = poses[:, :, 0]
    c2w[:, :3, 2] = -poses[:, :, 2]
    c2w[:, :3, 3] = poses[:, :, 3]
    return c2w


def read_llff(path: str | Path, background: str = "white", factor: int = 1, test_every: int = 8) -> Scene:
    """Read an LLFF scene folder (``poses_bounds.npy`` + ``images/``).

    factor: use the downscaled images of ``images_<factor>/`` (as made by LLFF's scripts); the
    intrinsics are scaled to their actual size. test_every: every n-th image is a test view (8, as
    in the NeRF paper); 0 keeps all for training. ``scene.meta["near_far"]`` holds the per-image
    [near, far] depth bounds (original scene units).
    """
    root = Path(path)
    npy = root if root.is_file() else root / "poses_bounds.npy"
    root = npy.parent
    try:
        data = np.load(npy)
    except FileNotFoundError:
        raise SceneError(f"{npy}: file not found; an LLFF scene needs poses_bounds.npy") from None
    except Exception as exc:
        raise SceneError(f"{npy}: cannot read ({exc}); regenerate it with LLFF's imgs2poses.py") from exc
    if data.ndim != 2 or data.shape[1] != 17:
        raise SceneError(f"{npy}: expected an (N, 17) array, got shape {data.shape}")
    poses = data[:, :15].reshape(-1, 3, 5)
    near_far = data[:, 15:17]

    image_dir = root / ("images" if factor == 1 else f"images_{factor}")
    if not image_dir.is_dir():
        raise SceneError(f"{image_dir}: image folder not found; "
                         + ("an LLFF scene needs images/" if factor == 1 else
                            f"create the {factor}x downscaled images there, or use factor=1"))
    images = list_images(image_dir, PHOTO_SUFFIXES)
    if len(images) != len(poses):
        raise SceneError(f"{image_dir}: {len(images)} images but {npy.name} has {len(poses)} poses; "
                         "the rows must match the sorted image files")

    c2w = llff_to_opencv(poses)
    frames = []
    for i, image_path in enumerate(images):
        label = f"{i} ({image_path.name})"
        h, w, f = (float(v) for v in poses[i, :, 4])
        if not all(np.isfinite([h, w, f])) or min(h, w, f) <= 0:
            raise SceneError(f"{npy}: frame {label}: image size / focal (h, w, f) = ({h}, {w}, {f}) must be "
                             "finite and positive; regenerate the file with LLFF's imgs2poses.py")
        if not np.isfinite(near_far[i]).all():
            raise SceneError(f"{npy}: frame {label}: near/far bounds {near_far[i].tolist()} are not finite; "
                             "regenerate the file with LLFF's imgs2poses.py")
        pose = check_pose(c2w[i], npy, label)
        full = Intrinsics("pinhole", int(round(w)), int(round(h)), f, f, w / 2.0, h / 2.0)
        actual_w, actual_h = image_size(image_path, apply_exif_orientation=False)
        intr = fit_intrinsics_to_image(full, actual_w, actual_h, npy, label)
        frames.append(Frame(image_path=image_path, intrinsics=intr, c2w=pose, name=image_path.stem))
    meta = {"near_far": near_far.tolist(), "forward_facing": True}
    return Scene(frames, every_nth_splits(len(frames), test_every), None, background, meta, source=npy)
