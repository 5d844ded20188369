"""Where torch code runs: the device a stage asked for, and the CPU threads it uses meanwhile."""
from __future__ import annotations

import contextlib
import functools

import torch

from pipeline.runner.config import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` = CUDA when torch sees a GPU, else CPU; asking for CUDA without one is a clear error.
    Under torchrun (``pipeline.training.distributed``) ``cuda`` is this process's ``cuda:LOCAL_RANK``."""
    from pipeline.training.distributed import device_for

    return device_for(_pick_device(name))


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but torch sees no CUDA GPU "
                          f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use device=auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu or cuda (cuda:N)") from None


@contextlib.contextmanager
def torch_threads(count: int):
    """Use ``count`` torch CPU threads inside the block (0 = leave torch's setting), then restore it.

    Training steps and renders are thousands of small ops: on a CPU shared with other processes,
    two threads spend most of their time waiting on each other at OpenMP barriers (measured 5-10x
    slower than one thread on the 2-core development machine under load).
    """
    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@functools.lru_cache(maxsize=None)
def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (Intel AMX tiles).

    On such CPUs (Sapphire Rapids and later) a bf16 matmul runs ~9x faster than float32 (measured on
    the development machine: 2.3 TFLOPS against 0.25 on 2 cores); without AMX, bf16 is emulated and
    gains nothing, so autocast stays off there."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def autocast(device: torch.device, enabled: bool = True):
    """bfloat16 autocast for network evaluation: on CUDA, and on CPUs with AMX (see
    :func:`cpu_has_bf16_matmul`); elsewhere (or ``enabled=False``) a no-op context.

    Only matrix products run in bf16; callers cast network outputs back to float32 before
    compositing, so sums over samples and losses stay in float32."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if enabled and device.type == "cpu" and cpu_has_bf16_matmul():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory torch frees for the next allocation, instead of handing it
    back to the OS; call it first thing in an entry point (next to :func:`flush_denormals`).

    Every CPU op allocates its output afresh. By default glibc serves blocks above a (moving)
    threshold with a new mmap, and trims the heap's free top back to the OS, so a (N, 64) float
    activation comes back as fresh pages that fault in one by one (4096 faults per 16 MB). Measured
    on the 2-core development VM: the fused MLP's forward ran 16-23 ms inside a training step and
    8-11 ms with memory kept; nerf-fourier training steps 15-20% faster. Memory stays at its peak
    instead of shrinking between steps. Blocks above 32 MiB (the highest threshold glibc takes) are
    still fresh mappings each time: code that allocates per step on the CPU keeps its temporaries
    below that (the reference hash grid's level groups, the occupancy update's chunks). Returns whether
    the C library took the settings (glibc only)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    # 32 MiB is the largest mmap threshold glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2)
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def flush_denormals() -> bool:
    """Treat float32 denormals as zero in this process; call it first thing in an entry point.

    Trained MLPs keep a few weights in the denormal range (~1e-4 of them in the lego NeRF: units
    whose gradient stopped), and every multiply by one takes a slow microcode path: the trained
    8x256 MLP evaluated 16k points in 2.05 s instead of 0.26 s (1 thread). The flag is per thread and
    worker threads inherit it when they start, so it must be set before torch starts its thread
    pool; set later, it only reaches the calling thread. Returns whether the CPU supports it."""
    return bool(torch.set_flush_denormal(True))
