"""Options of pose estimation, and the settings they become once the image size is known."""
from __future__ import annotations

from dataclasses import dataclass

from datasets.scene import SceneError

MATCHERS = ("auto", "exhaustive", "sequential", "spatial", "retrieval")
SPATIAL_PRIORS = ("auto", "gps", "poses", "no")
QUALITIES = ("fast", "balanced", "max")
MAPPERS = ("incremental", "global")  # panorama_mapper; mapper also takes auto
INTRINSICS_MODES = ("auto", "known", "estimate")
ESTIMATED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE")


@dataclass
class EstimationConfig:
    """Options of pose estimation (the poses stage's config extends this)."""

    # speed / accuracy trade-off (bench/RESULTS.md, poses on high-resolution photos):
    # fast = SIFT at max 1024 px, the mapper's result with only steps 4d and 4e (extend_tracks,
    # final_min_track_length, align_keypoints; principal point at the image centre, as before quality existed);
    # balanced = fast + the tracks' keypoints refined at full resolution when SIFT saw the images
    # downscaled (refine_keypoints), + the principal point refined when held-out tracks confirm it
    # (refine_principal_point): Herz-Jesu-P8 0.50 -> 0.07 deg for ~7 s more; max = SIFT at full
    # resolution + the principal point (~4x balanced's time on 24-Mpx photos, as slow as pycolmap's
    # defaults, and on Herz-Jesu-P8 no more accurate than balanced: 0.086 deg)
    quality: str = "balanced"
    # longest side SIFT sees (px); larger images are downscaled; -1 = full size; 0 = from quality
    # (1024 for fast and balanced: as accurate as full size on our data while cutting a 1080p photo's
    # pixels ~3.5x and a 24-megapixel photo's 6x; full size for max)
    max_image_size: int = 0
    max_num_features: int = 8192  # SIFT features kept per image
    sift_peak_threshold: float = 0.0066667  # COLMAP's; lower finds more features in low-contrast or small images
    # DSP-SIFT descriptors: more robust matching, slower extraction; off because it registered fewer
    # views of the built-in scene (bench/RESULTS.md, poses)
    sift_domain_size_pooling: bool = False
    guided_matching: bool = False  # re-match pairs guided by their verified geometry
    min_num_inliers: int = 15  # verified correspondences for an image pair to count (COLMAP default)
    # images with a long side up to this (renders, thumbnails) get finer SIFT (first octave -2, peak
    # threshold 0.002), pairs that count from 10 inliers and a tighter reprojection error
    # (small_max_reproj_error): with COLMAP's defaults small renders leave views unregistered
    # (bench/RESULTS.md, poses)
    small_image_size: int = 400
    max_reproj_error: float = 4.0  # px: mapping drops observations and points above it (COLMAP's 4)
    # small images: 4 px is about a degree at 200 px; 0.5 px with guided matching makes their poses
    # several times more accurate (bench/RESULTS.md, poses)
    small_max_reproj_error: float = 0.5
    small_guided_matching: bool = True  # guided matching for small images (a few seconds there)
    # auto: chosen from the data and logged with why (pipeline/sfm/matching.py): exhaustive up to
    # exhaustive_max_images; above it spatial when positions are known (EXIF GPS), sequential for
    # numbered images whose consecutive ones share more features than distant ones (video, ordered
    # captures), else retrieval (a vocabulary tree built from the images' own features)
    # | exhaustive | sequential | spatial | retrieval
    matcher: str = "auto"
    exhaustive_max_images: int = 60
    sequential_overlap: int = 10  # neighbours matched on each side in sequential matching
    # numbered images count as an ordered capture when sampled consecutive pairs share at least this
    # times the SIFT matches of pairs far apart in name order (shuffled temple-ring, lund, and the
    # built-in scene's views spread over a sphere: 0.9-1.2; temple-ring 5.5, lund 3.2 in order)
    sequential_min_gain: float = 2.0
    # positions for spatial matching: auto / gps (EXIF GPS of every image) | poses (the dataset's
    # camera centres: approximate poses to re-estimate; auto never uses them) | no
    spatial_priors: str = "auto"
    spatial_neighbors: int = 20  # nearest images by position matched with each (spatial)
    retrieval_neighbors: int = 30  # most similar images by the vocabulary tree matched with each (retrieval)
    loop_detection: bool = False  # sequential only; needs vocab_tree_path (a local file: no downloads)
    vocab_tree_path: str = ""
    # auto: global (GLOMAP-style rotation averaging + global positioning) from global_min_images
    # images, else incremental. On the built-in scene incremental mapping was the faster and the more
    # accurate at every size measured (bench/RESULTS.md, poses at scale): 1000 views, whole stage,
    # incremental 331 s, rotation 0.11 / 0.57 deg median / max, global 739 s, 0.34 / 23.7 deg;
    # 2000 views incremental 573 s (mapping 365 s), 0.10 / 0.56 deg, while global mapping of the
    # same database had not finished after 20 min (stopped). So global only beyond the sizes measured here
    mapper: str = "auto"  # auto | incremental | global
    global_min_images: int = 5000
    fallback_to_global: bool = True  # when incremental mapping leaves images out, try global mapping too
    # incremental mapping re-adjusts the whole model each time it has grown by this factor (COLMAP's
    # ba_global_frames_ratio / points_ratio, 1.1): 0 = auto, 1.1 up to ba_global_ratio_min_images
    # images and 1.3 from there. Built-in scene (same databases): 200 views mapped in 12.1 -> 7.9 s,
    # 400 views 45.6 -> 27.6 s, rotation median 0.108 -> 0.114 deg (bench/RESULTS.md, poses at scale)
    ba_global_ratio: float = 0.0
    ba_global_ratio_min_images: int = 100
    # the last bundle adjustment moves the poses on tracks seen by at least this many views, then
    # re-fits the shorter tracks' points (pipeline/sfm/refine.py); 2 = every track, as COLMAP
    final_min_track_length: int = 3
    # before that adjustment, every image's unused keypoints join the tracks of the 3D points that
    # project within 1.5 px when their SIFT descriptors agree (pipeline/sfm/tracks.py); the
    # observations that then do not fit are dropped. Both on the same 14 mapper models (built-in
    # scene 50-200 views x 3 textures, lego-200 x 3, temple-ring, Herz-Jesu-P8; bench/pose_refinement.py):
    # views above 0.3 deg 22.6 (as mapped) -> 19.4 (long tracks) -> 15.4 (both), fewer in 12 of 14
    # models and more in none; costs ~5 s of 65 at 400 views (bench/RESULTS.md, poses at scale)
    extend_tracks: bool = True
    # step 4d's bundle adjustments stop once an iteration lowers the cost by less than this fraction
    # (Ceres' function_tolerance; 0 = COLMAP's: until the gradient vanishes). Built-in scene, same
    # mapper models: step 4d 8.2 -> 4.8 s at 400 views and 80.7 -> 32.4 s at 1000 (each iteration
    # solves a dense system of every pose), rotation statistics within 0.007 deg on 16 models and views
    # above 0.3 deg 228 -> 229 on 15 (bench/pose_refinement.py; bench/RESULTS.md, poses at scale)
    ba_function_tolerance: float = 1e-6
    # step 4e: after step 4d, each track's keypoints are aligned on the patch of the view nearest
    # the track's mean viewing direction (9x9 px, affine warp with gain and bias; pixel-perfect
    # SfM's keypoint adjustment on grey levels, pipeline/sfm/keypoints.py); the observations that
    # then do not fit are dropped and the poses adjusted. Same 14 mapper models as
    # above: views above 0.3 deg 15.2 -> 7.7 (fewer in 13, more in none), median lower in all 14
    # (built-in 200 views 0.12 -> 0.08 deg, Herz-Jesu-P8 0.16 -> 0.10); ~2 s more at 200 views
    align_keypoints: bool = True
    # step 4e's adjustment weighs the observations by a Cauchy loss whose scale is this many times
    # the keypoint noise (the residuals' standard deviation per axis, from their median), so that a
    # keypoint aligned on something else, but within the reprojection limit, no longer pulls a pose;
    # 0 = least squares. Same mapper models (the 14 above and 400 views): views above 0.3 deg 7.4 ->
    # 5.7 per model (fewer in 11, more in none), 90th percentile lower in 14, temple-ring 0.22 ->
    # 0.08 deg median; medians higher in lego-200 (up to +0.07 deg) and Herz-Jesu-P8 (+0.06, its
    # relative rotations unchanged) (bench/RESULTS.md, poses at scale)
    align_loss_scale: float = 2.0
    # step 4f (with align_keypoints and extend_tracks): after step 4e the poses fit the keypoints
    # better, so guided matching finds ~10% more observations; the tracks that grew are aligned
    # again, and step 4e's adjustment is repeated. Same 15 mapper models: views above 0.3 deg 5.7 ->
    # 4.4 per model (fewer in 9, more in 2: lego-200 +1, +2), 90th percentile lower in all 15,
    # median lower in 13, maximum lower in 11 (built-in 200 and 400 views: every view within 0.3
    # deg) and higher in 4 (lego-200 x3, one 50-view model); ~9 s more at 400 views
    # (bench/RESULTS.md, poses at scale)
    extend_after_alignment: bool = True
    # step 4g (with align_keypoints): the model's points tracked by patch alignment into the views
    # where SIFT gave them no keypoint (within 45 deg of a view that observes them, at most the
    # median view's observation count per view; pipeline/sfm/patch_tracks.py), then one robust
    # adjustment after steps 4f and 4g. Same 15 mapper models: views above 0.3 deg 4.4 -> 3.6 per
    # model (fewer in 5, more in none), medians lower in 14 (built-in scene by 6-29%); the built-in
    # 50-view models' worst views 0.69 / 1.45 -> 0.37 / 0.34 deg; every view within 0.3 deg at 100
    # views in 3 of 3 whole runs; ~5 s more at 400 views, ~30 s at 1000 (bench/RESULTS.md, poses at scale)
    track_into_views: bool = True
    intrinsics: str = "auto"  # auto (known when the dataset has poses) | known (use the dataset's) | estimate
    # known intrinsics from a file, kept fixed in mapping: a Strecha .camera file (or a folder of
    # them), a COLMAP cameras.txt / cameras.bin, or a transforms.json with fl_x, cx, cy
    # (datasets/intrinsics.py); they replace the dataset's. Empty: intrinsics as `intrinsics` says
    intrinsics_file: str = ""
    camera_model: str = "SIMPLE_RADIAL"  # COLMAP model when intrinsics are estimated
    # one camera for all images of the same size (else one per image). With the principal point at
    # the centre, one camera per image gives lower rotation but higher centre errors (Herz-Jesu-P8,
    # pycolmap's features: 0.36 vs 0.47 deg, 0.23 vs 0.17%; ours at 1024 px: 0.42 vs 0.50 deg,
    # 0.21 vs 0.18%); with it refined, the shared camera wins on both (0.08 vs 0.11 deg, 0.08 vs 0.11%)
    shared_intrinsics: bool = True
    # principal point of estimated cameras: auto (refined when quality is balanced or max, and
    # kept only when held-out tracks confirm it: pipeline/sfm/refine.py) | no (image centre)
    refine_principal_point: str = "auto"
    pp_min_views: int = 5  # registered views a camera needs before its principal point is freed
    # held-out tracks must be reprojected better by a per-track paired z-score of at least this
    # (Herz-Jesu-P8, 16 px offset: z = 6-8; principal point at the centre: see bench/RESULTS.md)
    pp_min_z: float = 3.0
    pp_max_shift: float = 0.1  # a refined principal point further from the centre (x long side) is rejected
    # keypoints of the tracks aligned on full-resolution patches (pipeline/sfm/keypoints.py), then a
    # bundle adjustment: auto (quality balanced or max, when SIFT saw the images downscaled by
    # keypoint_refine_min_downscale or more) | no. Herz-Jesu-P8 (SIFT at 1/3): 0.11 -> 0.07 deg; after
    # SIFT at full size it did not pay (0.086 -> 0.120 deg, centres 0.085 -> 0.055%)
    refine_keypoints: str = "auto"
    keypoint_refine_min_downscale: float = 1.5
    undistort: bool = False  # write undistorted pinhole images (else keep the distortion for the ray generator)
    min_registered_fraction: float = 0.8  # fewer registered images is an error naming the others and why
    # COLMAP's default 30 leaves images with thin overlap out (lund, temple-ring)
    abs_pose_min_num_inliers: int = 15
    abs_pose_min_inlier_ratio: float = 0.1  # COLMAP default 0.25
    num_threads: int = -1  # -1: all cores
    # RANSAC, mapper and sampling seed. Runs are still not bit-repeatable: COLMAP's vocabulary tree
    # differs from build to build (retrieval matching verifies ~1% more or fewer pairs), and its
    # multi-threaded mapping differs with the same matches (lego-200 mapped three times: rotation
    # median 0.26 / 0.31 / 0.40 deg, worst view 1.1 / 5.1 / 2.4 deg; bench/RESULTS.md, poses at scale)
    seed: int = 0
    use_gpu: str = "auto"  # auto (CUDA SIFT and matching when pycolmap has CUDA) | yes | no
    # --- 360-degree panoramas (pipeline/sfm/panoramas.py; the choices are measured in bench/RESULTS.md)
    panorama_upscale: float = 2.0  # panoramas resized by this before SIFT (1024x512 -> 2048x1024)
    panorama_upright_sift: bool = True  # levelled panoramas: no SIFT orientation, more distinctive descriptors
    panorama_min_num_inliers: int = 10  # verified correspondences for a pair of panoramas to count
    panorama_max_pair_tilt_deg: float = 3.0  # pairs whose relative rotation tilts the vertical more are dropped (0 = off)
    # drop pairs that loops of three pairs contradict, and weak pairs (< 2 x panorama_min_num_inliers)
    # that no consistent loop confirms
    panorama_loop_check: bool = True
    panorama_gravity_prior: bool = True  # the cameras are levelled: gravity is a rotation-averaging prior
    panorama_mapper: str = "global"  # global | incremental; the other is tried when images are left out


def check_config(cfg: EstimationConfig) -> None:
    """Reject a mapper or camera model that does not exist before any work is done."""
    if cfg.mapper not in ("auto", *MAPPERS):
        raise SceneError(f"mapper must be one of {('auto', *MAPPERS)}, got {cfg.mapper!r}")
    if cfg.matcher not in MATCHERS:
        raise SceneError(f"matcher must be one of {MATCHERS}, got {cfg.matcher!r}")
    if cfg.spatial_priors not in SPATIAL_PRIORS:
        raise SceneError(f"spatial_priors must be one of {SPATIAL_PRIORS}, got {cfg.spatial_priors!r}")
    if cfg.panorama_mapper not in MAPPERS:
        raise SceneError(f"panorama_mapper must be one of {MAPPERS}, got {cfg.panorama_mapper!r}")
    if cfg.quality not in QUALITIES:
        raise SceneError(f"quality must be one of {QUALITIES}, got {cfg.quality!r}")
    if cfg.ba_global_ratio != 0 and not cfg.ba_global_ratio > 1:
        raise SceneError(f"ba_global_ratio must be 0 (auto) or above 1, got {cfg.ba_global_ratio!r}")
    for key in ("refine_principal_point", "refine_keypoints"):
        if getattr(cfg, key) not in ("auto", "no"):
            raise SceneError(f"{key} must be auto or no, got {getattr(cfg, key)!r}")
    if cfg.final_min_track_length < 2:
        raise SceneError(f"final_min_track_length must be 2 (every track) or more, got {cfg.final_min_track_length!r}")
    if not 0 <= cfg.ba_function_tolerance < 1:
        raise SceneError(f"ba_function_tolerance must be in [0, 1) (0: iterate until the gradient vanishes), "
                         f"got {cfg.ba_function_tolerance!r}")
    if not cfg.align_loss_scale >= 0:
        raise SceneError(f"align_loss_scale must be 0 (least squares) or more (the Cauchy loss's scale in units of "
                         f"the keypoint noise), got {cfg.align_loss_scale!r}")
    if cfg.camera_model not in ESTIMATED_MODELS:
        raise SceneError(f"camera_model must be one of {ESTIMATED_MODELS}, got {cfg.camera_model!r}")


@dataclass
class Effective:
    """The settings actually used, after adapting to the images (recorded in the report)."""

    first_octave: int
    peak_threshold: float
    min_num_inliers: int
    abs_pose_min_num_inliers: int
    max_reproj_error: float
    guided_matching: bool
    max_image_size: int = 1024  # what SIFT sees (cfg.max_image_size, or the quality's when 0)
    refine_principal_point: bool = False  # checked refinement of estimated principal points
    refine_keypoints: bool = False  # track keypoints aligned at full resolution, then bundle adjustment


def quality_settings(cfg: EstimationConfig) -> tuple[int, bool, bool]:
    """(max_image_size, refine the principal point, refine the keypoints) of ``cfg``: explicit
    settings win over the quality's."""
    size = cfg.max_image_size if cfg.max_image_size != 0 else (-1 if cfg.quality == "max" else 1024)
    above_fast = cfg.quality in ("balanced", "max")
    return size, cfg.refine_principal_point == "auto" and above_fast, cfg.refine_keypoints == "auto" and above_fast


def effective_settings(cfg: EstimationConfig, sizes: list[tuple[int, int]]) -> Effective:
    """The settings for images of ``sizes`` ((width, height) each): finer ones when all are small."""
    long_side = max((max(w, h) for w, h in sizes), default=0)
    size, refine_pp, refine_kp = quality_settings(cfg)
    # the full resolution pays where SIFT did not see it
    refine_kp = refine_kp and size > 0 and long_side >= cfg.keypoint_refine_min_downscale * size
    if 0 < long_side <= cfg.small_image_size:
        return Effective(-2, min(cfg.sift_peak_threshold, 0.002), min(cfg.min_num_inliers, 10),
                         min(cfg.abs_pose_min_num_inliers, 10), min(cfg.max_reproj_error, cfg.small_max_reproj_error),
                         cfg.guided_matching or cfg.small_guided_matching, size, refine_pp, refine_kp)
    return Effective(-1, cfg.sift_peak_threshold, cfg.min_num_inliers, cfg.abs_pose_min_num_inliers,
                     cfg.max_reproj_error, cfg.guided_matching, size, refine_pp, refine_kp)
