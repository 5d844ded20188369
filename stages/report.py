"""Report stage: one self-contained HTML page of everything the workspace holds.

``python run.py report --workspace W`` writes ``W/report/index.html`` (open it in a browser; it
works offline from its folder: plotly's bundled plotly.js is written beside it, pictures and the
video are copied into ``W/report/assets/``). Per finished stage its manifest (config, versions,
time, metrics); poses: registration, reprojection errors, cameras and sparse points in 3-D;
training stages: loss / PSNR curves, test renders beside the ground truth with an error map,
depth and normals, the orbit video; the mesh in 3-D with Chamfer / F-score; the panoramas' plan
and distances; the evaluation table. A workspace with only some stages done gives a report of
those; the report re-runs when any stage's manifest changed. See ``pipeline/report/``.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.report.manifests import finished_stages
from pipeline.report.page import ReportOptions, write_report
from pipeline.runner.config import ConfigError
from pipeline.runner.stage import Stage, StageContext
from pipeline.runner.workspace import Workspace, WorkspaceError


@dataclass
class ReportConfig:
    point_budget: int = 30000  # sparse points shown in the camera view (an even subsample)
    mesh_face_budget: int = 50000  # mesh faces shown in the page (simplified above it)
    report_views: int = 4  # test views shown per training stage
    image_width: int = 480  # pictures are downsized to this width in W/report/assets/


def report_inputs(workspace: Workspace, config: ReportConfig) -> list[str]:
    """The manifests of the finished stages: the report is redone when any of them changes. With
    none there is nothing to report: one line saying what to run."""
    if not workspace.root.is_dir():
        raise WorkspaceError(f"no workspace at {workspace.root}; run `python run.py poses --data DIR "
                             f"--workspace {workspace.root}` first (or pass the right --workspace)")
    stages = finished_stages(workspace.root)
    if not stages:
        raise WorkspaceError(f"nothing to report in {workspace.root}: no stage has finished there yet; run "
                             f"`python run.py poses --data DIR --workspace {workspace.root}` first")
    return [f"{name}/manifest.json" for name in stages]


def check_config(cfg: ReportConfig) -> None:
    for key in ("point_budget", "mesh_face_budget", "report_views", "image_width"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")


def run(ctx: StageContext) -> dict:
    cfg: ReportConfig = ctx.config
    options = ReportOptions(point_budget=cfg.point_budget, face_budget=cfg.mesh_face_budget,
                            max_views=cfg.report_views, image_width=cfg.image_width)
    shown = write_report(ctx.workspace.root, ctx.out_dir, options, ctx.log)
    page = ctx.workspace.stage_dir("report") / "index.html"  # where it is once the stage completes
    ctx.log.info(f"report: {len(shown['stages'])} stages ({', '.join(shown['stages'])}) -> {page}")
    return {"page": str(page), "stages": ", ".join(shown["stages"]), "sections": len(shown["sections"]),
            "failed_sections": ", ".join(shown["failed_sections"]) or "none"}


STAGE = Stage(name="report", config_cls=ReportConfig, run=run, inputs=report_inputs, check=check_config,
              description="one offline HTML page of every finished stage -> report/index.html")
