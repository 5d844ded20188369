"""Training data of the IDR stage: object masks (dataset, user folder or plain-background
threshold), downscaled views, and a bank of training rays sampled mostly inside the masks.

Memory: pixels are stored uint8 (3 B per pixel, ``pipeline.training.pixel_store``: in RAM within
the budget, else memory-mapped), masks bool (1 B per pixel), and the ray bank keeps only pixel
rows (4 B per kept pixel); each drawn batch becomes float and rays."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from datasets.scene import Scene, SceneError, load_image_file, mask_from_image
from pipeline.geometry.cameras import Cameras, Intrinsics, pixel_grid
from pipeline.geometry.masks import mask_edges
from pipeline.models.idr.sphere_tracing import ray_sphere_intersection
from pipeline.training.pixel_store import PixelStore, files_key, memory_budget_bytes, quantize_uint8, to_float

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


def folder_mask(folder: Path, name: str, help_text: str = MASK_HELP) -> np.ndarray:
    """The mask (H, W) bool of view ``name`` in a folder of one image per view named like the
    view (white = true)."""
    candidates = sorted(p for p in folder.iterdir() if p.stem == name or p.stem.startswith(f"{name}."))
    if not candidates:
        raise SceneError(f"{folder}: no mask image for view {name!r} (expected a file named {name}.png or "
                         f"similar); {help_text}")
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
            m = folder_mask(folder, scene.frames[i].name)
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


class ViewImages(Sequence):
    """The views' images, held as uint8 in one :class:`PixelStore` (1 B per channel, in RAM or
    memory-mapped); ``images[v]`` is view v as float32 (H, W, 3) in [0, 1], made on access."""

    def __init__(self, store: PixelStore):
        self.store = store

    def __len__(self) -> int:
        return len(self.store.sizes)

    def __getitem__(self, v):
        if isinstance(v, slice):
            return [self[i] for i in range(*v.indices(len(self)))]
        if not -len(self) <= v < len(self):
            raise IndexError(v)
        return self.store.view(v % len(self)).astype(np.float32) / np.float32(255.0)


@dataclass
class Views:
    """Loaded views: images (H, W, 3) float on access (stored uint8: ``images.store``), masks
    (H, W) bool (views into the flat ``mask_flat`` (P,), 1 B per pixel), their cameras (one batch)."""

    indices: list[int]
    images: ViewImages
    masks: list[np.ndarray]
    cameras: Cameras
    mask_flat: Optional[np.ndarray] = None

    @property
    def store(self) -> PixelStore:
        return self.images.store


def load_views(scene: Scene, indices: list[int], masks: list[np.ndarray], downscale: int, memory_gb: float = 0.0,
               cache_dir: Optional[Path] = None) -> Views:
    """The views ``indices`` downscaled by ``downscale`` with their masks (H, W) bool (full size).
    Pixels are stored uint8 (exact for 8-bit images at downscale 1, else rounded to 8 bits), in
    RAM within ``memory_gb`` (0 = auto) or memory-mapped from ``cache_dir`` (see
    ``pipeline.training.pixel_store``)."""
    intrinsics, sizes = [], []
    for i, mask in zip(indices, masks):
        k = scene.frames[i].intrinsics
        h, w = mask.shape
        if (k.width, k.height) != (w, h):  # checked against the decoded image below
            k = k.scaled(w / k.width)
        if downscale > 1:
            h, w = h // downscale, w // downscale
            k = replace(k, width=w, height=h, fx=k.fx / downscale, fy=k.fy / downscale, cx=k.cx / downscale,
                        cy=k.cy / downscale)
        intrinsics.append(k)
        sizes.append((h, w))

    def load(v: int) -> np.ndarray:
        i, mask = indices[v], masks[v]
        image = scene.load_image(i)
        if image.shape[:2] != mask.shape:
            raise SceneError(f"view {scene.frames[i].name!r}: mask is {mask.shape[1]}x{mask.shape[0]} but the image "
                             f"is {image.shape[1]}x{image.shape[0]}; masks must match their images")
        img, _, _ = downscale_view(image, mask, scene.frames[i].intrinsics, downscale)
        return quantize_uint8(img)

    key = files_key([scene.frames[i].image_path for i in indices], scene.background, downscale)
    store = PixelStore(sizes, 3, load, memory_budget_bytes(memory_gb), cache_dir, key)
    mask_flat = np.empty(store.num_pixels, dtype=bool)
    small_masks = []
    for v, mask in enumerate(masks):
        h, w = sizes[v]
        if downscale > 1:
            mask = mask[:h * downscale, :w * downscale].reshape(h, downscale, w, downscale).mean((1, 3)) > 0.5
        flat = mask_flat[store.offsets[v]:store.offsets[v + 1]]
        flat[:] = mask.reshape(-1)
        small_masks.append(flat.reshape(h, w))
    c2w = np.stack([scene.frames[i].c2w for i in indices])
    return Views(list(indices), ViewImages(store), small_masks, Cameras.from_intrinsics(intrinsics, c2w), mask_flat)


def view_pixels(store: PixelStore, rows: torch.Tensor):
    """Flat pixel rows (n,) int64 of a store -> view (n,) int64, uv (n, 2) pixel centres, rgb (n, 3) float32."""
    offsets = torch.from_numpy(store.offsets)
    widths = torch.tensor([w for _, w in store.sizes])
    view = torch.searchsorted(offsets, rows, right=True) - 1
    local = rows - offsets[view]
    w = widths[view]
    uv = torch.stack([(local % w).float(), (local // w).float()], -1) + 0.5
    return view, uv, to_float(store.gather(rows))


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

    No ray is stored: the bank keeps the flat pixel rows of ``views.store`` in three pools
    (inside, outside, edge; int32 when the views have fewer than 2^31 pixels, i.e. 4 B per kept
    pixel) and makes each drawn pixel's view, uv, colour and mask on demand.
    """

    def __init__(self, views: Views, radius: float, mask_fraction: float = 0.6, edge_fraction: float = 0.0,
                 edge_width: int = 2):
        self.store = views.store
        self.mask_flat = torch.from_numpy(views.mask_flat)
        index_dtype = torch.int32 if self.store.num_pixels < 2 ** 31 else torch.int64
        inside, outside, edges = [], [], []
        for v, m in enumerate(views.masks):
            h, w = m.shape
            cam = views.cameras[v]
            rays_o, rays_d, _ = cam.generate_rays(pixel_grid(w, h))
            _, _, hits = ray_sphere_intersection(rays_o, rays_d, radius)
            mask = torch.from_numpy(m.reshape(-1))
            keep = hits | mask  # masked pixels outside the sphere still count (they are misses)
            start = int(self.store.offsets[v])

            def rows(sel: torch.Tensor) -> torch.Tensor:
                return (torch.nonzero(sel)[:, 0] + start).to(index_dtype)

            inside.append(rows(keep & mask))
            outside.append(rows(keep & ~mask))
            edges.append(rows(keep & mask_edges(torch.from_numpy(m), edge_width).reshape(-1)))
        # pools in pixel order: inside, outside and edge rows as the old per-ray tables had them
        self.inside_idx, self.outside_idx, self.edge_idx = torch.cat(inside), torch.cat(outside), torch.cat(edges)
        if len(self.inside_idx) == 0:
            raise SceneError("every training mask is empty: the object is not visible in any view; "
                             f"check the masks ({MASK_HELP})")
        self.mask_fraction = mask_fraction if len(self.outside_idx) else 1.0
        self.edge_fraction = edge_fraction if len(self.edge_idx) else 0.0

    def __len__(self) -> int:
        return len(self.inside_idx) + len(self.outside_idx)

    def sample(self, count: int, generator: Optional[torch.Generator] = None):
        """``count`` random rays: (view (N,), uv (N, 2), rgb (N, 3) float32, mask (N,))."""
        n_edge = int(round(count * self.edge_fraction))
        n_in = int(round((count - n_edge) * self.mask_fraction))
        n_out = count - n_edge - n_in

        def draw(pool, n):
            return pool[torch.randint(len(pool), (n,), generator=generator)] if n > 0 else pool[:0]

        rows = torch.cat([draw(self.inside_idx, n_in), draw(self.outside_idx, n_out),
                          draw(self.edge_idx, n_edge)]).long()
        view, uv, rgb = view_pixels(self.store, rows)
        return view, uv, rgb, self.mask_flat[rows]


__all__ = ["MASK_SOURCES", "MASK_HELP", "MaskOptions", "threshold_mask", "folder_mask", "load_masks", "downscale_view",
           "Views", "ViewImages", "load_views", "view_pixels", "estimate_background", "RayBank"]
