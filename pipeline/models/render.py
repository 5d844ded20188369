"""The interface between trained models and everything that renders them (evaluation, exports).

A trained NeRF or IDR model is a :class:`RenderableModel`: it renders batches of rays in the
normalised scene frame and can be queried at points (for meshing). ``render_image`` renders a
whole camera view in chunks so memory stays bounded at any resolution.
"""
from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch

from pipeline.geometry.cameras import Cameras, pixel_grid


@runtime_checkable
class RenderableModel(Protocol):
    """What a trained field offers to evaluation and exports (normalised scene frame).

    ``render_rays`` returns at least ``rgb`` (N, 3) in [0, 1], ``t`` (N,) the expected distance
    along the unit ray (background rays: any value, with ``acc`` near 0) and ``acc`` (N,) the
    accumulated opacity; optionally ``normal`` (N, 3) world-space unit normals.
    """

    def render_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def query_color(self, points: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        """points, dirs: (N, 3) -> rgb (N, 3)."""
        ...


@runtime_checkable
class DensityModel(RenderableModel, Protocol):
    def query_density(self, points: torch.Tensor) -> torch.Tensor:
        """points: (N, 3) -> volume density sigma (N,)."""
        ...


@runtime_checkable
class SDFModel(RenderableModel, Protocol):
    def query_sdf(self, points: torch.Tensor) -> torch.Tensor:
        """points: (N, 3) -> signed distance (N,), negative inside."""
        ...


@torch.no_grad()
def render_image(model: RenderableModel, camera: Cameras, chunk: int = 8192,
                 width: Optional[int] = None, height: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Render one camera (a batch of size 1) in chunks of ``chunk`` rays.

    Returns ``rgb`` (H, W, 3), ``depth`` (H, W) in the camera model's depth convention (z-depth for
    perspective cameras, range for equirect), ``t`` (H, W), ``acc`` (H, W) and ``normal``
    (H, W, 3) when the model gives it. Results stay on the model's device chunk by chunk and are
    gathered on the CPU, so peak device memory depends on ``chunk``, not on the resolution.
    """
    w = int(camera.width[0]) if width is None else width
    h = int(camera.height[0]) if height is None else height
    outputs: dict[str, list[torch.Tensor]] = {}
    n = w * h
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n), device=camera.device)
        uv = torch.stack([(idx % w).to(camera.fx.dtype), (idx // w).to(camera.fx.dtype)], -1) + 0.5
        rays_o, rays_d, z_scale = camera.generate_rays(uv)
        out = model.render_rays(rays_o, rays_d)
        out = dict(out)
        out["depth"] = out["t"] * z_scale
        for key, value in out.items():
            if isinstance(value, torch.Tensor) and value.shape[:1] == (len(idx),):
                outputs.setdefault(key, []).append(value.detach().float().cpu())
    result = {}
    for key, parts in outputs.items():
        full = torch.cat(parts, 0)
        result[key] = full.reshape(h, w, *full.shape[1:])
    return result


__all__ = ["RenderableModel", "DensityModel", "SDFModel", "render_image", "pixel_grid"]
