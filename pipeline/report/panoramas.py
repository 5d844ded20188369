"""The panoramas section (when the centres stage ran): the floor plan with the centres
(``centres/plan.png``), how the scale was found, and the table of distances between panoramas
with their 1-sigma."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.report.html import Assets, esc, fmt, img_tag, note, read_image, read_json_file, table


def panoramas_section(centres_dir: Path, assets: Assets) -> str:
    data = read_json_file(centres_dir / "centres.json")
    parts = []
    plan = read_image(centres_dir / "plan.png") if (centres_dir / "plan.png").exists() else None
    if plan is not None:
        # larger than other pictures: the plan's names and distances must stay legible
        parts.append(img_tag(assets.image(plan, "centres-plan", max_width=900),
                             "centres/plan.png: panorama centres and headings"))
    if data is None:
        return "".join(parts) + note("centres/centres.json is missing or unreadable")
    scale = data.get("scale_source") or {}
    units = data.get("units", "?")
    parts.append(f'<p class="meta">units: {esc(units)}; scale: {esc(scale.get("text", scale.get("name", "?")))}</p>')
    parts.append(distances_table(data, units))
    rows = [(name, *[fmt(float(c)) for c in p.get("centre", [])], fmt(p.get("yaw_deg")), fmt(p.get("sigma")))
            for name, p in (data.get("panoramas") or {}).items()]
    if rows:
        parts.append("<h4>Centres</h4>" + table(rows, ("panorama", "x", "y", "z", "yaw (deg)", f"sigma ({units})"),
                                                cls="wide"))
    return "".join(parts)


def distances_table(data: dict, units: str) -> str:
    dist = data.get("distances") or {}
    names, matrix = dist.get("names") or [], dist.get("matrix")
    if not names or matrix is None:
        return note("no distances in centres.json")
    matrix = np.asarray(matrix, np.float64)
    sigma = np.asarray(dist["sigma"], np.float64) if dist.get("sigma") is not None else None
    rows = []
    for i, a in enumerate(names):
        cells = []
        for j in range(len(names)):
            if i == j:
                cells.append("")
            elif sigma is not None and np.isfinite(sigma[i, j]):
                cells.append(f"{matrix[i, j]:.3g} ± {sigma[i, j]:.2g}")
            else:
                cells.append(f"{matrix[i, j]:.3g}")
        rows.append((a, *cells))
    return f"<h4>Distances ({esc(units)}, ± 1-sigma)</h4>" + table(rows, ("", *names), cls="wide")
