"""What the report knows of the workspace's stages: the finished ones (a folder with a readable
``manifest.json``) in chain order, and per stage a summary block from its manifest: status, time,
metrics, versions and the config (collapsed)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from pipeline.report.html import details, esc, flatten, fmt, grid, key_values, table

# the chain's order; stages the report does not know come after these, by name
CHAIN_ORDER = ("poses", "centres", "nerf", "idr", "sdf", "export", "eval")
REPORT_STAGE = "report"


def read_manifest(folder: Path) -> Optional[dict]:
    try:
        data = json.loads((folder / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def finished_stages(root: Path) -> dict[str, dict]:
    """Stage name -> manifest of every finished stage folder in the workspace ``root``."""
    found = {}
    if not root.is_dir():
        return found
    for folder in root.iterdir():
        if not folder.is_dir() or folder.name.startswith(".") or folder.name in (REPORT_STAGE, "logs"):
            continue
        manifest = read_manifest(folder)
        if manifest is not None and manifest.get("status") == "done":
            found[folder.name] = manifest
    rank = {name: i for i, name in enumerate(CHAIN_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def overview(manifests: dict[str, dict]) -> str:
    """One table: every finished stage, when it finished, how long it took, its headline metrics."""
    rows = []
    for name, m in manifests.items():
        headline = {k: v for k, v in (m.get("metrics") or {}).items() if isinstance(v, (int, float, str))}
        text = ", ".join(f"{k} {fmt(v)}" for k, v in list(headline.items())[:6])
        rows.append((f"{name}", m.get("finished", "-"), _duration(m.get("duration_s")), text))
    return table(rows, ("stage", "finished (UTC)", "time", "headline metrics"), cls="wide")


def stage_summary(name: str, manifest: dict) -> str:
    """The manifest of one stage: time and metrics shown, versions and config collapsed."""
    metrics = manifest.get("metrics") or {}
    times = (f'<p class="meta">{esc(name)}: {esc(manifest.get("status", "?"))}, started '
             f'{esc(manifest.get("started", "-"))}, finished {esc(manifest.get("finished", "-"))}, '
             f'{esc(_duration(manifest.get("duration_s")))}</p>')
    body = times
    if metrics:
        body += grid(flatten(metrics).items())
    body += details(f"{name} versions", key_values(manifest.get("versions") or {}))
    body += details(f"{name} config", f'<pre>{esc(json.dumps(manifest.get("config") or {}, indent=2))}</pre>')
    return f'<div class="manifest">{body}</div>'


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes} min {s:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
