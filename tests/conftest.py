"""Shared test fixtures: the real datasets beside the checkout, and small torch settings."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("RECON_QUIET", "1")


def shared_data_dir() -> Path:
    """``$RECON_TEST_DATA`` or ``../shared/data`` beside the checkout."""
    env = os.environ.get("RECON_TEST_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """Path of a real dataset: ``shared_data("lego-200")``; skips the test when it is absent."""
    def get(name: str) -> Path:
        path = shared_data_dir() / name
        if not path.exists():
            pytest.skip(f"real dataset {name!r} not found at {path} (set RECON_TEST_DATA or put ../shared/data beside the checkout)")
        return path
    return get


requires_cuda = pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@pytest.fixture
def one_thread():
    """One torch thread for a test of small tensors: on a shared 2-core machine two threads mostly
    wait on each other."""
    from pipeline.runner.runtime import torch_threads

    with torch_threads(1):
        yield
