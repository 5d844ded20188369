"""Trainable cameras (IDR's "trained cameras" mode): a pose correction per view.

Each view gets an axis-angle rotation and a translation, both zero at the start, applied in the
camera's own frame: ``c2w' = c2w @ [[R(omega), dt], [0, 1]]``. They are optimised jointly with the
fields through the rays (the sample network passes gradients to ray origins and directions).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pipeline.cameras import Cameras


def axis_angle_to_matrix(omega: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, smooth at zero. omega: (N, 3) -> (N, 3, 3)."""
    theta2 = (omega * omega).sum(-1, keepdim=True)[..., None]  # (N, 1, 1)
    theta = torch.sqrt(theta2 + 1e-12)
    x, y, z = omega.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(-1, 3, 3)
    small = theta2 < 1e-8
    # Taylor expansions below 1e-4 rad keep the coefficients (and their gradients) finite
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / (theta2 + 1e-12))
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(K)
    return eye + a * K + b * (K @ K)


class PoseCorrections(nn.Module):
    """Per-view corrections. ``rotation``, ``translation``: (V, 3) parameters, zero-initialised."""

    def __init__(self, num_views: int):
        super().__init__()
        self.rotation = nn.Parameter(torch.zeros(num_views, 3))
        self.translation = nn.Parameter(torch.zeros(num_views, 3))

    def delta(self, view: torch.Tensor) -> torch.Tensor:
        """view: (N,) indices -> (N, 4, 4) corrections in the camera frame."""
        R = axis_angle_to_matrix(self.rotation[view])
        top = torch.cat([R, self.translation[view].unsqueeze(-1)], -1)
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=top.dtype, device=top.device).expand(len(view), 1, 4)
        return torch.cat([top, bottom], -2)

    def apply(self, c2w: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """c2w: (N, 4, 4) of views ``view`` (N,) -> corrected (N, 4, 4)."""
        return c2w @ self.delta(view)


def corrected_cameras(cameras: Cameras, view: torch.Tensor, corrections: PoseCorrections | None) -> Cameras:
    """The cameras of ``view`` (N,) (one per ray), with pose corrections when given."""
    cams = cameras[view]
    if corrections is None:
        return cams
    return dataclasses.replace(cams, c2w=corrections.apply(cams.c2w, view))


__all__ = ["axis_angle_to_matrix", "PoseCorrections", "corrected_cameras"]
