"""Shared test fixtures: the real datasets beside the checkout, small torch settings, recon's log
records, and the posed sphere workspace of the IDR tests."""
from __future__ import annotations

import logging
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


@pytest.fixture
def recon_log(caplog):
    """caplog that also sees recon's logger (which does not propagate to the root logger)."""
    logger = logging.getLogger("recon")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture
def sphere_workspace(tmp_path):
    """A workspace posed by the poses stage on ``tests.scenes.write_sphere_scene`` (the IDR tests)."""
    from pipeline.runner.stage import run_stage
    from pipeline.runner.workspace import Workspace
    from stages.poses import STAGE, PosesConfig
    from tests.scenes import write_sphere_scene

    data = write_sphere_scene(tmp_path / "sphere")
    ws = Workspace(tmp_path / "ws")
    run_stage(STAGE, ws, PosesConfig(data=str(data)))
    return ws
