"""The catalogue of bad inputs and faults a new user runs into (issue #26), each through the command
line as the user met it: a clear one-line error (exit code 2, no traceback) or correct handling,
nothing lost, nothing silently wrong.

Cases tested elsewhere, at the level where they are cheapest (listed so the catalogue is whole):
- kill -9 at any moment of a real NeRF / IDR run, resumed past its checkpoint:
  ``tests/test_crash_recovery.py``; SIGKILL of a stage mid-write, no half output under the final
  name, resumed: ``tests/runner/test_stage.py::test_killed_stage_leaves_no_output_under_final_name_and_resumes``
- every image mode on load (grayscale, 16-bit, palette, CMYK), NaN / non-rigid poses in every
  reader, mixed image sizes: ``tests/datasets/test_bad_data.py``
- the demo chain end to end, and export / eval on a really trained model: ``tests/test_cli_chain.py``
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

import run
from tests.test_cli import ROOT, write_tiny_blender_scene

# a NeRF that trains in about a second on a 16x16 scene
TINY_NERF = ["model.grid.levels=4", "model.grid.log2_table_size=10", "model.grid.finest_resolution=32",
             "model.grid.backend=torch", "model.width=16", "model.occupancy_resolution=8", "model.march_steps=16",
             "samples_per_batch=1024", "initial_rays=64", "max_steps=6", "max_time_s=0", "occupancy_warmup_steps=2",
             "occupancy_update_every=2", "lpips=false", "cpu_threads=1"]


@pytest.fixture
def cli(capsys):
    """``cli("poses", "--data", d, ...) -> (exit code, stderr)``, run in this process as a user runs
    run.py; no case may print a traceback."""
    def call(*args):
        code = run.main([str(a) for a in args])
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        return code, err
    return call


def error_line(err: str) -> str:
    """The one ``error:`` line of a failed command."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def scene(tmp_path):
    write_tiny_blender_scene(tmp_path / "scene")
    return tmp_path / "scene"


@pytest.fixture
def posed(cli, scene, tmp_path):
    ws = tmp_path / "ws"
    assert cli("poses", "--data", scene, "--workspace", ws)[0] == 0
    return ws


def write_photos(folder: Path, count: int, size=(48, 36)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"img_{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def edit_frames(scene: Path, split: str, change) -> None:
    path = scene / f"transforms_{split}.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# --- the dataset --------------------------------------------------------------------------------

def test_nonexistent_data_folder_is_named_and_creates_nothing(cli, tmp_path):
    code, err = cli("poses", "--data", tmp_path / "nowhere", "--workspace", tmp_path / "ws")
    assert code == 2 and "nowhere" in error_line(err) and "--data" in error_line(err)
    assert not (tmp_path / "ws").exists()


def test_empty_data_folder(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = cli("poses", "--data", tmp_path / "empty", "--workspace", tmp_path / "ws")
    assert code == 2 and "empty" in error_line(err) and "no .jpg" in error_line(err)
    assert not (tmp_path / "ws").exists()  # a failed first stage leaves no workspace behind


def test_poses_without_data(cli, tmp_path):
    code, err = cli("poses", "--workspace", tmp_path / "ws")
    assert code == 2 and "--data" in error_line(err)


def test_one_photo_is_not_enough_to_estimate_poses(cli, tmp_path):
    write_photos(tmp_path / "one", 1)
    code, err = cli("poses", "--data", tmp_path / "one", "--workspace", tmp_path / "ws")
    assert code == 2 and "at least 3" in error_line(err)


def test_truncated_jpeg_among_good_photos_is_skipped_and_named(tmp_path, recon_log):
    from datasets import read_scene

    paths = write_photos(tmp_path / "photos", 4)
    paths[2].write_bytes(paths[2].read_bytes()[:200])
    scene = read_scene(tmp_path / "photos")
    assert len(scene) == 3 and "img_2.jpg" in recon_log.text


def test_malformed_transforms_json(cli, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "transforms.json").write_text("{bad")
    code, err = cli("poses", "--data", tmp_path / "bad", "--workspace", tmp_path / "ws")
    assert code == 2 and "transforms.json" in error_line(err) and "not valid JSON" in error_line(err)


def test_missing_images_are_skipped_and_named(cli, scene, tmp_path, recon_log):
    (scene / "train" / "r_1.png").unlink()
    code, _ = cli("poses", "--data", scene, "--workspace", tmp_path / "ws")
    assert code == 0 and "train/r_1" in recon_log.text and "missing" in recon_log.text
    frames = json.loads((tmp_path / "ws" / "poses" / "transforms.json").read_text())["frames"]
    assert len(frames) == 7


def test_frames_that_all_miss_their_images(cli, scene, tmp_path):
    for split in ("train", "test"):
        for png in (scene / split).glob("*.png"):
            png.unlink()
    code, err = cli("poses", "--data", scene, "--workspace", tmp_path / "ws")
    assert code == 2 and "transforms_" in error_line(err)


def test_unknown_scene_file(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    code, err = cli("poses", "--data", tmp_path / "notes.txt", "--workspace", tmp_path / "ws")
    assert code == 2 and "notes.txt" in error_line(err)


def test_nan_pose_is_rejected_naming_file_and_frame(cli, scene, tmp_path):
    def poison(data):
        data["frames"][2]["transform_matrix"][0][3] = float("nan")
    edit_frames(scene, "train", poison)
    for normalize in ("sphere", "none"):
        code, err = cli("poses", "--data", scene, "--workspace", tmp_path / f"ws-{normalize}", f"normalize={normalize}")
        line = error_line(err)
        assert code == 2 and "transforms_train.json" in line and "r_2" in line, line
        assert not (tmp_path / f"ws-{normalize}" / "poses").exists()


def test_infinite_and_non_rigid_poses_are_rejected(cli, scene, tmp_path):
    def stretch(data):
        m = np.array(data["frames"][1]["transform_matrix"])
        m[:3, :3] *= 2.0
        data["frames"][1]["transform_matrix"] = m.tolist()
        data["frames"][3]["transform_matrix"][1][1] = float("inf")
    edit_frames(scene, "train", stretch)
    code, err = cli("poses", "--data", scene, "--workspace", tmp_path / "ws")
    line = error_line(err)
    assert code == 2 and "transforms_train.json" in line and ("r_1" in line or "r_3" in line), line


def test_grayscale_16bit_palette_and_cmyk_images_train(cli, scene, tmp_path):
    """Each non-RGB mode loads as the colour it shows, and NeRF trains on the mix."""
    rgba = iio.imread(scene / "train" / "r_0.png")
    gray = rgba[..., :3].mean(-1).astype(np.uint8)
    iio.imwrite(scene / "train" / "r_0.png", gray)  # 8-bit grayscale
    import cv2  # PIL cannot write 16-bit colour PNGs

    cv2.imwrite(str(scene / "train" / "r_1.png"), cv2.cvtColor(rgba.astype(np.uint16) * 257, cv2.COLOR_RGBA2BGRA))
    Image.fromarray(rgba[..., :3]).convert("P").save(scene / "train" / "r_2.png")  # palette
    Image.fromarray(rgba[..., :3]).convert("CMYK").save(scene / "train" / "r_3.jpg")  # CMYK JPEG
    (scene / "train" / "r_3.png").unlink()
    edit_frames(scene, "train", lambda d: d["frames"][3].update(file_path="./train/r_3.jpg"))
    ws = tmp_path / "ws"
    assert cli("poses", "--data", scene, "--workspace", ws)[0] == 0
    from pipeline.runner.workspace import Workspace

    loaded = Workspace(ws).load_scene()
    images = {f.image_path.stem: loaded.load_image(i) for i, f in enumerate(loaded.frames)
              if f.image_path.parent.name == "train"}
    for name in ("r_0", "r_1", "r_2", "r_3"):
        assert images[name].shape[-1] in (3, 4), name
    # the square in the middle is white, the rest black (16-bit: exact; CMYK: JPEG-close, not all white)
    assert images["r_3"][..., :3][0, 0].max() < 0.2 and images["r_3"][..., :3][8, 8].min() > 0.8
    assert images["r_1"][..., :3][8, 8].min() == pytest.approx(1.0)
    code, err = cli("nerf", "--workspace", ws, *TINY_NERF)
    assert code == 0, err


def test_undecodable_image_in_a_posed_dataset_is_named_at_the_poses_stage(cli, scene, tmp_path):
    (scene / "train" / "r_2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    code, err = cli("poses", "--data", scene, "--workspace", tmp_path / "ws")
    assert code == 2 and "r_2.png" in error_line(err)


def test_mixed_image_sizes_get_their_own_intrinsics(cli, scene, tmp_path):
    img = iio.imread(scene / "train" / "r_0.png")
    iio.imwrite(scene / "train" / "r_0.png", np.ascontiguousarray(img[::2, ::2][:6]))  # 16x16 -> 8x6
    ws = tmp_path / "ws"
    code, err = cli("poses", "--data", scene, "--workspace", ws)
    if code == 2:  # refusing is allowed, with the frame named
        assert "r_0" in error_line(err)
        return
    frames = json.loads((ws / "poses" / "transforms.json").read_text())["frames"]
    small = next(f for f in frames if "r_0" in f["file_path"] and "train" in f["file_path"])
    other = next(f for f in frames if "r_1" in f["file_path"] and "train" in f["file_path"])
    assert (small["w"], small["h"]) == (8, 6)
    assert small["fl_x"] == pytest.approx(other["fl_x"] / 2) and small["fl_y"] == pytest.approx(small["fl_x"])
    assert (small["cx"], small["cy"]) == (pytest.approx(4.0), pytest.approx(3.0))


def test_non_panorama_files_among_panoramas_are_skipped_and_named(tmp_path):
    from datasets import read_scene

    folder = tmp_path / "panos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 32, 3), dtype=np.uint8)).save(folder / f"p{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)).save(folder / "photo.jpg")
    scene = read_scene(folder)
    assert len(scene) == 3 and "photo.jpg" in scene.meta["skipped"]


def test_panoramas_without_poses_are_estimated_not_refused(cli, tmp_path):
    """Panorama pose estimation exists: unrelated panoramas fail on overlap, with that reason."""
    folder = tmp_path / "panos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 128, 3), dtype=np.uint8)).save(folder / f"p{i}.jpg")
    code, err = cli("poses", "--data", folder, "--workspace", tmp_path / "ws")
    line = error_line(err)
    assert code == 2 and "not supported" not in line and "registered" in line, line


def test_paths_with_spaces_and_unicode(cli, tmp_path):
    scene = tmp_path / "my scène ✓"
    write_tiny_blender_scene(scene)
    ws = tmp_path / "wörk space"
    assert cli("poses", "--data", scene, "--workspace", ws)[0] == 0
    assert (ws / "poses" / "transforms.json").exists()


# --- stale results ------------------------------------------------------------------------------

def test_changed_dataset_reruns_poses_and_nerf(cli, scene, posed, recon_log):
    assert cli("nerf", "--workspace", posed, *TINY_NERF)[0] == 0
    assert cli("poses", "--data", scene, "--workspace", posed)[0] == 0
    assert "up to date" in recon_log.text
    edit_frames(scene, "train", lambda d: d.update(frames=d["frames"][:2]))  # 4 -> 2 training frames
    recon_log.clear()
    assert cli("poses", "--data", scene, "--workspace", posed)[0] == 0
    assert "re-running because data" in recon_log.text and "transforms_train.json" in recon_log.text
    assert len(json.loads((posed / "poses" / "transforms.json").read_text())["frames"]) == 6
    recon_log.clear()
    assert cli("nerf", "--workspace", posed, *TINY_NERF)[0] == 0
    assert "re-running because poses/transforms.json changed" in recon_log.text


def test_up_to_date_is_skipped_and_force_reruns(cli, scene, posed, recon_log):
    recon_log.clear()
    cli("poses", "--data", scene, "--workspace", posed)
    assert "up to date" in recon_log.text
    recon_log.clear()
    cli("poses", "--data", scene, "--workspace", posed, "--force")
    assert "running ->" in recon_log.text


# --- config -------------------------------------------------------------------------------------

def test_unknown_key_lists_the_nested_keys(cli, posed):
    code, err = cli("nerf", "--workspace", posed, "model.grid.finest=3")
    assert code == 2 and "model.grid.finest_resolution" in error_line(err)


def test_help_lists_the_nested_keys(cli, capsys):
    with pytest.raises(SystemExit):
        run.main(["idr", "--help"])
    out = capsys.readouterr().out
    assert "sdf.hidden_dim" in out and "renderer.hidden_dim" in out


def test_wrong_type(cli, posed):
    code, err = cli("nerf", "--workspace", posed, "max_steps=many")
    assert code == 2 and "max_steps" in error_line(err)


def test_override_without_equals(cli, posed):
    code, err = cli("nerf", "--workspace", posed, "max_steps")
    assert code == 2 and "max_steps" in error_line(err)


def test_malformed_and_missing_config_files(cli, posed, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: [1,\n")
    code, err = cli("nerf", "--workspace", posed, "--config", bad)
    assert code == 2 and "bad.yaml" in error_line(err) and "YAML" in error_line(err)
    code, err = cli("nerf", "--workspace", posed, "--config", "no-such-config")
    assert code == 2 and "nerf-hash" in error_line(err)


@pytest.mark.parametrize("stage", ["nerf", "idr"])
def test_negative_time_budget_is_an_error(cli, posed, stage):
    code, err = cli(stage, "--workspace", posed, "max_time_s=-1")
    assert code == 2 and "max_time_s" in error_line(err)
    assert not (posed / stage).exists()


def test_device_cuda_without_a_gpu(cli, posed):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, err = cli("nerf", "--workspace", posed, "device=cuda", *TINY_NERF)
    assert code == 2 and "no CUDA GPU" in error_line(err) and "device=auto" in error_line(err)


def test_bad_format_and_normalisation_names(cli, scene, tmp_path):
    code, err = cli("poses", "--data", scene, "--workspace", tmp_path / "ws", "format=blend")
    assert code == 2 and "blender" in error_line(err)
    code, err = cli("poses", "--data", scene, "--workspace", tmp_path / "ws", "normalize=cube")
    assert code == 2 and "sphere" in error_line(err)
    assert not (tmp_path / "ws").exists()


# --- the workspace ------------------------------------------------------------------------------

def test_stages_before_poses_say_the_whole_command(cli, tmp_path):
    ws = tmp_path / "ws"
    for stage in ("nerf", "idr", "export", "eval"):
        code, err = cli(stage, "--workspace", ws)
        line = error_line(err)
        assert code == 2 and f"python run.py poses --data" in line and str(ws) in line, line
    assert not ws.exists()


def test_export_and_eval_before_training(cli, posed):
    for stage in ("export", "eval"):
        code, err = cli(stage, "--workspace", posed)
        assert code == 2 and "run.py nerf" in error_line(err)


def test_unwritable_workspace(cli, scene, tmp_path, monkeypatch):
    from pipeline.runner import workspace

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(workspace.Path, "mkdir", refuse)  # as a read-only folder answers (tests run as root)
    code, err = cli("poses", "--data", scene, "--workspace", tmp_path / "ro")
    assert code == 2 and "cannot write to the workspace" in error_line(err)


def test_workspace_that_is_a_file(cli, scene, tmp_path):
    (tmp_path / "taken").write_text("")
    code, err = cli("poses", "--data", scene, "--workspace", tmp_path / "taken")
    assert code == 2 and "taken" in error_line(err)


def test_leftovers_of_a_killed_run_are_removed(cli, scene, posed):
    leftover = posed / ".tmp" / "nerf-deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "model.pt").write_bytes(b"half")
    (leftover / ".owner").write_text("999999999")  # no such process
    assert cli("nerf", "--workspace", posed, *TINY_NERF)[0] == 0
    assert not leftover.exists() and (posed / "nerf" / "model.pt").exists()


def test_resume_after_a_config_change_starts_afresh_with_a_warning(cli, posed, recon_log):
    args = ["nerf", "--workspace", posed, *TINY_NERF, "max_steps=60", "checkpoint_every=2"]
    script = (f"import sys, signal, os; sys.path.insert(0, {str(ROOT)!r}); import run\n"
              f"from pipeline.training import nerf\n"
              f"save = nerf.save_checkpoint\n"
              f"def save_then_die(path, state):\n"
              f"    save(path, state)\n"
              f"    os.kill(os.getpid(), signal.SIGKILL)\n"
              f"nerf.save_checkpoint = save_then_die\n"
              f"run.main({[str(a) for a in args]!r})\n")
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "RECON_QUIET": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (posed / ".resume" / "nerf" / "checkpoint.pt").exists()
    code, err = cli("nerf", "--workspace", posed, *TINY_NERF, "model.width=32")
    assert code == 0, err
    assert "checkpoint" in recon_log.text and "config" in recon_log.text
    metrics = json.loads((posed / "nerf" / "metrics.json").read_text())
    assert metrics["steps"] == 6 and math.isfinite(metrics["psnr"])


def test_interrupt_then_resume(posed):
    """Ctrl-C: the checkpoint is written, the message says how to go on, the re-run resumes."""
    args = [sys.executable, str(ROOT / "run.py"), "nerf", "--workspace", str(posed), *TINY_NERF,
            "max_steps=100000", "checkpoint_every=0"]
    env = {**os.environ, "RECON_QUIET": "1", "PYTHONFAULTHANDLER": "1"}  # SIGABRT prints every thread's stack
    # Ctrl-C as at a terminal: a test suite started in the background (`make test &`) ignores
    # SIGINT, its children inherit that, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    # wait for training steps (the training curve's line every 50 steps), not for a time: a loaded
    # machine may still be loading the data seconds after the stage started
    curve = posed / ".resume" / "nerf" / "metrics.jsonl"
    while time.time() < deadline and not (curve.exists() and len(curve.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # say where it is
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"run.py did not stop within 60 s of Ctrl-C (curve lines: "
                    f"{len(curve.read_text().splitlines()) if curve.exists() else 0}); its stacks:\n{err[-6000:]}")
    assert proc.returncode == 130 and "resumes from its last checkpoint" in err and "Traceback" not in err
    state = __import__("torch").load(posed / ".resume" / "nerf" / "checkpoint.pt", weights_only=False)
    resumed = subprocess.run(args[:-2] + [f"max_steps={state['step'] + 3}", "checkpoint_every=0"],
                             capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((posed / "nerf" / "metrics.json").read_text())["steps"] == state["step"] + 3


# --- what the messages say ----------------------------------------------------------------------

def test_unknown_stage(cli, capsys):
    with pytest.raises(SystemExit) as exit_:
        run.main(["nerff", "--workspace", "w"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "poses", "--data", str(tmp_path / "nowhere"),
                           "--workspace", str(tmp_path / "ws"), "--debug"], capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_json_outputs_never_hold_nan(tmp_path):
    from pipeline.runner.io import write_json

    write_json(tmp_path / "m.json", {"psnr": float("nan"), "list": [1.0, float("inf")], "a": np.float32("nan")})
    assert json.loads((tmp_path / "m.json").read_text()) == {"psnr": None, "list": [1.0, None], "a": None}
