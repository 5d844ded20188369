"""The built-in synthetic scene: exact ground truth for every stage, generated in seconds.

``generate(D)`` renders an analytic SDF object (``analytic_sdf``: five textured primitives on a
round base, radius ~1.06 m, world up = +z) with our own sphere tracer from cameras on a sphere of
radius 4 m, and writes it in the Blender / nerfstudio format plus extra files::

    D/transforms_train.json, D/transforms_test.json   Blender keys (camera_angle_x, frames with
        file_path and OpenGL transform_matrix) + nerfstudio keys (fl_x, fl_y, cx, cy, w, h,
        camera_model) + per frame mask_path, depth_file_path, normal_file_path;
        recon_bounds (the object's box) and recon {object_radius, mesh_gt, up}
    D/train/r_<i>.png, D/test/r_<i>.png   RGBA, 2x2 supersampled; alpha = anti-aliased coverage
    D/masks/r_<i>.png                     object mask at pixel centres (= depth > 0)
    D/depth/r_<i>.npy                     float32 z-depth in metres, 0 on background
    D/normals/r_<i>.npy                   float32 world-space unit normals, 0 on background
    D/mesh_gt.ply                         marching cubes of the analytic SDF, vertex colours = albedo
    D/panoramas/ (with ``panoramas=True``) the indoor scene: equirectangular RGB, depth/ (range),
                                          centers.json and transforms.json (EQUIRECTANGULAR)
    D/scene_info.json                     config, object radius, bounds, timings; written last

View i goes to the test split when i % 5 == 0, else to train; file names keep the global index.
Textures depend on ``seed``; geometry and cameras do not.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import imageio.v3 as iio
import numpy as np
import torch

from datasets.synthetic_render import fibonacci_directions, render_view
from datasets.synthetic_sdf import (OBJECT_RADIUS, ROOM_CENTRE, ROOM_HALF, analytic_sdf, indoor_sdf,
                                    object_scene, room_scene)
from datasets.synthetic_texture import albedo
from pipeline.export.images import to_uint8
from pipeline.geometry.cameras import Cameras, Intrinsics, look_at, pinhole_from_fov
from pipeline.runner.log import get_logger, progress
from pipeline.runner.runtime import torch_threads
from pipeline.runner.io import write_json

__all__ = ["SyntheticConfig", "generate", "one_torch_thread", "analytic_sdf", "indoor_sdf", "object_cameras", "panorama_cameras",
           "CAMERA_RADIUS", "CAMERA_ANGLE_X", "OBJECT_RADIUS", "FORMAT_VERSION"]

FORMAT_VERSION = 1  # bump when the output changes, so cached scenes are regenerated
CAMERA_RADIUS = 4.0  # metres from the origin
CAMERA_ANGLE_X = 0.6911112070083618  # horizontal field of view (rad), ~39.6 degrees like NeRF-synthetic
CAMERA_Z_MIN = -0.5  # cameras cover the part of the sphere above z = -0.5 * radius (3/4 of its area)
PANORAMA_HEIGHT = 1.5  # camera height above the floor (m)
TEST_EVERY = 5


@dataclass
class SyntheticConfig:
    views: int = 50  # total object-centric views; every 5th view goes to the test split
    size: int = 200  # image width = height in pixels
    seed: int = 0
    panoramas: bool = False  # also write the indoor variant with equirectangular panoramas under D/panoramas/
    panorama_count: int = 8
    panorama_width: int = 512  # height = width / 2
    mesh_resolution: int = 192


# ----------------------------------------------------------------------------------------------
# Cameras.


def object_intrinsics(size: int) -> Intrinsics:
    return pinhole_from_fov(size, size, CAMERA_ANGLE_X)


def object_poses(views: int) -> np.ndarray:
    """(views, 4, 4) OpenCV camera-to-world: Fibonacci points on the radius-4 sphere (z >= -2),
    looking at the origin with world +z up in the image."""
    dirs = fibonacci_directions(views, CAMERA_Z_MIN, 1.0).numpy()
    return np.stack([look_at(CAMERA_RADIUS * d, (0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) for d in dirs])


def object_cameras(views: int, size: int) -> tuple[Intrinsics, np.ndarray]:
    """The intrinsics (shared) and (views, 4, 4) OpenCV c2w of the object-centric views."""
    return object_intrinsics(size), object_poses(views)


def test_split(views: int) -> list[int]:
    return [i for i in range(views) if i % TEST_EVERY == 0]


def panorama_cameras(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres (count, 3) and yaws (count,) in degrees of panoramas spread over the room at height
    1.5 m, at least 0.45 m from every surface and not above an object; deterministic from ``seed``."""
    rng = np.random.default_rng(seed + 4242)
    half_x, half_y = ROOM_HALF[0] - 0.5, ROOM_HALF[1] - 0.5
    centres: list[np.ndarray] = []
    min_gap = 1.2
    for attempt in range(1, 20001):
        if len(centres) == count:
            break
        if attempt % 500 == 0:
            min_gap *= 0.8  # many panoramas: allow them closer together
        c = np.array([rng.uniform(-half_x, half_x), rng.uniform(-half_y, half_y), PANORAMA_HEIGHT])
        # clear of every object on the vertical line from the floor to the camera (no camera above a table)
        column = torch.tensor([[c[0], c[1], z] for z in np.linspace(0.05, PANORAMA_HEIGHT, 8)], dtype=torch.float32)
        clear_below = float(indoor_sdf(column).min()) >= 0.04  # only the floor comes that close
        clear_around = float(indoor_sdf(column[-1:])[0]) >= 0.45
        if clear_below and clear_around and all(np.linalg.norm(c - o) >= min_gap for o in centres):
            centres.append(c)
    if len(centres) < count:
        raise ValueError(f"cannot place {count} panoramas in the room; use panorama_count <= 30")
    yaws = rng.uniform(-180.0, 180.0, size=count)
    return np.stack(centres), yaws


def panorama_pose(centre: np.ndarray, yaw_deg: float) -> np.ndarray:
    """OpenCV c2w of an equirect camera at ``centre``: camera +z (longitude 0) along the horizontal
    direction ``yaw_deg`` (from world +x towards +y), camera -y along world +z (up)."""
    yaw = math.radians(yaw_deg)
    target = centre + np.array([math.cos(yaw), math.sin(yaw), 0.0])
    return look_at(centre, target, up=(0.0, 0.0, 1.0))


# ----------------------------------------------------------------------------------------------
# Writing.


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, image)


def _write_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array, dtype=np.float32))


def _opengl(c2w: np.ndarray) -> list:
    from datasets.nerfstudio import opencv_to_opengl

    return opencv_to_opengl(c2w).tolist()


def _config_matches(out_dir: Path, config: SyntheticConfig) -> bool:
    import json

    info_path = out_dir / "scene_info.json"
    if not info_path.exists():
        return False
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return False
    return (info.get("format_version") == FORMAT_VERSION and info.get("config") == asdict(config)
            and (out_dir / "transforms_train.json").exists())


def _write_object_views(out_dir: Path, config: SyntheticConfig, log) -> dict:
    """Render and write every object-centric view; returns the per-frame JSON dicts by split."""
    intrinsics, poses = object_cameras(config.views, config.size)
    scene = object_scene()
    tests = set(test_split(config.views))
    frames: dict[str, list[dict]] = {"train": [], "test": []}
    for i in progress(range(config.views), total=config.views, desc="synthetic views"):
        camera = Cameras.from_intrinsics([intrinsics], poses[i][None])
        view = render_view(scene, camera, config.seed)
        split = "test" if i in tests else "train"
        name = f"r_{i}"
        _write_png(out_dir / split / f"{name}.png", to_uint8(view.rgba))
        _write_png(out_dir / "masks" / f"{name}.png", view.mask.numpy().astype(np.uint8) * 255)
        _write_npy(out_dir / "depth" / f"{name}.npy", view.depth.numpy())
        _write_npy(out_dir / "normals" / f"{name}.npy", view.normals.numpy())
        frames[split].append({"file_path": f"{split}/{name}.png", "transform_matrix": _opengl(poses[i]),
                              "mask_path": f"masks/{name}.png", "depth_file_path": f"depth/{name}.npy",
                              "normal_file_path": f"normals/{name}.npy"})
    log.debug(f"rendered {config.views} views of {config.size}x{config.size}")
    return frames


def sample_sdf_sparse(sdf, bounds: np.ndarray, resolution: int, block: int = 4) -> np.ndarray:
    """Like ``pipeline.geometry.mesh.sample_grid`` for an exact (1-Lipschitz) SDF, ~10x cheaper: values
    (R, R, R) indexed [x, y, z], exact near the surface, elsewhere only the sign is right (the
    block's centre value, which is all marching cubes needs there).

    The grid is cut into blocks of ``block``^3 samples; a block whose centre lies farther from the
    surface than the block's half diagonal plus one sample spacing cannot hold a sign change on any
    edge touching it, so it is filled with the centre value.
    """
    bounds = np.asarray(bounds, dtype=np.float64)
    axes = [np.linspace(bounds[0, i], bounds[1, i], resolution) for i in range(3)]
    spacing = (bounds[1] - bounds[0]) / (resolution - 1)
    n_blocks = -(-resolution // block)
    # block centres: the mean coordinate of the samples each block holds
    centres_1d = [np.array([a[j * block:(j + 1) * block].mean() for j in range(n_blocks)]) for a in axes]
    cx, cy, cz = np.meshgrid(*centres_1d, indexing="ij")
    centres = torch.tensor(np.stack([cx, cy, cz], -1).reshape(-1, 3), dtype=torch.float32)
    with torch.no_grad():
        coarse = torch.cat([sdf(c) for c in centres.split(262144)]).numpy().reshape((n_blocks,) * 3)
    reach = 0.5 * block * np.linalg.norm(spacing) + np.linalg.norm(spacing)
    values = np.repeat(np.repeat(np.repeat(coarse, block, 0), block, 1), block, 2)[:resolution, :resolution,
                                                                                 :resolution].copy()
    near = np.argwhere(np.abs(coarse) < reach)  # (K, 3) blocks to sample fully
    offsets = np.stack(np.meshgrid(*[np.arange(block)] * 3, indexing="ij"), -1).reshape(-1, 3)
    idx = (near[:, None, :] * block + offsets[None]).reshape(-1, 3)
    idx = idx[(idx < resolution).all(1)]
    points = torch.tensor(np.stack([axes[k][idx[:, k]] for k in range(3)], -1), dtype=torch.float32)
    with torch.no_grad():
        values[idx[:, 0], idx[:, 1], idx[:, 2]] = torch.cat([sdf(p) for p in points.split(262144)]).numpy()
    return values.astype(np.float32)


def _write_mesh(out_dir: Path, config: SyntheticConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of the analytic SDF -> D/mesh_gt.ply; returns (vertices (V, 3), faces (F, 3))."""
    from pipeline.geometry.mesh import marching_cubes, write_ply

    grid_bounds = np.array([[-OBJECT_RADIUS - 0.04] * 3, [OBJECT_RADIUS + 0.04] * 3])
    values = sample_sdf_sparse(analytic_sdf, grid_bounds, config.mesh_resolution)
    verts, faces = marching_cubes(values, grid_bounds, level=0.0)
    points = torch.tensor(verts, dtype=torch.float32)
    colours = albedo(points, object_scene().material(points), seed).numpy()
    write_ply(out_dir / "mesh_gt.ply", verts, faces, colors=colours)
    return verts, faces


def _write_panoramas(out_dir: Path, config: SyntheticConfig, log) -> dict:
    """Render the indoor scene's panoramas into D/panoramas/; returns a summary for scene_info."""
    from datasets.nerfstudio import write_nerfstudio
    from datasets.scene import Frame, Scene
    pano_dir = out_dir / "panoramas"
    width = int(config.panorama_width)
    if width % 2:
        raise ValueError(f"panorama_width must be even (height = width / 2), got {width}")
    intrinsics = Intrinsics("equirect", width, width // 2)
    centres, yaws = panorama_cameras(config.panorama_count, config.seed)
    scene = room_scene()
    frames, entries = [], []
    for i in progress(range(config.panorama_count), total=config.panorama_count, desc="synthetic panoramas"):
        c2w = panorama_pose(centres[i], float(yaws[i]))
        camera = Cameras.from_intrinsics([intrinsics], c2w[None])
        view = render_view(scene, camera, config.seed, texture_scale=2.5, t_far=15.0,
                           max_steps=1000)  # rays along a wall converge slowly
        name = f"pano_{i:03d}"
        _write_png(pano_dir / f"{name}.png", to_uint8(view.rgba[..., :3]))
        _write_npy(pano_dir / "depth" / f"{name}.npy", view.depth.numpy())
        frames.append(Frame(pano_dir / f"{name}.png", intrinsics, c2w, depth_path=pano_dir / "depth" / f"{name}.npy",
                            name=name))
        entries.append({"file": f"{name}.png", "center": centres[i].tolist(), "yaw_deg": float(yaws[i]),
                        "depth_file": f"depth/{name}.npy"})
    room_lo = np.array(ROOM_CENTRE) - np.array(ROOM_HALF)
    room_hi = np.array(ROOM_CENTRE) + np.array(ROOM_HALF)
    recon = {"up": [0.0, 0.0, 1.0], "room_bounds": [room_lo.tolist(), room_hi.tolist()]}
    write_nerfstudio(Scene(frames, bounds=np.stack([room_lo, room_hi]), meta={"recon": recon}),
                     pano_dir / "transforms.json")
    write_json(pano_dir / "centers.json", {
        "convention": ("world: metres, up = +z, floor at z = 0; equirect image: column u = longitude "
                       "-180..180 deg (0 looks along camera +z), row v = latitude +90..-90 (top = up); "
                       "camera +z is the horizontal direction yaw_deg (from world +x towards +y); "
                       "camera c2w (OpenCV) has its -y axis along world +z; depth files hold range in metres"),
        "up": [0.0, 0.0, 1.0],
        "camera_height_m": PANORAMA_HEIGHT,
        "room_bounds": [room_lo.tolist(), room_hi.tolist()],
        "width": width, "height": width // 2,
        "panoramas": entries,
    })
    log.debug(f"rendered {config.panorama_count} panoramas of {width}x{width // 2}")
    return {"count": config.panorama_count, "width": width, "height": width // 2}


@contextmanager
def one_torch_thread():
    """Rendering is thousands of small elementwise ops: one thread (measured 5 s vs 0.1 s per 96 px
    view on the shared 2-core machine under load; on an idle machine one thread loses little)."""
    with torch_threads(1):
        yield


def generate(out_dir, config: Optional[SyntheticConfig] = None, log=None) -> Path:
    """Write the synthetic scene into ``out_dir`` (see the module docstring); returns ``out_dir``.

    Does nothing when ``out_dir/scene_info.json`` records the same config. ``scene_info.json`` is
    removed first and written last, so an interrupted run never looks complete.
    """
    config = config or SyntheticConfig()
    log = log or get_logger("synthetic")
    if config.views < 1 or config.size < 8:
        raise ValueError(f"synthetic scene needs views >= 1 and size >= 8, got views={config.views}, "
                         f"size={config.size}")
    out_dir = Path(out_dir)
    if _config_matches(out_dir, config):
        log.info(f"{out_dir}: synthetic scene already generated with this config; reusing it")
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scene_info.json").unlink(missing_ok=True)
    with one_torch_thread():
        info = _generate(out_dir, config, log)
    write_json(out_dir / "scene_info.json", info)  # last: marks the folder complete
    t = info["timings"]
    log.info(f"synthetic scene: {config.views} views of {config.size}px in {t['views_s']:.1f}s, "
             f"mesh in {t['mesh_s']:.1f}s" + (f", panoramas in {t['panoramas_s']:.1f}s"
                                               if info["panoramas"] else "") + f" -> {out_dir}")
    return out_dir


def _generate(out_dir: Path, config: SyntheticConfig, log) -> dict:
    """Write everything but scene_info.json; returns the content of scene_info.json."""
    timings = {}
    t0 = time.perf_counter()
    frames = _write_object_views(out_dir, config, log)
    timings["views_s"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    verts, faces = _write_mesh(out_dir, config, config.seed)
    timings["mesh_s"] = round(time.perf_counter() - t0, 3)
    bounds = np.stack([verts.min(0) - 0.05, verts.max(0) + 0.05])
    radius = float(np.linalg.norm(verts, axis=1).max())

    intrinsics = object_intrinsics(config.size)
    common = {
        "camera_angle_x": CAMERA_ANGLE_X, "camera_model": "PINHOLE",
        "fl_x": intrinsics.fx, "fl_y": intrinsics.fy, "cx": intrinsics.cx, "cy": intrinsics.cy,
        "w": intrinsics.width, "h": intrinsics.height,
        "recon_bounds": bounds.tolist(),
        "recon": {"object_radius": radius, "mesh_gt": "mesh_gt.ply", "up": [0.0, 0.0, 1.0],
                  "source": "recon synthetic scene", "seed": config.seed},
    }
    for split in ("train", "test"):
        write_json(out_dir / f"transforms_{split}.json", {**common, "frames": frames[split]})

    panoramas = None
    if config.panoramas:
        t0 = time.perf_counter()
        panoramas = _write_panoramas(out_dir, config, log)
        timings["panoramas_s"] = round(time.perf_counter() - t0, 3)

    return {
        "format_version": FORMAT_VERSION, "config": asdict(config), "object_radius": radius,
        "bounds": bounds.tolist(), "camera_radius": CAMERA_RADIUS, "up": [0.0, 0.0, 1.0],
        "splits": {k: len(v) for k, v in frames.items()},
        "mesh": {"vertices": int(len(verts)), "faces": int(len(faces))},
        "panoramas": panoramas, "timings": timings,
    }
