"""Leave-one-out: which frames a field is trained on when some panoramas are held out, named by
their stems (image file names without the extension)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def frame_names(scene) -> list[str]:
    return [f.name for f in scene.frames]


def parse_names(text: str | Sequence[str]) -> list[str]:
    """``"a,b"`` (or a list) -> ["a", "b"]: stripped, empty entries dropped, order kept, no repeats."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in items:
        item = str(item).strip()
        if item and item not in names:
            names.append(item)
    return names


def resolve_names(scene, names: Sequence[str], key: str = "holdout") -> list[int]:
    """Frame indices of the stems ``names``; an unknown stem is an error listing the available ones.
    A name may also be given with its file extension (``pano_003.png``)."""
    available = frame_names(scene)
    by_file = {f.image_path.name: i for i, f in enumerate(scene.frames)}
    indices, unknown = [], []
    for name in names:
        if name in available:
            indices.append(available.index(name))
        elif name in by_file:
            indices.append(by_file[name])
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"{key}: no frame named {', '.join(repr(u) for u in unknown)} in the workspace; "
                         f"available stems: {', '.join(available)}")
    return indices


def split_holdout(scene, holdout: str | Sequence[str]) -> tuple[list[int], list[int]]:
    """(training indices, held-out indices): the scene's training split without the held-out stems
    (all frames of the scene count as candidates for holding out)."""
    held = resolve_names(scene, parse_names(holdout))
    train = [i for i in (scene.splits.get("train") or range(len(scene))) if i not in held]
    return train, held


def nearest_training(scene, target: int, train: Sequence[int]) -> int:
    """The training frame whose camera centre is nearest frame ``target``'s."""
    centers = np.stack([f.c2w[:3, 3] for f in scene.frames])
    candidates = [i for i in train if i != target]
    if not candidates:
        raise ValueError("no other panorama to compare with: the nearest-panorama baseline needs two or more")
    d = np.linalg.norm(centers[candidates] - centers[target], axis=1)
    return candidates[int(np.argmin(d))]
