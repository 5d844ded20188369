"""The CPU kernels in C++ (``hashgrid_cpu.cpp``: the hash grid; ``occupancy_cpu.cpp``: the ray
marcher; ``mlp_cpu.cpp``: the fused ReLU MLP; ``sh_cpu.cpp``: spherical harmonics; ``rows_cpu.cpp``:
the rows of a gradient that hold non-zeros), built once
into one shared library with the system's C++ compiler and loaded with ctypes. Their Python
bindings are the modules beside this one (``hashgrid_cpu``, ``occupancy_cpu``, ``mlp_cpu``,
``sh_cpu``): nothing else calls into the library.

They include no torch headers, so the build takes a few seconds (no ninja, no extension toolchain);
the library is cached on disk per source, compiler and CPU (``$RECON_KERNEL_CACHE``, default
``~/.cache/recon/kernels``; written atomically, so concurrent builds are safe). Where no compiler
works, :func:`available` is false, the reason is logged once and the callers run their PyTorch
versions. ``RECON_CPU_KERNELS=0`` turns the kernels off.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

CSRC = Path(__file__).with_name("csrc")
SOURCES = tuple(CSRC / name for name in ("hashgrid_cpu.cpp", "occupancy_cpu.cpp", "mlp_cpu.cpp",
                                                          "sh_cpu.cpp", "rows_cpu.cpp"))
HEADERS = (CSRC / "cpu_parallel.h", CSRC / "gemm_cpu.h")
_log = logging.getLogger("recon.kernels")
_state: dict = {"lib": None, "error": None}
# return types of the exported functions (ctypes assumes int otherwise)
_RESTYPES = {f"hashgrid_{name}_{dtype}": ctypes.c_int for name in ("forward", "table_grad", "input_grad")
             for dtype in ("f32", "f64")}
_RESTYPES["march_occupied_f32"] = ctypes.c_int64
_RESTYPES.update(mlp_forward_f32=ctypes.c_int, mlp_backward_f32=ctypes.c_int, sh_encode_f32=ctypes.c_int,
                 live_rows_f32=ctypes.c_int64, live_rows_f64=ctypes.c_int64)


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's model and flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "\n".join(sorted(set(keep)))
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    root = os.environ.get("RECON_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "recon" / "kernels"


def _build(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    # this file too: its build flags are part of what gets built
    key = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES + HEADERS + (Path(__file__),)) + version.encode()
                         + _cpu_signature().encode() + platform.machine().encode())
    out_dir = _cache_dir() / key.hexdigest()[:16]
    target = out_dir / "recon_cpu_kernels.so"
    if target.exists():
        return target
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: build in the temporary folder (again in each new one)
        out_dir = Path(tempfile.gettempdir()) / f"recon-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}"
        out_dir = out_dir / key.hexdigest()[:16]
        target = out_dir / "recon_cpu_kernels.so"
        if target.exists():
            return target
        out_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    # OpenMP first: the kernels then share torch's threads (cpu_parallel.h says why); some compilers
    # lack -fopenmp (Apple clang) or -march=native (Apple clang on arm64)
    for flags in (["-O3", "-march=native", "-fopenmp"], ["-O3", "-fopenmp"], ["-O3", "-march=native"], ["-O3"]):
        flags = [*flags, "-fno-trapping-math"]  # lets the compiler vectorise clamps and selects on floats
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
        cmd = [compiler, *flags, "-std=c++17", "-shared", "-fPIC", "-pthread", *map(str, SOURCES), "-o", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if result.returncode == 0:
            try:  # a library the process cannot load (say, a missing OpenMP runtime) shows here, not later
                ctypes.CDLL(tmp)
            except OSError as exc:
                result = subprocess.CompletedProcess(cmd, 1, "", f"built, but does not load: {exc}")
        if result.returncode == 0:
            os.replace(tmp, target)  # atomic: a concurrent build never loads half a file
            return target
        os.unlink(tmp)
        errors.append(f"{' '.join(cmd)}:\n{result.stderr.strip()[-2000:]}")
    raise RuntimeError("\n".join(errors))


def load() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; None (reason logged once) when unavailable."""
    if _state["lib"] is not None or _state["error"] is not None:
        return _state["lib"]
    if os.environ.get("RECON_CPU_KERNELS", "1") == "0":
        _state["error"] = "turned off by RECON_CPU_KERNELS=0"
        return None
    compiler = _compiler()
    try:
        if compiler is None:
            raise RuntimeError("no C++ compiler found (set CXX, or install g++ or clang++)")
        lib = ctypes.CDLL(str(_build(compiler)))
        for name, restype in _RESTYPES.items():
            getattr(lib, name).restype = restype
    except Exception as exc:  # no compiler, a failed build, a read-only cache: the PyTorch versions still work
        _state["error"] = str(exc)
        _log.warning("CPU kernels unavailable, using the PyTorch versions: %s", exc)
        return None
    _state["lib"] = lib
    return lib


def available() -> bool:
    return load() is not None


def unavailable_reason() -> str | None:
    load()
    return _state["error"]


@contextlib.contextmanager
def disabled():
    """Inside this block every caller runs its PyTorch version (benchmarks, A/B comparisons)."""
    saved = dict(_state)
    _state.update(lib=None, error="disabled by cpu_kernels.disabled()")
    try:
        yield
    finally:
        _state.clear()
        _state.update(saved)


def ptr(t: torch.Tensor) -> ctypes.c_void_p:
    """The data pointer of a contiguous CPU tensor, for a C function."""
    return ctypes.c_void_p(t.data_ptr())


def live_rows(grad: torch.Tensor) -> torch.Tensor:
    """grad (N, C) contiguous float32/float64 on the CPU -> (M,) int64: its rows with a non-zero
    entry, in order (call :func:`available` first). The backward passes of the kernels run only
    these when the others are many (one scan, stopping at each row's first non-zero)."""
    rows = torch.empty(grad.shape[0], dtype=torch.int64)
    fn = load().live_rows_f32 if grad.dtype == torch.float32 else load().live_rows_f64
    count = fn(ptr(grad), ctypes.c_int64(grad.shape[0]), ctypes.c_int64(grad.shape[1]),
               ptr(rows))
    return rows[:count]


__all__ = ["available", "load", "unavailable_reason", "disabled", "ptr", "live_rows", "SOURCES"]
