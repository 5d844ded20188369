"""nerfstudio / instant-ngp ``transforms.json`` reader and writer, and the Blender (NeRF-synthetic)
``transforms_{train,val,test}.json`` reader that shares its frame parser.

Conventions on disk: ``transform_matrix`` is camera-to-world in the OpenGL/Blender convention
(x right, y up, camera looks down -z). Inside recon we use OpenCV (x right, y down, z forward):
``c2w_opencv = c2w_opengl @ diag(1, -1, -1, 1)`` (the same matrix converts back).

Intrinsics come from ``fl_x, fl_y, cx, cy, w, h`` (global or per frame), or from
``camera_angle_x`` (Blender); distortion from ``k1, k2, k3, k4, p1, p2`` and ``camera_model``
(``PINHOLE``, ``OPENCV``, ``OPENCV_FISHEYE``, ``EQUIRECTANGULAR``). Masks come from ``mask_path``;
recon also writes ``depth_file_path`` (.npy, metres along z) and ``normal_file_path`` (.npy).
Splits are ``train_filenames`` / ``val_filenames`` / ``test_filenames`` (nerfstudio's keys).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np

from datasets.readers_common import check_intrinsics, check_pose, finite_number, fit_intrinsics_to_image, image_size
from datasets.scene import Frame, Scene, SceneError
from pipeline.geometry.cameras import Intrinsics
from pipeline.runner.log import get_logger
from pipeline.runner.io import write_json

OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".JPG", ".PNG", ".exr", ".webp", ".tif", ".tiff")

_MODEL_FROM_NS = {"PINHOLE": "pinhole", "SIMPLE_PINHOLE": "pinhole", "OPENCV": "opencv",
                  "SIMPLE_RADIAL": "opencv", "RADIAL": "opencv", "OPENCV_FISHEYE": "fisheye",
                  "EQUIRECTANGULAR": "equirect"}
_MODEL_TO_NS = {"pinhole": "PINHOLE", "opencv": "OPENCV", "fisheye": "OPENCV_FISHEYE", "equirect": "EQUIRECTANGULAR"}


def opengl_to_opencv(c2w: np.ndarray) -> np.ndarray:
    """Camera-to-world (..., 4, 4) from OpenGL/Blender/nerfstudio axes to OpenCV axes (and back)."""
    return np.asarray(c2w, dtype=np.float64) @ OPENGL_TO_OPENCV


opencv_to_opengl = opengl_to_opencv  # the axis flip is its own inverse


def _resolve_image(base: Path, file_path: str) -> Optional[Path]:
    path = Path(file_path)
    path = path if path.is_absolute() else base / path
    if path.exists() and path.is_file():
        return path
    for ext in IMAGE_EXTENSIONS:  # Blender and instant-ngp files often omit the extension
        candidate = path.with_name(path.name + ext)
        if candidate.exists():
            return candidate
    return None


def _intrinsics(params: dict, image_path: Path, json_path: Path, label: str) -> tuple[Intrinsics, bool]:
    """The intrinsics of one frame for its image as it is on disk, and whether they were rescaled
    from the w/h the file declares (see :func:`datasets.readers_common.fit_intrinsics_to_image`).

    Each frame gets its own: a focal length given as ``camera_angle_x`` is defined from the image
    width, so it is computed from this frame's width (fy = fx: square pixels; cx, cy = centre)."""
    where = f"{json_path}: frame {label}"
    actual_w, actual_h = image_size(image_path)
    if "w" in params and "h" in params:
        w, h = finite_number(params, "w", where), finite_number(params, "h", where)
        if w <= 0 or h <= 0 or w != int(w) or h != int(h):
            raise SceneError(f"{where}: image size w={params['w']!r}, h={params['h']!r} must be positive "
                             "whole numbers; fix them (or remove w/h to use the image's own size)")
        w, h = int(w), int(h)
    else:
        w, h = actual_w, actual_h
    model = _MODEL_FROM_NS.get(str(params.get("camera_model", "OPENCV")).upper())
    if model is None:
        raise SceneError(f"{json_path}: camera_model {params.get('camera_model')!r} is not supported; "
                         f"use one of {sorted(_MODEL_FROM_NS)}")
    if model == "equirect":
        intr = Intrinsics("equirect", w, h)
    else:
        if "fl_x" in params:
            fx = finite_number(params, "fl_x", where)
            fy = finite_number(params, "fl_y", where) if "fl_y" in params else fx
        elif "camera_angle_x" in params:
            fx = _focal_from_angle(params, "camera_angle_x", w, where)
            fy = _focal_from_angle(params, "camera_angle_y", h, where) if "camera_angle_y" in params else fx
        else:
            raise SceneError(f"{json_path}: no focal length (need fl_x or camera_angle_x, globally or per frame)")
        cx = finite_number(params, "cx", where) if "cx" in params else w / 2.0
        cy = finite_number(params, "cy", where) if "cy" in params else h / 2.0
        if model == "fisheye":
            dist = tuple(finite_number(params, k, where) if k in params else 0.0 for k in ("k1", "k2", "k3", "k4"))
        else:
            dist = tuple(finite_number(params, k, where) if k in params else 0.0 for k in ("k1", "k2", "p1", "p2", "k3"))
            if model == "pinhole" and any(dist):
                model = "opencv"
            if model == "opencv" and not any(dist) and str(params.get("camera_model", "")).upper() != "OPENCV":
                model = "pinhole"
        intr = Intrinsics(model, w, h, fx, fy, cx, cy, dist if model != "pinhole" else ())
    check_intrinsics(intr, json_path, label)
    fitted = fit_intrinsics_to_image(intr, actual_w, actual_h, json_path, label)
    return fitted, fitted is not intr


def _focal_from_angle(params: dict, key: str, size: int, where: str) -> float:
    angle = finite_number(params, key, where)
    if not 0.0 < angle < math.pi:
        raise SceneError(f"{where}: {key}={angle} must be a field of view in radians between 0 and pi; fix it")
    return 0.5 * size / math.tan(0.5 * angle)


def parse_frames(data: dict, json_path: Path) -> tuple[list[Frame], list[str]]:
    """Frames of one transforms file; returns (frames, file paths of frames whose image is missing).

    Every pose is checked (finite, rigid: :func:`datasets.readers_common.check_pose`) and every
    frame's intrinsics fit its image's actual size (rescaled when the image is the declared one
    resized, with one warning; a SceneError naming the frame when the aspect ratio differs)."""
    base = json_path.parent
    frames, missing, rescaled = [], [], []
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise SceneError(f"{json_path}: no 'frames' list; is this a nerfstudio/instant-ngp transforms.json?")
    for i, f in enumerate(data["frames"]):
        if not isinstance(f, dict) or "file_path" not in f or "transform_matrix" not in f:
            raise SceneError(f"{json_path}: frame {i} lacks 'file_path' or 'transform_matrix'")
        label = f"{i} ({f['file_path']})"
        image = _resolve_image(base, str(f["file_path"]))
        if image is None:
            missing.append(str(f["file_path"]))
            continue
        params = {**data, **f}
        c2w = check_pose(f["transform_matrix"], json_path, label)
        intrinsics, was_rescaled = _intrinsics(params, image, json_path, label)
        if was_rescaled:
            rescaled.append(f"{f['file_path']} ({intrinsics.width}x{intrinsics.height})")

        def opt(key):
            return (base / f[key]) if f.get(key) else None

        frames.append(Frame(image_path=image, intrinsics=intrinsics,
                            c2w=opengl_to_opencv(c2w), mask_path=opt("mask_path"),
                            depth_path=opt("depth_file_path"), normal_path=opt("normal_file_path"),
                            name=f.get("name") or Path(f["file_path"]).stem))
    if rescaled:
        get_logger("datasets").warning(
            f"{json_path}: {len(rescaled)} image(s) are resized copies of the declared w x h; their intrinsics "
            f"were rescaled to the image size: {', '.join(rescaled[:10])}{' ...' if len(rescaled) > 10 else ''}")
    return frames, missing


def _warn_missing(json_path: Path, missing: list[str]) -> None:
    if missing:
        get_logger("datasets").warning(f"{json_path}: skipped {len(missing)} frame(s) whose image is missing: "
                                       f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")


def _load_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SceneError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise SceneError(f"{path}: not valid JSON ({exc}); fix or regenerate the file") from None


def _bounds_from(data: dict) -> Optional[np.ndarray]:
    if "recon_bounds" in data:
        return np.asarray(data["recon_bounds"], dtype=np.float64)
    if "aabb" in data:
        return np.asarray(data["aabb"], dtype=np.float64)
    return None


def read_nerfstudio(path: str | Path, background: str = "white") -> Scene:
    """Read a nerfstudio or instant-ngp ``transforms.json`` (a file, or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "transforms.json"
    data = _load_json(path)
    frames, missing = parse_frames(data, path)
    _warn_missing(path, missing)
    if not frames:
        raise SceneError(f"{path}: no frame has an existing image; check the file_path entries")
    splits = {}
    resolved = [f.image_path.resolve() for f in frames]
    for split in ("train", "val", "test"):
        wanted = data.get(f"{split}_filenames")
        if wanted:
            wanted_paths = {(_resolve_image(path.parent, w) or path.parent / w).resolve() for w in wanted}
            splits[split] = [i for i, p in enumerate(resolved) if p in wanted_paths]
    if not splits.get("train"):
        held = set(splits.get("val", [])) | set(splits.get("test", []))
        splits["train"] = [i for i in range(len(frames)) if i not in held]
    meta = {k: data[k] for k in ("aabb_scale", "ply_file_path", "recon") if k in data}
    return Scene(frames, splits, _bounds_from(data), background, meta, source=path)


def read_blender(root: str | Path, background: str = "white") -> Scene:
    """Read a Blender/NeRF-synthetic scene: ``transforms_{train,val,test}.json`` in ``root``."""
    root = Path(root)
    frames, splits, bounds, meta = [], {}, None, {}
    for split in ("train", "val", "test"):
        json_path = root / f"transforms_{split}.json"
        if not json_path.exists():
            continue
        data = _load_json(json_path)
        split_frames, missing = parse_frames(data, json_path)
        _warn_missing(json_path, missing)
        splits[split] = list(range(len(frames), len(frames) + len(split_frames)))
        frames += split_frames
        bounds = bounds if bounds is not None else _bounds_from(data)
        meta.update({k: data[k] for k in ("recon",) if k in data})
    if not frames:
        raise SceneError(f"{root}: no transforms_{{train,val,test}}.json with existing images; "
                         "is this a Blender/NeRF-synthetic scene folder?")
    return Scene(frames, splits, bounds, background, meta, source=root)


def frames_to_json(frames: list[Frame], base: Path) -> list[dict]:
    """Per-frame nerfstudio dicts; paths inside ``base`` are written relative to it, others absolute
    (so a workspace that refers to a dataset elsewhere keeps working when it is moved)."""
    def rel(p: Path) -> str:
        p = Path(p).absolute()
        try:
            return p.relative_to(Path(base).absolute()).as_posix()
        except ValueError:
            return str(p)

    out = []
    for f in frames:
        k = f.intrinsics
        d = {"file_path": rel(f.image_path), "transform_matrix": opencv_to_opengl(f.c2w).tolist(),
             "camera_model": _MODEL_TO_NS[k.model], "w": k.width, "h": k.height, "name": f.name}
        if k.model != "equirect":
            d.update(fl_x=k.fx, fl_y=k.fy, cx=k.cx, cy=k.cy)
        if k.model == "opencv":
            d.update(dict(zip(("k1", "k2", "p1", "p2", "k3"), k.dist)))
        elif k.model == "fisheye":
            d.update(dict(zip(("k1", "k2", "k3", "k4"), k.dist)))
        for key, value in (("mask_path", f.mask_path), ("depth_file_path", f.depth_path),
                           ("normal_file_path", f.normal_path)):
            if value is not None:
                d[key] = rel(value)
        out.append(d)
    return out


def write_nerfstudio(scene: Scene, path: str | Path, extra: Optional[dict] = None,
                     relative_to: Optional[Path] = None) -> Path:
    """Write ``scene`` as a nerfstudio ``transforms.json`` (opens in nerfstudio and instant-ngp).

    Intrinsics are written per frame (nerfstudio and instant-ngp both accept that), so scenes
    with several cameras round-trip exactly. File paths are written relative to ``relative_to``
    (default: the folder of ``path``; give the final folder when writing into a temporary one).
    Returns the path written.
    """
    path = Path(path)
    if path.suffix != ".json":
        path = path / "transforms.json"
    if not scene.has_poses:
        raise SceneError("cannot write transforms.json: some frames have no pose; run the poses stage first")
    base = Path(relative_to) if relative_to is not None else path.parent
    frames_json = frames_to_json(scene.frames, base)
    data: dict = {}
    first = frames_json[0]
    data["camera_model"] = first["camera_model"]  # nerfstudio reads the global model
    data["frames"] = frames_json
    for split, indices in scene.splits.items():
        if split in ("train", "val", "test"):
            data[f"{split}_filenames"] = [frames_json[i]["file_path"] for i in indices]
    if scene.bounds is not None:
        data["recon_bounds"] = scene.bounds.tolist()
    data.update({k: v for k, v in scene.meta.items() if k in ("aabb_scale", "ply_file_path", "recon")})
    if extra:
        data.update(extra)
    write_json(path, data)
    return path
