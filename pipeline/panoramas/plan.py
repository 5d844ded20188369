"""``plan.png``: a top-down, floor-plan-like picture of where the panoramas were taken.

Light grey: the sparse points between just above the floor and just below the ceiling (walls and
furniture: the room's outline), seen from above. Blue: the panorama centres with their names and a
tick along each panorama's longitude 0; 1-sigma uncertainty ellipses (enlarged when they would be
too small to see, and the legend says by how much); grey lines join each panorama to its neighbours
(minimum spanning tree plus each one's nearest), labelled with the distance and its sigma; a scale bar.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Optional

import numpy as np


def neighbour_edges(centres_xy: np.ndarray) -> list[tuple[int, int]]:
    """Edges (i < j): the minimum spanning tree of the centres (N, 2) plus each one's nearest neighbour."""
    from scipy.sparse.csgraph import minimum_spanning_tree

    n = len(centres_xy)
    if n < 2:
        return []
    d = np.linalg.norm(centres_xy[:, None] - centres_xy[None], axis=-1)
    tree = minimum_spanning_tree(d + 1e-12).tocoo()  # + eps: coincident centres still get an edge
    edges = {tuple(sorted((int(i), int(j)))) for i, j in zip(tree.row, tree.col)}
    near = np.where(np.eye(n, dtype=bool), np.inf, d).argmin(1)
    edges |= {tuple(sorted((i, int(j)))) for i, j in enumerate(near)}
    return sorted(edges)


def short_names(names: list[str]) -> tuple[list[str], str]:
    """Names without their common prefix (ZInD's are long), and that prefix."""
    prefix = os.path.commonprefix(names) if len(names) > 1 else ""
    cut = prefix.rfind("_") + 1 if "_" in prefix else 0
    return [n[cut:] or n for n in names], prefix[:cut]


def _label_directions(xy: np.ndarray, names: list[str], spread: float) -> np.ndarray:
    """(N, 2) unit directions to put each name: greedily, the one of 8 directions whose label centre
    is farthest from the other centres, the labels already placed and the lines to neighbours' midpoints."""
    dirs = np.array([[np.cos(a), np.sin(a)] for a in np.radians(np.arange(8) * 45 + 22.5)])
    placed: list[np.ndarray] = []
    out = np.zeros((len(xy), 2))
    for i, name in enumerate(names):
        half = 0.011 * spread * len(name)  # rough half width of the name at 9 pt on a 10 inch figure
        best, best_score = dirs[0], -np.inf
        for d in dirs:
            centre = xy[i] + 0.04 * spread * d + np.array([half * np.sign(d[0]), 0.0])
            others = np.concatenate([np.delete(xy, i, 0), np.array(placed).reshape(-1, 2)])
            gaps = np.abs(others - centre) / np.array([half + 0.02 * spread, 0.03 * spread])
            score = float(np.max(gaps, axis=1).min()) if len(others) else 0.0
            if score > best_score:
                best, best_score = d, score
        out[i] = best
        placed.append(xy[i] + 0.04 * spread * best + np.array([half * np.sign(best[0]), 0.0]))
    return out


def _ellipse(ax, xy, cov2, factor, **kwargs):
    from matplotlib.patches import Ellipse

    vals, vecs = np.linalg.eigh(cov2)
    vals = np.sqrt(np.maximum(vals, 0)) * factor
    angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))
    ax.add_patch(Ellipse(xy, 2 * vals[1], 2 * vals[0], angle=angle, **kwargs))


def draw_plan(path: Path, names: list[str], centres: np.ndarray, yaws_deg: np.ndarray, units: str,
              points: Optional[np.ndarray] = None, floor_known: bool = False, distances: Optional[np.ndarray] = None,
              sigmas: Optional[np.ndarray] = None, centre_covs: Optional[np.ndarray] = None, title: str = "") -> dict:
    """Write the plan to ``path``. centres (N, 3), points (M, 3) and covariances (N, 3, 3) in the
    output frame; distances / sigmas (N, N). Returns what was drawn (for the log / centres.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    unit = "m" if units == "m" else "rel."
    xy = centres[:, :2]
    spread = float(np.ptp(xy, axis=0).max()) if len(xy) > 1 else 1.0
    fig, ax = plt.subplots(figsize=(10, 8), dpi=110)
    drawn: dict = {}
    if points is not None and len(points):
        pts = points
        if floor_known:  # walls and furniture: above the floor, below the ceiling
            cam_h = float(np.median(centres[:, 2]))
            top = float(np.percentile(points[:, 2], 98))
            pts = points[(points[:, 2] > 0.13 * cam_h) & (points[:, 2] < top - 0.13 * cam_h)]
        lo, hi = xy.min(0) - 0.6 * spread, xy.max(0) + 0.6 * spread
        pts = pts[np.all((pts[:, :2] > lo) & (pts[:, :2] < hi), axis=1)]  # far outliers would shrink the room
        ax.scatter(pts[:, 0], pts[:, 1], s=2, c="0.72", lw=0, label=f"sparse points ({len(pts)})", zorder=1)
        drawn["points"] = int(len(pts))
    short, prefix = short_names(names)
    edges = neighbour_edges(xy)
    for i, j in edges:
        ax.plot(*zip(xy[i], xy[j]), color="0.35", lw=0.9, zorder=2)
        if distances is not None:
            text = f"{distances[i, j]:.2f}"
            if sigmas is not None:
                text += f"±{sigmas[i, j]:.2f}" if sigmas[i, j] >= 0.005 else f"±{sigmas[i, j]:.1g}"
            mid = (xy[i] + xy[j]) / 2
            ax.annotate(text, mid, fontsize=7.5, ha="center", va="center", color="0.15", zorder=4,
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    drawn["edges"] = len(edges)
    if centre_covs is not None:
        largest = float(np.sqrt(np.max(np.linalg.eigvalsh(centre_covs[:, :2, :2]))))
        factor = 1.0
        if largest < 0.02 * spread:  # too small to see: enlarge, and say so
            factor = float(10 ** np.ceil(np.log10(0.02 * spread / max(largest, 1e-12))))
        for c, cov in zip(xy, centre_covs):
            _ellipse(ax, c, cov[:2, :2], factor, fc=(0.85, 0.2, 0.2, 0.25), ec=(0.7, 0.1, 0.1), lw=0.8, zorder=3)
        ax.plot([], [], color=(0.7, 0.1, 0.1), lw=3, alpha=0.5,
                label="1-sigma ellipse" + (f" (enlarged {factor:g}x)" if factor > 1 else ""))
        drawn["ellipse_factor"] = factor
    ax.scatter(xy[:, 0], xy[:, 1], s=36, c="tab:blue", zorder=5, label="panorama centre")
    tick = 0.04 * spread
    away = _label_directions(xy, short, spread)
    for (x, y), yaw, name, (dx, dy) in zip(xy, yaws_deg, short, away):
        ax.plot([x, x + tick * np.cos(np.radians(yaw))], [y, y + tick * np.sin(np.radians(yaw))],
                color="tab:blue", lw=1.5, zorder=5)
        ax.annotate(name, (x, y), xytext=(9 * dx, 9 * dy), textcoords="offset points", fontsize=9, color="navy",
                    weight="bold", zorder=6, ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top")
    bar = 10 ** np.floor(np.log10(max(spread, 1e-9) / 3))
    bar = bar * 5 if spread / bar > 15 else (bar * 2 if spread / bar > 7 else bar)
    ax.add_artist(AnchoredSizeBar(ax.transData, bar, f"{bar:g} {unit}", "lower left", pad=0.5, frameon=True,
                                  size_vertical=bar / 25))
    ax.set_aspect("equal")
    ax.margins(0.12)  # room for the names, the legend and the scale bar
    ax.set_xlabel(f"x ({unit})")
    ax.set_ylabel(f"y ({unit})")
    ax.grid(alpha=0.2)
    note = f"names without the prefix '{prefix}'; " if prefix else ""
    title = textwrap.fill(title or "Panorama centres, top view", 110)
    ax.set_title(title + "\n" + note +
                 f"distances in {'metres' if units == 'm' else 'relative units (no metric scale given)'}; "
                 "tick = longitude 0", fontsize=10)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.85)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return drawn
