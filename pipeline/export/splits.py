"""The views of a scene that a split name stands for."""
from __future__ import annotations

import numpy as np


def select_views(scene, split: str, max_views: int = 0) -> list[int]:
    """Frame indices of ``split``: eval (test, else val, else train) | all | a split of the scene;
    ``max_views`` > 0 keeps that many, evenly spread over the split."""
    if split == "eval":
        indices = scene.eval_split() or scene.splits.get("train", list(range(len(scene))))
    elif split == "all":
        indices = list(range(len(scene)))
    else:
        indices = scene.split(split)
    if max_views > 0 and len(indices) > max_views:
        indices = [indices[i] for i in np.linspace(0, len(indices) - 1, max_views).round().astype(int)]
    return list(indices)
