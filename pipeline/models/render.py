"""The interface between trained models and everything that renders them (evaluation, exports).

A trained NeRF or IDR model is a :class:`RenderableModel`: it renders batches of rays in the
normalised scene frame and can be queried at points (for meshing). ``render_image`` renders a
whole camera view in chunks so memory stays bounded at any resolution.
"""
from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch

from pipeline.geometry.cameras import Cameras, pixel_grid
from pipeline.runner.config import ConfigError


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


AVERAGED_OUTPUTS = ("rgb", "acc")  # what a supersampled render averages over each pixel's area


def check_supersample(value: int, key: str = "supersample") -> None:
    """A ConfigError naming ``key`` unless ``value`` (rays per pixel side) is >= 1."""
    if value < 1:
        raise ConfigError(f"{key} must be >= 1 (rays per pixel side; 1 = the pixel centre), got {value}")


def subpixel_offsets(samples: int) -> list[tuple[float, float]]:
    """The ``samples`` x ``samples`` stratified points of a pixel's area, as offsets from its corner
    in [0, 1)^2, row by row; for odd ``samples`` the middle one is the centre (0.5, 0.5)."""
    check_supersample(samples)
    steps = [(i + 0.5) / samples for i in range(samples)]
    return [(x, y) for y in steps for x in steps]


@torch.no_grad()
def render_image(model: RenderableModel, camera: Cameras, chunk: int = 8192,
                 width: Optional[int] = None, height: Optional[int] = None,
                 supersample: int = 1) -> dict[str, torch.Tensor]:
    """Render one camera (a batch of size 1) in chunks of ``chunk`` rays.

    Returns ``rgb`` (H, W, 3), ``depth`` (H, W) in the camera model's depth convention (z-depth for
    perspective cameras, range for equirect), ``t`` (H, W), ``acc`` (H, W) and ``normal``
    (H, W, 3) when the model gives it. Results stay on the model's device chunk by chunk and are
    gathered on the CPU, so peak device memory depends on ``chunk``, not on the resolution.

    ``supersample`` k > 1: ``rgb`` and ``acc`` are the means over k x k rays spread over each
    pixel's area (a photo's pixel integrates its area, so edges come out anti-aliased as in the
    photos); ``depth``, ``t`` and ``normal`` stay those of the pixel-centre ray (a depth of one
    surface, not a blend of two). Costs k^2 renders (k^2 + 1 for even k).
    """
    w = int(camera.width[0]) if width is None else width
    h = int(camera.height[0]) if height is None else height
    centre = _render_pixels(model, camera, w, h, chunk, (0.5, 0.5), keys=None)
    if supersample == 1:
        return centre
    offsets = subpixel_offsets(supersample)
    sums = {key: torch.zeros_like(centre[key]) for key in AVERAGED_OUTPUTS if key in centre}
    for offset in offsets:
        part = centre if offset == (0.5, 0.5) else _render_pixels(model, camera, w, h, chunk, offset, sums.keys())
        for key in sums:
            sums[key] += part[key]
    return {**centre, **{key: total / len(offsets) for key, total in sums.items()}}


def _render_pixels(model, camera: Cameras, w: int, h: int, chunk: int, offset: tuple[float, float],
                   keys) -> dict[str, torch.Tensor]:
    """Every pixel's ray through the point ``offset`` (from the pixel's corner) -> outputs (H, W, ...),
    only ``keys`` of them when given."""
    outputs: dict[str, list[torch.Tensor]] = {}
    n = w * h
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n), device=camera.device)
        uv = torch.stack([(idx % w).to(camera.fx.dtype) + offset[0], (idx // w).to(camera.fx.dtype) + offset[1]], -1)
        rays_o, rays_d, z_scale = camera.generate_rays(uv)
        out = dict(model.render_rays(rays_o, rays_d))
        out["depth"] = out["t"] * z_scale
        for key, value in out.items():
            if (keys is None or key in keys) and isinstance(value, torch.Tensor) and value.shape[:1] == (len(idx),):
                outputs.setdefault(key, []).append(value.detach().float().cpu())
    result = {}
    for key, parts in outputs.items():
        full = torch.cat(parts, 0)
        result[key] = full.reshape(h, w, *full.shape[1:])
    return result


__all__ = ["RenderableModel", "DensityModel", "SDFModel", "render_image", "check_supersample", "subpixel_offsets", "pixel_grid"]
