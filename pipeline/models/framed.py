"""A trained model that lives in its own frame, seen from the workspace's normalised frame.

The sdf stage trains in the frame of its region of interest (:mod:`pipeline.geometry.roi`:
``x_model = s R x + t`` of the normalised frame ``x``); exports, eval and the viewer render in the
normalised frame. :class:`FramedModel` moves rays and points into the model's frame and distances,
normals and SDF values back, so it is a :class:`pipeline.models.render.SDFModel` of the
normalised frame like any other.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.geometry.normalize import Similarity


class FramedModel(nn.Module):
    """``inner``: a model whose frame is ``to_inner`` (a :class:`Similarity`) of the outer one."""

    def __init__(self, inner: nn.Module, to_inner: Similarity):
        super().__init__()
        self.inner = inner
        self.to_inner = to_inner
        self.scale = float(to_inner.scale)
        self.register_buffer("rotation", torch.as_tensor(to_inner.rotation, dtype=torch.float32), persistent=False)
        self.register_buffer("translation", torch.as_tensor(to_inner.translation, dtype=torch.float32),
                             persistent=False)
        inner_bounds = getattr(inner, "bounds", None)
        if inner_bounds is not None:  # the meshing box: the inner box's corners, moved out
            self.bounds = to_inner.inverse().apply_box(inner_bounds)
        self.config = getattr(inner, "config", None)

    @property
    def background(self) -> torch.Tensor:
        return self.inner.background

    def points_in(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) outer frame -> model frame."""
        r, t = self.rotation.to(points), self.translation.to(points)
        return self.scale * points @ r.T + t

    def render_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor, *args, **kwargs) -> dict[str, torch.Tensor]:
        """As the inner model's, in the outer frame: ``t`` (N,) in outer units, ``normal`` rotated out."""
        r = self.rotation.to(rays_d)
        out = dict(self.inner.render_rays(self.points_in(rays_o), rays_d @ r.T, *args, **kwargs))
        out["t"] = out["t"] / self.scale
        if "normal" in out:
            out["normal"] = out["normal"] @ r
        return out

    def query_sdf(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) -> (N,): a distance in the model frame is ``s`` times one in the outer frame."""
        return self.inner.query_sdf(self.points_in(points)) / self.scale

    def query_color(self, points: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        return self.inner.query_color(self.points_in(points), dirs @ self.rotation.to(dirs).T)


__all__ = ["FramedModel"]
