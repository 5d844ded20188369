"""Training rays of the sdf stage: every pixel of the training views (masks optional), drawn
uniformly; no pixel is left out, since the background field has to explain what lies outside
the object's sphere."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from pipeline.training.idr_data import Views, view_pixels


def full_masks(scene, indices: list[int]) -> list[np.ndarray]:
    """All-true masks (H, W) of the given frames' images: the stand-in when masks are not used."""
    return [np.ones(scene.load_image(i).shape[:2], dtype=bool) for i in indices]


class PixelRays:
    """Every pixel of the views, drawn uniformly: the flat rows of ``views.store`` (uint8 colours,
    1 B per channel) and ``views.mask_flat`` (bool; all true when ``views`` came with stand-in
    masks). Nothing per ray is stored: each drawn pixel's view, uv and float colour are made on
    demand."""

    def __init__(self, views: Views):
        self.store = views.store
        self.mask_flat = torch.from_numpy(views.mask_flat)

    def __len__(self) -> int:
        return self.store.num_pixels

    def sample(self, count: int, generator: Optional[torch.Generator] = None):
        """``count`` uniform random pixels: (view (N,), uv (N, 2), rgb (N, 3) float32, mask (N,))."""
        idx = torch.randint(len(self), (count,), generator=generator)
        view, uv, rgb = view_pixels(self.store, idx)
        return view, uv, rgb, self.mask_flat[idx]


__all__ = ["full_masks", "PixelRays"]
