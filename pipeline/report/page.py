"""The report page: ``index.html`` with one section per finished stage of the workspace, plotly.js
written once beside it (``plotly.min.js``, plotly's offline bundle: no CDN, the page works from its
folder with no network) and the pictures and video it shows in ``assets/``.

A section that fails (a file in an unexpected state) shows the error in its place and the rest of
the page is still written: the report shows what it can of any workspace."""
from __future__ import annotations

import html as html_lib
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from pipeline.report.evaluation import eval_section
from pipeline.report.html import Assets, esc, note, section
from pipeline.report.manifests import finished_stages, overview, stage_summary
from pipeline.report.panoramas import panoramas_section
from pipeline.report.poses import poses_section
from pipeline.report.surface import surface_section
from pipeline.report.training import training_section

TRAINING_STAGES = ("nerf", "idr", "sdf")
PLOTLY_FILE = "plotly.min.js"

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #222;
       background: #fafafa; }
header { background: #23324a; color: #fff; padding: 14px 24px; }
header h1 { margin: 0 0 4px; font-size: 22px; } header p { margin: 0; opacity: .85; }
nav { position: sticky; top: 0; z-index: 10; background: #fff; border-bottom: 1px solid #ddd; padding: 6px 24px; }
nav a { margin-right: 16px; color: #23324a; text-decoration: none; font-weight: 600; }
main { max-width: 1320px; margin: 0 auto; padding: 8px 24px 48px; }
section { background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; padding: 8px 18px 14px; margin: 18px 0; }
h2 { font-size: 19px; border-bottom: 1px solid #eee; padding-bottom: 4px; } h4 { margin: 14px 0 6px; }
table { border-collapse: collapse; margin: 6px 0; font-size: 13.5px; }
td, th { border: 1px solid #e2e2e2; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f8; } table.kv td:first-child { color: #555; white-space: nowrap; }
table.wide { width: 100%; } pre { font-size: 12.5px; background: #f6f6f6; padding: 8px; overflow: auto; max-height: 420px; }
details { margin: 4px 0; } summary { cursor: pointer; color: #23324a; }
.note { color: #666; font-style: italic; margin: 6px 0; } .meta { color: #444; margin: 4px 0; }
.section-error { color: #a40000; font-weight: 600; }
.views { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; margin: 6px 0 12px; }
figure { margin: 0; } figure.thumb img { max-width: 240px; min-width: 120px; image-rendering: auto;
  border: 1px solid #ddd; display: block; } figcaption { font-size: 12px; color: #555; max-width: 240px; }
figure.video video { max-width: 640px; width: 100%; border: 1px solid #ddd; } figure.video figcaption { max-width: 640px; }
.plot { margin: 8px 0; }
.metrics { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 2px 10px; margin: 6px 0;
  font-size: 13.5px; }
.metrics div { display: flex; justify-content: space-between; gap: 8px; border-bottom: 1px dotted #ddd; padding: 1px 0; }
.metrics span { color: #555; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.metrics b { font-weight: 600; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; max-width: 60%; }
"""


@dataclass
class ReportOptions:
    point_budget: int = 30000  # sparse points shown in the camera view (an even subsample)
    face_budget: int = 50000  # mesh faces shown (vertex clustering above it)
    max_views: int = 4  # test views shown per training stage
    image_width: int = 480  # pictures are downsized to this width in assets/


def write_report(workspace: Path, out_dir: Path, options: ReportOptions, log: logging.Logger) -> dict:
    """Write ``out_dir/index.html`` (+ plotly.min.js, assets/) for the workspace; returns what it shows."""
    import plotly.offline

    workspace, out_dir = Path(workspace), Path(out_dir)
    manifests = finished_stages(workspace)
    assets = Assets(out_dir, options.image_width)
    sections: list[tuple[str, str, str]] = []  # (anchor, title, html)
    failed: list[str] = []

    def add(anchor: str, title: str, stage: str, build: Callable[[], str]) -> None:
        try:
            body = build()
        except Exception as exc:  # one broken part must not cost the whole page
            log.warning(f"report: the {title} section failed: {type(exc).__name__}: {exc}")
            failed.append(title)
            body = f'<p class="section-error">this section could not be made: {esc(type(exc).__name__)}: {esc(exc)}</p>'
        summary = stage_summary(stage, manifests[stage]) if stage in manifests else ""
        sections.append((anchor, title, summary + body))

    if "poses" in manifests:
        add("poses", "Poses", "poses", lambda: poses_section(workspace / "poses", options.point_budget))
    if "centres" in manifests:
        add("panoramas", "Panoramas", "centres", lambda: panoramas_section(workspace / "centres", assets))
    for stage in TRAINING_STAGES:
        if stage in manifests:
            add(stage, f"Training: {stage}", stage,
                lambda s=stage: training_section(workspace / s, workspace, assets, options.max_views))
    if "export" in manifests or any(s in manifests for s in ("idr", "sdf")):
        add("surface", "Surface", "export", lambda: surface_section(workspace, options.face_budget))
    if "eval" in manifests:
        add("eval", "Evaluation", "eval", lambda: eval_section(workspace / "eval"))
    known = {"poses", "centres", "export", "eval", *TRAINING_STAGES}
    for stage in (s for s in manifests if s not in known):
        add(stage, stage, stage, lambda: "")

    (out_dir / PLOTLY_FILE).write_text(plotly.offline.get_plotlyjs(), encoding="utf-8")
    (out_dir / "index.html").write_text(page(workspace, manifests, sections), encoding="utf-8")
    return {"page": str(out_dir / "index.html"), "stages": list(manifests), "sections": [a for a, _, _ in sections],
            "failed_sections": failed}


def page(workspace: Path, manifests: dict, sections: list[tuple[str, str, str]]) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in [("overview", "Overview", "")] + sections)
    body = section("overview", "Overview", overview(manifests) + note(
        "Every 3-D view turns with the mouse (drag), zooms (wheel) and pans (right drag); plots zoom on a "
        "dragged box, a double click resets them."))
    body += "".join(section(a, t, h) for a, t, h in sections)
    title = f"recon report: {workspace.name}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html_lib.escape(title)}</title><style>{STYLE}</style>"
            f'<script src="{PLOTLY_FILE}"></script></head><body>'
            f"<header><h1>{html_lib.escape(title)}</h1><p>{esc(workspace)} &middot; {len(manifests)} finished "
            f"stage{'s' if len(manifests) != 1 else ''} &middot; written {now}</p></header>"
            f"<nav>{nav}</nav><main>{body}</main></body></html>\n")
