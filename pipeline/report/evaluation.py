"""The eval section: the headline metrics of ``eval/metrics.json`` (views, geometry, poses,
leave-one-out panoramas), what was skipped and why, and the per-view table."""
from __future__ import annotations

from pathlib import Path

from pipeline.report.html import flatten, note, read_json_file, table

PER_VIEW_KEYS = ("psnr", "ssim", "lpips", "mask_iou", "psnr_masked", "depth.abs_rel", "depth.rmse")


def eval_section(eval_dir: Path) -> str:
    metrics = read_json_file(eval_dir / "metrics.json")
    if metrics is None:
        return note("eval/metrics.json is missing or unreadable")
    rows = [("method", metrics.get("method") or "none (poses only)")]
    for group in ("views", "geometry", "poses", "holdout"):
        values = metrics.get(group) or {}
        for key, value in flatten({k: v for k, v in values.items()
                                   if not isinstance(v, list) and k not in ("panoramas", "mesh", "gt")}).items():
            rows.append((f"{group}: {key}", value))
    for key, why in (metrics.get("skipped") or {}).items():
        rows.append((f"{key}: skipped", why))
    html = table(rows, ("metric", "value"), cls="kv")
    per_view = (metrics.get("views") or {}).get("per_view") or []
    if per_view:
        flat = [flatten(v) for v in per_view if isinstance(v, dict)]
        keys = [k for k in PER_VIEW_KEYS if any(k in v for v in flat)]
        html += f"<h4>Per view ({len(flat)})</h4>" + table(
            [(v.get("name"), *[v.get(k) for k in keys]) for v in flat], ("view", *keys), cls="wide")
    return html
