"""One NeRF fitted to chosen views of a scene, from a nerf-stage-like config: the training data, the
model in its box, the occupancy grid restricted to what the views see, and the training loop.

Shared by the nerf stage and by the eval stage's leave-one-out models (``holdout=``), which train
a field with the nerf stage's settings on every panorama but the held-out one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import torch

from pipeline.models.nerf.io import build_model, model_config_from_dict
from pipeline.models.nerf.model import NeRFModel, default_aabb
from pipeline.runner.log import get_logger
from pipeline.training.common import check_budget, resume_config, settings_from, views_fingerprint
from pipeline.training.nerf import NeRFTrainSettings, train
from pipeline.training.nerf_data import PixelData

# nerf stage keys a resumed run may change: the budget, checkpoint periods, evaluation, threads
# (the device actually used is recorded instead of ``device``)
NOT_RESUME_KEYS = ("max_steps", "max_time_s", "checkpoint_every", "checkpoint_every_s", "eval_chunk",
                   "eval_max_views", "lpips", "cpu_threads", "device", "data_memory_gb")


def uses_alpha(scene, indices: list[int], background: str) -> bool:
    """Whether training composites alpha (RGBA images, a background other than the scene's own)."""
    return background != "scene" and scene.has_masks and all(
        scene.frames[i].image_path.suffix.lower() == ".png" for i in indices)


def fit_nerf(scene, train_idx: list[int], cfg: Any, device: torch.device, resume_dir: Optional[Path],
             log=None) -> tuple[NeRFModel, dict]:
    """Train a NeRF on the frames ``train_idx`` of ``scene`` (normalised frame). ``cfg``: the nerf
    stage's config or any object with its attributes (:func:`config_from_dict`). Resumes from the
    checkpoint in ``resume_dir``. Returns (the model, training statistics)."""
    log = log or get_logger("nerf")
    check_budget(cfg)
    if not train_idx:
        raise ValueError("no training views left: every frame is held out")
    torch.manual_seed(cfg.seed)
    settings = settings_from(NeRFTrainSettings, cfg)
    use_alpha = uses_alpha(scene, train_idx, cfg.background)
    data = PixelData(scene, train_idx, device, use_alpha, cfg.edge_fraction, cfg.edge_width,
                     latitude_weighting=getattr(cfg, "latitude_weighting", False),
                     memory_gb=getattr(cfg, "data_memory_gb", 0.0), cache_dir=resume_dir)
    if not use_alpha and cfg.background in ("random", "learned"):
        log.info("nerf: images have no alpha; training against their own background")
    aabb = default_aabb(scene.bounds, cfg.scene_radius)
    model_cfg = cfg.model
    fraction = getattr(cfg, "camera_near_fraction", 0.0)
    if fraction > 0:
        model_cfg = replace(model_cfg, near_plane=fraction * neighbour_spacing(scene, train_idx))
        log.info(f"nerf: rays start {model_cfg.near_plane:.4g} from the cameras (camera_near_fraction={fraction:g} "
                 f"of the median distance between neighbouring cameras)")
    model = build_model(model_cfg, aabb, scene.background, cfg.background).to(device)
    if model.occupancy is not None:
        model.occupancy.restrict_to_views(data.cameras, cfg.occupancy_min_views)
    rows = " (rows drawn by cos(latitude))" if data.row_cdf is not None else ""
    log.info(f"nerf: {cfg.model.kind} model ({model.sampler} sampler), {len(train_idx)} training views "
             f"({data.num_pixels} pixels{rows}), box {[[round(v, 3) for v in r] for r in aabb.tolist()]}, "
             f"device {device}")
    resume = resume_config(cfg, NOT_RESUME_KEYS, device=str(device), views=views_fingerprint(scene, train_idx))
    stats = train(model, data, settings, device, resume_dir, log, resume)
    return model, stats


def neighbour_spacing(scene, indices: list[int]) -> float:
    """The median distance from each camera of ``indices`` to its nearest neighbour (0 for one camera)."""
    centres = np.stack([scene.frames[i].c2w[:3, 3] for i in indices])
    if len(centres) < 2:
        return 0.0
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float(np.median(d.min(1)))


def config_from_dict(config: dict, **overrides) -> SimpleNamespace:
    """A nerf stage config recorded as a dict (a manifest's ``config``) as an object with the same
    attributes (``model`` rebuilt as a NeRFModelConfig), with ``overrides`` applied."""
    d = dict(config)
    model = d.get("model", {})
    d["model"] = model if dataclasses.is_dataclass(model) else model_config_from_dict(model)
    d.update(overrides)
    missing = [f.name for f in dataclasses.fields(NeRFTrainSettings) if f.name not in d]
    missing += [k for k in ("scene_radius", "edge_fraction", "edge_width", "occupancy_min_views") if k not in d]
    if missing:
        raise ValueError(f"the recorded nerf config lacks {missing}; re-run the nerf stage "
                         "(python run.py nerf --workspace W --force)")
    return SimpleNamespace(**d)
