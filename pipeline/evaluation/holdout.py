"""Leave-one-out evaluation of panoramas (``python run.py eval --workspace W holdout=c``).

For each held-out panorama c: a field trained WITHOUT c (the nerf stage's own model when it was
trained with c in its ``holdout``, otherwise one trained here with the nerf stage's recorded
settings and the eval stage's time budget), rendered at c's pose and scored against the real
panorama with WS-PSNR, PSNR, SSIM and WS-SSIM; beside it the same scores of the nearest-panorama
baseline (the nearest panorama the field was trained on, resampled to c's orientation). Writes
``holdout/<c>_compare.png`` (real / render / baseline, top to bottom), ``holdout/<c>_render.png``,
``holdout/<c>_baseline.png``, ``holdout/<c>_depth.npy`` (range, ORIGINAL units) and, for fields
trained here, ``holdout/<c>/model.pt``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.evaluation.metrics import psnr, ssim
from pipeline.evaluation.views import finite
from pipeline.export.images import to_uint8, write_png
from pipeline.models.nerf import io as nerf_io
from pipeline.models.render import render_image
from pipeline.panoramas.holdout import frame_names, nearest_training, parse_names, resolve_names
from pipeline.panoramas.metrics import nearest_panorama_baseline, ws_psnr, ws_ssim
from pipeline.runner.runtime import torch_threads
from pipeline.runner.workspace import Workspace, WorkspaceError
from pipeline.training.common import check_non_negative
from pipeline.training.nerf_fit import config_from_dict, fit_nerf

SCORES = ("ws_psnr", "psnr", "ssim", "ws_ssim")


def score(image: np.ndarray, target: np.ndarray) -> dict:
    """The holdout scores of an equirect image (H, W, 3) against the real panorama."""
    return {"ws_psnr": finite(ws_psnr(image, target)), "psnr": finite(psnr(image, target)),
            "ssim": ssim(image, target), "ws_ssim": ws_ssim(image, target)}


def nerf_stage_settings(workspace: Workspace) -> dict:
    """The nerf stage's recorded config (``W/nerf/manifest.json``); the leave-one-out fields use it."""
    manifest = workspace.manifest("nerf")
    if not manifest or manifest.get("status") != "done":
        raise WorkspaceError(f"holdout needs the nerf stage's settings: run `python run.py nerf --workspace "
                             f"{workspace.root} --config nerf-panorama` first")
    return manifest["config"]


def labelled(image: np.ndarray, text: str) -> np.ndarray:
    """uint8 image (H, W, 3) with ``text`` in its top-left corner (white on a dark box)."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    scale = max(0.4, image.shape[0] / 512)
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    out[:h + base + 8, :w + 10] //= 3
    cv2.putText(out, text, (5, h + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def holdout_field(workspace: Workspace, scene, target: int, settings: dict, out_dir: Path, resume_dir: Path,
                  device, max_time_s: float, log):
    """(model, training frame indices, description): the nerf stage's model when it was trained
    without frame ``target``, else a field trained here without it."""
    name = scene.frames[target].name
    nerf_held = resolve_names(scene, parse_names(settings.get("holdout", "")), "nerf holdout")
    train_all = list(scene.splits.get("train") or range(len(scene)))
    if target in nerf_held:
        train = [i for i in train_all if i not in nerf_held]
        kept = [scene.frames[i].name for i in nerf_held]
        source = f"nerf stage (trained without {', '.join(kept)})"
        return nerf_io.load_trained(workspace, device), train, {"source": source}
    train = [i for i in train_all if i != target]
    cfg = config_from_dict(settings, max_time_s=max_time_s, holdout=name)
    log.info(f"eval: the nerf stage's model saw {name}; training a leave-one-out field without it here "
             f"(the nerf stage's settings, max_time_s={max_time_s:g})")
    resume = resume_dir / f"holdout-{name}"  # an interrupted eval resumes this field's training
    resume.mkdir(parents=True, exist_ok=True)
    model, stats = fit_nerf(scene, train, cfg, device, resume, log)
    (out_dir / name).mkdir(parents=True, exist_ok=True)
    nerf_io.save_model(out_dir / name / "model.pt", model, cfg.background, scene.background,
               {**settings, "max_time_s": max_time_s, "holdout": name})
    model.eval()
    return model, train, {"source": f"trained by eval without {name} (nerf stage's settings, "
                                    f"max_time_s={max_time_s:g})", "steps": stats["steps"],
                          "train_time_s": stats["train_time_s"]}


def evaluate_holdout(workspace: Workspace, scene, sim, holdout: str, out: Path, resume_dir: Path, device, log,
                     max_time_s: float = 300.0, chunk: int = 8192) -> dict:
    """Leave-one-out scores of each panorama named in ``holdout`` (comma-separated stems).
    ``max_time_s``: training budget of each field trained here (0 = no time budget: the nerf
    stage's max_steps; negative is a ConfigError)."""
    check_non_negative(holdout_max_time_s=max_time_s)
    targets = resolve_names(scene, parse_names(holdout))
    if not targets:
        raise ValueError(f"holdout={holdout!r}: name one or more panoramas; available stems: "
                         f"{', '.join(frame_names(scene))}")
    not_pano = [scene.frames[t].name for t in targets if scene.frames[t].intrinsics.model != "equirect"]
    if not_pano:
        raise ValueError(f"holdout: {', '.join(not_pano)} are not equirect panoramas; leave-one-out "
                         "evaluation is for panoramas")
    settings = nerf_stage_settings(workspace)
    out_dir = out / "holdout"
    out_dir.mkdir(parents=True, exist_ok=True)
    per, centres = {}, np.stack([f.c2w[:3, 3] for f in scene.frames])
    for target in targets:
        frame = scene.frames[target]
        with torch_threads(int(settings.get("cpu_threads", 0))):
            model, train, info = holdout_field(workspace, scene, target, settings, out_dir, resume_dir, device,
                                               max_time_s, log)
            r = render_image(model, scene.cameras([target], device=device), chunk=chunk)
        real = scene.load_image(target)
        render = r["rgb"].clamp(0, 1).numpy()
        near = nearest_training(scene, target, train)
        baseline = nearest_panorama_baseline(scene.load_image(near), scene.frames[near].c2w, frame.c2w,
                                             real.shape[:2])
        row = {**info, "nerf": score(render, real), "baseline": score(baseline, real),
               "nearest": scene.frames[near].name,
               "nearest_distance": float(np.linalg.norm(centres[near] - centres[target]) / sim.scale),
               "images": f"holdout/{frame.name}_compare.png"}
        if row["nerf"]["ws_psnr"] is not None and row["baseline"]["ws_psnr"] is not None:
            row["gain_ws_psnr_db"] = row["nerf"]["ws_psnr"] - row["baseline"]["ws_psnr"]
        np.save(out_dir / f"{frame.name}_depth.npy", (r["depth"].numpy() / sim.scale).astype(np.float32))
        write_png(out_dir / f"{frame.name}_render.png", to_uint8(render))
        write_png(out_dir / f"{frame.name}_baseline.png", to_uint8(baseline))
        n, b = row["nerf"], row["baseline"]
        write_png(out_dir / f"{frame.name}_compare.png", np.concatenate([
            labelled(to_uint8(real), f"real {frame.name}"),
            labelled(to_uint8(render), f"NeRF without it: WS-PSNR {n['ws_psnr']:.2f} dB, SSIM {n['ssim']:.3f}"),
            labelled(to_uint8(baseline), f"nearest ({row['nearest']}) rotated: WS-PSNR {b['ws_psnr']:.2f} dB, "
                                         f"SSIM {b['ssim']:.3f}")], 0))
        log.info(f"eval: holdout {frame.name}: NeRF WS-PSNR {n['ws_psnr']:.2f} dB vs nearest panorama "
                 f"{row['nearest']} {b['ws_psnr']:.2f} dB")
        per[frame.name] = row
    result: dict = {"panoramas": per, "units": "nearest_distance in the original scene units"}
    for key in SCORES:
        for side in ("nerf", "baseline"):
            values = [p[side][key] for p in per.values() if p[side][key] is not None]
            if values:
                result[f"{side}_{key}"] = float(np.mean(values))
    if "nerf_ws_psnr" in result and "baseline_ws_psnr" in result:
        result["gain_ws_psnr_db"] = result["nerf_ws_psnr"] - result["baseline_ws_psnr"]
    return result
