"""A small analytic room seen by levelled panoramas, written as a poses-stage workspace, for the
centres stage's tests (no COLMAP pipeline, no rendering: fast).

The room: 6 x 5 x 3 m box, floor at z = 0, a table top at 0.75 m, panoramas at 1.5 m. Sparse points
are sampled on the floor, the walls, the ceiling and the table. ``write_estimated_workspace`` puts
everything through a random similarity (COLMAP's arbitrary frame) and writes what the poses stage
writes after ``--estimate``: ``sparse/`` (a pycolmap model whose observations are the points'
projections plus pixel noise, bundle-adjusted), the normalised ``transforms.json``,
``normalization.json``, ``points.ply``, ``report.json``; and a dataset folder with the exact
``centers.json`` for evaluation. ``write_metric_dataset`` writes a dataset with metric poses to import.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from datasets.nerfstudio import write_nerfstudio
from datasets.scene import Frame, Scene
from pipeline.geometry.cameras import Intrinsics
from pipeline.geometry.mesh import write_ply
from pipeline.geometry.normalize import Similarity, normalizing_similarity
from pipeline.panoramas.centres import level_c2w

ROOM_LO, ROOM_HI = np.array([-3.0, -2.5, 0.0]), np.array([3.0, 2.5, 3.0])
TABLE = (np.array([0.8, 0.5]), np.array([1.8, 1.3]), 0.75)  # plan corners and height of the table top
CAMERA_HEIGHT = 1.5
WIDTH, HEIGHT = 512, 256  # of the equirect camera the observations are in (the images on disk are tiny)


def room_cameras(count: int = 8, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, centres (N, 3) at 1.5 m spread over the room (not above the table), yaws (N,) in degrees."""
    rng = np.random.default_rng(seed)
    centres: list[np.ndarray] = []
    while len(centres) < count:
        c = np.array([rng.uniform(-2.4, 2.4), rng.uniform(-1.9, 1.9), CAMERA_HEIGHT])
        above_table = np.all((c[:2] > TABLE[0] - 0.3) & (c[:2] < TABLE[1] + 0.3))
        if not above_table and all(np.linalg.norm(c - o) > 1.0 for o in centres):
            centres.append(c)
    return [f"pano_{i:03d}" for i in range(count)], np.stack(centres), rng.uniform(-180, 180, count)


def room_points(seed: int = 0, floor: int = 300, walls: int = 400, ceiling: int = 100, table: int = 80) -> np.ndarray:
    """(M, 3) points on the room's surfaces (the floor points are not under the table)."""
    rng = np.random.default_rng(seed + 1)
    pts = []
    f = rng.uniform(ROOM_LO[:2], ROOM_HI[:2], (floor * 2, 2))
    f = f[~np.all((f > TABLE[0]) & (f < TABLE[1]), axis=1)][:floor]
    pts.append(np.c_[f, np.zeros(len(f))])
    pts.append(np.c_[rng.uniform(ROOM_LO[:2], ROOM_HI[:2], (ceiling, 2)), np.full(ceiling, ROOM_HI[2])])
    pts.append(np.c_[rng.uniform(TABLE[0], TABLE[1], (table, 2)), np.full(table, TABLE[2])])
    for _ in range(walls):
        axis, side = rng.integers(2), rng.integers(2)
        p = rng.uniform(ROOM_LO, ROOM_HI)
        p[axis] = (ROOM_LO, ROOM_HI)[side][axis]
        pts.append(p[None])
    return np.concatenate(pts)


def random_similarity(seed: int = 0) -> Similarity:
    """An arbitrary frame as structure from motion leaves it: scale 0.2-5, any rotation, some offset."""
    rng = np.random.default_rng(seed + 2)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    return Similarity(float(np.exp(rng.uniform(np.log(0.2), np.log(5.0)))), q, rng.normal(size=3) * 3)


def _write_images(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        iio.imwrite(folder / f"{name}.png", np.full((8, 16, 3), 40 + 20 * i, np.uint8))
        paths.append(folder / f"{name}.png")
    return paths


def write_ground_truth(folder: Path, names, centres, yaws) -> None:
    """The built-in room's ``centers.json`` layout (exact centres, metres)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "centers.json").write_text(json.dumps({
        "convention": "world: metres, up = +z, floor at z = 0 (test room)", "camera_height_m": CAMERA_HEIGHT,
        "room_bounds": [ROOM_LO.tolist(), ROOM_HI.tolist()],
        "panoramas": [{"file": f"{n}.png", "center": c.tolist(), "yaw_deg": float(y)}
                      for n, c, y in zip(names, centres, yaws)]}))


def write_metric_dataset(folder: Path, count: int = 8, seed: int = 0) -> Path:
    """A folder of (tiny) panoramas with a metric ``transforms.json`` and ``centers.json``: the
    poses stage imports it (no points, no sparse model)."""
    names, centres, yaws = room_cameras(count, seed)
    paths = _write_images(folder, names)
    frames = [Frame(p, Intrinsics("equirect", 16, 8), level_c2w(c, y), name=n)
              for p, c, y, n in zip(paths, centres, yaws, names)]
    write_nerfstudio(Scene(frames, {"train": list(range(count))}), folder / "transforms.json")
    write_ground_truth(folder, names, centres, yaws)
    return folder


def colmap_model(c2w_colmap: np.ndarray, points: np.ndarray, names, noise_px: float, seed: int):
    """A bundle-adjusted pycolmap Reconstruction: one EQUIRECTANGULAR camera, an image per panorama,
    every point seen by every camera (with ``noise_px`` Gaussian noise on its projections)."""
    import pycolmap

    rng = np.random.default_rng(seed + 3)
    rec = pycolmap.Reconstruction()
    camera = pycolmap.Camera(model="EQUIRECTANGULAR", width=WIDTH, height=HEIGHT, params=[WIDTH, HEIGHT],
                             camera_id=1)
    rec.add_camera_with_trivial_rig(camera)
    for i, (c2w, name) in enumerate(zip(c2w_colmap, names)):
        w2c = np.linalg.inv(c2w)
        cam_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[:3, :3]), w2c[:3, 3])
        in_cam = points @ w2c[:3, :3].T + w2c[:3, 3]
        pixels = np.asarray(camera.img_from_cam(in_cam)) + rng.normal(0, noise_px, (len(points), 2))
        image = pycolmap.Image(name=f"{name}.png", keypoints=pixels, camera_id=1, image_id=i + 1)
        rec.add_image_with_trivial_frame(image, cam_from_world)
    for k, xyz in enumerate(points):
        track = pycolmap.Track()
        for i in range(len(names)):
            track.add_element(i + 1, k)
        rec.add_point3D(xyz, track)
    config = pycolmap.BundleAdjustmentConfig()
    for i in range(len(names)):
        config.add_image(i + 1)
    options = pycolmap.BundleAdjustmentOptions(refine_focal_length=False, refine_extra_params=False,
                                               refine_principal_point=False, print_summary=False)
    pycolmap.create_default_ceres_bundle_adjuster(options, config, rec).solve()
    return rec


def write_estimated_workspace(workspace: Path, count: int = 8, seed: int = 0, noise_px: float = 0.5,
                              with_points: bool = True, keep_points=None) -> dict:
    """A workspace as ``poses --estimate`` leaves it (see the module doc). ``keep_points``: an optional
    mask over :func:`room_points` (drop the floor to make the floor fit fail). Returns the truth:
    names, centres (N, 3), yaws, the COLMAP frame's similarity, the dataset folder."""
    import pycolmap

    names, centres, yaws = room_cameras(count, seed)
    points = room_points(seed)
    if keep_points is not None:
        points = points[keep_points(points)]
    to_colmap = random_similarity(seed)
    rec = colmap_model(to_colmap.apply_c2w(np.stack([level_c2w(c, y) for c, y in zip(centres, yaws)])),
                        to_colmap.apply_points(points), names, noise_px, seed)
    data = workspace.parent / f"{workspace.name}-data"
    paths = _write_images(data, names)
    write_ground_truth(data, names, centres, yaws)
    poses = Path(workspace) / "poses"
    (poses / "sparse" / "0").mkdir(parents=True, exist_ok=True)
    rec.write(str(poses / "sparse" / "0"))
    by_name = {im.name: im for im in rec.images.values()}
    c2w = np.stack([np.linalg.inv(np.vstack([by_name[f"{n}.png"].cam_from_world().matrix(), [0, 0, 0, 1]]))
                    for n in names])
    xyz = np.stack([p.xyz for p in rec.points3D.values()])
    sim = normalizing_similarity(c2w, points=xyz, mode="sphere")  # as the poses stage normalises
    frames = [Frame(p, Intrinsics("equirect", 16, 8), sim.apply_c2w(m), name=n) for p, m, n in zip(paths, c2w, names)]
    scene = Scene(frames, {"train": list(range(count))},
                  meta={"recon": {"source": str(data.resolve()), "normalization": sim.to_dict()}})
    if with_points:
        write_ply(poses / "points.ply", sim.apply_points(xyz))
        scene = replace(scene, meta={**scene.meta, "ply_file_path": "points.ply"})
    write_nerfstudio(scene, poses / "transforms.json")
    sim.save(poses / "normalization.json")
    (poses / "report.json").write_text(json.dumps({"mode": "estimate", "images_given": count,
                                                   "images_registered": count}))
    (poses / "manifest.json").write_text(json.dumps({"stage": "poses", "status": "done"}))
    return {"names": names, "centres": centres, "yaws": yaws, "to_colmap": to_colmap, "data": data,
            "pycolmap": pycolmap.__version__}


def floor_points_removed(points: np.ndarray) -> np.ndarray:
    """keep_points mask: everything but the floor (the walls down to 0.5 m, the table): no floor can be
    fitted (a band of wall points at one height must not pass for one)."""
    return points[:, 2] > 0.5


def mean_nearest_distance(centres: np.ndarray) -> float:
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(len(centres)) * 1e9
    return float(d.min(1).mean())


