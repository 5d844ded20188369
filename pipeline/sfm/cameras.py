"""Cameras between COLMAP and us: known intrinsics as COLMAP parameters, a COLMAP camera as our
:class:`Intrinsics`, a registered COLMAP image as a camera-to-world matrix, and the reprojection
errors of a model's observations."""
from __future__ import annotations

import numpy as np

from datasets.scene import SceneError
from pipeline.geometry.cameras import Intrinsics
from pipeline.sfm.config import ESTIMATED_MODELS

# our camera model -> the COLMAP model that holds the same parameters
_COLMAP_MODEL_OF = {"pinhole": "PINHOLE", "opencv": "OPENCV", "fisheye": "OPENCV_FISHEYE"}


def colmap_camera_params(intr: Intrinsics) -> tuple[str, str]:
    """(COLMAP model name, comma-separated params) of known intrinsics."""
    if intr.model == "equirect":
        raise SceneError("equirectangular panoramas have no perspective intrinsics: their poses are estimated by "
                         "pipeline/sfm/panoramas.py (a folder of panoramas only)")
    if intr.model == "opencv" and intr.dist[4] != 0.0:  # k3: only FULL_OPENCV holds it
        k1, k2, p1, p2, k3 = intr.dist
        params = [intr.fx, intr.fy, intr.cx, intr.cy, k1, k2, p1, p2, k3, 0.0, 0.0, 0.0]
        return "FULL_OPENCV", ",".join(repr(float(p)) for p in params)
    params = [intr.fx, intr.fy, intr.cx, intr.cy, *intr.dist]
    return _COLMAP_MODEL_OF[intr.model], ",".join(repr(float(p)) for p in params)


def intrinsics_from_colmap(camera) -> Intrinsics:
    """Our :class:`Intrinsics` of a pycolmap camera (same pixel convention: centres at +0.5)."""
    name, p, w, h = camera.model_name, [float(x) for x in camera.params], int(camera.width), int(camera.height)
    if name == "EQUIRECTANGULAR":
        return Intrinsics("equirect", w, h)
    if name == "SIMPLE_PINHOLE":
        return Intrinsics("pinhole", w, h, p[0], p[0], p[1], p[2])
    if name == "PINHOLE":
        return Intrinsics("pinhole", w, h, *p[:4])
    if name == "SIMPLE_RADIAL":
        return Intrinsics("opencv", w, h, p[0], p[0], p[1], p[2], (p[3], 0, 0, 0, 0))
    if name == "RADIAL":
        return Intrinsics("opencv", w, h, p[0], p[0], p[1], p[2], (p[3], p[4], 0, 0, 0))
    if name == "OPENCV":
        return Intrinsics("opencv", w, h, *p[:4], tuple(p[4:8]) + (0.0,))
    if name == "FULL_OPENCV" and not any(p[9:12]):
        return Intrinsics("opencv", w, h, *p[:4], tuple(p[4:9]))
    if name == "OPENCV_FISHEYE":
        return Intrinsics("fisheye", w, h, *p[:4], tuple(p[4:8]))
    raise SceneError(f"COLMAP camera model {name} has no equivalent here; use camera_model one of {ESTIMATED_MODELS}")


def c2w_from_image(image) -> np.ndarray:
    """(4, 4) OpenCV camera-to-world of a registered pycolmap image (COLMAP is OpenCV too)."""
    w2c = np.eye(4)
    w2c[:3] = image.cam_from_world().matrix()
    return np.linalg.inv(w2c)


def reprojection_errors(rec) -> dict[int, np.ndarray]:
    """{image id: (K,) distances (px) between each observation's keypoint and its 3D point's
    projection} over the registered images of the pycolmap reconstruction ``rec`` (K may be 0)."""
    xyz_of = {point_id: point.xyz for point_id, point in rec.points3D.items()}
    out = {}
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        observed = [(p.xy, xyz_of[p.point3D_id]) for p in image.points2D if p.has_point3D()]
        if not observed:
            out[image_id] = np.zeros(0)
            continue
        xy = np.array([o[0] for o in observed], dtype=np.float64)
        world = np.array([o[1] for o in observed], dtype=np.float64)
        w2c = image.cam_from_world().matrix()
        projected = rec.cameras[image.camera_id].img_from_cam(world @ w2c[:, :3].T + w2c[:, 3],
                                                             check_cheirality=False)
        out[image_id] = np.linalg.norm(np.asarray(projected) - xy, axis=1)
    return out
