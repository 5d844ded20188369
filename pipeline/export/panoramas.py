"""New panoramas rendered from a trained field (``export --what panoramas``), in ``export/panoramas/``:

- ``between=a,b steps=N``: ``between_<a>_<b>/<k>_t<t>.png`` (equirect RGB) and ``..._depth.npy``
  (float32 range in ORIGINAL scene units) at N points from a's centre to b's (both included),
  orientation by slerp;
- ``at=x,y,z[;x,y,z...]`` (ORIGINAL units): ``at/at_<k>.png`` and ``_depth.npy``, oriented as the
  nearest panorama;
- otherwise a walk through all panoramas (``walk_order``): ``walk/pano_<k>.png`` and
  ``walk/video.mp4`` (the panoramas), ``walk/forward_<k>.png`` and ``walk/video_forward.mp4`` (a
  forward-looking perspective view along the walk).

``panoramas/panoramas.json`` lists every panorama written with its pose (original frame), its
centre and, when ``W/centres/centres.json`` is metric, the centre in metres (``centre_m``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.export.config import ExportConfig
from pipeline.export.images import depth_preview, to_uint8, write_png
from pipeline.export.novel_views import open_video
from pipeline.geometry.alignment import umeyama
from pipeline.geometry.camera_paths import camera_up, intrinsics_from_fov
from pipeline.geometry.cameras import Cameras
from pipeline.models.render import render_image
from pipeline.panoramas.holdout import frame_names, parse_names, resolve_names
from pipeline.panoramas.interpolate import PathPose, between, forward_views, render_panorama, walk, walk_order
from pipeline.runner.io import write_json
from pipeline.runner.log import progress


def metric_centres(centres_json: Path, names: list[str]) -> Optional[np.ndarray]:
    """The panoramas' centres (N, 3) in metres from the centres stage, in the order of ``names``;
    None when the file is absent, not metric or lacks one of them."""
    if not centres_json.exists():
        return None
    data = json.loads(centres_json.read_text())
    panos = data.get("panoramas", {})
    if data.get("units") != "m" or any(n not in panos for n in names):
        return None
    return np.array([panos[n]["centre"] for n in names], dtype=np.float64)


def parse_points(text: str) -> np.ndarray:
    """``"x,y,z;x,y,z"`` -> (K, 3); a clear error otherwise."""
    points = []
    for item in [p for p in text.split(";") if p.strip()]:
        try:
            xyz = [float(v) for v in item.split(",")]
        except ValueError:
            xyz = []
        if len(xyz) != 3:
            raise ValueError(f"at={text!r}: give centres as x,y,z (original scene units), several separated by ';'")
        points.append(xyz)
    return np.array(points, dtype=np.float64).reshape(-1, 3)


def poses_at(points_norm: np.ndarray, c2w: np.ndarray) -> list[PathPose]:
    """Poses at the given normalised centres (K, 3), each oriented as the nearest panorama."""
    out = []
    for p in points_norm:
        near = int(np.argmin(np.linalg.norm(c2w[:, :3, 3] - p, axis=1)))
        pose = np.array(c2w[near], dtype=np.float64)
        pose[:3, 3] = p
        out.append(PathPose(pose, near, near, 0.0))
    return out


def plan(scene, sim, cfg: ExportConfig) -> tuple[str, str, list[PathPose]]:
    """(mode, folder name, poses in the normalised frame) of what ``cfg`` asks for."""
    c2w = np.stack([f.c2w for f in scene.frames])
    if cfg.between:
        names = parse_names(cfg.between)
        if len(names) != 2:
            raise ValueError(f"between={cfg.between!r}: name two panoramas, e.g. between=a,b; available stems: "
                             f"{', '.join(frame_names(scene))}")
        a, b = resolve_names(scene, names, "between")
        return "between", f"between_{scene.frames[a].name}_{scene.frames[b].name}", between(c2w, a, b, cfg.steps)
    if cfg.at:
        return "at", "at", poses_at(sim.apply_points(parse_points(cfg.at)), c2w)
    return "walk", "walk", walk(c2w, walk_order(c2w, cfg.walk_order), cfg.steps)


def export_panoramas(model, scene, sim, cfg: ExportConfig, out: Path, device, log, centres_json: Path) -> dict:
    """Render what ``cfg`` asks for (see the module doc) into ``out/panoramas/``."""
    mode, folder, poses = plan(scene, sim, cfg)
    width = cfg.panorama_width or scene.frames[0].intrinsics.width
    target = out / "panoramas" / folder
    target.mkdir(parents=True, exist_ok=True)
    inv = sim.inverse()
    names = frame_names(scene)
    metric = metric_centres(centres_json, names)
    to_metric = None
    if metric is not None and mode == "at" and len(names) >= 3:
        to_metric = umeyama(inv.apply_points(np.stack([f.c2w[:3, 3] for f in scene.frames])), metric)
    forward, videos = None, {}
    if mode == "walk":
        up = camera_up(np.stack([f.c2w for f in scene.frames]))
        forward = forward_views(np.stack([p.c2w[:3, 3] for p in poses]), up)
        if cfg.video:
            videos = {"pano": open_video(target / "video.mp4", cfg.fps),
                      "forward": open_video(target / "video_forward.mp4", cfg.fps)}
    k_forward = intrinsics_from_fov(cfg.walk_view_width, round(cfg.walk_view_width * 9 / 16), cfg.walk_fov_deg)
    entries = []
    try:
        for k, pose in enumerate(progress(poses, desc=f"panoramas ({mode})")):
            stem = {"between": f"{k:02d}_t{pose.t:.3f}", "at": f"at_{k:02d}", "walk": f"pano_{k:05d}"}[mode]
            r = render_panorama(model, pose.c2w, width, device, cfg.chunk)
            depth = (r["depth"] / sim.scale).astype(np.float32)  # range, original units
            rgb = to_uint8(r["rgb"])
            write_png(target / f"{stem}.png", rgb)
            entry = {"file": f"{folder}/{stem}.png", "c2w": inv.apply_c2w(pose.c2w).tolist(),
                     "centre": inv.apply_points(pose.c2w[None, :3, 3])[0].tolist()}
            if mode != "walk":
                np.save(target / f"{stem}_depth.npy", depth)
                write_png(target / f"{stem}_depth_preview.png", depth_preview(depth, r["acc"] > 0.5))
                entry["depth_file"] = f"{folder}/{stem}_depth.npy"
            if mode != "at":
                entry.update(between=[names[pose.a], names[pose.b]], t=pose.t)
                if metric is not None:
                    entry["centre_m"] = ((1 - pose.t) * metric[pose.a] + pose.t * metric[pose.b]).tolist()
            elif to_metric is not None:
                entry["centre_m"] = to_metric.apply_points(np.array(entry["centre"])[None])[0].tolist()
            if forward is not None:
                view = render_image(model, Cameras.from_intrinsics([k_forward], forward[k][None], device=device),
                                    chunk=cfg.chunk)
                frame = to_uint8(view["rgb"].clamp(0, 1).numpy())
                write_png(target / f"forward_{k:05d}.png", frame)
                entry["forward_file"] = f"{folder}/forward_{k:05d}.png"
                if videos:
                    videos["pano"].append_data(rgb)
                    videos["forward"].append_data(frame)
            entries.append(entry)
    finally:
        for writer in videos.values():
            writer.close()
    listing = {"mode": mode, "folder": folder, "width": int(width + width % 2), "height": int((width + width % 2) // 2),
               "units": "centre and c2w (OpenCV camera-to-world) in the original scene units; depth .npy = range "
                        "in the original units; centre_m: metres of centres/centres.json",
               "panoramas": entries}
    write_json(out / "panoramas" / "panoramas.json", listing)
    log.info(f"export: {len(entries)} panoramas ({mode}, {listing['width']}x{listing['height']}) -> {target}")
    metrics = {"mode": mode, "folder": folder, "count": len(entries), "width": listing["width"],
               "metric": metric is not None}
    if videos:
        metrics["videos"] = [f"{folder}/video.mp4", f"{folder}/video_forward.mp4"]
    return metrics
