"""Centres stage: where each panorama was taken, in metres when a scale is known, with 1-sigma
uncertainties, and a floor-plan picture.

``python run.py centres --workspace W camera_height_m=1.6`` (or ``known_distance=a,b,3.20``) reads
``W/poses/`` and writes ``W/centres/centres.json`` (units, scale source, per-panorama centre /
yaw_deg / sigma, the pairwise distance matrix and its sigmas; errors against the dataset's
reference centres when it has them) and ``W/centres/plan.png``. See ``pipeline/panoramas/``.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.panoramas.centres import read_posed_panoramas
from pipeline.panoramas.estimate import ScaleOptions, centres_json, estimate_centres, headline_metrics
from pipeline.panoramas.floor import FloorConfig
from pipeline.panoramas.floor_sweep import SweepConfig
from pipeline.panoramas.plan import draw_plan
from pipeline.runner.io import write_json
from pipeline.runner.stage import Stage, StageContext


@dataclass
class CentresConfig:
    camera_height_m: float = 0.0  # the cameras' height above the floor (metres); 0 = not given
    known_distance: str = ""  # "A,B,metres": the measured distance between panoramas A and B (image stems)
    camera_height_sigma_m: float = 0.01  # 1-sigma of the stated camera height
    known_distance_sigma_m: float = 0.005  # 1-sigma of the measured distance (a tape measure)
    floor_max_tilt_deg: float = 10.0  # the floor plane's normal is within this of the frame's +z
    floor_sweep: bool = True  # with camera_height_m: also find the floor photometrically in the panoramas
    floor_sweep_width: int = 512  # the sweep's finest panorama width (coarser levels: /2, /4)
    plan: bool = True  # write plan.png
    # a dataset folder with the true centres (centers.json or ZInD poses.json) to score against;
    # default: the dataset the poses came from. Never an input of the estimate.
    reference: str = ""


def run(ctx: StageContext) -> dict:
    cfg: CentresConfig = ctx.config
    posed = read_posed_panoramas(ctx.workspace)
    opts = ScaleOptions(camera_height_m=cfg.camera_height_m, camera_height_sigma_m=cfg.camera_height_sigma_m,
                        known_distance=cfg.known_distance, known_distance_sigma_m=cfg.known_distance_sigma_m,
                        reference=cfg.reference,
                        floor=FloorConfig(max_tilt_deg=cfg.floor_max_tilt_deg),
                        sweep=SweepConfig(width=cfg.floor_sweep_width) if cfg.floor_sweep else None)
    result = estimate_centres(posed, opts, ctx.log)
    data = centres_json(result)
    write_json(ctx.out_dir / "centres.json", data)
    if cfg.plan:
        scale = data["scale_source"]
        draw_plan(ctx.out_dir / "plan.png", result.names, result.centres, [p["yaw_deg"] for p in data["panoramas"].values()],
                  result.frame.units, points=result.points, floor_known=result.floor is not None,
                  distances=result.distances, sigmas=result.sigmas, centre_covs=result.centre_covs,
                  title=f"{len(result.names)} panoramas, scale: {scale['text']}")
    metrics = headline_metrics(result)
    ctx.log.info(f"centres: {metrics['panoramas']} panoramas in {metrics['units']} "
                 f"(scale: {metrics['scale_source']}) -> centres/centres.json")
    return metrics


STAGE = Stage(name="centres", config_cls=CentresConfig, run=run, inputs=("poses",),
              description="panorama centres in metres (known_distance=A,B,m or camera_height_m=H) with "
                          "uncertainties -> centres/centres.json, plan.png",
              produced_by={"poses": "python run.py poses --data DIR --workspace W [--estimate]"})
