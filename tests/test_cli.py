"""run.py as a user runs it: --help everywhere, a poses import, clear errors for bad input."""
import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from pipeline.geometry.cameras import look_at
from datasets.nerfstudio import opencv_to_opengl

ROOT = Path(__file__).resolve().parent.parent


def run_py(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={"RECON_QUIET": "1", "PATH": "/usr/bin:/bin"})


def write_tiny_blender_scene(folder: Path, n=4, size=16) -> list[np.ndarray]:
    """A Blender-format scene of ``n`` RGBA images around the origin; returns the OpenCV c2w."""
    c2ws = []
    for split in ("train", "test"):
        frames = []
        (folder / split).mkdir(parents=True)
        for i in range(n):
            angle = 2 * np.pi * i / n + (0.3 if split == "test" else 0)
            c2w = look_at([4 * np.cos(angle), 4 * np.sin(angle), 1.0], [0, 0, 0])
            c2ws.append(c2w)
            img = np.zeros((size, size, 4), np.uint8)
            img[4:12, 4:12] = 255
            iio.imwrite(folder / split / f"r_{i}.png", img)
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": opencv_to_opengl(c2w).tolist()})
        (folder / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": frames}))
    return c2ws


def test_every_subcommand_has_help():
    top = run_py("--help")
    assert top.returncode == 0 and "synthetic" in top.stdout and "poses" in top.stdout
    from stages import available_stages

    commands = ["demo", "synthetic", *available_stages()]
    for command in commands:
        result = run_py(command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert "usage" in result.stdout


def test_poses_import_then_skip_then_force(tmp_path):
    write_tiny_blender_scene(tmp_path / "scene")
    ws = tmp_path / "ws"
    first = run_py("poses", "--data", tmp_path / "scene", "--workspace", ws)
    assert first.returncode == 0, first.stderr
    transforms = json.loads((ws / "poses" / "transforms.json").read_text())
    assert len(transforms["frames"]) == 8 and len(transforms["test_filenames"]) == 4
    again = run_py("poses", "--data", tmp_path / "scene", "--workspace", ws)
    assert "up to date" in again.stderr
    forced = run_py("poses", "--data", tmp_path / "scene", "--workspace", ws, "--force")
    assert "running" in forced.stderr and forced.returncode == 0
    assert "poses" in (ws / "logs" / "run.log").read_text()


def test_normalised_scene_keeps_the_relative_geometry(tmp_path):
    c2ws = write_tiny_blender_scene(tmp_path / "scene")
    ws = tmp_path / "ws"
    assert run_py("poses", "--data", tmp_path / "scene", "--workspace", ws, "normalize=sphere").returncode == 0
    from pipeline.runner.workspace import Workspace

    workspace = Workspace(ws)
    scene, sim = workspace.load_scene(), workspace.normalization()
    restored = sim.inverse().apply_c2w(np.stack([f.c2w for f in scene.frames]))
    np.testing.assert_allclose(restored, np.stack(c2ws), atol=1e-9)
    # the cameras looked at the origin: it is the centre of the normalised frame
    np.testing.assert_allclose(sim.apply_points(np.zeros((1, 3)))[0], 0, atol=1e-6)


def test_bad_override_and_missing_data_are_clear_errors(tmp_path):
    bad_key = run_py("poses", "--workspace", tmp_path / "ws", "--data", tmp_path, "normalise=sphere")
    assert bad_key.returncode == 2 and "normalise" in bad_key.stderr and "normalize" in bad_key.stderr
    no_data = run_py("poses", "--workspace", tmp_path / "ws")
    assert no_data.returncode != 0 and "--data" in no_data.stderr
    missing = run_py("poses", "--workspace", tmp_path / "ws", "--data", tmp_path / "nowhere")
    assert missing.returncode != 0 and "nowhere" in missing.stderr


def test_bare_overrides_and_flags_go_to_the_demo(monkeypatch):
    sys.path.insert(0, str(ROOT))
    import run

    calls = []
    monkeypatch.setattr(run, "cmd_demo", lambda args, extra: calls.append((args.command, run.flags_to_overrides(extra))))
    assert run.main(["max_time_s=60"]) == 0
    assert run.main(["--max-time-s", "60", "--method", "idr"]) == 0
    assert calls == [("demo", ["max_time_s=60"]), ("demo", ["max_time_s=60"])]
