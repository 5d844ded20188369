"""The poses section: how many images registered (and why the others did not, from
``poses/report.json``), the per-image reprojection errors as a histogram, and a 3-D view of the
camera frusta with the sparse points (``poses/transforms.json``, ``poses/points.ply``), in the
poses stage's normalised frame."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.report.html import figure, grid, note, read_json_file, table

EQUIRECT_MODELS = ("EQUIRECTANGULAR", "EQUIRECT", "equirect")


def poses_section(poses_dir: Path, point_budget: int) -> str:
    report = read_json_file(poses_dir / "report.json") or {}
    parts = [registration(report)]
    errors = reprojection_errors(report)
    if errors:
        parts.append(error_histogram(errors))
    elif report.get("mode") == "estimate":
        parts.append(note("no per-image reprojection errors in poses/report.json"))
    transforms = read_json_file(poses_dir / "transforms.json")
    if transforms is None:
        parts.append(note("poses/transforms.json is missing or unreadable: no camera view"))
    else:
        points, colors = sparse_points(poses_dir / "points.ply", point_budget)
        parts.append(camera_view(transforms, points, colors))
    return "".join(parts)


def registration(report: dict) -> str:
    if not report:
        return note("poses/report.json is missing: registration unknown")
    given, registered = report.get("images_given"), report.get("images_registered")
    mode = {"estimate": "estimated (structure from motion)", "import": "imported from the dataset"}.get(
        report.get("mode"), str(report.get("mode", "?")))
    rows = [("poses", mode), ("images given", given), ("images registered", registered)]
    for key in ("intrinsics", "matcher", "mapper", "points"):
        if key in report:
            rows.append((key, report[key]))
    for key, value in (report.get("summary") or {}).items():
        rows.append((key.replace("_", " "), value))
    html = "<h4>Registration</h4>" + grid(rows)
    why = dict(report.get("unregistered") or {})
    why.update({name: f"unreadable: {reason}" for name, reason in (report.get("unreadable") or {}).items()})
    if why:
        html += f"<h4>Not registered ({len(why)})</h4>" + table(sorted(why.items()), ("image", "why"), cls="wide")
    elif given is not None and registered is not None:
        html += note("every image registered" if given == registered else
                     f"{given - registered} images not registered (no reason recorded)")
    return html


def reprojection_errors(report: dict) -> dict[str, float]:
    per_image = report.get("per_image") or {}
    return {name: float(v["reprojection_error_px"]) for name, v in per_image.items()
            if isinstance(v, dict) and isinstance(v.get("reprojection_error_px"), (int, float))
            and np.isfinite(v["reprojection_error_px"])}


def error_histogram(errors: dict[str, float]) -> str:
    import plotly.graph_objects as go

    values = np.array(list(errors.values()))
    fig = go.Figure(go.Histogram(x=values, nbinsx=min(40, max(5, len(values) // 2)), marker_color="#3b6fb6",
                                 hovertemplate="%{x} px: %{y} images<extra></extra>"))
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    fig.update_layout(title=f"Mean reprojection error per registered image ({len(values)} images, median "
                            f"{np.median(values):.3g} px)",
                      xaxis_title="mean reprojection error (px)", yaxis_title="images", bargap=0.05)
    return figure(fig, height=320) + note("largest: " + ", ".join(f"{n} {e:.3g} px" for n, e in worst))


def sparse_points(path: Path, budget: int) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """At most ``budget`` points of ``points.ply`` (an even subsample) and their colours, or None."""
    if not path.exists():
        return None, None
    from pipeline.geometry.mesh import read_ply

    try:
        points, _, colors = read_ply(path)
    except Exception:  # a corrupt file: the view shows the cameras alone
        return None, None
    points = np.asarray(points, np.float64)
    keep = np.isfinite(points).all(1)
    if keep.sum() > budget:
        keep[keep] = np.random.default_rng(0).permutation(keep.sum()) < budget
    return points[keep], (np.asarray(colors)[keep] if colors is not None else None)


def frustum_lines(transforms: dict, size: float) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Per camera the polyline of its frustum (nerfstudio c2w: OpenGL axes), the centres, the names."""
    lines, centres, names = [], [], []
    for i, frame in enumerate(transforms.get("frames") or []):
        try:
            c2w = np.asarray(frame["transform_matrix"], np.float64)[:3]
        except (KeyError, TypeError, ValueError):
            continue
        if c2w.shape != (3, 4) or not np.isfinite(c2w).all():
            continue
        get = lambda k, d=None: frame.get(k, transforms.get(k, d))  # noqa: E731 (per-frame or global)
        centre = c2w[:, 3]
        names.append(str(frame.get("name") or Path(str(frame.get("file_path", i))).stem))
        centres.append(centre)
        if str(get("camera_model", "")) in EQUIRECT_MODELS:
            # a panorama sees all around: a small cross marks its axes instead of a frustum
            ends = [centre + size * 0.5 * c2w[:, k] * s for k in range(3) for s in (-1, 1)]
            lines.append(np.array([ends[0], ends[1], [np.nan] * 3, ends[2], ends[3], [np.nan] * 3, ends[4], ends[5]]))
            continue
        w, h = float(get("w", 4.0)), float(get("h", 3.0))
        fx = float(get("fl_x", 0) or 0) or 0.5 * w / np.tan(0.5 * float(get("camera_angle_x", np.radians(60))))
        fy = float(get("fl_y", 0) or 0) or fx
        cx, cy = float(get("cx", w / 2)), float(get("cy", h / 2))
        # corners at depth `size` in camera axes (OpenGL: x right, y up, looking along -z)
        corners = [np.array([(u - cx) / fx, -(v - cy) / fy, -1.0]) * size for u, v in ((0, 0), (w, 0), (w, h), (0, h))]
        world = [c2w[:, :3] @ c + centre for c in corners]
        up = c2w[:, :3] @ (np.array([0.0, -(0 - cy) / fy * 1.25, -1.0]) * size) + centre  # marks the top edge
        seq = [centre, world[0], world[1], centre, world[2], world[3], centre, [np.nan] * 3,
               world[0], world[3], [np.nan] * 3, world[1], world[2], [np.nan] * 3, world[0], up, world[1]]
        lines.append(np.array(seq, np.float64))
    return lines, np.array(centres).reshape(-1, 3), names


def camera_view(transforms: dict, points: Optional[np.ndarray], colors: Optional[np.ndarray]) -> str:
    import plotly.graph_objects as go

    centres = np.array([np.asarray(f["transform_matrix"], np.float64)[:3, 3] for f in transforms.get("frames", [])
                        if "transform_matrix" in f]).reshape(-1, 3)
    extent = [centres] + ([points] if points is not None and len(points) else [])
    span = np.ptp(np.concatenate(extent), axis=0).max() if len(centres) > 1 or points is not None else 1.0
    lines, centres, names = frustum_lines(transforms, 0.06 * max(float(span), 1e-6))
    traces = []
    if points is not None and len(points):
        color = ([f"rgb({r},{g},{b})" for r, g, b in np.asarray(colors)[:, :3].astype(int)]
                 if colors is not None else "#888")
        traces.append(go.Scatter3d(x=points[:, 0], y=points[:, 1], z=points[:, 2], mode="markers", name="sparse points",
                                   marker=dict(size=1.5, color=color), hoverinfo="skip"))
    if lines:
        seg = np.concatenate([np.vstack([line, [[np.nan] * 3]]) for line in lines])
        traces.append(go.Scatter3d(x=seg[:, 0], y=seg[:, 1], z=seg[:, 2], mode="lines", name="cameras",
                                   line=dict(color="#d62728", width=3), hoverinfo="skip"))
        traces.append(go.Scatter3d(x=centres[:, 0], y=centres[:, 1], z=centres[:, 2], mode="markers", text=names,
                                   name="camera centres", marker=dict(size=3, color="#d62728"),
                                   hovertemplate="%{text}<extra></extra>"))
    bounds = transforms.get("recon_bounds")
    if bounds is not None and np.asarray(bounds).shape == (2, 3):
        traces.append(box_trace(np.asarray(bounds, np.float64)))
    fig = go.Figure(traces)
    n_points = 0 if points is None else len(points)
    fig.update_layout(title=f"{len(names)} cameras" + (f", {n_points} sparse points" if n_points else
                                                       " (no sparse points: poses imported)"),
                      scene=dict(aspectmode="data", xaxis_title="x", yaxis_title="y", zaxis_title="z"),
                      legend=dict(x=0, y=1))
    return figure(fig, height=560)


def box_trace(bounds: np.ndarray):
    import plotly.graph_objects as go

    lo, hi = bounds
    c = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    edges = [(0, 1), (0, 2), (0, 4), (1, 3), (1, 5), (2, 3), (2, 6), (3, 7), (4, 5), (4, 6), (5, 7), (6, 7)]
    seg = np.concatenate([[c[a], c[b], [np.nan] * 3] for a, b in edges])
    return go.Scatter3d(x=seg[:, 0], y=seg[:, 1], z=seg[:, 2], mode="lines", name="scene box",
                        line=dict(color="#999", width=2, dash="dash"), hoverinfo="skip")

