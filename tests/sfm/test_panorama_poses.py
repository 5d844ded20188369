"""Poses of unposed 360-degree panoramas (``poses --estimate`` on a folder of 2:1 images): the built-in
room's exact poses are recovered in recon's camera convention, with a gravity-aligned world (+z up),
and bad files in the folder are named and skipped without losing the others."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from datasets import detect_format, read_scene
from datasets.synthetic import SyntheticConfig, generate
from pipeline.geometry.alignment import align_cameras, pose_errors, umeyama
from pipeline.runner.stage import run_stage
from pipeline.runner.workspace import Workspace
from stages.poses import STAGE

pycolmap = pytest.importorskip("pycolmap")


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    """The built-in room (5 panoramas of 384x192, exact poses in metres) and a folder of the same
    panoramas without poses, plus a 4:3 photo and a blank panorama that overlaps nothing."""
    root = tmp_path_factory.mktemp("room")
    generate(root / "synthetic", SyntheticConfig(views=3, size=32, panoramas=True, panorama_width=384,
                                                 panorama_count=5))
    exact = root / "synthetic" / "panoramas"
    folder = root / "my_panos"
    folder.mkdir()
    for png in sorted(exact.glob("pano_*.png")):
        shutil.copy(png, folder / png.name)
    Image.fromarray(np.full((300, 400, 3), 90, np.uint8)).save(folder / "photo_4x3.png")
    Image.fromarray(np.full((192, 384, 3), 128, np.uint8)).save(folder / "blank_pano.png")
    return exact, folder


def test_a_folder_of_mostly_2to1_images_is_read_as_panoramas_and_the_odd_file_is_named(room):
    _, folder = room
    assert detect_format(folder) == "panoramas"
    scene = read_scene(folder)
    assert [f.intrinsics.model for f in scene.frames] == ["equirect"] * 6
    assert list(scene.meta["skipped"]) == ["photo_4x3.png"]
    assert "2 x height" in scene.meta["skipped"]["photo_4x3.png"]


def test_estimated_panoramas_match_the_exact_room_in_recons_convention(room, tmp_path):
    exact, folder = room
    config = STAGE.load_config(None, [f"data={folder}", "estimate=true", "num_threads=2", "min_registered_fraction=0.5"])
    run_stage(STAGE, Workspace(tmp_path / "W"), config)
    out = tmp_path / "W" / "poses"
    report = json.loads((out / "report.json").read_text())

    assert report["images_registered"] == 5
    assert list(report["skipped_files"]) == ["photo_4x3.png"]
    assert "blank_pano" in report["unregistered"] and "features" in report["unregistered"]["blank_pano"]
    transforms = json.loads((out / "transforms.json").read_text())
    assert transforms["camera_model"] == "EQUIRECTANGULAR"
    model = pycolmap.Reconstruction(str(out / "sparse"))
    camera = next(iter(model.cameras.values()))
    assert (camera.model_name, camera.width, camera.height) == ("EQUIRECTANGULAR", 384, 192)  # the panoramas' own size
    assert (out / "points.ply").exists()

    estimated = {f.name: f.c2w for f in Workspace(tmp_path / "W").load_scene().frames}
    truth = {f.name: f.c2w for f in read_scene(exact).frames}
    names = sorted(estimated)
    est, ref = np.stack([estimated[n] for n in names]), np.stack([truth[n] for n in names])
    # gravity-aligned: every levelled camera's up (OpenCV -y) is +z in the normalised frame
    tilt = np.degrees(np.arccos(np.clip(-est[:, 2, 1], -1, 1)))
    assert tilt.max() < 0.1, tilt
    errors = pose_errors(est, ref, align_cameras(est, ref))
    assert errors["rotation_deg_median"] < 0.1, errors["rotation_deg"]
    room_size = np.ptp(ref[:, :3, 3], axis=0).max()
    sim = umeyama(est[:, :3, 3], ref[:, :3, 3])
    centre_error = np.linalg.norm(sim.apply_points(est[:, :3, 3]) - ref[:, :3, 3], axis=1)
    assert centre_error.max() < 0.005 * room_size, centre_error
