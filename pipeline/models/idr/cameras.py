"""Trainable cameras (IDR's "trained cameras" mode): a pose correction per view.

Each view gets an axis-angle rotation and a translation, both zero at the start, applied in the
camera's own frame: ``c2w' = c2w @ [[R(omega), dt], [0, 1]]``. They are optimised jointly with the
fields through the rays (the sample network passes gradients to ray origins and directions).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pipeline.geometry.cameras import Cameras


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

    @torch.no_grad()
    def remove_gauge(self, c2w: torch.Tensor) -> None:
        """Remove the part of the corrections that moves every camera by one similarity.

        Images fix a scene only up to a similarity: the field and all the cameras can drift together
        (rotate, shift, scale) without changing a single rendering, and held-out cameras, which are
        not corrected, then see a moved scene. To first order, a world rotation phi, translation tau
        and scale s move view i by omega_w = phi, dc = phi x c_i + tau + s c_i (world frame); this
        fits (phi, tau, s) to all views by least squares and subtracts it. c2w: (V, 4, 4) initial poses.
        """
        R, c = c2w[:, :3, :3].to(self.rotation.dtype), c2w[:, :3, 3].to(self.rotation.dtype)
        omega_w = (R @ self.rotation.unsqueeze(-1)).squeeze(-1)  # (V, 3)
        dc_w = (R @ self.translation.unsqueeze(-1)).squeeze(-1)  # centre displacement, world frame
        v = len(c)
        eye = torch.eye(3, dtype=c.dtype, device=c.device).expand(v, 3, 3)
        zero = torch.zeros(v, 3, 3, dtype=c.dtype, device=c.device)
        cx, cy, cz = c.unbind(-1)
        z1 = torch.zeros_like(cx)
        # phi x c = -[c]_x phi
        neg_skew = -torch.stack([z1, -cz, cy, cz, z1, -cx, -cy, cx, z1], -1).reshape(v, 3, 3)
        rows_rot = torch.cat([eye, zero, torch.zeros(v, 3, 1, dtype=c.dtype, device=c.device)], -1)
        rows_pos = torch.cat([neg_skew, eye, c.unsqueeze(-1)], -1)
        A = torch.cat([rows_rot, rows_pos], 1).reshape(-1, 7)  # (6V, 7)
        b = torch.cat([omega_w, dc_w], -1).reshape(-1, 1)
        gauge = torch.linalg.lstsq(A.double(), b.double()).solution.to(c.dtype)
        residual = (b - A @ gauge).reshape(v, 6)
        self.rotation.copy_((R.transpose(1, 2) @ residual[:, :3].unsqueeze(-1)).squeeze(-1))
        self.translation.copy_((R.transpose(1, 2) @ residual[:, 3:].unsqueeze(-1)).squeeze(-1))


def corrected_cameras(cameras: Cameras, view: torch.Tensor, corrections: PoseCorrections | None) -> Cameras:
    """The cameras of ``view`` (N,) (one per ray), with pose corrections when given."""
    cams = cameras[view]
    if corrections is None:
        return cams
    return dataclasses.replace(cams, c2w=corrections.apply(cams.c2w, view))


__all__ = ["axis_angle_to_matrix", "PoseCorrections", "corrected_cameras"]
