"""NeRF training data: every training pixel of a scene in a flat uint8 table, from which each step
draws its rays (uniformly, near the alpha silhouettes, or by each pixel's last error); a ray is
made from each drawn pixel's (view, u, v) through its camera, never stored.

Memory: the table holds 1 byte per channel (RGB, or RGBA when training composites alpha): 4 B
per pixel for RGBA, a quarter of float32 (``pipeline.training.pixel_store``). It stays in RAM
within ``memory_gb`` (0 = half of the available RAM), else it is decoded once into a ``.npy``
file in ``cache_dir`` and memory-mapped. On CUDA the table moves to the GPU when it takes at most
a quarter of the free GPU memory (a gather on the device saves a host round trip per step);
otherwise each step gathers its batch (a few kB) on the host and copies it over. Only the batch
becomes float. The error map (``error_fraction`` > 0) adds 2 B per pixel (float16) on the
training device, and each step draws from it through a float64 cumulative sum (8 B per pixel,
transient). 8-bit images are stored exactly; 16-bit and float images are rounded to 8 bits.

Equirect panoramas stretch the poles: a row at latitude phi covers cos(phi) of the solid angle of
the equator's row. With ``latitude_weighting`` their rows are drawn in proportion to cos(phi), so
rays are uniform on the sphere and the poles do not dominate the loss (perspective views keep
uniform pixels)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import math

import numpy as np
import torch

from pipeline.geometry.masks import mask_edges
from pipeline.training.pixel_store import build_store, files_key, memory_budget_bytes, quantize_uint8, to_float

# on CUDA the pixel table moves to the GPU when it needs at most this share of the free GPU memory
DEVICE_MEMORY_FRACTION = 0.25


class PixelData:
    """The training pixels of a scene: ``colors`` (P, 3 or 4) uint8 (a tensor on the training
    device or the host, or a read-only numpy memory map) and, per pixel, its view and (u, v).

    ``memory_gb``: RAM the pixel table may take (0 = auto); ``cache_dir``: where the memory-mapped
    table is written when it does not fit (None: an unlinked temporary file)."""

    def __init__(self, scene, indices: list[int], device, use_alpha: bool, edge_fraction: float = 0.0,
                 edge_width: int = 2, latitude_weighting: bool = False, memory_gb: float = 0.0,
                 cache_dir: Optional[Path] = None):
        device = torch.device(device)
        self.device = device
        channels = 4 if use_alpha else 3

        def load(v: int) -> np.ndarray:
            i = indices[v]
            img = scene.load_rgba(i) if use_alpha else scene.load_image(i)
            if use_alpha and img.shape[-1] == 3:
                img = np.concatenate([img, np.ones_like(img[..., :1])], -1)
            return quantize_uint8(img)

        expected = [_expected_size(scene, i) for i in indices]
        key = files_key([scene.frames[i].image_path for i in indices], use_alpha, scene.background)
        self.store = build_store(expected, channels, load, memory_budget_bytes(memory_gb), cache_dir, key)
        self.sizes = self.store.sizes
        offsets = self.store.offsets
        self.num_pixels = self.store.num_pixels
        self.memory_mapped = self.store.mapped
        self.pixel_bytes = self.store.nbytes  # bytes of the uint8 table
        # the table on the training device when it fits there (CUDA), else on the host
        self.colors_on_device = self.store.tensor is not None and (
            device.type == "cpu" or _fits_on_device(self.store.nbytes, device))
        if self.colors_on_device:
            self.colors = self.store.tensor.to(device)
        else:
            self.colors = self.store.tensor if self.store.tensor is not None else self.store.array
        edges = []
        if use_alpha and edge_fraction > 0:
            for v in range(len(self.sizes)):
                alpha = torch.from_numpy(np.ascontiguousarray(self.store.view(v)[..., 3]) > 127)  # float > 0.5
                edges.append(torch.nonzero(mask_edges(alpha, edge_width).reshape(-1))[:, 0] + int(offsets[v]))
        self.edge_pixels = torch.cat(edges).to(device) if edges else None
        self.edge_fraction = edge_fraction if self.edge_pixels is not None and len(self.edge_pixels) else 0.0
        self.error_fraction = 0.0
        self.pixel_error: Optional[torch.Tensor] = None  # (P,) float16 each pixel's last squared error
        self.offsets = torch.from_numpy(offsets).to(device)
        self.widths = torch.tensor([w for _, w in self.sizes], device=device)
        self.cameras = scene.cameras(indices, device=device)
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
        device = self.device
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
        error-map sampling). Unseen pixels start at the largest error so that every one is drawn.
        float16: 2 B per pixel (its 3 significant digits are plenty for drawing weights)."""
        self.error_fraction = fraction
        self.pixel_error = torch.ones(self.num_pixels, device=self.device, dtype=torch.float16)

    def record_error(self, pixels: torch.Tensor, error: torch.Tensor) -> None:
        """pixels (n,) int64 from :meth:`sample`, error (n,) their squared errors (error map enabled)."""
        self.pixel_error[pixels] = error.detach().to(self.pixel_error.dtype)

    def pixel_colors(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (n,) int64 on the training device -> their colours (n, C) float32 in [0, 1] there."""
        if self.colors_on_device:
            return to_float(self.colors[pixels])
        # a batch of a few kB: a plain copy costs less than pinning a buffer for it
        return to_float(self.store.gather(pixels.cpu()).to(self.device))

    def sample(self, n: int, generator: torch.Generator):
        """n random pixels -> rays_o, rays_d (n, 3), colours (n, C) float32 in [0, 1], pixels (n,)
        (rows of ``colors``)."""
        device = self.device
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
        return rays_o, rays_d, self.pixel_colors(pix), pix


def _expected_size(scene, i: int) -> tuple[int, int]:
    """(H, W) of frame i from its intrinsics (checked against the decoded image)."""
    k = scene.frames[i].intrinsics
    return (int(k.height), int(k.width)) if k is not None else (0, 0)


def _fits_on_device(nbytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_MEMORY_FRACTION * free
