"""Training rays of the sdf stage: every pixel of the training views (masks optional), drawn
uniformly; no pixel is left out, since the background field has to explain what lies outside
the object's sphere."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from pipeline.geometry.cameras import pixel_grid
from pipeline.training.idr_data import Views


def full_masks(scene, indices: list[int]) -> list[np.ndarray]:
    """All-true masks (H, W) of the given frames' images: the stand-in when masks are not used."""
    return [np.ones(scene.load_image(i).shape[:2], dtype=bool) for i in indices]


class PixelRays:
    """Every pixel of the views: view (P,) int64, uv (P, 2) pixel centres, rgb (P, 3), mask (P,)
    bool (all true when ``views`` came with stand-in masks)."""

    def __init__(self, views: Views):
        view, uv, rgb, mask = [], [], [], []
        for v, (img, m) in enumerate(zip(views.images, views.masks)):
            h, w = m.shape
            view.append(torch.full((h * w,), v, dtype=torch.int64))
            uv.append(pixel_grid(w, h))
            rgb.append(torch.from_numpy(np.ascontiguousarray(img.reshape(-1, 3), dtype=np.float32)))
            mask.append(torch.from_numpy(m.reshape(-1)))
        self.view, self.uv, self.rgb, self.mask = torch.cat(view), torch.cat(uv), torch.cat(rgb), torch.cat(mask)

    def __len__(self) -> int:
        return len(self.view)

    def sample(self, count: int, generator: Optional[torch.Generator] = None):
        """``count`` uniform random pixels: (view (N,), uv (N, 2), rgb (N, 3), mask (N,))."""
        idx = torch.randint(len(self.view), (count,), generator=generator)
        return self.view[idx], self.uv[idx], self.rgb[idx], self.mask[idx]


__all__ = ["full_masks", "PixelRays"]
