"""The COLMAP database between runs: which features and matches it holds, so that a re-run with the
same images and settings reuses them (also across finished runs, through the copy in ``poses/colmap/``).

The state is a JSON file next to the database: ``{"extract": key, "match": key}``, each key a hash
of everything its step's result depends on.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np

from datasets.scene import Scene
from pipeline.sfm.config import Effective, EstimationConfig
from pipeline.sfm.prepare import PreparedImage


def settings_key(data) -> str:
    """A short hash of ``data`` (JSON-serialisable): equal settings, equal key."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_id(path: Path) -> tuple:
    try:
        st = Path(path).stat()
        return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        return (str(path), -1, -1)


def extraction_key(scene: Scene, prepared: list[PreparedImage], known: bool, cfg: EstimationConfig,
                   eff: Effective) -> str:
    """What the features depend on: the image files, known intrinsics, the SIFT options."""
    return settings_key({"images": [(im.colmap_name, im.width, im.height, _file_id(scene.frames[im.frame_index].image_path))
                            for im in prepared],
                 "known": known and [scene.frames[im.frame_index].intrinsics.to_dict() for im in prepared],
                 "opts": [eff.max_image_size, cfg.max_num_features, cfg.camera_model, cfg.shared_intrinsics,
                          eff.first_octave, eff.peak_threshold, cfg.sift_domain_size_pooling,
                          "cameras per image, merged after matching"]})


def matching_key(extract_key: str, matcher: str, cfg: EstimationConfig, eff: Effective) -> str:
    """What the matches depend on: the features and the matching options."""
    return settings_key({"extract": extract_key, "matcher": matcher, "overlap": cfg.sequential_overlap,
                 "loop": cfg.loop_detection, "seed": cfg.seed,
                 "neighbors": [cfg.spatial_neighbors, cfg.retrieval_neighbors, cfg.spatial_priors],
                 "guided": eff.guided_matching, "min_inliers": eff.min_num_inliers})


def _state_path(db_path: Path) -> Path:
    return db_path.with_name("database_state.json")


def write_state(db_path: Path, state: dict) -> None:
    _state_path(db_path).write_text(json.dumps(state))


def restore_database(db_path: Path, previous: Path) -> dict:
    """The state of the database at ``db_path``; when absent, a copy of the one in ``previous``
    (the ``colmap/`` folder of the last finished run) first, with the keypoints that
    :func:`append_model_keypoints` added to it cut off again: a re-run reuses SIFT's features only."""
    if not db_path.exists():
        if (previous / "database.db").exists() and (previous / "database_state.json").exists():
            shutil.copy2(previous / "database.db", db_path)
            shutil.copy2(previous / "database_state.json", _state_path(db_path))
    try:
        state = json.loads(_state_path(db_path).read_text()) if db_path.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}
    if "sift_keypoints" in state:
        with closing(sqlite3.connect(db_path)) as db, db:
            for image_id, count in state.pop("sift_keypoints").items():
                keypoints, descriptors = _read_features(db, int(image_id))
                _write_features(db, int(image_id), keypoints[:count], descriptors[:count])
        write_state(db_path, state)
    return state


def append_model_keypoints(db_file: Path, rec, frames: dict) -> None:
    """Make the database at ``db_file`` (the exported copy) agree with the model ``rec``.

    Step 4g (:mod:`pipeline.sfm.patch_tracks`) appends to the model's images keypoints that SIFT did
    not give. COLMAP checks that an image has as many keypoints in a model as in its database (to
    continue a reconstruction: ``colmap mapper --input_path``), so each appended keypoint is written
    after the image's SIFT keypoints too, with its affine frame (``frames``: {image id: (K, 2, 2)},
    as :func:`pipeline.sfm.keypoints.read_frames_and_images`, grown by step 4g) and the SIFT
    descriptor of a keypoint of the same track (zeros once it has no track). The database's state
    file records the SIFT keypoint counts, for :func:`restore_database`."""
    with closing(sqlite3.connect(db_file)) as db, db:
        counts, cache = {}, {}

        def features(image_id):
            if image_id not in cache:
                cache[image_id] = _read_features(db, image_id)
            return cache[image_id]

        for image_id in rec.reg_image_ids():
            points2D = rec.images[image_id].points2D
            sift = db.execute("SELECT rows FROM keypoints WHERE image_id = ?", (image_id,)).fetchone()[0]
            if len(points2D) <= sift:  # no keypoint appended: its features are not read
                continue
            keypoints, descriptors = features(image_id)
            added = range(sift, len(points2D))
            xy = np.array([points2D[i].xy for i in added], dtype=np.float32)
            shape = np.asarray(frames[image_id][sift:len(points2D)], dtype=np.float32).reshape(-1, 4)
            rows = {2: xy, 4: np.c_[xy, np.sqrt(np.abs(shape[:, 0] * shape[:, 3] - shape[:, 1] * shape[:, 2])),
                                    np.arctan2(shape[:, 2], shape[:, 0])], 6: np.c_[xy, shape]}[keypoints.shape[1]]
            new_descriptors = np.zeros((len(added), descriptors.shape[1]), dtype=descriptors.dtype)
            for row, i in enumerate(added):
                if points2D[i].has_point3D():
                    for element in rec.points3D[points2D[i].point3D_id].track.elements:
                        other = features(element.image_id)[1]
                        if element.point2D_idx < len(other) and (element.image_id, element.point2D_idx) != (image_id, i):
                            new_descriptors[row] = other[element.point2D_idx]
                            break
            counts[str(image_id)] = sift
            _write_features(db, image_id, np.concatenate([keypoints, rows.astype(np.float32)]),
                            np.concatenate([descriptors, new_descriptors]))
    if counts:
        state = json.loads(_state_path(db_file).read_text()) if _state_path(db_file).exists() else {}
        write_state(db_file, {**state, "sift_keypoints": counts})


def _read_features(db: sqlite3.Connection, image_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints (K, cols) float32, descriptors (K, 128) uint8) of an image, straight from COLMAP's tables."""
    rows, cols, data = db.execute("SELECT rows, cols, data FROM keypoints WHERE image_id = ?", (image_id,)).fetchone()
    keypoints = np.frombuffer(data, dtype=np.float32).reshape(rows, cols).copy()
    rows, cols, data = db.execute("SELECT rows, cols, data FROM descriptors WHERE image_id = ?", (image_id,)).fetchone()
    return keypoints, np.frombuffer(data, dtype=np.uint8).reshape(rows, cols).copy()


def _write_features(db: sqlite3.Connection, image_id: int, keypoints: np.ndarray, descriptors: np.ndarray) -> None:
    db.execute("UPDATE keypoints SET rows = ?, data = ? WHERE image_id = ?",
               (len(keypoints), np.ascontiguousarray(keypoints, dtype=np.float32).tobytes(), image_id))
    db.execute("UPDATE descriptors SET rows = ?, data = ? WHERE image_id = ?",
               (len(descriptors), np.ascontiguousarray(descriptors, dtype=np.uint8).tobytes(), image_id))


def export_database(db_path: Path, target: Path) -> None:
    """The database and its state copied into ``target`` (kept with the stage's outputs)."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(db_path, target / "database.db")
    shutil.copy2(_state_path(db_path), target / "database_state.json")
