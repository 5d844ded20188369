"""Step 2 of pose estimation: SIFT features, and the cameras the images share.

Features are extracted with one camera per image; the images of a group (:func:`camera_groups`)
are given one camera after matching (:func:`merge_cameras`), because COLMAP verifies pairs of
images sharing a camera much more slowly (see :func:`pipeline.sfm.matching.match`).
"""
from __future__ import annotations

from pathlib import Path

from datasets.scene import Scene, SceneError
from pipeline.geometry.cameras import Intrinsics
from pipeline.sfm.cameras import colmap_camera_params
from pipeline.sfm.config import INTRINSICS_MODES, Effective, EstimationConfig
from pipeline.sfm.prepare import PreparedImage


def apply_intrinsics_file(cfg: EstimationConfig, scene: Scene) -> Scene:
    """``scene`` with every frame's intrinsics from ``cfg.intrinsics_file`` (fitted to the image's
    size), or ``scene`` itself when no file is set. A frame the file has no camera for is an error."""
    if not cfg.intrinsics_file:
        return scene
    from dataclasses import replace

    from PIL import Image

    from datasets.intrinsics import intrinsics_for_image, read_intrinsics_file

    path = Path(cfg.intrinsics_file).expanduser()
    if not path.exists():
        raise SceneError(f"intrinsics_file {path} not found; give a .camera file or folder, a COLMAP cameras.txt / "
                         "cameras.bin or a transforms.json, or leave intrinsics_file empty")
    spec = read_intrinsics_file(path)
    frames = []
    for frame in scene.frames:
        if frame.intrinsics is not None:
            size = (frame.intrinsics.width, frame.intrinsics.height)
        else:
            with Image.open(frame.image_path) as img:
                size = img.size
        intr = intrinsics_for_image(spec, frame.image_path, size, source=str(path))
        if intr is None:
            raise SceneError(f"intrinsics_file {path} has no camera for image {frame.image_path.name}; add one "
                             "or give a file with a single camera for all images")
        frames.append(replace(frame, intrinsics=intr))
    meta = dict(scene.meta, intrinsics_guessed=False)
    return Scene(frames, scene.splits, scene.bounds, scene.background, meta, scene.source)


def use_known_intrinsics(cfg: EstimationConfig, scene: Scene) -> bool:
    """Whether the dataset's intrinsics are used (and kept fixed) rather than estimated: always
    with ``cfg.intrinsics_file`` (:func:`apply_intrinsics_file` put them into ``scene``)."""
    if cfg.intrinsics_file:
        if cfg.intrinsics == "estimate":
            raise SceneError("intrinsics_file is set but intrinsics=estimate; use intrinsics=auto or known with a "
                             "file, or leave intrinsics_file empty to estimate them")
        return True
    if cfg.intrinsics not in INTRINSICS_MODES:
        raise SceneError(f"intrinsics must be one of {INTRINSICS_MODES}, got {cfg.intrinsics!r}")
    have = all(f.intrinsics is not None and f.intrinsics.fx > 0 for f in scene.frames)
    if cfg.intrinsics == "known" and not have:
        raise SceneError("intrinsics=known but some frames have no intrinsics in the dataset; use intrinsics=estimate")
    if cfg.intrinsics == "auto":
        # a dataset with poses comes with a calibration; a photo folder's intrinsics are guesses
        return have and scene.has_poses and not scene.meta.get("intrinsics_guessed", False)
    return cfg.intrinsics == "known"


def camera_groups(images: list[PreparedImage], scene: Scene, cfg: EstimationConfig,
                  known: bool) -> dict[tuple, list[str]]:
    """{intrinsics key: COLMAP image names}: the images that share one camera when mapping."""
    groups: dict[tuple, list[str]] = {}
    for im in images:
        intr = scene.frames[im.frame_index].intrinsics
        if known:
            same_size = (intr.width, intr.height) == (im.width, im.height)
            key = ("known",) + colmap_camera_params(intr if same_size else _fit_size(intr, im))
        else:
            key = ("size", im.width, im.height) if cfg.shared_intrinsics else ("image", im.colmap_name)
        groups.setdefault(key, []).append(im.colmap_name)
    return groups


def extract(pycolmap, db_path: Path, image_dir: Path, groups: dict[tuple, list[str]],
            cfg: EstimationConfig, eff: Effective, device) -> None:
    """SIFT features of every image of ``groups`` (:func:`camera_groups`) into the database, one
    camera per image (a group's cameras are merged after matching: see :func:`merge_cameras`)."""
    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = cfg.num_threads
    options.max_image_size = eff.max_image_size
    options.sift.max_num_features = cfg.max_num_features
    options.sift.peak_threshold = eff.peak_threshold
    options.sift.first_octave = eff.first_octave
    if cfg.sift_domain_size_pooling:  # COLMAP: DSP needs the affine-shape-free, single-orientation path
        options.sift.domain_size_pooling = True
        options.sift.estimate_affine_shape = False
    for key, names in groups.items():
        reader = pycolmap.ImageReaderOptions()
        if key[0] == "known":
            reader.camera_model, reader.camera_params = key[1], key[2]
        else:
            reader.camera_model = cfg.camera_model
        pycolmap.extract_features(db_path, image_dir, image_names=names, camera_mode=pycolmap.CameraMode.PER_IMAGE,
                                  reader_options=reader, extraction_options=options, device=device)


def set_focal_priors(pycolmap, db_path: Path, value: bool) -> None:
    """Mark every camera of the database as having (or not) a trusted focal length."""
    db = pycolmap.Database.open(str(db_path))
    try:
        for camera in db.read_all_cameras():
            camera.has_prior_focal_length = value
            db.update_camera(camera)
    finally:
        db.close()


def merge_cameras(db_path: Path, groups: dict[tuple, list[str]]) -> int:
    """Give the images of each group one camera (the group's first image's) in a COLMAP database:
    images, their frames and rigs follow; the other cameras and rigs are deleted. Returns the
    number of cameras removed. One transaction: an interruption leaves the database as it was.
    COLMAP's schema: sensor type 0 is a camera; a rig per camera holds it as reference sensor."""
    import sqlite3

    removed = 0
    con = sqlite3.connect(str(db_path))
    try:
        with con:
            rows = con.execute("SELECT name, image_id, camera_id FROM images").fetchall()
            ids = {name: image_id for name, image_id, _ in rows}
            cams = {image_id: camera_id for _, image_id, camera_id in rows}
            for names in groups.values():
                members = [ids[n] for n in names if n in ids]
                if len(members) < 2:
                    continue
                keep = cams[members[0]]
                rig = con.execute("SELECT rig_id FROM rigs WHERE ref_sensor_id = ? AND ref_sensor_type = 0",
                                  (keep,)).fetchone()
                others = sorted({cams[m] for m in members[1:]} - {keep})
                for image_id in members[1:]:
                    con.execute("UPDATE images SET camera_id = ? WHERE image_id = ?", (keep, image_id))
                    frames = [r[0] for r in con.execute(
                        "SELECT frame_id FROM frame_data WHERE data_id = ? AND sensor_type = 0", (image_id,))]
                    con.execute("UPDATE frame_data SET sensor_id = ? WHERE data_id = ? AND sensor_type = 0",
                                (keep, image_id))
                    if rig is not None:
                        con.executemany("UPDATE frames SET rig_id = ? WHERE frame_id = ?", [(rig[0], f) for f in frames])
                for camera_id in others:
                    con.execute("DELETE FROM rigs WHERE ref_sensor_id = ? AND ref_sensor_type = 0", (camera_id,))
                    con.execute("DELETE FROM rig_sensors WHERE sensor_id = ? AND sensor_type = 0", (camera_id,))
                    con.execute("DELETE FROM cameras WHERE camera_id = ?", (camera_id,))
                removed += len(others)
    finally:
        con.close()
    return removed


def _fit_size(intr: Intrinsics, im: PreparedImage) -> Intrinsics:
    """Known intrinsics of an image stored at another size (e.g. EXIF-rotated): rescale."""
    if intr.width == im.height and intr.height == im.width:
        raise SceneError(f"{im.colmap_name}: the dataset's intrinsics are for {intr.width}x{intr.height} but the "
                         f"image is {im.width}x{im.height} (EXIF rotation?); use intrinsics=estimate")
    return intr.scaled(im.width / intr.width)
