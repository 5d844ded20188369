"""The surface section: the exported mesh (``export/mesh.ply``, else a training stage's own
``mesh.ply``) as an interactive plotly Mesh3d with its vertex colours, simplified for the page by
vertex clustering to at most ``face_budget`` faces, and its Chamfer / F-score from the eval stage
when the scene has a ground-truth surface."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.report.html import figure, fmt, note, read_json_file, table

MESH_SOURCES = ("export", "idr", "sdf", "nerf")


def find_mesh(workspace: Path) -> Optional[Path]:
    for stage in MESH_SOURCES:
        path = workspace / stage / "mesh.ply"
        if path.exists() and (workspace / stage / "manifest.json").exists():
            return path
    return None


def cluster_vertices(verts: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray], cells: int):
    """Merge the vertices that fall in one cell of a ``cells``-per-side grid over the mesh's box
    (mean position and colour), drop the faces that collapse or repeat. Returns (verts, faces, colors)."""
    lo, hi = verts.min(0), verts.max(0)
    size = max(float((hi - lo).max()), 1e-12) / cells
    keys = np.floor((verts - lo) / size).astype(np.int64)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    n = int(inverse.max()) + 1
    counts = np.bincount(inverse, minlength=n).astype(np.float64)[:, None]

    def mean(values: np.ndarray) -> np.ndarray:
        return np.stack([np.bincount(inverse, values[:, k], minlength=n) for k in range(values.shape[1])], 1) / counts

    f = inverse[faces]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    _, first = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    merged_colors = None if colors is None else np.round(mean(np.asarray(colors, np.float64))).astype(np.uint8)
    return mean(verts), f[np.sort(first)], merged_colors


def simplify(verts: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray], face_budget: int):
    """At most ``face_budget`` faces: the finest clustering grid that fits (bisection on its size)."""
    if len(faces) <= face_budget:
        return verts, faces, colors
    lo, hi, best = 4, 1024, None
    while lo <= hi:
        cells = (lo + hi) // 2
        result = cluster_vertices(verts, faces, colors, cells)
        if len(result[1]) <= face_budget:
            best, lo = result, cells + 1
        else:
            hi = cells - 1
    return best if best is not None else cluster_vertices(verts, faces, colors, 4)


def surface_section(workspace: Path, face_budget: int) -> str:
    parts = []
    mesh = find_mesh(workspace)
    if mesh is None:
        parts.append(note("no mesh yet: run `python run.py export --workspace W --what mesh`"))
    else:
        parts.append(mesh_view(mesh, workspace, face_budget))
    parts.append(geometry_metrics(workspace))
    return "".join(parts)


def mesh_view(path: Path, workspace: Path, face_budget: int) -> str:
    import plotly.graph_objects as go

    from pipeline.geometry.mesh import read_ply

    try:
        verts, faces, colors = read_ply(path)
    except Exception as exc:  # a corrupt file: say so, show the rest
        return note(f"{path.relative_to(workspace)} could not be read: {exc}")
    if faces is None or len(faces) == 0:
        return note(f"{path.relative_to(workspace)} has no faces")
    verts, faces = np.asarray(verts, np.float64), np.asarray(faces, np.int64)
    n_faces = len(faces)
    verts, faces, colors = simplify(verts, faces, colors, face_budget)
    kwargs = {}
    if colors is not None:
        kwargs["vertexcolor"] = [f"rgb({r},{g},{b})" for r, g, b in np.asarray(colors)[:, :3].astype(int)]
    else:
        kwargs["color"] = "#b8c4d6"
    trace = go.Mesh3d(x=verts[:, 0], y=verts[:, 1], z=verts[:, 2], i=faces[:, 0], j=faces[:, 1], k=faces[:, 2],
                      flatshading=False, lighting=dict(ambient=0.55, diffuse=0.6, specular=0.1),
                      hoverinfo="skip", name="mesh", **kwargs)
    fig = go.Figure(trace)
    shown = f"{len(faces)} of {n_faces} faces shown (simplified)" if len(faces) < n_faces else f"{n_faces} faces"
    fig.update_layout(title=f"{path.relative_to(workspace)}: {shown}, original scene units",
                      scene=dict(aspectmode="data"))
    return figure(fig, height=600)


def geometry_metrics(workspace: Path) -> str:
    metrics = read_json_file(workspace / "eval" / "metrics.json")
    if metrics is None:
        return note("no evaluation yet (run `python run.py eval --workspace W`)")
    geometry = metrics.get("geometry")
    if not geometry:
        why = (metrics.get("skipped") or {}).get("geometry", "not measured")
        return note(f"Chamfer / F-score: {why}")
    keys = (("chamfer_l1", "Chamfer-L1 (orig. units)"), ("chamfer_l1_over_radius", "Chamfer-L1 / object radius"),
            ("accuracy", "accuracy"), ("completeness", "completeness"), ("precision", "precision"),
            ("recall", "recall"), ("fscore", "F-score"), ("threshold", "F-score threshold"),
            ("components_outside_frusta", "components outside frusta"))
    rows = [(label, geometry[k]) for k, label in keys if k in geometry]
    tail = note(geometry["threshold_note"]) if geometry.get("threshold_note") else ""
    return "<h4>Against the ground-truth surface</h4>" + table(rows, cls="kv") + tail + note(
        f"{fmt(geometry.get('distances', ''))}")
