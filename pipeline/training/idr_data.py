"""Training data of the IDR stage: object masks (dataset, user folder or plain-background
threshold), downscaled views, and a bank of training rays sampled mostly inside the masks."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from datasets.scene import Scene, SceneError, load_image_file, mask_from_image
from pipeline.geometry.cameras import Cameras, Intrinsics, pixel_grid
from pipeline.geometry.masks import mask_edges
from pipeline.models.idr.sphere_tracing import ray_sphere_intersection

MASK_SOURCES = ("auto", "dataset", "folder", "threshold")
MASK_HELP = ("give masks in one of these ways: (1) a dataset with masks (alpha channel of RGBA images, "
             "mask/ folder of IDR/DTU data, mask_path in transforms.json); (2) mask_source=folder "
             "mask_folder=DIR with one image per view named like the view (white = object); "
             "(3) mask_source=threshold for a plain background (mask_background=black|white, "
             "mask_threshold=0.2: pixels differing from the background by more than that are object)")


@dataclass
class MaskOptions:
    source: str = "auto"
    folder: str = ""
    threshold: float = 0.1
    background: str = "black"


def threshold_mask(image: np.ndarray, background: str, threshold: float, max_hole_fraction: float = 0.002) -> np.ndarray:
    """Object mask of a photo on a plain background. image: (H, W, 3) in [0, 1] -> (H, W) bool.

    A pixel is object when any channel differs from the background colour by more than
    ``threshold``; only the largest connected region is kept (shadows and sensor noise in the
    background otherwise leave specks) and holes up to ``max_hole_fraction`` of the image are filled
    (dark texture inside the object). Larger holes stay: they are background seen through the
    object, like the gaps between the Middlebury temple's columns."""
    from scipy import ndimage

    bg = 0.0 if background == "black" else 1.0
    mask = np.abs(image - bg).max(-1) > threshold
    mask = ndimage.binary_opening(mask, iterations=1)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum(mask, labels, range(1, count + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    holes, count = ndimage.label(ndimage.binary_fill_holes(mask) & ~mask)
    if count:
        sizes = np.asarray(ndimage.sum(np.ones_like(mask), holes, range(1, count + 1)))
        small = np.flatnonzero(sizes <= max_hole_fraction * mask.size) + 1
        mask = mask | np.isin(holes, small)
    return mask


def _folder_mask(folder: Path, name: str, index: int) -> np.ndarray:
    candidates = sorted(p for p in folder.iterdir() if p.stem == name or p.stem.startswith(f"{name}."))
    if not candidates:
        raise SceneError(f"{folder}: no mask image for view {name!r} (expected a file named {name}.png or "
                         f"similar); {MASK_HELP}")
    return mask_from_image(load_image_file(candidates[0]))


def load_masks(scene: Scene, indices: list[int], options: MaskOptions) -> list[np.ndarray]:
    """Masks (H, W) bool of the given frames, from the source chosen in ``options``."""
    if options.source not in MASK_SOURCES:
        raise SceneError(f"mask_source must be one of {MASK_SOURCES}, got {options.source!r}")
    source = options.source
    if source == "auto":
        source = "folder" if options.folder else "dataset"
    masks = []
    for i in indices:
        if source == "dataset":
            m = scene.load_mask(i)
            if m is None:
                raise SceneError(f"view {scene.frames[i].name!r} ({scene.frames[i].image_path}) has no mask; "
                                 f"IDR trains on object masks: {MASK_HELP}")
        elif source == "folder":
            folder = Path(options.folder)
            if not folder.is_dir():
                raise SceneError(f"mask_folder {folder} is not a folder; {MASK_HELP}")
            m = _folder_mask(folder, scene.frames[i].name, i)
        else:
            if options.background not in ("black", "white"):
                raise SceneError(f"mask_background must be black or white, got {options.background!r}")
            m = threshold_mask(scene.load_image(i), options.background, options.threshold)
        masks.append(m)
    return masks


def downscale_view(image: np.ndarray, mask: np.ndarray, intrinsics: Intrinsics, factor: int):
    """Area-average an image (H, W, 3) and its mask (H, W) by an integer ``factor`` (cropping the
    last rows/columns that do not fill a block); intrinsics follow exactly."""
    if factor == 1:
        return image, mask, intrinsics
    h, w = image.shape[0] // factor, image.shape[1] // factor
    img = image[:h * factor, :w * factor].reshape(h, factor, w, factor, -1).mean((1, 3))
    msk = mask[:h * factor, :w * factor].reshape(h, factor, w, factor).mean((1, 3)) > 0.5
    k = replace(intrinsics, width=w, height=h, fx=intrinsics.fx / factor, fy=intrinsics.fy / factor,
                cx=intrinsics.cx / factor, cy=intrinsics.cy / factor)
    return img.astype(np.float32), msk, k


@dataclass
class Views:
    """Loaded views: images (H, W, 3), masks (H, W), their cameras (one batch)."""

    indices: list[int]
    images: list[np.ndarray]
    masks: list[np.ndarray]
    cameras: Cameras


def load_views(scene: Scene, indices: list[int], masks: list[np.ndarray], downscale: int) -> Views:
    images, small_masks, intrinsics = [], [], []
    for i, mask in zip(indices, masks):
        image = scene.load_image(i)
        if image.shape[:2] != mask.shape:
            raise SceneError(f"view {scene.frames[i].name!r}: mask is {mask.shape[1]}x{mask.shape[0]} but the image "
                             f"is {image.shape[1]}x{image.shape[0]}; masks must match their images")
        k = scene.frames[i].intrinsics
        if (k.width, k.height) != (image.shape[1], image.shape[0]):
            k = k.scaled(image.shape[1] / k.width)
        img, m, k = downscale_view(image, mask, k, downscale)
        images.append(img)
        small_masks.append(m)
        intrinsics.append(k)
    c2w = np.stack([scene.frames[i].c2w for i in indices])
    return Views(list(indices), images, small_masks, Cameras.from_intrinsics(intrinsics, c2w))


def train_test_split(scene: Scene, holdout_every: int, max_test_views: int = 0,
                     source=None) -> tuple[list[int], list[int]]:
    """Training and held-out views: the scene's own split when it has one, else every
    ``holdout_every``-th view held out (0: none); at most ``max_test_views`` held out (0: all).
    No training view is an error naming ``source`` (the scene's file)."""
    train_idx, test = _split(scene, holdout_every)
    if not train_idx:
        raise SceneError(f"{source or scene.source}: no training views")
    return train_idx, test[:max_test_views] if max_test_views > 0 else test


def _split(scene: Scene, holdout_every: int) -> tuple[list[int], list[int]]:
    test = list(scene.eval_split())
    if test:
        held = set(test) | set(scene.splits.get("val", []))
        train_idx = [i for i in scene.splits.get("train", range(len(scene))) if i not in held]
        return train_idx, test
    train_idx = list(scene.splits.get("train", range(len(scene))))
    if holdout_every > 0 and len(train_idx) >= 2 * holdout_every:
        test = train_idx[holdout_every - 1::holdout_every]
        train_idx = [i for i in train_idx if i not in set(test)]
    return train_idx, test


def background_color(background: str, views: Views) -> np.ndarray:
    """(3,) colour of rays that miss: white, black, or auto (:func:`estimate_background`)."""
    if background == "white":
        return np.ones(3, dtype=np.float32)
    if background == "black":
        return np.zeros(3, dtype=np.float32)
    if background != "auto":
        raise SceneError(f"background must be auto, white or black, got {background!r}")
    return estimate_background(views)


def estimate_background(views: Views) -> np.ndarray:
    """The median colour of all pixels outside the masks: (3,) (white for composited Blender data,
    near black for the Middlebury temple)."""
    samples = [img[~m][:: max(1, int((~m).sum()) // 20000)] for img, m in zip(views.images, views.masks)]
    samples = [s for s in samples if len(s)]
    if not samples:
        return np.ones(3, dtype=np.float32)
    return np.median(np.concatenate(samples), axis=0).astype(np.float32)


class RayBank:
    """Every training pixel whose ray meets the bounding sphere, sampled with a fixed share inside
    the masks (the RGB loss only sees those; the mask loss sees all) and, optionally, a share near
    the silhouette edges (``edge_fraction``: thin gaps and outlines get more mask-loss rays).

    view (M,) int64 index into the views; uv (M, 2) pixel centres; rgb (M, 3); mask (M,) bool.
    """

    def __init__(self, views: Views, radius: float, mask_fraction: float = 0.6, edge_fraction: float = 0.0,
                 edge_width: int = 2):
        parts = {"view": [], "uv": [], "rgb": [], "mask": [], "edge": []}
        for v, (img, m) in enumerate(zip(views.images, views.masks)):
            h, w = m.shape
            uv = pixel_grid(w, h)
            cam = views.cameras[v]
            rays_o, rays_d, _ = cam.generate_rays(uv)
            _, _, inside = ray_sphere_intersection(rays_o, rays_d, radius)
            mask = torch.from_numpy(m.reshape(-1))
            keep = inside | mask  # masked pixels outside the sphere still count (they are misses)
            parts["view"].append(torch.full((int(keep.sum()),), v, dtype=torch.int64))
            parts["uv"].append(uv[keep])
            parts["rgb"].append(torch.from_numpy(img.reshape(-1, 3))[keep])
            parts["mask"].append(mask[keep])
            parts["edge"].append(mask_edges(torch.from_numpy(m), edge_width).reshape(-1)[keep])
        edge = torch.cat(parts.pop("edge"))
        for key, value in parts.items():
            setattr(self, key, torch.cat(value))
        self.inside_idx = self.mask.nonzero().squeeze(1)
        self.outside_idx = (~self.mask).nonzero().squeeze(1)
        self.edge_idx = edge.nonzero().squeeze(1)
        if len(self.inside_idx) == 0:
            raise SceneError("every training mask is empty: the object is not visible in any view; "
                             f"check the masks ({MASK_HELP})")
        self.mask_fraction = mask_fraction if len(self.outside_idx) else 1.0
        self.edge_fraction = edge_fraction if len(self.edge_idx) else 0.0

    def __len__(self) -> int:
        return len(self.view)

    def sample(self, count: int, generator: Optional[torch.Generator] = None):
        """``count`` random rays: (view (N,), uv (N, 2), rgb (N, 3), mask (N,))."""
        n_edge = int(round(count * self.edge_fraction))
        n_in = int(round((count - n_edge) * self.mask_fraction))
        n_out = count - n_edge - n_in

        def draw(pool, n):
            return pool[torch.randint(len(pool), (n,), generator=generator)] if n > 0 else pool[:0]

        idx = torch.cat([draw(self.inside_idx, n_in), draw(self.outside_idx, n_out), draw(self.edge_idx, n_edge)])
        return self.view[idx], self.uv[idx], self.rgb[idx], self.mask[idx]


__all__ = ["MASK_SOURCES", "MASK_HELP", "MaskOptions", "threshold_mask", "load_masks", "downscale_view", "Views",
           "load_views", "estimate_background", "RayBank"]
