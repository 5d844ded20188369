"""The COLMAP database between runs: which features and matches it holds, so that a re-run with the
same images and settings reuses them (also across finished runs, through the copy in ``poses/colmap/``).

The state is a JSON file next to the database: ``{"extract": key, "match": key}``, each key a hash
of everything its step's result depends on.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

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
    (the ``colmap/`` folder of the last finished run) first."""
    if not db_path.exists():
        if (previous / "database.db").exists() and (previous / "database_state.json").exists():
            shutil.copy2(previous / "database.db", db_path)
            shutil.copy2(previous / "database_state.json", _state_path(db_path))
    try:
        return json.loads(_state_path(db_path).read_text()) if db_path.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def export_database(db_path: Path, target: Path) -> None:
    """The database and its state copied into ``target`` (kept with the stage's outputs)."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(db_path, target / "database.db")
    shutil.copy2(_state_path(db_path), target / "database_state.json")
