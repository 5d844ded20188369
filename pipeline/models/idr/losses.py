"""IDR losses (Yariv et al. 2020, section 3.4) and the mask-loss alpha schedule.

- RGB: L1 between rendered and observed colour on rays inside the mask that hit the surface;
- mask: for every other ray, the binary cross-entropy of sigmoid(-alpha * min f along the ray)
  against the mask, divided by alpha (alpha grows during training, sharpening the silhouette);
- eikonal: (|grad f| - 1)^2 on uniform and near-surface points.

Sums are divided by the number of rays in the batch, as in the paper's code, so the weights
(1, 100, 0.1 for RGB, mask, eikonal) keep their meaning for any mix of hit and missed rays.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class LossConfig:
    rgb_weight: float = 1.0
    mask_weight: float = 100.0  # IDR: 100
    eikonal_weight: float = 0.1  # IDR: 0.1
    alpha_init: float = 50.0  # IDR: 50
    alpha_factor: float = 2.0  # IDR: x2 at each milestone
    # IDR doubles alpha at epochs 250, 500, 750, 1000, 1250 of 2000: the same fractions of training
    alpha_milestones: list[float] = field(default_factory=lambda: [0.125, 0.25, 0.375, 0.5, 0.625])
    # normal smoothness (not in IDR; as in Oechsle et al. UNISURF / Zhang et al. PhySG): the normals
    # at surface points and at points displaced by N(0, smoothness_std^2) should agree
    smoothness_weight: float = 0.0
    smoothness_std: float = 0.01


def mask_alpha(config: LossConfig, progress: float) -> float:
    """alpha of the mask loss at ``progress`` in [0, 1] of training."""
    passed = sum(progress >= m for m in config.alpha_milestones)
    return config.alpha_init * config.alpha_factor ** passed


def rgb_loss(rgb_pred: torch.Tensor, rgb_gt: torch.Tensor, num_rays: int) -> torch.Tensor:
    """rgb_pred, rgb_gt: (M, 3) on in-mask rays that hit the surface."""
    if len(rgb_pred) == 0:
        return rgb_pred.sum() * 0.0
    return (rgb_pred - rgb_gt).abs().sum() / num_rays


def mask_loss(min_sdf: torch.Tensor, mask_gt: torch.Tensor, alpha: float, num_rays: int) -> torch.Tensor:
    """min_sdf: (K,) smallest f along each ray not used by the RGB loss; mask_gt: (K,) bool."""
    if len(min_sdf) == 0:
        return min_sdf.sum() * 0.0
    logits = -alpha * min_sdf
    return F.binary_cross_entropy_with_logits(logits, mask_gt.float(), reduction="sum") / alpha / num_rays


def smoothness_loss(grad_a: torch.Tensor, grad_b: torch.Tensor) -> torch.Tensor:
    """grad_a, grad_b: (P, 3) SDF gradients at nearby points -> mean |n_a - n_b| of the unit normals."""
    if len(grad_a) == 0:
        return grad_a.sum() * 0.0
    n_a = grad_a / grad_a.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    n_b = grad_b / grad_b.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return (n_a - n_b).norm(dim=-1).mean()


def eikonal_loss(grad: torch.Tensor) -> torch.Tensor:
    """grad: (P, 3) SDF gradients -> mean (|grad| - 1)^2."""
    if len(grad) == 0:
        return grad.sum() * 0.0
    return ((grad.norm(dim=-1) - 1.0) ** 2).mean()


__all__ = ["LossConfig", "mask_alpha", "rgb_loss", "mask_loss", "eikonal_loss", "smoothness_loss"]
