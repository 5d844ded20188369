"""NeRF training data: every training pixel of a scene as a flat table, from which each step draws
its rays (uniformly, near the alpha silhouettes, or by each pixel's last error).

Equirect panoramas stretch the poles: a row at latitude phi covers cos(phi) of the solid angle of
the equator's row. With ``latitude_weighting`` their rows are drawn in proportion to cos(phi), so
rays are uniform on the sphere and the poles do not dominate the loss (perspective views keep
uniform pixels)."""
from __future__ import annotations

from typing import Optional

import math

import numpy as np
import torch

from pipeline.geometry.masks import mask_edges


class PixelData:
    """The training pixels of a scene: colours (P, 3 or 4) and, per pixel, its view and (u, v)."""

    def __init__(self, scene, indices: list[int], device, use_alpha: bool, edge_fraction: float = 0.0,
                 edge_width: int = 2, latitude_weighting: bool = False):
        colors, offsets, edges = [], [0], []
        self.sizes = []
        for i in indices:
            img = scene.load_rgba(i) if use_alpha else scene.load_image(i)
            if use_alpha and img.shape[-1] == 3:
                img = np.concatenate([img, np.ones_like(img[..., :1])], -1)
            h, w = img.shape[:2]
            colors.append(torch.from_numpy(np.ascontiguousarray(img.reshape(-1, img.shape[-1]))))
            if use_alpha and edge_fraction > 0:
                edge = mask_edges(torch.from_numpy(img[..., 3] > 0.5), edge_width).reshape(-1)
                edges.append(torch.nonzero(edge)[:, 0] + offsets[-1])
            self.sizes.append((h, w))
            offsets.append(offsets[-1] + h * w)
        self.colors = torch.cat(colors).to(device)
        self.edge_pixels = torch.cat(edges).to(device) if edges else None
        self.edge_fraction = edge_fraction if self.edge_pixels is not None and len(self.edge_pixels) else 0.0
        self.error_fraction = 0.0
        self.pixel_error: Optional[torch.Tensor] = None  # (P,) each pixel's last squared error
        self.offsets = torch.tensor(offsets, device=device)
        self.widths = torch.tensor([w for _, w in self.sizes], device=device)
        self.cameras = scene.cameras(indices, device=device)
        self.num_pixels = offsets[-1]
        self.row_cdf: Optional[torch.Tensor] = None  # (total rows,) when rows are drawn by weight
        if latitude_weighting and any(scene.frames[i].intrinsics.model == "equirect" for i in indices):
            self._weight_rows([scene.frames[i].intrinsics.model == "equirect" for i in indices], device)

    def _weight_rows(self, equirect: list[bool], device) -> None:
        """Row table of every view: each row drawn with probability ~ its pixels' solid angle
        (width x cos(latitude) for panoramas, width for perspective views)."""
        weights, views, rows = [], [], []
        for view, ((h, w), is_pano) in enumerate(zip(self.sizes, equirect)):
            lat = math.pi / 2 - (torch.arange(h, dtype=torch.float64) + 0.5) / h * math.pi
            weights.append(w * (torch.cos(lat) if is_pano else torch.ones(h, dtype=torch.float64)))
            views.append(torch.full((h,), view, dtype=torch.long))
            rows.append(torch.arange(h))
        self.row_cdf = torch.cumsum(torch.cat(weights), 0).to(device)
        self.row_view = torch.cat(views).to(device)
        self.row_index = torch.cat(rows).to(device)

    def _uniform_pixels(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n pixels (n,) drawn uniformly, or uniformly on the sphere for panoramas (row table)."""
        device = self.colors.device
        if self.row_cdf is None:
            return torch.randint(0, self.num_pixels, (n,), generator=generator, device=device)
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64) * self.row_cdf[-1]
        row = torch.searchsorted(self.row_cdf, u).clamp_max(len(self.row_cdf) - 1)
        view = self.row_view[row]
        w = self.widths[view]
        col = (torch.rand(n, generator=generator, device=device) * w).long().clamp_max(w - 1)
        return self.offsets[view] + self.row_index[row] * w + col

    def enable_error_map(self, fraction: float) -> None:
        """Draw ``fraction`` of each batch in proportion to the pixels' last errors (instant-ngp's
        error-map sampling). Unseen pixels start at the largest error so that every one is drawn."""
        self.error_fraction = fraction
        self.pixel_error = torch.ones(self.num_pixels, device=self.colors.device)

    def record_error(self, pixels: torch.Tensor, error: torch.Tensor) -> None:
        """pixels (n,) int64 from :meth:`sample`, error (n,) their squared errors (error map enabled)."""
        self.pixel_error[pixels] = error.detach().float()

    def sample(self, n: int, generator: torch.Generator):
        """n random pixels -> rays_o, rays_d (n, 3), colours (n, C), pixels (n,) (rows of ``colors``)."""
        device = self.colors.device
        pix = self._uniform_pixels(n, generator)
        n_edge = int(round(n * self.edge_fraction))
        if n_edge:
            pick = torch.randint(0, len(self.edge_pixels), (n_edge,), generator=generator, device=device)
            pix[:n_edge] = self.edge_pixels[pick]
        n_error = int(round(n * self.error_fraction))
        if n_error:
            cdf = torch.cumsum(self.pixel_error, 0, dtype=torch.float64)
            u = torch.rand(n_error, generator=generator, device=device, dtype=torch.float64) * cdf[-1]
            pix[n_edge:n_edge + n_error] = torch.searchsorted(cdf, u).clamp_max(self.num_pixels - 1)
        view = torch.searchsorted(self.offsets, pix, right=True) - 1
        local = pix - self.offsets[view]
        w = self.widths[view]
        uv = torch.stack([(local % w).float(), (local // w).float()], -1) + 0.5
        rays_o, rays_d, _ = self.cameras[view].generate_rays(uv)
        return rays_o, rays_d, self.colors[pix], pix
