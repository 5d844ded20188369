"""Step 3 of pose estimation: pairs of images matched and geometrically verified."""
from __future__ import annotations

from pathlib import Path

from datasets.scene import SceneError
from pipeline.sfm.config import MATCHERS, Effective, EstimationConfig
from pipeline.sfm.features import merge_cameras, set_focal_priors


def choose_matcher(cfg: EstimationConfig, names: list[str]) -> str:
    """exhaustive for small sets (every pair is affordable and finds all overlaps); sequential for
    long captures (video-like: neighbours in file order overlap)."""
    if cfg.matcher not in MATCHERS:
        raise SceneError(f"matcher must be one of {MATCHERS}, got {cfg.matcher!r}")
    if cfg.matcher != "auto":
        return cfg.matcher
    return "exhaustive" if len(names) <= cfg.exhaustive_max_images else "sequential"


def match(pycolmap, db_path: Path, matcher: str, cfg: EstimationConfig, eff: Effective, device,
          known: bool = False) -> None:
    """Match and geometrically verify image pairs.

    The database holds one camera per image at this point: COLMAP verifies a pair of images that
    share a camera several times more slowly (bench/RESULTS.md, poses); the cameras are merged
    afterwards. With known intrinsics the pairs are also verified without focal-length priors
    (fundamental matrix and homography, not the essential matrix too: less than half the time, same
    pose accuracy), then the priors are restored for mapping, which keeps the known intrinsics fixed
    either way."""
    if known:
        set_focal_priors(pycolmap, db_path, False)
        try:
            _match(pycolmap, db_path, matcher, cfg, eff, device)
        finally:
            set_focal_priors(pycolmap, db_path, True)
    else:
        _match(pycolmap, db_path, matcher, cfg, eff, device)


def _match(pycolmap, db_path: Path, matcher: str, cfg: EstimationConfig, eff: Effective, device) -> None:
    options = pycolmap.FeatureMatchingOptions()
    options.num_threads = cfg.num_threads
    options.guided_matching = eff.guided_matching
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = cfg.seed
    verification.min_num_inliers = eff.min_num_inliers
    if matcher == "exhaustive":
        pycolmap.match_exhaustive(db_path, matching_options=options, verification_options=verification, device=device)
        return
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap = cfg.sequential_overlap
    pairing.num_threads = cfg.num_threads
    if cfg.loop_detection:
        if not cfg.vocab_tree_path or not Path(cfg.vocab_tree_path).exists():
            raise SceneError(f"loop_detection needs a local vocabulary tree file (vocab_tree_path={cfg.vocab_tree_path!r} "
                             "not found); download one from the COLMAP website once, or set loop_detection=false")
        pairing.loop_detection = True
        pairing.vocab_tree_path = str(cfg.vocab_tree_path)
    pycolmap.match_sequential(db_path, matching_options=options, pairing_options=pairing,
                              verification_options=verification, device=device)


def match_images(pycolmap, db_path: Path, matcher: str, groups: dict[tuple, list[str]], cfg: EstimationConfig,
                 eff: Effective, device, known: bool) -> None:
    """Replace the database's matches by new ones (:func:`match`), then give each camera group
    (:func:`pipeline.sfm.features.camera_groups`) one camera."""
    db = pycolmap.Database.open(str(db_path))
    db.clear_matches()
    db.clear_two_view_geometries()
    db.close()
    match(pycolmap, db_path, matcher, cfg, eff, device, known)
    merge_cameras(db_path, groups)
