"""IDR / NeuS / DTU reader: ``cameras.npz`` (or ``cameras_sphere.npz``) with ``image/`` and ``mask/``.

Per image i the npz holds ``world_mat_i`` (3x4 or 4x4 projection K [R | t] in the dataset's
world units) and ``scale_mat_i`` (4x4 similarity that maps the unit sphere around the object
into world units). The projection from the normalised frame is ``P = world_mat @ scale_mat``;
it is split into K and an OpenCV camera-to-world pose as IDR's ``load_K_Rt_from_P`` does with
``cv2.decomposeProjectionMatrix``, here by an RQ decomposition (scipy) with the signs fixed so
that K has a positive diagonal and R is a rotation.

The scene lives in IDR's normalised frame (object inside the unit sphere): ``scene.bounds`` is
[-1, 1]^3 and ``scene.meta["recon"]["idr_scale_mat"]`` keeps ``scale_mat_0`` (4x4 list) so
original units can be restored with ``X_world = scale_mat @ X_normalised``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.linalg

from datasets.readers_common import check_intrinsics, check_pose, first_existing_dir, image_size, list_images
from datasets.scene import Frame, Scene, SceneError
from pipeline.geometry.cameras import Intrinsics
from pipeline.runner.log import get_logger

CAMERA_FILES = ("cameras.npz", "cameras_sphere.npz")
log = get_logger("datasets")


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a 3x4 projection matrix into K (3, 3) with K[2, 2] = 1 and an OpenCV camera-to-world
    (4, 4), like IDR's ``load_K_Rt_from_P``. P may carry any non-zero (even negative) scale."""
    P = np.asarray(P, dtype=np.float64)[:3, :4]
    M = P[:, :3]
    K, R = scipy.linalg.rq(M)
    sign = np.sign(np.diag(K))
    signs = np.diag(np.where(sign == 0, 1.0, sign))  # make K's diagonal positive: M = (K S)(S R), S^2 = I
    K, R = K @ signs, signs @ R
    if np.linalg.det(R) < 0:  # P had a negative overall scale: -P projects the same
        R = -R
    K = K / K[2, 2]
    center = -np.linalg.solve(M, P[:, 3])  # camera centre: P @ [C, 1] = 0
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = center
    return K, c2w


def _find_cameras_file(root: Path) -> Path:
    if root.is_file():
        return root
    for name in CAMERA_FILES:
        if (root / name).exists():
            return root / name
    raise SceneError(f"{root}: no {' or '.join(CAMERA_FILES)}; is this an IDR/NeuS/DTU scene folder?")


def read_idr(path: str | Path, background: str = "white", camera_file: str = "") -> Scene:
    """Read an IDR / NeuS / DTU scene folder. camera_file: force ``cameras.npz`` or
    ``cameras_sphere.npz`` (default: the first that exists)."""
    root = Path(path)
    npz_path = root / camera_file if camera_file else _find_cameras_file(root)
    root = npz_path.parent
    try:
        cams = dict(np.load(npz_path))
    except FileNotFoundError:
        raise SceneError(f"{npz_path}: file not found") from None
    except Exception as exc:
        raise SceneError(f"{npz_path}: cannot read ({exc}); regenerate the camera file") from exc
    n = len([k for k in cams if k.startswith("world_mat_") and not k.startswith("world_mat_inv")])
    if n == 0:
        raise SceneError(f"{npz_path}: no world_mat_<i> arrays; expected IDR's camera format")

    image_dir = first_existing_dir(root, ("image", "images"))
    if image_dir is None:
        raise SceneError(f"{root}: no image/ or images/ folder beside {npz_path.name}")
    images = list_images(image_dir)
    if len(images) != n:
        raise SceneError(f"{image_dir}: {len(images)} images but {npz_path.name} has {n} cameras; "
                         "they must match one to one in sorted order")
    mask_dir = first_existing_dir(root, ("mask", "masks"))
    masks = list_images(mask_dir) if mask_dir is not None else []
    if mask_dir is not None and len(masks) != n:
        raise SceneError(f"{mask_dir}: {len(masks)} masks for {n} images; remove the folder or complete it")

    frames = []
    for i, image_path in enumerate(images):
        if f"world_mat_{i}" not in cams:
            raise SceneError(f"{npz_path}: world_mat_{i} is missing (cameras must be numbered 0..{n - 1})")
        label = f"{i} ({image_path.name})"
        world_mat = np.asarray(cams[f"world_mat_{i}"], dtype=np.float64)
        scale_mat = np.asarray(cams.get(f"scale_mat_{i}", np.eye(4)), dtype=np.float64)
        if world_mat.shape not in ((3, 4), (4, 4)) or scale_mat.shape != (4, 4):
            raise SceneError(f"{npz_path}: frame {label}: world_mat_{i} is {world_mat.shape} and scale_mat_{i} "
                             f"{scale_mat.shape}; expected 3x4 or 4x4 and 4x4")
        for key, value in ((f"world_mat_{i}", world_mat), (f"scale_mat_{i}", scale_mat)):
            if not np.isfinite(value).all():
                raise SceneError(f"{npz_path}: frame {label}: {key} holds NaN or infinite values; "
                                 "fix or regenerate the camera file")
        P = world_mat[:3, :4] @ scale_mat
        if abs(np.linalg.det(P[:, :3])) <= 1e-12 * max(1.0, float(np.abs(P[:, :3]).max())) ** 3:
            raise SceneError(f"{npz_path}: frame {label}: the projection world_mat_{i} @ scale_mat_{i} is "
                             "singular (no camera centre); fix or regenerate the camera file")
        K, c2w = decompose_projection(P)
        c2w = check_pose(c2w, npz_path, label)
        if abs(K[0, 1]) > 1e-3 * K[0, 0]:
            log.warning(f"{npz_path}: camera {i} has skew {K[0, 1]:.4g} px, which recon ignores")
        w, h = image_size(image_path, apply_exif_orientation=False)
        intr = Intrinsics("pinhole", w, h, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
        check_intrinsics(intr, npz_path, label)
        frames.append(Frame(image_path=image_path, intrinsics=intr, c2w=c2w,
                            mask_path=masks[i] if masks else None, name=image_path.stem))
    scale_mat_0 = np.asarray(cams.get("scale_mat_0", np.eye(4)), dtype=np.float64)
    meta = {"recon": {"idr_scale_mat": scale_mat_0.tolist()}}
    bounds = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    return Scene(frames, {"train": list(range(n))}, bounds, background, meta, source=npz_path)
