"""Training pixels in bounded memory: the pixels of every training view as one flat uint8 table
(P, C), 1 byte per channel instead of float32's 4, from which each step gathers its batch and
only that batch becomes float.

The table lives in RAM when it fits the memory budget (``memory_gb``; 0 = half of the RAM that
is available when the data is loaded). Otherwise every image is decoded once into a ``.npy``
file (``cache_dir``, or an unlinked temporary file) and memory-mapped: the operating system
keeps the pages that are drawn and drops them under pressure, so the resident memory stays
bounded however many views there are. Rays are never stored: callers turn each drawn pixel's
(view, u, v) into a ray through its camera.

8-bit images are stored exactly (``k / 255`` comes back bit for bit); 16-bit and float sources
are rounded to 8 bits (an error of at most 1/510, about the PSNR ceiling of 54 dB, far below what
the fields reach).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

# share of the available RAM the pixel table may take when no budget is given (the rest is for
# the model, the optimiser, the evaluation and the other processes on the machine)
AUTO_MEMORY_FRACTION = 0.5


def available_memory_bytes() -> int:
    """RAM the system can give without swapping: MemAvailable of /proc/meminfo (Linux), else the
    free pages (``os.sysconf``), else 8 GiB when neither is known."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def memory_budget_bytes(memory_gb: float) -> int:
    """The bytes the pixel table may hold in RAM: ``memory_gb`` GiB, or (0) the auto budget."""
    if memory_gb < 0:
        raise ValueError(f"data_memory_gb must be >= 0 (0 = auto: {AUTO_MEMORY_FRACTION:g} of the available RAM), "
                         f"got {memory_gb}")
    if memory_gb > 0:
        return int(memory_gb * (1 << 30))
    return int(AUTO_MEMORY_FRACTION * available_memory_bytes())


def quantize_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] -> uint8, rounded to the nearest level (exact for 8-bit sources:
    ``k / 255 * 255`` rounds back to ``k``); values outside [0, 1] are clipped."""
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1], the same values as the float loaders give 8-bit images."""
    return pixels.float() / 255.0


class SizeMismatch(Exception):
    """A decoded image is not the size the table was laid out for."""

    def __init__(self, view: int, shape: tuple):
        super().__init__(f"view {view}: decoded shape {shape}")
        self.view, self.shape = view, shape


class PixelStore:
    """The pixels of a list of views, row-major, view after view: ``array`` (P, C) uint8 (in RAM or
    a read-only memory map), ``offsets`` (views + 1,) int64 first row of each view, ``sizes`` [(H, W)].

    ``load(v)`` returns view v as uint8 (H, W, C) with the size ``sizes[v]`` (else
    :class:`SizeMismatch` is raised so that the caller can lay the table out again)."""

    def __init__(self, sizes: Sequence[tuple[int, int]], channels: int, load: Callable[[int], np.ndarray],
                 budget_bytes: int, cache_dir: Optional[Path] = None, cache_key: str = ""):
        self.sizes = [(int(h), int(w)) for h, w in sizes]
        self.channels = channels
        self.offsets = np.concatenate([[0], np.cumsum([h * w for h, w in self.sizes])]).astype(np.int64)
        self.num_pixels = int(self.offsets[-1])
        self.nbytes = self.num_pixels * channels
        self.mapped = self.nbytes > budget_bytes
        self.cache_path: Optional[Path] = None
        if not self.mapped:
            self.array = np.empty((self.num_pixels, channels), dtype=np.uint8)
            self._fill(self.array, load)
            self.tensor: Optional[torch.Tensor] = torch.from_numpy(self.array)
        else:
            self.array = self._mapped_table(load, cache_dir, cache_key)
            self.tensor = None

    def _fill(self, table: np.ndarray, load: Callable[[int], np.ndarray]) -> None:
        for v, (h, w) in enumerate(self.sizes):
            img = load(v)
            if img.shape != (h, w, self.channels):
                raise SizeMismatch(v, img.shape)
            table[self.offsets[v]:self.offsets[v + 1]] = img.reshape(-1, self.channels)

    def _mapped_table(self, load, cache_dir: Optional[Path], cache_key: str) -> np.ndarray:
        """Decode every view once into a .npy file and map it read-only. With ``cache_dir`` the file
        is named after ``cache_key`` and the layout, and reused when it is complete (it is written
        under a temporary name and renamed last); without, it is an unlinked temporary file."""
        layout = hashlib.sha1(f"{cache_key}|{self.channels}|{self.sizes}".encode()).hexdigest()[:16]
        if cache_dir is not None:
            cache_dir = Path(cache_dir)
            cache_dir.mkdir(parents=True, exist_ok=True)
            path = cache_dir / f"pixels-{layout}.npy"
            if path.exists():
                try:
                    table = np.load(path, mmap_mode="r")
                    if table.shape == (self.num_pixels, self.channels) and table.dtype == np.uint8:
                        self.cache_path = path
                        return table
                except (OSError, ValueError):
                    pass  # a damaged cache is decoded again
            tmp = cache_dir / f"pixels-{layout}.{os.getpid()}.partial.npy"
        else:
            fd, name = tempfile.mkstemp(suffix=".npy", prefix="recon-pixels-")
            os.close(fd)
            tmp, path = Path(name), None
        try:
            table = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(self.num_pixels, self.channels))
            self._fill(table, load)
            table.flush()
            del table
            if path is not None:
                os.replace(tmp, path)
                self.cache_path = path
                return np.load(path, mmap_mode="r")
            table = np.load(tmp, mmap_mode="r")
            return table
        finally:
            if path is None or tmp.exists():
                tmp.unlink(missing_ok=True)  # the mapping stays valid; the disk space goes with it

    def view(self, v: int) -> np.ndarray:
        """View v's pixels as uint8 (H, W, C) (a view of the table, no copy)."""
        h, w = self.sizes[v]
        return self.array[self.offsets[v]:self.offsets[v + 1]].reshape(h, w, self.channels)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (n,) int64 on the CPU -> their pixels (n, C) uint8 on the CPU."""
        if self.tensor is not None:
            return self.tensor[rows]
        return torch.from_numpy(self.array[rows.numpy()])


def build_store(sizes: Sequence[tuple[int, int]], channels: int, load: Callable[[int], np.ndarray],
                budget_bytes: int, cache_dir: Optional[Path] = None, cache_key: str = "") -> PixelStore:
    """A :class:`PixelStore` laid out for ``sizes`` (e.g. from the intrinsics); when an image turns out
    to have another size, every image's size is taken from the decoded images and the table is
    built again (two decodes, only for such datasets)."""
    try:
        return PixelStore(sizes, channels, load, budget_bytes, cache_dir, cache_key)
    except SizeMismatch:
        real = [load(v).shape[:2] for v in range(len(sizes))]
        return PixelStore(real, channels, load, budget_bytes, cache_dir, cache_key)


def files_key(paths: Sequence[Path], *extra) -> str:
    """A cache key that changes when any image file (path, size, modification time) or ``extra`` does."""
    parts = []
    for p in paths:
        try:
            st = os.stat(p)
            parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(str(p))
    return hashlib.sha1("|".join(parts + [repr(e) for e in extra]).encode()).hexdigest()


__all__ = ["AUTO_MEMORY_FRACTION", "available_memory_bytes", "memory_budget_bytes", "quantize_uint8", "to_float",
           "PixelStore", "build_store", "files_key"]
