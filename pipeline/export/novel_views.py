"""Novel views of a trained model along a camera path: PNG frames, an H.264 video and the path as
a nerfstudio camera_path.json."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.export.config import ExportConfig
from pipeline.export.images import to_uint8, write_png
from pipeline.geometry.camera_paths import intrinsics_from_fov, make_path, vertical_fov_deg, write_nerfstudio_camera_path
from pipeline.models.render import render_image
from pipeline.runner.log import progress


def path_intrinsics(scene, cfg: ExportConfig):
    """The path's camera: ``cfg.width/height/fov_deg``, else the first training camera's."""
    first = scene.frames[scene.splits.get("train", [0])[0] if scene.splits.get("train") else 0].intrinsics
    perspective = first.model != "equirect"
    width = cfg.width or (first.width if perspective else 640)
    height = cfg.height or (round(width * first.height / first.width) if perspective else round(width * 3 / 4))
    fov = cfg.fov_deg or (vertical_fov_deg(first) if perspective else 50.0)
    return intrinsics_from_fov(width, height, fov)


def make_camera_path(scene, sim, cfg: ExportConfig):
    """The camera path of ``cfg.path`` in the normalised frame."""
    train = scene.splits.get("train") or list(range(len(scene)))
    train_c2w = np.stack([scene.frames[i].c2w for i in train])
    path = make_path(cfg.path, train_c2w, cfg.frames, path_intrinsics(scene, cfg), bounds=scene.bounds,
                     path_file=cfg.path_file, fps=cfg.fps,
                     radius=None if cfg.orbit_radius is None else cfg.orbit_radius * sim.scale,
                     elevation_deg=cfg.orbit_elevation_deg, keyframes=cfg.smooth_keyframes)
    if cfg.path == "file" and (cfg.width or cfg.height or cfg.fov_deg):
        path = path.with_intrinsics(path_intrinsics(scene, cfg))
    return path


def open_video(path: Path, fps: float):
    import imageio.v2 as iio2

    # macro_block_size=2: H.264 (yuv420p) needs even sizes; other sizes are padded by 1 pixel at most
    return iio2.get_writer(str(path), fps=fps, codec="libx264", quality=8, macro_block_size=2,
                           ffmpeg_log_level="error")


def export_views(model, scene, sim, cfg: ExportConfig, out: Path, device, log) -> dict:
    """Render the camera path into ``out/views/``: frames, video, camera_path.json."""
    views_dir = out / "views"
    views_dir.mkdir(parents=True, exist_ok=True)
    path = make_camera_path(scene, sim, cfg)
    write_nerfstudio_camera_path(views_dir / "camera_path.json", path)
    writer = open_video(views_dir / "video.mp4", path.fps) if cfg.video else None
    try:
        for i in progress(range(len(path)), desc=f"views ({cfg.path})"):
            r = render_image(model, path.camera(i, device=device), chunk=cfg.chunk, supersample=cfg.supersample)
            frame = to_uint8(r["rgb"].numpy())
            if cfg.save_frames:
                write_png(views_dir / f"frame_{i:05d}.png", frame)
            if cfg.view_depth:
                np.save(views_dir / f"depth_{i:05d}.npy", (r["depth"].numpy() / sim.scale).astype(np.float32))
            if writer is not None:
                writer.append_data(frame)
    finally:
        if writer is not None:
            writer.close()
    k = path.intrinsics[0]
    log.info(f"export: {len(path)} frames ({cfg.path}, {k.width}x{k.height}) -> {views_dir}")
    return {"frames": len(path), "path": cfg.path, "width": k.width, "height": k.height, "fps": path.fps,
            "supersample": cfg.supersample}
