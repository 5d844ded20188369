"""Where torch code runs: the device a stage asked for, and the CPU threads it uses meanwhile."""
from __future__ import annotations

import contextlib

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` = CUDA when torch sees a GPU, else CPU; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} was asked for but torch sees no CUDA GPU; use device=auto or cpu")
    return torch.device(name)


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
