"""Poses stage: read a dataset, take its poses (or estimate them), normalise, write
``poses/transforms.json`` for every later stage.

Outputs (workspace ``poses/``): ``transforms.json`` (nerfstudio convention, normalised frame,
opens in nerfstudio and instant-ngp), ``normalization.json`` (the similarity from the dataset's
units to the normalised frame), ``report.json``. When poses are estimated
(``pipeline/sfm/``) also ``sparse/`` (the COLMAP model, in COLMAP's own frame:
``normalization.json`` maps it to the normalised frame), ``points.ply`` (the sparse points with
colour, in the NORMALISED frame of ``transforms.json``), ``points_views.npy`` ((K, 2) int64:
point index in ``points.ply``, frame index in ``transforms.json``, one row per observation) and
``colmap/database.db`` (features and matches, reused by a re-run with the same images).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets import READERS, read_scene
from datasets.nerfstudio import write_nerfstudio
from datasets.validate import check_images
from datasets.scene import SceneError
from pipeline.geometry.mesh import write_ply
from pipeline.geometry.normalize import normalize_scene
from pipeline.runner.config import ConfigError
from pipeline.runner.io import write_json
from pipeline.runner.stage import Stage, StageContext
from pipeline.sfm.config import EstimationConfig
from pipeline.sfm.estimate import estimate


@dataclass
class PosesConfig(EstimationConfig):
    """Import options below; pose-estimation options are inherited from EstimationConfig."""

    data: str = ""  # the dataset folder (any format `datasets.read_scene` reads); run.py's --data sets it
    format: str = "auto"  # auto | nerfstudio | blender | colmap | llff | idr | middlebury | strecha | photos | panoramas
    background: str = "white"  # compositing of RGBA images: white | black | none
    estimate: bool = False  # estimate poses even when the dataset has them
    normalize: str = "sphere"  # sphere (IDR: unit sphere) | box (NeRF: cube) | none
    target_radius: float = 1.0  # radius of the region of interest after normalisation


def check(cfg: PosesConfig) -> None:
    """What can be wrong before anything is read or created."""
    if not cfg.data:
        raise SceneError("the poses stage needs a dataset: python run.py poses --data DIR --workspace W")
    if not Path(cfg.data).exists():
        raise SceneError(f"{cfg.data}: no such file or folder; give the dataset folder with --data")
    if cfg.format != "auto" and cfg.format not in READERS:
        raise ConfigError(f"format={cfg.format!r} is not a dataset format; use auto or one of {', '.join(READERS)}")
    if cfg.normalize not in ("sphere", "box", "none"):
        raise ConfigError(f"normalize={cfg.normalize!r}: use sphere, box or none")
    if cfg.background not in ("white", "black", "none"):
        raise ConfigError(f"background={cfg.background!r}: use white, black or none")
    if not cfg.target_radius > 0:
        raise ConfigError(f"target_radius must be > 0, got {cfg.target_radius}")


def dataset_paths(cfg: PosesConfig) -> list[str]:
    """The dataset folder is the stage's input: a changed dataset makes the stage re-run."""
    return [cfg.data] if cfg.data else []


def run(ctx: StageContext) -> dict:
    cfg: PosesConfig = ctx.config
    check(cfg)
    t0 = time.time()
    scene = read_scene(cfg.data, cfg.format, background=cfg.background)
    check_images(scene)  # an image that does not decode is named here, not as a crash in training
    timings = {"read_s": time.time() - t0}
    if cfg.estimate or not scene.has_poses:
        scene, est_report = estimate(scene, cfg, work_dir=ctx.resume_dir, out_dir=ctx.out_dir,
                                     final_dir=ctx.workspace.stage_dir("poses"), log=ctx.log)
    else:
        est_report = {"mode": "import"}
    t1 = time.time()
    normalized, sim = normalize_scene(scene, cfg.normalize, cfg.target_radius)
    timings["normalize_s"] = time.time() - t1
    sparse = normalized.meta.pop("sparse_points", None)
    if sparse is not None:
        write_ply(ctx.out_dir / "points.ply", sim.apply_points(sparse["xyz"]), colors=sparse["rgb"])
        normalized.meta["ply_file_path"] = "points.ply"  # nerfstudio reads it (e.g. splatfacto's init)
        if sparse.get("views") is not None:  # which frames observed each point (the sdf stage's depth rays)
            np.save(ctx.out_dir / "points_views.npy", sparse["views"])
    recon = dict(normalized.meta.get("recon", {}))
    recon.update(source=str(Path(cfg.data).resolve()), normalization=sim.to_dict())
    normalized.meta["recon"] = recon
    write_nerfstudio(normalized, ctx.out_dir / "transforms.json", relative_to=ctx.workspace.stage_dir("poses"))
    sim.save(ctx.out_dir / "normalization.json")
    report = {"images_given": len(scene), "images_registered": sum(f.c2w is not None for f in scene.frames),
              "skipped_files": scene.meta.get("skipped", {}),
              "splits": {k: len(v) for k, v in scene.splits.items()}, **est_report}
    report["timings_s"] = {**timings, **est_report.get("timings_s", {})}
    report["timings_s"]["total_s"] = time.time() - t0
    write_json(ctx.out_dir / "report.json", report)
    ctx.log.info(f"poses: {report['images_registered']}/{report['images_given']} images posed ({est_report['mode']})")
    metrics = {"images_given": report["images_given"], "images_registered": report["images_registered"]}
    if est_report["mode"] == "estimate":
        metrics["mean_reprojection_error_px"] = est_report["summary"]["mean_reprojection_error_px"]
        # the strategies chosen (matching=auto, mapper=auto) and why: pipeline/sfm/matching.py, mapping.py
        metrics.update({k: est_report[k] for k in ("matcher", "matcher_reason", "mapper", "mapper_reason")
                        if k in est_report})
        metrics.update({f"time_{k}": v for k, v in report["timings_s"].items()})
    return metrics


STAGE = Stage(name="poses", config_cls=PosesConfig, run=run, inputs=(), data_inputs=dataset_paths, check=check,
              default_config=None,
              description="read a dataset, import or estimate camera poses, normalise the scene")
