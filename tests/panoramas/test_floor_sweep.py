"""The photometric floor sweep: on the built-in room (rendered here at 256 px) it recovers the cameras'
height under any similarity that keeps +z up; with the floor painted one colour it reports failure
instead of a number; the floor choice prefers the sharper of two agreeing floors."""
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from datasets.nerfstudio import read_nerfstudio
from datasets.synthetic import SyntheticConfig, generate
from pipeline.geometry.cameras import Cameras, image_rays
from pipeline.geometry.normalize import Similarity
from pipeline.panoramas.floor import FloorFit, FloorFitError
from pipeline.panoramas.floor_choice import choose_floor
from pipeline.panoramas.floor_sweep import SweepConfig, sweep_floor

ROOM = SyntheticConfig(views=1, size=8, seed=0, panoramas=True, panorama_count=6, panorama_width=256)
SWEEP = SweepConfig(width=256)


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    folder = generate(tmp_path_factory.mktemp("floor") / "scene", ROOM) / "panoramas"
    scene = read_nerfstudio(folder / "transforms.json")
    return folder, scene.frames


def _level_similarity(seed: int) -> Similarity:
    """Random scale (0.2-5), rotation about +z and offset: the frame stays gravity-aligned."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-math.pi, math.pi)
    rot = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return Similarity(float(np.exp(rng.uniform(math.log(0.2), math.log(5.0)))), rot, rng.normal(size=3) * 3)


def test_sweep_recovers_the_camera_height_under_a_similarity(room):
    _, frames = room
    c2w = np.stack([f.c2w for f in frames])
    sim = _level_similarity(7)
    result = sweep_floor([f.image_path for f in frames], sim.apply_c2w(c2w), SWEEP)
    height = float(np.mean(result.heights)) / sim.scale
    assert abs(height / 1.5 - 1.0) < 0.01, height
    assert result.details["pairs_agreeing"] >= 0.8 * result.details["pairs_used"]
    assert 0 < result.sigma / sim.scale < 0.02 * 1.5  # a sigma that is neither zero nor huge
    assert abs(result.z_floor - sim.apply_points(np.zeros((1, 3)))[0, 2]) < 0.01 * 1.5 * sim.scale


def test_plain_floor_is_a_failure_not_a_number(room, tmp_path):
    folder, frames = room
    for f in frames:  # paint every floor pixel (from the depth maps) one grey
        image = iio.imread(f.image_path).copy()
        depth = np.load(folder / "depth" / f"{f.name}.npy")
        origins, dirs, _, (h, w) = image_rays(Cameras.from_intrinsics([f.intrinsics], f.c2w[None]), 0)
        z = (origins[:, 2] + dirs[:, 2] * torch.from_numpy(depth.reshape(-1))).numpy().reshape(h, w)
        image[z < 0.01] = 128
        iio.imwrite(tmp_path / f"{f.name}.png", image)
    with pytest.raises(FloorFitError, match="plain|scatter|disagree|clear"):
        sweep_floor([tmp_path / f"{f.name}.png" for f in frames], np.stack([f.c2w for f in frames]), SWEEP)


def test_unreadable_panorama_says_which(room, tmp_path):
    _, frames = room
    missing = [Path(tmp_path) / "nope.png"] + [f.image_path for f in frames[1:]]
    with pytest.raises(FloorFitError, match="nope.png"):
        sweep_floor(missing, np.stack([f.c2w for f in frames]), SWEEP)


def _fit(offset: float, sigma: float, method: str) -> FloorFit:
    return FloorFit(np.array([0.0, 0.0, 1.0]), offset, 10, 10, sigma, sigma, method=method)


def test_choice_prefers_the_sharper_floor_and_reports_disagreement():
    centres = np.array([[0.0, 0.0, 1.5], [1.0, 0.0, 1.5]])
    floor, reason, record = choose_floor(_fit(0.0, 0.01, "sparse points"), "", _fit(0.005, 0.002, "photometric sweep"),
                                         "", centres)
    assert floor.method == "photometric sweep" and reason == "" and record["agree"]
    floor, _, record = choose_floor(_fit(0.3, 0.001, "sparse points"), "", _fit(0.0, 0.002, "photometric sweep"),
                                    "", centres)
    assert floor.method == "sparse points" and not record["agree"]
    floor, _, _ = choose_floor(None, "too few points", _fit(0.0, 0.002, "photometric sweep"), "", centres)
    assert floor.method == "photometric sweep"
    floor, reason, _ = choose_floor(None, "too few points", None, "plain floor", centres)
    assert floor is None and "too few points" in reason and "plain floor" in reason
