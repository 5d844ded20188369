"""Panoramas through the stages on a tiny built-in room (4 panoramas of 64x32): the nerf stage's
``holdout``, ``export --what panoramas`` (between two panoramas, at given centres, the walk and its
videos; depth in ORIGINAL units checked against an analytic room), ``eval holdout=`` with the
nearest-panorama baseline beside the render, and the errors for names that do not exist."""
import json

import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from datasets.synthetic import SyntheticConfig, generate
from pipeline.runner.config import load_config
from pipeline.runner.stage import run_stage
from pipeline.runner.workspace import Workspace
from stages import eval as evaluate, export, nerf, poses
from tests.tiny_configs import tiny_nerf_config

ROOM = SyntheticConfig(views=1, size=8, seed=0, panoramas=True, panorama_count=4, panorama_width=64,
                       mesh_resolution=32)
ROOM_LO, ROOM_HI = np.array([-3.0, -2.5, 0.0]), np.array([3.0, 2.5, 3.0])


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    """(workspace with the tiny room's poses and a tiny NeRF trained without pano_001, centers.json)."""
    root = tmp_path_factory.mktemp("room")
    data = generate(root / "scene", ROOM) / "panoramas"
    ws = Workspace(root / "ws")
    run_stage(poses.STAGE, ws, load_config(poses.PosesConfig, None, [f"data={data}"]))
    cfg = tiny_nerf_config(max_steps=30, background="scene", holdout="pano_001", cpu_threads=1,
                           camera_near_fraction=0.3)
    run_stage(nerf.STAGE, ws, cfg)
    return ws, json.loads((data / "centers.json").read_text())


def run(stage, ws, **overrides):
    cfg = stage.STAGE.load_config(overrides=[f"{k}={v}" for k, v in overrides.items()])
    return run_stage(stage.STAGE, ws, cfg, force=True)


class BoxRoom:
    """An exact stand-in for a trained field of the empty room: every ray ends on the room's
    walls (normalised box ``lo``..``hi``), coloured by the hit point."""

    def __init__(self, lo, hi):
        self.lo, self.hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)

    def render_rays(self, rays_o, rays_d):
        inv = 1.0 / torch.where(rays_d.abs() < 1e-9, torch.full_like(rays_d, 1e-9), rays_d)
        t = torch.maximum((self.lo - rays_o) * inv, (self.hi - rays_o) * inv).amin(-1)
        x = rays_o + t[:, None] * rays_d
        return {"rgb": (x - self.lo) / (self.hi - self.lo), "t": t, "acc": torch.ones_like(t)}

    def query_color(self, points, dirs):
        return (points - self.lo) / (self.hi - self.lo)


def exit_distance(centre, dirs):
    """Range from ``centre`` (3,) along world directions (N, 3) to the room's walls, ORIGINAL units."""
    inv = 1.0 / np.where(np.abs(dirs) < 1e-12, 1e-12, dirs)
    return np.maximum((ROOM_LO - centre) * inv, (ROOM_HI - centre) * inv).min(-1)


def test_nerf_holdout_leaves_the_panorama_out_and_scores_it_with_ws_psnr(room):
    ws, _ = room
    metrics = json.loads((ws.stage_dir("nerf") / "metrics.json").read_text())
    assert metrics["eval_on"] == "held out of training: pano_001"
    assert [v["name"] for v in metrics["per_view"]] == ["pano_001"]
    assert "ws_psnr" in metrics["per_view"][0] and metrics["ws_psnr"] == metrics["per_view"][0]["ws_psnr"]
    manifest = json.loads((ws.stage_dir("nerf") / "manifest.json").read_text())
    assert manifest["config"]["holdout"] == "pano_001"
    # the near plane: 0.3 x the median distance between neighbouring training panoramas
    scene = ws.load_scene()
    centres = np.stack([f.c2w[:3, 3] for f in scene.frames if f.name != "pano_001"])
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.diag([np.inf] * len(centres))
    saved = torch.load(ws.stage_dir("nerf") / "model.pt", weights_only=False)
    assert saved["config"]["model"]["near_plane"] == pytest.approx(0.3 * np.median(d.min(1)))


def test_export_between_two_panoramas_writes_rgb_and_range_in_original_units(room, monkeypatch):
    ws, centers = room
    sim = ws.normalization()
    box = sim.apply_points(np.stack([ROOM_LO, ROOM_HI]))
    monkeypatch.setattr("pipeline.models.nerf.io.load_trained", lambda workspace, device: BoxRoom(box[0], box[1]))
    # a metric centres stage output whose frame is shifted from the poses' frame
    (ws.root / "centres").mkdir(exist_ok=True)
    shift = np.array([10.0, 20.0, 0.0])
    (ws.root / "centres" / "centres.json").write_text(json.dumps({"units": "m", "panoramas": {
        p["file"][:-4]: {"centre": (np.array(p["center"]) + shift).tolist(), "yaw_deg": p["yaw_deg"], "sigma": 0.0}
        for p in centers["panoramas"]}}))
    result = run(export, ws, what="panoramas", between="pano_000,pano_002", steps=3, panorama_width=32)
    folder = ws.stage_dir("export") / "panoramas" / "between_pano_000_pano_002"
    listing = json.loads((ws.stage_dir("export") / "panoramas" / "panoramas.json").read_text())
    assert [e["t"] for e in listing["panoramas"]] == [0.0, 0.5, 1.0]
    a, b = (np.array(centers["panoramas"][i]["center"]) for i in (0, 2))
    for entry, expected in zip(listing["panoramas"], (a, (a + b) / 2, b)):
        np.testing.assert_allclose(entry["centre"], expected, atol=1e-6)
        np.testing.assert_allclose(entry["centre_m"], expected + shift, atol=1e-6)
        rgb = iio.imread(ws.stage_dir("export") / "panoramas" / entry["file"])
        depth = np.load(ws.stage_dir("export") / "panoramas" / entry["depth_file"])
        assert rgb.shape == (16, 32, 3) and depth.shape == (16, 32) and depth.dtype == np.float32
        # every pixel's range is the distance to the room's wall in metres (the original units)
        from pipeline.panoramas.equirect import pixel_directions

        c2w = np.array(entry["c2w"])
        world_dirs = pixel_directions(32, 16).reshape(-1, 3) @ c2w[:3, :3].T
        np.testing.assert_allclose(depth.reshape(-1), exit_distance(expected, world_dirs), rtol=1e-4)
    # slerp: the middle panorama's orientation is halfway between the two yaws
    yaws = [np.degrees(np.arctan2(np.array(e["c2w"])[1, 2], np.array(e["c2w"])[0, 2])) for e in listing["panoramas"]]
    half = (centers["panoramas"][2]["yaw_deg"] - centers["panoramas"][0]["yaw_deg"] + 180) % 360 - 180
    assert (yaws[1] - yaws[0] - half / 2 + 180) % 360 - 180 == pytest.approx(0, abs=1e-6)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{k:02d}_t{t:.3f}{s}" for k, t in enumerate((0, 0.5, 1)) for s in (".png", "_depth.npy", "_depth_preview.png"))
    assert result.manifest["metrics"]["panoramas"]["count"] == 3 and result.manifest["metrics"]["panoramas"]["metric"]
    # at: explicit centres in original units, oriented as the nearest panorama
    run(export, ws, what="panoramas", at="0,0,1.5;1,-1,1.2", panorama_width=32)
    listing = json.loads((ws.stage_dir("export") / "panoramas" / "panoramas.json").read_text())
    np.testing.assert_allclose([e["centre"] for e in listing["panoramas"]], [[0, 0, 1.5], [1, -1, 1.2]], atol=1e-6)
    np.testing.assert_allclose(listing["panoramas"][1]["centre_m"], np.array([1, -1, 1.2]) + shift, atol=1e-6)
    assert np.load(ws.stage_dir("export") / "panoramas" / "at" / "at_01_depth.npy").shape == (16, 32)


def test_export_walk_writes_panorama_and_forward_videos(room):
    ws, _ = room
    run(export, ws, what="panoramas", steps=2, panorama_width=32, walk_view_width=32, fps=4)
    folder = ws.stage_dir("export") / "panoramas" / "walk"
    listing = json.loads((ws.stage_dir("export") / "panoramas" / "panoramas.json").read_text())
    n = len(listing["panoramas"])
    assert n >= 4 and listing["mode"] == "walk"
    for video, shape in (("video.mp4", (16, 32, 3)), ("video_forward.mp4", (18, 32, 3))):
        reader = iio2.get_reader(str(folder / video))
        assert reader.count_frames() == n and reader.get_data(0).shape == shape
    assert iio.imread(folder / "forward_00000.png").shape == (18, 32, 3)


def test_bad_names_are_clear_errors(room):
    ws, _ = room
    with pytest.raises(ValueError, match=r"'nope'.*available stems: pano_000, pano_001, pano_002, pano_003"):
        run(export, ws, what="panoramas", between="pano_000,nope")
    with pytest.raises(ValueError, match="name two panoramas"):
        run(export, ws, what="panoramas", between="pano_000")
    with pytest.raises(ValueError, match="--what panoramas"):
        run(export, ws, what="depth", between="pano_000,pano_001")
    with pytest.raises(ValueError, match=r"holdout: no frame named 'nope'.*available stems: pano_000"):
        run(evaluate, ws, holdout="pano_002,nope")
    with pytest.raises(ValueError, match="at="):
        run(export, ws, what="panoramas", at="1,2")


def test_eval_holdout_reports_the_render_beside_the_nearest_panorama_baseline(room, capsys):
    ws, centers = room
    result = run(evaluate, ws, holdout="pano_001,pano_002", holdout_max_time_s=5)
    metrics = json.loads((ws.stage_dir("eval") / "metrics.json").read_text())["holdout"]
    held = metrics["panoramas"]
    # pano_001 was held out by the nerf stage: its model is used; pano_002 gets its own field
    assert held["pano_001"]["source"].startswith("nerf stage")
    assert held["pano_002"]["source"].startswith("trained by eval") and held["pano_002"]["steps"] == 30
    assert (ws.stage_dir("eval") / "holdout" / "pano_002" / "model.pt").exists()
    centres = {p["file"][:-4]: np.array(p["center"]) for p in centers["panoramas"]}
    for name, row in held.items():
        for side in ("nerf", "baseline"):
            assert set(row[side]) == {"ws_psnr", "psnr", "ssim", "ws_ssim"}
            assert 0 < row[side]["ws_psnr"] < 60
        # the baseline is the nearest panorama the field was trained on
        trained = [n for n in centres if n != name and not (name == "pano_001" and n == "pano_001")]
        nearest = min(trained, key=lambda n: np.linalg.norm(centres[n] - centres[name]))
        assert row["nearest"] == nearest
        assert row["nearest_distance"] == pytest.approx(np.linalg.norm(centres[nearest] - centres[name]), rel=1e-6)
        assert row["gain_ws_psnr_db"] == pytest.approx(row["nerf"]["ws_psnr"] - row["baseline"]["ws_psnr"])
        compare = iio.imread(ws.stage_dir("eval") / row["images"])
        assert compare.shape == (3 * 32, 64, 3)  # real / render / baseline at the panorama's full size
        assert np.load(ws.stage_dir("eval") / "holdout" / f"{name}_depth.npy").shape == (32, 64)
    assert metrics["gain_ws_psnr_db"] == pytest.approx(metrics["nerf_ws_psnr"] - metrics["baseline_ws_psnr"])
    assert result.manifest["metrics"]["holdout"]["baseline_ws_psnr"] == pytest.approx(metrics["baseline_ws_psnr"])
    table = capsys.readouterr().out
    assert "holdout pano_001 WS-PSNR" in table and "nearest panorama" in table
