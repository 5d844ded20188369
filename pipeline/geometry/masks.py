"""Object masks: the bands around silhouette edges that the IDR and NeRF stages sample more densely."""
from __future__ import annotations

import torch


def mask_edges(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels within ``width`` pixels of a silhouette edge, on either side: mask (H, W) bool -> (H, W) bool."""
    m = mask.float()[None, None]
    size = 2 * width + 1
    dilated = torch.nn.functional.max_pool2d(m, size, stride=1, padding=width)
    eroded = -torch.nn.functional.max_pool2d(-m, size, stride=1, padding=width)
    return (dilated != eroded)[0, 0]
