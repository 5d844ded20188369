"""Step 3 of pose estimation: pairs of images matched and geometrically verified.

Which pairs are matched (``matcher``; :func:`choose_matcher` decides ``auto`` from the data and says
why, in one line recorded in the report):

- ``exhaustive``: every pair; O(n^2), affordable up to ``exhaustive_max_images`` and the only
  strategy that cannot miss an overlap.
- ``sequential``: each image with its ``sequential_overlap`` neighbours in file-name order (numbers in
  names compared as numbers: ``frame_9`` before ``frame_10``) and at 2^k steps beyond them; for
  video frames and ordered captures. ``auto`` picks it when the names are numbered AND consecutive
  images overlap: sampled consecutive pairs must share ``sequential_min_gain`` x the SIFT matches
  (mutual nearest neighbours, ratio test, no geometry) of pairs far apart in the order (numbered
  names alone are not enough: the built-in scene numbers views spread over a sphere, where
  neighbours in name order do not overlap; and tiny thumbnails could not tell: views at one height
  look alike whether they overlap or not).
- ``spatial``: each image with its ``spatial_neighbors`` nearest images by prior position: GPS in the
  photos' EXIF (``spatial_priors=auto|gps``), or the dataset's own camera centres
  (``spatial_priors=poses``, for approximate poses that should be re-estimated; never chosen by
  ``auto``, which would otherwise pair images with the very poses a benchmark checks).
- ``retrieval``: each image with its ``retrieval_neighbors`` most similar images by a vocabulary tree
  (COLMAP's visual index) built offline from these images' own SIFT descriptors: no download. For
  large unordered sets without priors.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from datasets.scene import Scene, SceneError
from pipeline.sfm.config import MATCHERS, Effective, EstimationConfig
from pipeline.sfm.features import merge_cameras, set_focal_priors

_NUMBER = re.compile(r"(\d+)(?!.*\d)")  # the last group of digits of a name
MAX_CHECKED_PAIRS = 100  # consecutive (and as many distant) pairs in the ordered-capture check


@dataclass
class MatcherChoice:
    """The matching strategy and why (one line, for the log and the report)."""

    matcher: str  # exhaustive | sequential | spatial | retrieval
    reason: str
    positions: Optional[np.ndarray] = None  # (N, 3) prior positions in metres (spatial), in names' order


def natural_key(name: str) -> tuple:
    """Sort key comparing digit runs as numbers: ``r_9`` < ``r_10``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def numbered(names: list[str]) -> bool:
    """Every name carries a number and no two names the same prefix and number."""
    keys = []
    for name in names:
        stem = Path(name).stem
        m = _NUMBER.search(stem)
        if m is None:
            return False
        keys.append((stem[:m.start()], int(m.group(1))))
    return len(set(keys)) == len(keys)


def _descriptors(db, image_id: int, max_features: int, rng) -> np.ndarray:
    """(<= max_features, 128) L2-normalised float32 descriptors of one image (a random subset)."""
    d = db.read_descriptors(image_id).to_float().data.astype(np.float32)
    if len(d) > max_features:
        d = d[rng.choice(len(d), max_features, replace=False)]
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)


def count_matches(a: np.ndarray, b: np.ndarray, ratio: float = 0.8) -> int:
    """Mutual nearest neighbours passing Lowe's ratio test between descriptor sets a (N, D), b (M, D)."""
    if len(a) < 2 or len(b) < 2:
        return 0
    dist = np.sqrt(np.maximum(2.0 - 2.0 * (a @ b.T), 0.0))  # unit vectors: |x - y|^2 = 2 - 2 x.y
    two = np.argpartition(dist, 1, axis=1)[:, :2]  # the two nearest, in order (kth=1)
    rows = np.arange(len(a))
    ba = np.argmin(dist, axis=0)
    good = dist[rows, two[:, 0]] < ratio * dist[rows, two[:, 1]]
    mutual = ba[two[:, 0]] == rows
    return int(np.count_nonzero(good & mutual))


def consecutive_gain(pycolmap, db_path: Path, order: list[str], seed: int = 0, max_features: int = 1000) -> float:
    """How much more images next to each other in ``order`` share than images a third to a half of
    the sequence apart: (median descriptor matches of sampled consecutive pairs + 1) / (that of
    distant pairs + 1), from the database's SIFT descriptors (no geometry: a cheap look at up to
    2 x MAX_CHECKED_PAIRS pairs). ~1 for images in no particular order, >> 1 for video frames."""
    n = len(order)
    rng = np.random.default_rng(seed)
    starts = np.unique(np.linspace(0, n - 2, min(MAX_CHECKED_PAIRS, n - 1)).round().astype(int))
    gaps = rng.integers(max(2, n // 3), max(3, n // 2 + 1), size=len(starts))
    near = [(i, i + 1) for i in starts]
    far = [(i, (i + g) % n) for i, g in zip(starts, gaps)]
    db = pycolmap.Database.open(str(db_path))
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        cache: dict[int, np.ndarray] = {}

        def desc(i):
            if i not in cache:
                cache[i] = _descriptors(db, ids[order[i]], max_features, rng)
            return cache[i]

        def median(pairs):
            return float(np.median([count_matches(desc(i), desc(j)) for i, j in pairs]))

        return (median(near) + 1.0) / (median(far) + 1.0)
    finally:
        db.close()


def gps_positions(paths: list[Path]) -> Optional[np.ndarray]:
    """(N, 3) positions in metres (east, north, up) from the files' EXIF GPS around the first image,
    or None unless every image has a GPS latitude and longitude."""
    from PIL import Image

    coords = []
    for path in paths:
        try:
            with Image.open(path) as img:
                gps = img.getexif().get_ifd(0x8825)  # GPSInfo
        except Exception:  # unreadable EXIF: no priors
            return None
        if not gps or 2 not in gps or 4 not in gps:
            return None

        def degrees(dms, ref, negative):
            value = float(dms[0]) + float(dms[1]) / 60 + float(dms[2]) / 3600
            return -value if str(ref).upper().startswith(negative) else value

        try:
            lat = degrees(gps[2], gps.get(1, "N"), "S")
            lon = degrees(gps[4], gps.get(3, "E"), "W")
            alt = float(gps.get(6, 0.0)) * (-1 if gps.get(5, 0) in (1, b"\x01") else 1)
        except (TypeError, ValueError, ZeroDivisionError, IndexError):
            return None
        coords.append((lat, lon, alt))
    if not coords:
        return None
    c = np.array(coords, dtype=np.float64)
    # equirectangular around the first image: metre accuracy over the few km of a capture
    radius = 6_371_000.0
    lat0 = math.radians(c[0, 0])
    east = np.radians(c[:, 1] - c[0, 1]) * radius * math.cos(lat0)
    north = np.radians(c[:, 0] - c[0, 0]) * radius
    return np.stack([east, north, c[:, 2] - c[0, 2]], axis=1)


def prior_positions(cfg: EstimationConfig, scene: Scene, frame_indices: list[int],
                    paths: list[Path]) -> tuple[Optional[np.ndarray], str]:
    """(N, 3) prior positions of the images (``frame_indices`` into ``scene``, files ``paths``) and
    where they come from, as ``spatial_priors`` says; (None, "") when there are none."""
    if cfg.spatial_priors in ("auto", "gps"):
        pos = gps_positions(paths)
        if pos is not None:
            return pos, "GPS in EXIF"
        if cfg.spatial_priors == "gps":
            raise SceneError("spatial_priors=gps: not every image has EXIF GPS latitude and longitude; "
                             "use spatial_priors=auto or matcher=auto")
    elif cfg.spatial_priors == "poses":
        c2w = [scene.frames[i].c2w for i in frame_indices]
        if any(m is None for m in c2w):
            raise SceneError("spatial_priors=poses needs a dataset with camera poses; use spatial_priors=auto")
        return np.stack([np.asarray(m, dtype=np.float64)[:3, 3] for m in c2w]), "the dataset's camera centres"
    return None, ""


def choose_matcher(cfg: EstimationConfig, names: list[str], gain=None,
                   positions: Optional[np.ndarray] = None, prior_source: str = "") -> MatcherChoice:
    """The matching strategy for the images ``names`` and why. ``gain(order)``: the
    ordered-capture check (:func:`consecutive_gain` on the extracted features), called only when
    the names are numbered and the set is large; ``positions``: (N, 3) prior positions
    (:func:`prior_positions`)."""
    if cfg.matcher not in MATCHERS:
        raise SceneError(f"matcher must be one of {MATCHERS}, got {cfg.matcher!r}")
    n = len(names)
    if cfg.matcher != "auto":
        if cfg.matcher == "spatial" and positions is None:
            raise SceneError("matcher=spatial needs position priors (EXIF GPS in every image, or "
                             "spatial_priors=poses with a posed dataset); use matcher=auto")
        return MatcherChoice(cfg.matcher, f"matcher={cfg.matcher} in the config, {n} images",
                             positions if cfg.matcher == "spatial" else None)
    if n <= cfg.exhaustive_max_images:
        return MatcherChoice("exhaustive", f"{n} images <= exhaustive_max_images={cfg.exhaustive_max_images}: "
                                           "every pair is affordable")
    if positions is not None:
        return MatcherChoice("spatial", f"{n} images > exhaustive_max_images={cfg.exhaustive_max_images}, "
                                        f"positions from {prior_source or 'priors'}: the "
                                        f"{cfg.spatial_neighbors} nearest of each", positions)
    if n >= 4 and numbered(names) and gain is not None:
        g = gain(sorted(names, key=natural_key))
        if g >= cfg.sequential_min_gain:
            return MatcherChoice("sequential", f"{n} numbered images > exhaustive_max_images="
                                               f"{cfg.exhaustive_max_images}, consecutive ones share {g:.1f}x the "
                                               f"features of distant ones (>= sequential_min_gain="
                                               f"{cfg.sequential_min_gain})")
        why = f"numbered, but consecutive ones share only {g:.1f}x the features of distant ones"
    else:
        why = "not numbered"
    return MatcherChoice("retrieval", f"{n} images > exhaustive_max_images={cfg.exhaustive_max_images}, {why}, "
                                      "no position priors: the {k} most similar of each by a vocabulary tree of "
                                      "their own features".replace("{k}", str(cfg.retrieval_neighbors)))


def sequential_pairs(names: list[str], overlap: int) -> list[tuple[str, str]]:
    """Each image with the next ``overlap`` in natural name order and at 2^k steps beyond
    (as COLMAP's quadratic overlap), so a capture's loops of slow motion still meet."""
    order = sorted(names, key=natural_key)
    steps = sorted(set(range(1, overlap + 1)) | {2 ** k for k in range(overlap) if 2 ** k > overlap})
    return [(order[i], order[i + s]) for i in range(len(order)) for s in steps if i + s < len(order)]


def spatial_pairs(names: list[str], positions: np.ndarray, k: int) -> list[tuple[str, str]]:
    """Each image with its ``k`` nearest by ``positions`` ((N, 3), same order as ``names``)."""
    from scipy.spatial import cKDTree

    k = min(k, len(names) - 1)
    _, idx = cKDTree(positions).query(positions, k=k + 1)
    pairs = {tuple(sorted((i, int(j)))) for i, row in enumerate(idx) for j in row[1:] if int(j) != i}
    return [(names[i], names[j]) for i, j in sorted(pairs)]


def match(pycolmap, db_path: Path, choice: MatcherChoice | str, cfg: EstimationConfig, eff: Effective, device,
          known: bool = False, names: Optional[list[str]] = None) -> None:
    """Match and geometrically verify image pairs.

    The database holds one camera per image at this point: COLMAP verifies a pair of images that
    share a camera several times more slowly (bench/RESULTS.md, poses); the cameras are merged
    afterwards. With known intrinsics the pairs are also verified without focal-length priors
    (fundamental matrix and homography, not the essential matrix too: less than half the time, same
    pose accuracy), then the priors are restored for mapping, which keeps the known intrinsics fixed
    either way."""
    if isinstance(choice, str):
        choice = MatcherChoice(choice, "")
    if known:
        set_focal_priors(pycolmap, db_path, False)
        try:
            _match(pycolmap, db_path, choice, cfg, eff, device, names)
        finally:
            set_focal_priors(pycolmap, db_path, True)
    else:
        _match(pycolmap, db_path, choice, cfg, eff, device, names)


def _image_names(pycolmap, db_path: Path) -> list[str]:
    db = pycolmap.Database.open(str(db_path))
    try:
        return [im.name for im in db.read_all_images()]
    finally:
        db.close()


def build_vocab_tree(pycolmap, db_path: Path, out: Path, seed: int, max_descriptors: int = 50_000) -> Path:
    """A vocabulary tree (COLMAP visual index) of the database's own SIFT descriptors, written to
    ``out``: retrieval without downloading a pre-trained tree. k-means on at most
    ``max_descriptors`` of them (a random sample), ~50 per visual word (k-means wants >= 39): its
    cost is then bounded whatever the number of images (with words growing with the descriptors it
    grew ~n^2: 37 of the 64 s of matching 100 views of the built-in scene)."""
    db = pycolmap.Database.open(str(db_path))
    try:
        descs = [db.read_descriptors(im.image_id).to_float().data for im in db.read_all_images()]
    finally:
        db.close()
    data = np.concatenate([d for d in descs if len(d)]).astype(np.float32)
    if len(data) > max_descriptors:
        data = data[np.random.default_rng(seed).choice(len(data), max_descriptors, replace=False)]
    index = pycolmap.VisualIndex.create(data.shape[1], 64)
    build = pycolmap.VisualIndex.BuildOptions()
    build.num_visual_words = int(max(64, len(data) // 50))
    build.num_iterations = 10
    build.num_rounds = 1
    build.num_threads = -1
    index.build(build, pycolmap.FeatureDescriptorsFloat(pycolmap.FeatureExtractorType.SIFT, data))
    index.write(str(out))
    return out


def _match(pycolmap, db_path: Path, choice: MatcherChoice, cfg: EstimationConfig, eff: Effective, device,
           names: Optional[list[str]]) -> None:
    options = pycolmap.FeatureMatchingOptions()
    options.num_threads = cfg.num_threads
    options.guided_matching = eff.guided_matching
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = cfg.seed
    verification.min_num_inliers = eff.min_num_inliers
    kwargs = dict(matching_options=options, verification_options=verification, device=device)
    if choice.matcher == "exhaustive":
        pycolmap.match_exhaustive(db_path, **kwargs)
        return
    if choice.matcher == "retrieval":
        tree = build_vocab_tree(pycolmap, db_path, db_path.with_name("vocab_tree.bin"), cfg.seed)
        pairing = pycolmap.VocabTreePairingOptions()
        pairing.vocab_tree_path = str(tree)
        pairing.num_images = cfg.retrieval_neighbors + 1  # the query image finds itself first
        pairing.num_threads = cfg.num_threads
        pycolmap.match_vocabtree(db_path, pairing_options=pairing, **kwargs)
        return
    if choice.matcher == "sequential" and cfg.loop_detection:
        # COLMAP's own sequential matcher (name order as strings) for its loop detection
        if not cfg.vocab_tree_path or not Path(cfg.vocab_tree_path).exists():
            raise SceneError(f"loop_detection needs a local vocabulary tree file (vocab_tree_path={cfg.vocab_tree_path!r} "
                             "not found); download one from the COLMAP website once, or set loop_detection=false")
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = cfg.sequential_overlap
        pairing.num_threads = cfg.num_threads
        pairing.loop_detection = True
        pairing.vocab_tree_path = str(cfg.vocab_tree_path)
        pycolmap.match_sequential(db_path, pairing_options=pairing, **kwargs)
        return
    names = names if names is not None else _image_names(pycolmap, db_path)
    if choice.matcher == "sequential":
        pairs = sequential_pairs(names, cfg.sequential_overlap)
    elif choice.matcher == "spatial":
        pairs = spatial_pairs(names, choice.positions, cfg.spatial_neighbors)
    else:
        raise SceneError(f"matcher must be one of {MATCHERS}, got {choice.matcher!r}")
    pair_file = db_path.with_name("pairs.txt")
    pair_file.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    pairing = pycolmap.ImportedPairingOptions()
    pairing.match_list_path = str(pair_file)
    pycolmap.match_image_pairs(db_path, pairing_options=pairing, **kwargs)


def match_images(pycolmap, db_path: Path, choice: MatcherChoice | str, groups: dict[tuple, list[str]],
                 cfg: EstimationConfig, eff: Effective, device, known: bool,
                 names: Optional[list[str]] = None) -> None:
    """Replace the database's matches by new ones (:func:`match`), then give each camera group
    (:func:`pipeline.sfm.features.camera_groups`) one camera."""
    db = pycolmap.Database.open(str(db_path))
    db.clear_matches()
    db.clear_two_view_geometries()
    db.close()
    match(pycolmap, db_path, choice, cfg, eff, device, known, names)
    merge_cameras(db_path, groups)
