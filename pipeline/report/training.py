"""A training stage's section (nerf, idr, sdf): its training curve (loss and batch PSNR against
steps and trained seconds, from ``<stage>/metrics.jsonl``), its test renders beside the ground truth
with an error map, depth and normal previews, and the export's orbit video when the export was
made from this stage."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.export.images import depth_preview as coloured_depth
from pipeline.report.html import Assets, colormap, esc, figure, img_tag, note, read_image, read_json_file
from pipeline.training.progress_log import FILE_NAME, read_progress_log

ERROR_MAP_MAX = 0.25  # mean absolute error per pixel at which the error map saturates


def training_section(stage_dir: Path, workspace: Path, assets: Assets, max_views: int) -> str:
    parts = [curves(read_progress_log(stage_dir / FILE_NAME), stage_dir.name)]
    parts.append(test_views(stage_dir, workspace, assets, max_views))
    parts.append(orbit_video(stage_dir.name, workspace, assets))
    return "".join(parts)


def curves(rows: list[dict], stage: str) -> str:
    if not rows:
        return note(f"no training curve: {stage}/{FILE_NAME} is missing (a run made before the curve was "
                    "logged; re-run the stage with --force to get one)")
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    steps = np.array([r["step"] for r in rows])
    seconds = np.array([r.get("elapsed_s", np.nan) for r in rows], np.float64)
    fig = make_subplots(rows=2, cols=2, shared_yaxes=False, horizontal_spacing=0.08, vertical_spacing=0.16,
                        subplot_titles=("loss against steps", "loss against trained time",
                                        "batch PSNR against steps", "batch PSNR against trained time"))
    for row, key, colour in ((1, "loss", "#1f77b4"), (2, "psnr", "#2ca02c")):
        values = np.array([np.nan if r.get(key) is None else r[key] for r in rows], np.float64)
        if not np.isfinite(values).any():
            continue
        for col, x, unit in ((1, steps, "step"), (2, seconds, "s")):
            fig.add_trace(go.Scatter(x=x, y=values, mode="lines", line=dict(color=colour, width=1.5), name=key,
                                     showlegend=False, hovertemplate=f"%{{x:.4g}} {unit}: %{{y:.4g}}<extra>{key}</extra>"),
                          row=row, col=col)
    fig.update_yaxes(type="log", title_text="loss", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_yaxes(title_text="PSNR (dB)", row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_xaxes(title_text="trained seconds", row=2, col=2)
    last = rows[-1]
    fig.update_layout(title=dict(text=f"{stage}: {len(rows)} points to step {last['step']} "
                                      f"({last.get('elapsed_s', 0):.1f} s trained)", y=0.98))
    return figure(fig, height=560, top=80)


def frame_images(workspace: Path) -> dict[str, Path]:
    """Frame name -> its dataset image, from ``poses/transforms.json`` (absolute or relative paths)."""
    transforms = read_json_file(workspace / "poses" / "transforms.json") or {}
    base = workspace / "poses"
    found = {}
    for frame in transforms.get("frames") or []:
        path = Path(str(frame.get("file_path", "")))
        path = path if path.is_absolute() else base / path
        found[str(frame.get("name") or path.stem)] = path
    return found


def background_value(stage_dir: Path) -> float:
    """The colour the ground truth's alpha is composited on: black for a model trained on black."""
    manifest = read_json_file(stage_dir / "manifest.json") or {}
    return 0.0 if (manifest.get("config") or {}).get("background") == "black" else 1.0


def test_views(stage_dir: Path, workspace: Path, assets: Assets, max_views: int) -> str:
    renders = sorted(p for p in (stage_dir / "renders").glob("*.png")
                     if not p.stem.endswith(("_normal", "_depth", "_error")))
    if not renders:
        return note(f"{stage_dir.name}/renders/ holds no test renders")
    metrics = read_json_file(stage_dir / "metrics.json") or {}
    per_view = {str(v.get("name")): v for v in metrics.get("per_view", metrics.get("views", [])) or []
                if isinstance(v, dict)}
    images = frame_images(workspace)
    export_dir = workspace / "export" / "depth"
    export_method = ((read_json_file(workspace / "export" / "manifest.json") or {}).get("metrics") or {}).get("method")
    bg = background_value(stage_dir)
    rows = []
    for render_path in renders[:max_views]:
        name = render_path.stem
        render = read_image(render_path)
        if render is None:
            continue
        cells = [img_tag(assets.image(render, f"{stage_dir.name}-{name}-render"), f"{name}: render")]
        gt = read_image(images[name], bg) if name in images else None
        if gt is not None and gt.shape == render.shape:
            error = np.abs(render - gt).mean(-1)
            psnr = per_view.get(name, {}).get("psnr")
            psnr = psnr if isinstance(psnr, (int, float)) else -10 * np.log10(max(np.mean((render - gt) ** 2), 1e-10))
            cells.append(img_tag(assets.image(gt, f"{stage_dir.name}-{name}-gt"), "ground truth"))
            cells.append(img_tag(assets.image(colormap(error, ERROR_MAP_MAX), f"{stage_dir.name}-{name}-error"),
                                 f"|error| (black 0, yellow >= {ERROR_MAP_MAX}); PSNR {psnr:.2f} dB"))
        else:
            cells.append(note("ground truth image not found" if gt is None else "ground truth has another size"))
        depth = depth_preview(stage_dir / "depth" / f"{name}.npy")
        if depth is not None:
            cells.append(img_tag(assets.image(depth, f"{stage_dir.name}-{name}-depth"), "depth (near red, far blue)"))
        normal = stage_dir / "renders" / f"{name}_normal.png"
        if not normal.exists() and export_method == stage_dir.name:
            normal = export_dir / f"{name}_normal.png"
        if normal.exists() and (pixels := read_image(normal)) is not None:
            cells.append(img_tag(assets.image(pixels, f"{stage_dir.name}-{name}-normal"), "normals"))
        rows.append(f'<div class="views">{"".join(cells)}</div>')
    more = len(renders) - max_views
    tail = note(f"{more} more views in {stage_dir.name}/renders/") if more > 0 else ""
    return f"<h4>Test views</h4>{''.join(rows)}{tail}"


def depth_preview(path: Path) -> Optional[np.ndarray]:
    """A depth map (.npy) as a picture: the export's turbo preview (near red, far blue), background white."""
    try:
        depth = np.load(path).astype(np.float64)
    except (OSError, ValueError):
        return None
    if depth.ndim != 2:
        return None
    valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        return None
    picture = coloured_depth(depth, valid).astype(np.float64) / 255.0  # the export's colours and range
    picture[~valid] = 1.0
    return picture


def orbit_video(stage: str, workspace: Path, assets: Assets) -> str:
    manifest = read_json_file(workspace / "export" / "manifest.json") or {}
    video = workspace / "export" / "views" / "video.mp4"
    if (manifest.get("metrics") or {}).get("method") != stage or not video.exists():
        return ""
    src = assets.copy(video, f"{stage}-orbit")
    config = manifest.get("config") or {}
    caption = f"export/views/video.mp4: {config.get('path', 'camera path')} of {stage}, {config.get('frames', '?')} frames"
    return (f'<h4>Novel views</h4><figure class="video"><video src="{esc(src)}" controls loop muted playsinline '
            f'preload="metadata"></video><figcaption>{esc(caption)}</figcaption></figure>')

