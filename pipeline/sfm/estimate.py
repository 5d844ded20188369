"""Pose estimation with pycolmap: photos -> calibrated cameras, sparse points and a diagnosis.

``estimate(scene, ctx)`` runs SIFT extraction, matching (exhaustive for small sets, sequential for
long ordered captures), mapping (incremental, falling back to global mapping when images are
left out) and returns the scene with poses and intrinsics, plus a report: images given and
registered, per-image features / matched neighbours / reprojection error, the unregistered images
with the likely cause in plain words, other models found, and the time of each step.

Files: the COLMAP database lives in ``ctx.resume_dir`` (and a copy in ``poses/colmap/``) and is
reused by a re-run with the same images and feature settings; the final model is written to
``ctx.out_dir/sparse/`` (COLMAP binary, COLMAP's own frame: ``normalization.json`` maps it to the
normalised frame of ``transforms.json``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from datasets.scene import Scene, SceneError
from pipeline.geometry.cameras import Intrinsics

MATCHERS = ("auto", "exhaustive", "sequential")
MAPPERS = ("incremental", "global")
INTRINSICS_MODES = ("auto", "known", "estimate")
# our camera model -> the COLMAP model that holds the same parameters
_COLMAP_MODEL_OF = {"pinhole": "PINHOLE", "opencv": "OPENCV", "fisheye": "OPENCV_FISHEYE"}
ESTIMATED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE")


@dataclass
class EstimationConfig:
    """Options of pose estimation (the poses stage's config extends this)."""

    max_image_size: int = 1024  # longest side SIFT sees (px); larger images are downscaled; -1 = full size
    max_num_features: int = 8192  # SIFT features kept per image
    sift_peak_threshold: float = 0.0066667  # lower finds more features in low-contrast or small images
    sift_domain_size_pooling: bool = False  # DSP-SIFT descriptors: more robust matching, slower extraction
    guided_matching: bool = False  # re-match pairs guided by their verified geometry
    min_num_inliers: int = 15  # verified correspondences for an image pair to count (COLMAP default)
    small_image_size: int = 400  # images with a long side up to this (renders, thumbnails) get finer SIFT
    # (first octave -2, peak threshold 0.002), pairs count from 10 inliers (measured 45 -> 50 of 50
    # registered on the built-in 200 px scene) and a tighter reprojection error (small_max_reproj_error)
    max_reproj_error: float = 4.0  # px: mapping drops observations and points above it (COLMAP's 4)
    # small images: 4 px is about a degree at 200 px. A 0.5 px limit with guided matching measured on
    # the built-in 200 px scene: rotation error 0.635 -> 0.185 deg median, centre 0.95 -> 0.29%
    # (bench/RESULTS.md, poses)
    small_max_reproj_error: float = 0.5
    small_guided_matching: bool = True  # guided matching for small images (a few seconds there)
    matcher: str = "auto"  # auto (exhaustive up to exhaustive_max_images, else sequential) | exhaustive | sequential
    exhaustive_max_images: int = 60
    sequential_overlap: int = 10  # neighbours matched on each side in sequential matching
    loop_detection: bool = False  # sequential only; needs vocab_tree_path (a local file: no downloads)
    vocab_tree_path: str = ""
    mapper: str = "incremental"  # incremental | global (GLOMAP-style)
    fallback_to_global: bool = True  # when incremental mapping leaves images out, try global mapping too
    intrinsics: str = "auto"  # auto (known when the dataset has poses) | known (use the dataset's) | estimate
    camera_model: str = "SIMPLE_RADIAL"  # COLMAP model when intrinsics are estimated
    shared_intrinsics: bool = True  # one camera for all images of the same size (else one per image)
    undistort: bool = False  # write undistorted pinhole images (else keep the distortion for the ray generator)
    min_registered_fraction: float = 0.8  # fewer registered images is an error
    abs_pose_min_num_inliers: int = 15  # COLMAP default 30 leaves images with thin overlap out
    abs_pose_min_inlier_ratio: float = 0.1  # COLMAP default 0.25
    num_threads: int = -1  # -1: all cores
    seed: int = 0  # RANSAC and mapper seed: runs are repeatable
    use_gpu: str = "auto"  # auto (CUDA SIFT and matching when pycolmap has CUDA) | yes | no


# ----------------------------------------------------------------------------------------------
# Image preparation: readable files in a folder COLMAP can read as they are.


@dataclass
class PreparedImage:
    frame_index: int
    colmap_name: str  # file name inside the prepared folder
    width: int
    height: int
    sharpness: float  # variance of the Laplacian on a downscaled grey image (blur indicator)


def _sharpness(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a float grey image in [0, 1]."""
    lap = (grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1])
    return float(lap.var())


def prepare_images(scene: Scene, folder: Path, background: str) -> tuple[list[PreparedImage], dict[str, str]]:
    """Check every image and make it available to COLMAP under ``folder``.

    Plain RGB files are linked; RGBA images are composited onto ``background`` and JPEGs with an
    EXIF rotation are rotated (COLMAP sees the picture as our loader does). Returns the prepared
    images and ``{frame name: reason}`` for the unreadable ones (skipped).
    """
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    prepared, unreadable = [], {}
    used_names: set[str] = set()
    for i, frame in enumerate(scene.frames):
        path = frame.image_path
        try:
            with Image.open(path) as img:
                img.load()  # decodes the whole file: truncated or corrupt data fails here
                orientation = img.getexif().get(0x0112, 1) if path.suffix.lower() in (".jpg", ".jpeg") else 1
                has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
                if orientation not in (1, None):
                    img = ImageOps.exif_transpose(img)
                if has_alpha and background != "none":
                    rgba = img.convert("RGBA")
                    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255) if background == "white" else (0, 0, 0, 255))
                    img = Image.alpha_composite(bg, rgba).convert("RGB")
                elif has_alpha:
                    img = img.convert("RGB")
                grey = img.convert("L")
                grey.thumbnail((640, 640))
                sharp = _sharpness(np.asarray(grey, dtype=np.float32) / 255.0)
                stem = _unique_name(frame.name or path.stem, used_names)
                converted = has_alpha or orientation not in (1, None)
                name = stem + (".png" if converted else path.suffix.lower())
                target = folder / name
                if target.is_symlink() or target.exists():
                    target.unlink()
                if converted:
                    img.save(target, compress_level=1)  # lossless; 4.0 s vs 5.9 s for 50 at 1080 px
                else:
                    target.symlink_to(path.resolve())
                prepared.append(PreparedImage(i, name, img.size[0], img.size[1], sharp))
        except Exception as exc:  # PIL raises many types for corrupt or missing files
            unreadable[frame.name or path.name] = f"{path}: {type(exc).__name__}: {exc}"
    return prepared, unreadable


def _unique_name(stem: str, used: set[str]) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "image"
    name, k = safe, 1
    while name in used:
        name, k = f"{safe}_{k}", k + 1
    used.add(name)
    return name


# ----------------------------------------------------------------------------------------------
# Cameras: COLMAP <-> ours.


def colmap_camera_params(intr: Intrinsics) -> tuple[str, str]:
    """(COLMAP model name, comma-separated params) of known intrinsics."""
    if intr.model == "equirect":
        raise SceneError("pose estimation of equirectangular panoramas is not supported: give their poses "
                         "(e.g. the panoramas reader's poses.json) and run without --estimate")
    if intr.model == "opencv" and intr.dist[4] != 0.0:  # k3: only FULL_OPENCV holds it
        k1, k2, p1, p2, k3 = intr.dist
        params = [intr.fx, intr.fy, intr.cx, intr.cy, k1, k2, p1, p2, k3, 0.0, 0.0, 0.0]
        return "FULL_OPENCV", ",".join(repr(float(p)) for p in params)
    params = [intr.fx, intr.fy, intr.cx, intr.cy, *intr.dist]
    return _COLMAP_MODEL_OF[intr.model], ",".join(repr(float(p)) for p in params)


def intrinsics_from_colmap(camera) -> Intrinsics:
    """Our :class:`Intrinsics` of a pycolmap camera (same pixel convention: centres at +0.5)."""
    name, p, w, h = camera.model_name, [float(x) for x in camera.params], int(camera.width), int(camera.height)
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


# ----------------------------------------------------------------------------------------------
# The steps.


@contextlib.contextmanager
def _quiet_colmap(pycolmap, quiet: bool):
    """COLMAP logs every step at INFO on stderr; keep warnings and errors only unless asked."""
    old = pycolmap.logging.minloglevel
    if quiet:
        pycolmap.logging.minloglevel = 1
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def _device(pycolmap, use_gpu: str):
    if use_gpu not in ("auto", "yes", "no"):
        raise SceneError(f"use_gpu must be auto, yes or no, got {use_gpu!r}")
    if use_gpu == "yes" and not pycolmap.has_cuda:
        raise SceneError("use_gpu=yes but this pycolmap build has no CUDA; install a CUDA build or use use_gpu=auto")
    if use_gpu == "no" or not pycolmap.has_cuda:
        return pycolmap.Device.cpu
    return pycolmap.Device.cuda


def _key(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Effective:
    """The settings actually used, after adapting to the images (recorded in the report)."""

    first_octave: int
    peak_threshold: float
    min_num_inliers: int
    abs_pose_min_num_inliers: int
    max_reproj_error: float
    guided_matching: bool


def effective_settings(cfg: EstimationConfig, images: list[PreparedImage]) -> Effective:
    long_side = max((max(im.width, im.height) for im in images), default=0)
    if 0 < long_side <= cfg.small_image_size:
        return Effective(-2, min(cfg.sift_peak_threshold, 0.002), min(cfg.min_num_inliers, 10),
                         min(cfg.abs_pose_min_num_inliers, 10), min(cfg.max_reproj_error, cfg.small_max_reproj_error),
                         cfg.guided_matching or cfg.small_guided_matching)
    return Effective(-1, cfg.sift_peak_threshold, cfg.min_num_inliers, cfg.abs_pose_min_num_inliers,
                     cfg.max_reproj_error, cfg.guided_matching)


def choose_matcher(cfg: EstimationConfig, names: list[str]) -> str:
    """exhaustive for small sets (every pair is affordable and finds all overlaps); sequential for
    long captures (video-like: neighbours in file order overlap)."""
    if cfg.matcher not in MATCHERS:
        raise SceneError(f"matcher must be one of {MATCHERS}, got {cfg.matcher!r}")
    if cfg.matcher != "auto":
        return cfg.matcher
    return "exhaustive" if len(names) <= cfg.exhaustive_max_images else "sequential"


def _use_known_intrinsics(cfg: EstimationConfig, scene: Scene) -> bool:
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
    options.max_image_size = cfg.max_image_size
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


def match(pycolmap, db_path: Path, matcher: str, cfg: EstimationConfig, eff: Effective, device,
          known: bool = False) -> None:
    """Match and geometrically verify image pairs.

    The database holds one camera per image at this point: COLMAP verifies a pair of images that
    share a camera several times more slowly (91 s vs 13.6 s for the 1,225 pairs of the built-in
    scene at 1080 px, bench/RESULTS.md); the cameras are merged afterwards. With known intrinsics
    the pairs are also verified without focal-length priors (fundamental matrix and homography, not
    the essential matrix too: 13.6 s instead of 31 s, same pose accuracy), then the priors are
    restored for mapping, which keeps the known intrinsics fixed either way."""
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


def map_images(pycolmap, db_path: Path, image_dir: Path, out: Path, mapper: str, cfg: EstimationConfig,
               eff: Effective, known: bool) -> dict:
    """{model id: pycolmap.Reconstruction} from incremental or global mapping."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if mapper == "incremental":
        options = pycolmap.IncrementalPipelineOptions()
        options.num_threads = cfg.num_threads
        options.random_seed = cfg.seed
        options.min_num_matches = eff.min_num_inliers
        options.mapper.abs_pose_min_num_inliers = eff.abs_pose_min_num_inliers
        options.mapper.abs_pose_min_inlier_ratio = cfg.abs_pose_min_inlier_ratio
        # COLMAP's thresholds are 4 px everywhere (12 px for absolute-pose RANSAC); keep their ratios
        err = eff.max_reproj_error
        options.mapper.filter_max_reproj_error = err
        options.mapper.init_max_error = err
        options.mapper.abs_pose_max_error = 3 * err
        options.triangulation.complete_max_reproj_error = err
        options.triangulation.merge_max_reproj_error = err
        if known:
            options.ba_refine_focal_length = False
            options.ba_refine_extra_params = False
            options.ba_refine_principal_point = False
        return dict(pycolmap.incremental_mapping(db_path, image_dir, out, options=options))
    options = pycolmap.GlobalPipelineOptions()
    options.num_threads = cfg.num_threads
    options.random_seed = cfg.seed
    options.min_num_matches = eff.min_num_inliers
    gpu = bool(pycolmap.has_cuda) and cfg.use_gpu != "no"
    options.mapper.global_positioning.use_gpu = gpu
    options.mapper.bundle_adjustment.ceres.use_gpu = gpu
    if known:
        options.mapper.bundle_adjustment.refine_focal_length = False
        options.mapper.bundle_adjustment.refine_extra_params = False
        options.mapper.bundle_adjustment.refine_principal_point = False
    return dict(pycolmap.global_mapping(db_path, image_dir, out, options=options))


# ----------------------------------------------------------------------------------------------
# Counts and the plain-words diagnosis.


@dataclass
class ImageStats:
    name: str
    features: int = 0
    neighbours: int = 0  # images with a geometrically verified pair (>= min inliers)
    best_inliers: int = 0  # the most verified correspondences with any other image
    raw_matches: int = 0  # putative (descriptor) matches summed over pairs
    verified_matches: int = 0  # inlier matches summed over pairs
    sharpness: float = 0.0
    registered: bool = False
    reprojection_error_px: Optional[float] = None
    points: int = 0  # observations of 3-D points
    other_model: Optional[int] = None  # index of a smaller model that holds it, if any
    neighbour_names: list = field(default_factory=list)  # the images it overlaps (verified pairs)
    neighbours_registered: int = 0  # how many of those were registered


def database_stats(pycolmap, db_path: Path, min_inliers: int) -> dict[str, ImageStats]:
    """Per-image counts read from the COLMAP database."""
    db = pycolmap.Database.open(str(db_path))
    try:
        images = db.read_all_images()
        by_id = {im.image_id: ImageStats(im.name, features=int(db.num_keypoints_for_image(im.image_id)))
                 for im in images}
        pair_ids, raw = db.read_all_matches()
        for pair_id, m in zip(pair_ids, raw):
            for image_id in pycolmap.pair_id_to_image_pair(pair_id):
                if image_id in by_id:
                    by_id[image_id].raw_matches += len(m)
        pair_ids, geometries = db.read_two_view_geometries()
        for pair_id, geom in zip(pair_ids, geometries):
            inliers = len(geom.inlier_matches)
            for image_id in pycolmap.pair_id_to_image_pair(pair_id):
                if image_id not in by_id:
                    continue
                s = by_id[image_id]
                s.verified_matches += inliers
                s.best_inliers = max(s.best_inliers, inliers)
                if inliers >= min_inliers:
                    s.neighbours += 1
                    other = [i for i in pycolmap.pair_id_to_image_pair(pair_id) if i != image_id]
                    if other and other[0] in by_id:
                        s.neighbour_names.append(by_id[other[0]].name)
    finally:
        db.close()
    return {s.name: s for s in by_id.values()}


def diagnose(stats: ImageStats, median_features: float, median_sharpness: float) -> str:
    """The likely reason an image was not registered, in plain words, from its counts."""
    if stats.features < max(100, 0.25 * median_features):
        blur = " and it looks blurred" if stats.sharpness < 0.3 * median_sharpness else ""
        return (f"too few features: {stats.features} keypoints against a median of {median_features:.0f}{blur} "
                "(blurred, dark, over-exposed or textureless picture)")
    if stats.sharpness < 0.2 * median_sharpness and stats.neighbours == 0:
        return (f"blur: sharpness {stats.sharpness:.2g} against a median of {median_sharpness:.2g}, and no image "
                "matched it; retake the photo")
    if stats.raw_matches == 0 or stats.best_inliers == 0:
        return ("too little overlap: its features match no other image (a photo of another place, or too far "
                "from every other view); add photos in between")
    if stats.verified_matches < 0.15 * stats.raw_matches and stats.neighbours == 0:
        return (f"repeated texture or ambiguous structure: {stats.raw_matches} putative matches but only "
                f"{stats.verified_matches} survive geometric verification")
    if stats.neighbours == 0:
        return (f"too little overlap: the best match with another image has only {stats.best_inliers} verified "
                "correspondences; add photos in between")
    if stats.neighbours_registered == 0:
        shown = ", ".join(Path(n).stem for n in stats.neighbour_names[:5])
        return (f"no overlap with the registered images: it only matches {shown}, not registered either "
                "(photos of another place, or a part of the scene not bridged by other photos)")
    if stats.other_model is not None:
        return (f"the capture splits into disconnected parts: this image is in a separate model (#{stats.other_model}); "
                "add photos that bridge the parts")
    return (f"matched {stats.neighbours} images ({stats.best_inliers} correspondences at best) but no consistent pose "
            "was found: little parallax (pure rotation) or repeated structure")


def per_image_reprojection(rec) -> dict[str, tuple[float, int]]:
    """{image name: (mean reprojection error px, number of observations)} of a reconstruction."""
    out = {}
    xyz_of = {pid: p.xyz for pid, p in rec.points3D.items()}
    for image in rec.images.values():
        if not image.has_pose:
            continue
        obs = [(p.xy, xyz_of[p.point3D_id]) for p in image.points2D if p.has_point3D()]
        if not obs:
            out[image.name] = (float("nan"), 0)
            continue
        xy = np.array([o[0] for o in obs], dtype=np.float64)
        world = np.array([o[1] for o in obs], dtype=np.float64)
        w2c = image.cam_from_world().matrix()
        cam = world @ w2c[:, :3].T + w2c[:, 3]
        proj = rec.cameras[image.camera_id].img_from_cam(cam, check_cheirality=False)
        out[image.name] = (float(np.linalg.norm(proj - xy, axis=1).mean()), len(obs))
    return out


# ----------------------------------------------------------------------------------------------
# The whole estimation.


def estimate(scene: Scene, ctx) -> tuple[Scene, dict]:
    """Estimate poses (and intrinsics unless known) of ``scene``'s images.

    Returns the scene holding only the registered frames (poses in COLMAP's frame, splits remapped)
    and the report dict (``mode: "estimate"``). Writes ``sparse/`` (and ``undistorted/`` when
    asked) into ``ctx.out_dir``; the sparse points are returned in ``scene.meta["sparse_points"]``
    (``xyz`` (M, 3), ``rgb`` (M, 3) uint8) for the caller to write after normalisation.
    Raises SceneError when fewer than 3 images are readable or fewer than
    ``min_registered_fraction`` register; the report is then kept in ``ctx.resume_dir/report.json``.
    """
    try:
        import pycolmap
    except ImportError as exc:
        raise SceneError(f"pose estimation needs pycolmap ({exc}); pip install pycolmap") from exc

    cfg = ctx.config
    log = ctx.log
    timings: dict[str, float] = {}
    report: dict = {"mode": "estimate", "images_given": len(scene)}
    if cfg.mapper not in MAPPERS:
        raise SceneError(f"mapper must be one of {MAPPERS}, got {cfg.mapper!r}")
    if cfg.camera_model not in ESTIMATED_MODELS:
        raise SceneError(f"camera_model must be one of {ESTIMATED_MODELS}, got {cfg.camera_model!r}")
    device = _device(pycolmap, cfg.use_gpu)
    quiet = log.getEffectiveLevel() > 10  # DEBUG shows COLMAP's own log
    known = _use_known_intrinsics(cfg, scene)
    report.update(intrinsics="known (from the dataset)" if known else f"estimated ({cfg.camera_model})",
                  device="cuda" if device == pycolmap.Device.cuda else "cpu")

    # 1. images COLMAP can read; corrupt files are skipped and named
    t = time.time()
    image_dir = ctx.resume_dir / "images"
    background = scene.background if scene.background != "none" else "white"
    prepared, unreadable = prepare_images(scene, image_dir, background)
    timings["prepare_s"] = time.time() - t
    for name, why in unreadable.items():
        log.warning(f"skipping unreadable image {name}: {why}")
    # the photo reader drops files it cannot decode and lists them in meta["unreadable"]
    skipped_by_reader = {str(n): "cannot be decoded (skipped when reading the folder)"
                         for n in scene.meta.get("unreadable", []) or []}
    report["unreadable"] = {**skipped_by_reader, **unreadable}
    unreadable = report["unreadable"]
    if len(prepared) < 3:
        _save_failure_report(ctx, report, timings)
        raise SceneError(f"pose estimation needs at least 3 readable, overlapping images; got {len(prepared)} "
                         f"readable of {len(scene)}" + (f" (unreadable: {', '.join(unreadable)})" if unreadable else "")
                         + ". Add photos of the same scene taken from nearby viewpoints.")

    # 2. features and matches, reused from an earlier run with the same images and settings
    names = [im.colmap_name for im in prepared]
    matcher = choose_matcher(cfg, names)
    eff = effective_settings(cfg, prepared)
    report["effective_settings"] = asdict(eff)
    extract_key = _key({"images": [(im.colmap_name, im.width, im.height, _file_id(scene.frames[im.frame_index].image_path))
                                   for im in prepared],
                        "known": known and [scene.frames[im.frame_index].intrinsics.to_dict() for im in prepared],
                        "opts": [cfg.max_image_size, cfg.max_num_features, cfg.camera_model, cfg.shared_intrinsics,
                                 eff.first_octave, eff.peak_threshold, cfg.sift_domain_size_pooling,
                                 "cameras per image, merged after matching"]})
    match_key = _key({"extract": extract_key, "matcher": matcher, "overlap": cfg.sequential_overlap,
                      "loop": cfg.loop_detection, "seed": cfg.seed,
                      "guided": eff.guided_matching, "min_inliers": eff.min_num_inliers})
    groups = camera_groups(prepared, scene, cfg, known)
    db_path = ctx.resume_dir / "database.db"
    state = _restore_database(ctx, db_path)
    if state.get("extract") != extract_key:
        db_path.unlink(missing_ok=True)
        state = {}
    with _quiet_colmap(pycolmap, quiet):
        t = time.time()
        if state.get("extract") != extract_key:
            log.info(f"extracting SIFT features of {len(prepared)} images (max size {cfg.max_image_size} px)")
            extract(pycolmap, db_path, image_dir, groups, cfg, eff, device)
            state = {"extract": extract_key}
            _write_state(db_path, state)
            report["database"] = "new"
        else:
            report["database"] = "reused features"
        timings["extract_s"] = time.time() - t
        t = time.time()
        if state.get("match") != match_key:
            log.info(f"matching ({matcher})")
            db = pycolmap.Database.open(str(db_path))
            db.clear_matches()
            db.clear_two_view_geometries()
            db.close()
            match(pycolmap, db_path, matcher, cfg, eff, device, known)
            merge_cameras(db_path, groups)
            state["match"] = match_key
            _write_state(db_path, state)
        else:
            report["database"] = "reused features and matches"
        timings["match_s"] = time.time() - t
        report["matcher"] = matcher

        # 3. mapping: keep the largest model; report the others
        t = time.time()
        log.info(f"mapping ({cfg.mapper})")
        models = map_images(pycolmap, db_path, image_dir, ctx.resume_dir / "models", cfg.mapper, cfg, eff, known)
        mapper_used = cfg.mapper
        best = _largest(models)
        if cfg.mapper == "incremental" and cfg.fallback_to_global and (best is None or best.num_reg_images() < len(prepared)):
            n_inc = 0 if best is None else best.num_reg_images()
            log.info(f"incremental mapping registered {n_inc}/{len(prepared)}; trying global mapping")
            global_models = map_images(pycolmap, db_path, image_dir, ctx.resume_dir / "models_global", "global", cfg, eff,
                                       known)
            best_global = _largest(global_models)
            if best_global is not None and best_global.num_reg_images() > n_inc:
                models, best, mapper_used = global_models, best_global, "global (incremental registered %d)" % n_inc
        timings["map_s"] = time.time() - t
    report["mapper"] = mapper_used

    # 4. per-image counts and diagnosis
    stats = database_stats(pycolmap, db_path, min_inliers=eff.min_num_inliers)
    for im in prepared:
        stats.setdefault(im.colmap_name, ImageStats(im.colmap_name)).sharpness = im.sharpness
    ordered = sorted(models.values(), key=lambda r: -r.num_reg_images())
    for k, rec in enumerate(ordered[1:], start=1):
        for image in rec.images.values():
            if image.has_pose and image.name in stats:
                stats[image.name].other_model = k
    if best is not None:
        for name, (err, n_obs) in per_image_reprojection(best).items():
            stats[name].registered, stats[name].reprojection_error_px, stats[name].points = True, err, n_obs
    for s in stats.values():
        s.neighbours_registered = sum(stats[n].registered for n in s.neighbour_names if n in stats)
    frame_name = {im.colmap_name: scene.frames[im.frame_index].name for im in prepared}
    median_features = float(np.median([s.features for s in stats.values()])) if stats else 0.0
    median_sharp = float(np.median([im.sharpness for im in prepared]))
    unregistered = {frame_name[n]: diagnose(s, median_features, median_sharp)
                    for n, s in stats.items() if not s.registered}
    n_registered = sum(s.registered for s in stats.values())
    report.update(
        images_readable=len(prepared), images_registered=n_registered,
        unregistered=unregistered,
        other_models=[{"images": r.num_reg_images(),
                       "names": sorted(frame_name.get(i.name, i.name) for i in r.images.values() if i.has_pose)}
                      for r in ordered[1:]],
        per_image={frame_name[n]: {"features": s.features, "matched_neighbours": s.neighbours,
                                   "best_inliers": s.best_inliers, "registered": s.registered,
                                   "reprojection_error_px": s.reprojection_error_px, "points": s.points}
                   for n, s in stats.items()},
        summary=_summary(best, stats, median_features),
        timings_s=timings,
    )
    for name, why in unregistered.items():
        log.warning(f"not registered: {name}: {why}")
    fraction = n_registered / max(len(scene), 1)
    if best is None or fraction < cfg.min_registered_fraction or n_registered < 2:
        _save_failure_report(ctx, report, timings)
        causes = "\n".join(f"  - {n}: {why}" for n, why in list(unregistered.items())[:20])
        more = f"\n  ... and {len(unregistered) - 20} more" if len(unregistered) > 20 else ""
        unread = f"\nunreadable (skipped): {', '.join(unreadable)}" if unreadable else ""
        raise SceneError(
            f"only {n_registered} of {len(scene)} images registered ({100 * fraction:.0f}% < "
            f"{100 * cfg.min_registered_fraction:.0f}% required).\nunregistered images and likely causes:\n"
            f"{causes}{more}{unread}\nfull report: {ctx.resume_dir / 'report.json'}. Lower min_registered_fraction "
            "to accept a partial result, or try mapper=global.")

    # 5. outputs: the model, the posed scene, optional undistortion
    t = time.time()
    sparse_dir = ctx.out_dir / "sparse"
    sparse_dir.mkdir(parents=True, exist_ok=True)
    best.write(str(sparse_dir))
    posed, colmap_names = _posed_scene(scene, best, prepared)
    if cfg.undistort:
        posed = _undistort(pycolmap, posed, colmap_names, sparse_dir, image_dir, ctx, cfg)
    points = np.array([p.xyz for p in best.points3D.values()], dtype=np.float64).reshape(-1, 3)
    colors = np.array([p.color for p in best.points3D.values()], dtype=np.uint8).reshape(-1, 3)
    posed.meta["sparse_points"] = {"xyz": points, "rgb": colors}
    _export_database(ctx, db_path)
    timings["write_s"] = time.time() - t
    report["points"] = int(len(points))
    report["undistorted"] = bool(cfg.undistort)
    return posed, report


def _largest(models: dict):
    return max(models.values(), key=lambda r: r.num_reg_images()) if models else None


def _summary(best, stats: dict[str, ImageStats], median_features: float) -> dict:
    registered = [s for s in stats.values() if s.registered]
    errs = [s.reprojection_error_px for s in registered if s.reprojection_error_px is not None]
    return {"median_features": median_features,
            "median_matched_neighbours": float(np.median([s.neighbours for s in stats.values()])) if stats else 0.0,
            "mean_reprojection_error_px": float(best.compute_mean_reprojection_error()) if best is not None else None,
            "max_image_reprojection_error_px": float(np.nanmax(errs)) if errs else None,
            "mean_track_length": float(best.compute_mean_track_length()) if best is not None else None}


def _posed_scene(scene: Scene, rec, prepared: list[PreparedImage]) -> tuple[Scene, list[str]]:
    """The registered frames with COLMAP's poses and intrinsics (splits remapped to them), and
    their image names in the COLMAP model."""
    by_name = {im.name: im for im in rec.images.values() if im.has_pose}
    frames, old_to_new, names = [], {}, []
    for prep in prepared:
        image = by_name.get(prep.colmap_name)
        if image is None:
            continue
        frame = scene.frames[prep.frame_index]
        intr = intrinsics_from_colmap(rec.cameras[image.camera_id])
        old_to_new[prep.frame_index] = len(frames)
        names.append(prep.colmap_name)
        frames.append(replace(frame, c2w=c2w_from_image(image), intrinsics=intr))
    splits = {k: [old_to_new[i] for i in v if i in old_to_new] for k, v in scene.splits.items()}
    splits = {k: v for k, v in splits.items() if v}
    meta = dict(scene.meta)
    return Scene(frames, splits, None, scene.background, meta, scene.source), names


def _undistort(pycolmap, posed: Scene, colmap_names: list[str], sparse_dir: Path, image_dir: Path, ctx, cfg) -> Scene:
    """Undistorted pinhole images in ``out_dir/undistorted/images`` (paths point at their final place)."""
    tmp = ctx.out_dir / "undistorted"
    pycolmap.undistort_images(str(tmp), str(sparse_dir), str(image_dir), num_threads=cfg.num_threads)
    rec_u = pycolmap.Reconstruction(str(tmp / "sparse"))
    final = ctx.workspace.stage_dir("poses") / "undistorted" / "images"
    by_name = {im.name: im for im in rec_u.images.values()}
    frames = []
    for frame, colmap_name in zip(posed.frames, colmap_names):
        image = by_name[colmap_name]
        frames.append(replace(frame, image_path=final / colmap_name,
                              intrinsics=intrinsics_from_colmap(rec_u.cameras[image.camera_id])))
    return Scene(frames, posed.splits, posed.bounds, posed.background, posed.meta, posed.source)


def _file_id(path: Path) -> tuple:
    try:
        st = Path(path).stat()
        return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        return (str(path), -1, -1)


def _state_path(db_path: Path) -> Path:
    return db_path.with_name("database_state.json")


def _write_state(db_path: Path, state: dict) -> None:
    _state_path(db_path).write_text(json.dumps(state))


def _restore_database(ctx, db_path: Path) -> dict:
    """The state of the database in resume_dir; when absent, a copy from the last finished run."""
    if not db_path.exists():
        previous = ctx.workspace.stage_dir("poses") / "colmap"
        if (previous / "database.db").exists() and (previous / "database_state.json").exists():
            shutil.copy2(previous / "database.db", db_path)
            shutil.copy2(previous / "database_state.json", _state_path(db_path))
    try:
        return json.loads(_state_path(db_path).read_text()) if db_path.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _export_database(ctx, db_path: Path) -> None:
    target = ctx.out_dir / "colmap"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(db_path, target / "database.db")
    shutil.copy2(_state_path(db_path), target / "database_state.json")


def _save_failure_report(ctx, report: dict, timings: dict) -> None:
    from pipeline.runner.workspace import write_json

    write_json(ctx.resume_dir / "report.json", {**report, "timings_s": timings})
