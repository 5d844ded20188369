"""Step 5 of pose estimation: why each image did or did not register, in numbers and plain words.

Per-image counts come from the COLMAP database (features, matched neighbours, verified
correspondences) and the model (reprojection error, observed points); :func:`diagnose` turns the
counts of an unregistered image into its likely cause.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from datasets.scene import Scene, SceneError
from pipeline.runner.io import write_json
from pipeline.sfm.cameras import reprojection_errors
from pipeline.sfm.prepare import PreparedImage


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
    return {rec.images[image_id].name: (float(errors.mean()) if len(errors) else float("nan"), len(errors))
            for image_id, errors in reprojection_errors(rec).items()}


def _summary(best, stats: dict[str, ImageStats], median_features: float) -> dict:
    registered = [s for s in stats.values() if s.registered]
    errs = [s.reprojection_error_px for s in registered if s.reprojection_error_px is not None]
    return {"median_features": median_features,
            "median_matched_neighbours": float(np.median([s.neighbours for s in stats.values()])) if stats else 0.0,
            "mean_reprojection_error_px": float(best.compute_mean_reprojection_error()) if best is not None else None,
            "max_image_reprojection_error_px": float(np.nanmax(errs)) if errs else None,
            "mean_track_length": float(best.compute_mean_track_length()) if best is not None else None}


def diagnosis(pycolmap, db_path: Path, scene: Scene, prepared: list[PreparedImage], models: dict, best,
              min_inliers: int) -> dict:
    """The report's per-image part: images readable and registered, the unregistered ones with
    their likely cause, the other (smaller) models, per-image counts and a summary. ``models`` are
    all the models mapping found, ``best`` the one kept (or None)."""
    stats = database_stats(pycolmap, db_path, min_inliers=min_inliers)
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
    return dict(
        images_readable=len(prepared), images_registered=sum(s.registered for s in stats.values()),
        unregistered=unregistered,
        other_models=[{"images": r.num_reg_images(),
                       "names": sorted(frame_name.get(i.name, i.name) for i in r.images.values() if i.has_pose)}
                      for r in ordered[1:]],
        per_image={frame_name[n]: {"features": s.features, "matched_neighbours": s.neighbours,
                                   "best_inliers": s.best_inliers, "registered": s.registered,
                                   "reprojection_error_px": s.reprojection_error_px, "points": s.points}
                   for n, s in stats.items()},
        summary=_summary(best, stats, median_features),
    )


def diagnose_registration(pycolmap, db_path: Path, scene: Scene, prepared: list[PreparedImage], models: dict, best,
                          min_inliers: int, min_registered_fraction: float, report: dict, timings: dict,
                          work_dir: Path, log) -> None:
    """Add the diagnosis (:func:`diagnosis`) and ``timings`` to ``report``, log the unregistered
    images, and raise :func:`registration_error` (the report kept in ``work_dir``) when too few
    registered."""
    report.update(diagnosis(pycolmap, db_path, scene, prepared, models, best, min_inliers), timings_s=timings)
    for name, why in report["unregistered"].items():
        log.warning(f"not registered: {name}: {why}")
    n_registered = report["images_registered"]
    if best is None or n_registered / max(len(scene), 1) < min_registered_fraction or n_registered < 2:
        path = save_failure_report(work_dir, report, timings)
        raise registration_error(report, len(scene), min_registered_fraction, path)


def save_failure_report(work_dir: Path, report: dict, timings: dict) -> Path:
    """The report of a failed estimation, kept in ``work_dir`` (which survives the failure)."""
    path = work_dir / "report.json"
    write_json(path, {**report, "timings_s": timings})
    return path


def registration_error(report: dict, images_given: int, min_registered_fraction: float,
                       report_path: Path) -> SceneError:
    """The error of too few registered images: the unregistered ones with their causes."""
    n_registered = report["images_registered"]
    unregistered, unreadable = report["unregistered"], report["unreadable"]
    fraction = n_registered / max(images_given, 1)
    causes = "\n".join(f"  - {n}: {why}" for n, why in list(unregistered.items())[:20])
    more = f"\n  ... and {len(unregistered) - 20} more" if len(unregistered) > 20 else ""
    unread = f"\nunreadable (skipped): {', '.join(unreadable)}" if unreadable else ""
    return SceneError(
        f"only {n_registered} of {images_given} images registered ({100 * fraction:.0f}% < "
        f"{100 * min_registered_fraction:.0f}% required).\nunregistered images and likely causes:\n"
        f"{causes}{more}{unread}\nfull report: {report_path}. Lower min_registered_fraction "
        "to accept a partial result, or try mapper=global.")
