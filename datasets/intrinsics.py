"""Known camera intrinsics from a file, for pose estimation with a calibrated camera.

:func:`read_intrinsics_file` reads a Strecha ``.camera`` file (or a folder of them), a COLMAP
``cameras.txt`` / ``cameras.bin`` (or the model folder holding it), or a ``transforms.json`` with
``fl_x, fl_y, cx, cy, w, h``; :func:`intrinsics_for_image` picks the entry of one image and fits it
to the image's actual size. Everything is in recon's convention (:mod:`pipeline.geometry.cameras`:
pixel centres at +0.5, as COLMAP's; the other formats are taken as given).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Optional, Union

from datasets.readers_common import check_intrinsics, finite_number, fit_intrinsics_to_image
from datasets.scene import SceneError
from pipeline.geometry.cameras import Intrinsics

IntrinsicsSpec = Union[Intrinsics, dict[str, Intrinsics]]

# COLMAP model -> (number of params, recon model, param names in COLMAP's order)
_COLMAP_MODELS = {
    "SIMPLE_PINHOLE": ("pinhole", ("f", "cx", "cy")),
    "PINHOLE": ("pinhole", ("fx", "fy", "cx", "cy")),
    "SIMPLE_RADIAL": ("opencv", ("f", "cx", "cy", "k1")),
    "RADIAL": ("opencv", ("f", "cx", "cy", "k1", "k2")),
    "OPENCV": ("opencv", ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2")),
}
# COLMAP's model ids (src/colmap/sensor/models.h), for cameras.bin
_COLMAP_MODEL_IDS = {0: "SIMPLE_PINHOLE", 1: "PINHOLE", 2: "SIMPLE_RADIAL", 3: "RADIAL", 4: "OPENCV",
                     5: "OPENCV_FISHEYE", 6: "FULL_OPENCV", 7: "FOV", 8: "SIMPLE_RADIAL_FISHEYE",
                     9: "RADIAL_FISHEYE", 10: "THIN_PRISM_FISHEYE"}
_COLMAP_NUM_PARAMS = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8,
                      "OPENCV_FISHEYE": 8, "FULL_OPENCV": 12, "FOV": 5, "SIMPLE_RADIAL_FISHEYE": 4,
                      "RADIAL_FISHEYE": 5, "THIN_PRISM_FISHEYE": 12}
_FORMATS = ("a Strecha .camera file or a folder of them, a COLMAP cameras.txt / cameras.bin (or its model "
            "folder), or a transforms.json with fl_x, fl_y, cx, cy, w, h")


def read_intrinsics_file(path: str | Path) -> IntrinsicsSpec:
    """Known intrinsics from ``path``.

    Returns either
      * one :class:`Intrinsics` -- the same camera for every image: a single Strecha ``.camera``
        file (its K, distortion row and ``w h``), a COLMAP model with exactly one camera, or a
        ``transforms.json`` with ``fl_x`` (``fl_y`` defaults to it), ``cx``, ``cy``, ``w``, ``h``
        (+ ``k1, k2, p1, p2, k3``, or ``k1..k4`` with ``camera_model: OPENCV_FISHEYE``) at its top level;
      * or a ``dict`` {image name: :class:`Intrinsics`} -- per-image cameras: a folder of
        ``.camera`` files (or a dataset folder with ``cameras/``; keys are the file names without
        ``.camera``, e.g. ``"0000.jpg"``, or ``"0000"`` for a file named ``0000.camera``), a COLMAP
        model with several cameras and its ``images.txt/.bin`` (keys are COLMAP's image names,
        relative to its image folder), or a ``transforms.json`` whose frames carry their own
        ``fl_x`` (keys are the frames' ``file_path``).
    Each Intrinsics is at the image size the file declares (``width``, ``height``); use
    :func:`intrinsics_for_image` to look one image up and rescale it to the image's actual size.
    Models: ``pinhole`` when there is no distortion, ``opencv`` ``(k1, k2, p1, p2, k3)`` for radial
    (-tangential) distortion, ``fisheye`` for OPENCV_FISHEYE in a transforms.json. COLMAP models
    read: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV.
    Raises :class:`SceneError` naming the file for anything else (unknown file, other COLMAP
    models, missing or non-finite values, non-positive focal length or size).
    """
    path = Path(path)
    if not path.exists():
        raise SceneError(f"{path}: intrinsics file not found; give {_FORMATS}")
    if path.is_dir():
        return _read_folder(path)
    if path.suffix == ".camera":
        from datasets.strecha import intrinsics_from_camera_file

        return intrinsics_from_camera_file(path)
    if path.suffix == ".json":
        return _read_transforms(path)
    if path.name == "cameras.bin" or path.suffix == ".txt":
        return _read_colmap(path)
    raise SceneError(f"{path}: not a known intrinsics file; give {_FORMATS}")


def intrinsics_for_image(spec: IntrinsicsSpec, image_path: str | Path, image_size: tuple[int, int],
                         image_root: Optional[str | Path] = None, source: str | Path = "") -> Optional[Intrinsics]:
    """The intrinsics of one image from :func:`read_intrinsics_file`'s result, fitted to the
    image's actual ``image_size`` (width, height): rescaled when the image is a resized copy of the
    declared size, a SceneError for another aspect ratio. A dict is looked up by the image's path
    relative to ``image_root`` (when given), then its file name, then its stem; None when absent."""
    image_path = Path(image_path)
    if isinstance(spec, Intrinsics):
        intr = spec
    else:
        keys = []
        if image_root is not None:
            try:
                keys.append(image_path.relative_to(image_root).as_posix())
            except ValueError:
                pass
        keys += [image_path.name, image_path.stem]
        intr = next((spec[k] for k in keys if k in spec), None)
        if intr is None:
            return None
    return fit_intrinsics_to_image(intr, int(image_size[0]), int(image_size[1]), source or "intrinsics file",
                                   image_path.name)


# --- folders ------------------------------------------------------------------------------------


def _read_folder(folder: Path) -> IntrinsicsSpec:
    from datasets.strecha import CAMERA_FOLDERS, CAMERA_SUFFIX, intrinsics_from_camera_file

    for sub in ("", *CAMERA_FOLDERS):
        d = folder / sub if sub else folder
        files = sorted(d.glob("*" + CAMERA_SUFFIX)) if d.is_dir() else []
        if files:
            return {f.name[:-len(CAMERA_SUFFIX)]: intrinsics_from_camera_file(f) for f in files}
    for sub in ("", "sparse/0", "sparse", "colmap/sparse/0"):
        d = folder / sub if sub else folder
        for name in ("cameras.bin", "cameras.txt"):
            if (d / name).is_file():
                return _read_colmap(d / name)
    if (folder / "transforms.json").is_file():
        return _read_transforms(folder / "transforms.json")
    raise SceneError(f"{folder}: no intrinsics file in this folder (no .camera files, no COLMAP cameras.txt/.bin, "
                     f"no transforms.json); give {_FORMATS}")


# --- COLMAP -------------------------------------------------------------------------------------


def _read_colmap(path: Path) -> IntrinsicsSpec:
    """{camera id: Intrinsics} of cameras.txt / cameras.bin, collapsed to one Intrinsics or keyed
    by image name through the model's images file."""
    cameras = _colmap_cameras_bin(path) if path.suffix == ".bin" else _colmap_cameras_txt(path)
    if not cameras:
        raise SceneError(f"{path}: no camera in this COLMAP cameras file")
    intr = {cid: _colmap_intrinsics(path, cid, model, w, h, params) for cid, (model, w, h, params) in cameras.items()}
    if len(set(intr.values())) == 1:
        return next(iter(intr.values()))
    image_cameras = _colmap_image_cameras(path.parent)
    if image_cameras is None:
        raise SceneError(f"{path}: {len(intr)} different cameras but no images.txt/images.bin beside it to say which "
                         "image uses which; keep only the camera of your images, or give the whole COLMAP model")
    unknown = sorted({cid for cid in image_cameras.values() if cid not in intr})
    if unknown:
        raise SceneError(f"{path.parent}: images use camera id(s) {unknown} that {path.name} does not define")
    return {name: intr[cid] for name, cid in image_cameras.items()}


def _colmap_cameras_txt(path: Path) -> dict[int, tuple[str, int, int, list[float]]]:
    out = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SceneError(f"{path}: cannot read the file ({exc}); give {_FORMATS}") from exc
    for line_no, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            cid, model, w, h = int(fields[0]), fields[1], int(fields[2]), int(fields[3])
            params = [float(v) for v in fields[4:]]
        except (ValueError, IndexError):
            raise SceneError(f"{path}:{line_no}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...' (COLMAP "
                             f"cameras.txt), got {line.strip()!r}; give {_FORMATS}") from None
        out[cid] = (model, w, h, params)
    return out


def _colmap_cameras_bin(path: Path) -> dict[int, tuple[str, int, int, list[float]]]:
    """COLMAP's binary layout: uint64 count, then per camera int32 id, int32 model id, uint64
    width, uint64 height, float64 params[n(model)]."""
    data = path.read_bytes()
    out = {}
    try:
        (count,), pos = struct.unpack_from("<Q", data, 0), 8
        for _ in range(count):
            cid, model_id, w, h = struct.unpack_from("<iiQQ", data, pos)
            pos += 24
            model = _COLMAP_MODEL_IDS.get(model_id)
            if model is None:
                raise SceneError(f"{path}: camera {cid} has unknown COLMAP model id {model_id}")
            n = _COLMAP_NUM_PARAMS[model]
            params = list(struct.unpack_from(f"<{n}d", data, pos))
            pos += 8 * n
            out[cid] = (model, int(w), int(h), params)
    except struct.error:
        raise SceneError(f"{path}: truncated or not a COLMAP cameras.bin; re-export it with "
                         "`colmap model_converter`") from None
    return out


def _colmap_intrinsics(path: Path, cid: int, model: str, w: int, h: int, params: list[float]) -> Intrinsics:
    if model not in _COLMAP_MODELS:
        raise SceneError(f"{path}: camera {cid} uses COLMAP model {model}, not read as known intrinsics (supported: "
                         f"{', '.join(_COLMAP_MODELS)}); undistort the images with `colmap image_undistorter` "
                         "and give the undistorted model's cameras.txt")
    recon_model, names = _COLMAP_MODELS[model]
    if len(params) != len(names):
        raise SceneError(f"{path}: camera {cid} ({model}) needs {len(names)} parameters "
                         f"({', '.join(names)}), got {len(params)}")
    p = dict(zip(names, params))
    fx, fy = p.get("fx", p.get("f")), p.get("fy", p.get("f"))
    dist = tuple(p.get(k, 0.0) for k in ("k1", "k2", "p1", "p2", "k3"))
    if not any(dist):
        recon_model, dist = "pinhole", ()
    return check_intrinsics(Intrinsics(recon_model, w, h, fx, fy, p["cx"], p["cy"], dist), path, f"camera {cid}")


def _colmap_image_cameras(folder: Path) -> Optional[dict[str, int]]:
    """{image name: camera id} from the model in ``folder``, or None when it has no images file."""
    if not ((folder / "images.bin").is_file() or (folder / "images.txt").is_file()):
        return None
    if (folder / "images.txt").is_file():
        out, lines = {}, [ln for ln in (folder / "images.txt").read_text().splitlines() if not ln.startswith("#")]
        i = 0
        while i < len(lines):  # each image takes two lines: pose, camera and name; then its 2-D points
            line = lines[i]
            if not line.strip():  # blank lines between images; an image's points line may be blank too
                i += 1
                continue
            i += 2
            fields = line.split()
            if len(fields) < 10:
                raise SceneError(f"{folder / 'images.txt'}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID "
                                 f"NAME', got {line.strip()!r}")
            out[" ".join(fields[9:])] = int(fields[8])
        return out
    from datasets.colmap import _load_reconstruction

    rec = _load_reconstruction(folder)
    return {image.name: int(image.camera_id) for image in rec.images.values()}


# --- transforms.json ----------------------------------------------------------------------------


def _read_transforms(path: Path) -> IntrinsicsSpec:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SceneError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SceneError(f"{path}: expected a JSON object with fl_x, fl_y, cx, cy, w, h")
    if "fl_x" in data:
        return _transforms_intrinsics(data, path, "top level")
    per_frame = {str(f.get("file_path")): _transforms_intrinsics({**data, **f}, path, str(f.get("file_path")))
                 for f in data.get("frames", []) if isinstance(f, dict) and "fl_x" in f and f.get("file_path")}
    if per_frame:
        return per_frame
    raise SceneError(f"{path}: no fl_x (focal length in pixels) at the top level or in the frames; known "
                     "intrinsics need fl_x, fl_y, cx, cy, w, h")


def _transforms_intrinsics(params: dict, path: Path, where: str) -> Intrinsics:
    def number(key: str, default=None) -> float:
        if key not in params:
            if default is None:
                raise SceneError(f"{path}: {where}: {key} is missing; known intrinsics need fl_x, fl_y, cx, cy, w, h")
            return default
        return finite_number(params, key, f"{path}: {where}")

    w, h = number("w"), number("h")
    if w != int(w) or h != int(h):
        raise SceneError(f"{path}: {where}: w={w:g}, h={h:g} must be whole numbers of pixels")
    fx = number("fl_x")
    fy = number("fl_y", fx)
    cx, cy = number("cx"), number("cy")
    camera_model = str(params.get("camera_model", "")).upper()
    if camera_model == "OPENCV_FISHEYE":
        model, dist = "fisheye", tuple(number(k, 0.0) for k in ("k1", "k2", "k3", "k4"))
    elif camera_model in ("", "OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        dist = tuple(number(k, 0.0) for k in ("k1", "k2", "p1", "p2", "k3"))
        model = "opencv" if any(dist) else "pinhole"
        dist = dist if any(dist) else ()
    else:
        raise SceneError(f"{path}: {where}: camera_model {params.get('camera_model')!r} has no perspective "
                         "intrinsics recon reads from a file; use OPENCV, PINHOLE or OPENCV_FISHEYE")
    return check_intrinsics(Intrinsics(model, int(w), int(h), fx, fy, cx, cy, dist), path, where)
