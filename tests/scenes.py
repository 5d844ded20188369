"""Tiny scenes written for tests, with known cameras: random images and ring poses for the dataset
readers, a shaded sphere in Blender format (the IDR tests), and a workspace holding a coloured ball
seen from a ring of cameras (the NeRF tests). The analytic sphere of the export/eval tests is in
``tests/analytic_sphere.py``."""
from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import torch

from pipeline.geometry.cameras import Intrinsics, look_at

W, H = 32, 24  # the size of the readers' images unless a test needs otherwise


def write_images(folder, names, width=W, height=H, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        iio.imwrite(folder / name, rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        paths.append(folder / name)
    return paths


def ring_poses(n, radius=3.0, seed=0):
    """n OpenCV camera-to-world matrices on a noisy ring looking near the origin."""
    rng = np.random.default_rng(seed)
    poses = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = [radius * math.cos(a), radius * math.sin(a), 1.0 + rng.uniform(-0.3, 0.3)]
        poses.append(look_at(eye, rng.normal(size=3) * 0.2, up=(0, 0, 1)))
    return poses


def analytic_first_hit(rays_o, rays_d, radius):
    """Ray parameter t (N,) of the first hit of a sphere of ``radius`` at the origin, and hit (N,)."""
    b = (rays_o * rays_d).sum(-1)
    disc = b * b - ((rays_o * rays_o).sum(-1) - radius ** 2)
    return -b - disc.clamp_min(0).sqrt(), disc > 0


def write_sphere_scene(root, size=24, radius=0.5, views=10):
    """A Blender-format scene: a shaded sphere (RGBA, alpha = mask), views on a ring."""
    from pipeline.geometry.cameras import pinhole_from_fov, Cameras, pixel_grid
    from datasets.nerfstudio import opengl_to_opencv

    root.mkdir(parents=True, exist_ok=True)
    k = pinhole_from_fov(size, size, math.radians(40))
    frames = {"train": [], "test": []}
    for i in range(views):
        angle = 2 * math.pi * i / views
        eye = 2.5 * np.array([math.cos(angle), math.sin(angle), 0.4])
        c2w = look_at(eye, np.zeros(3))
        cam = Cameras.from_intrinsics([k], c2w[None])
        rays_o, rays_d, _ = cam.generate_rays(pixel_grid(size, size))
        t, hit = analytic_first_hit(rays_o, rays_d, radius)
        normal = (rays_o + t[:, None] * rays_d) / radius
        shade = 0.3 + 0.7 * normal[:, 2:3].clamp_min(0)
        rgb = torch.where(hit[:, None], shade * torch.tensor([0.9, 0.5, 0.3]), torch.ones(3))
        rgba = torch.cat([rgb, hit[:, None].float()], -1).reshape(size, size, 4)
        split = "test" if i % 5 == 4 else "train"
        name = f"{split}/r_{i}"
        (root / split).mkdir(exist_ok=True)
        iio.imwrite(root / f"{name}.png", (rgba.numpy() * 255 + 0.5).astype(np.uint8))
        frames[split].append({"file_path": f"./{name}",
                              "transform_matrix": opengl_to_opencv(c2w).tolist()})
    for split, fr in frames.items():
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": math.radians(40), "frames": fr}))
    return root


def write_ball_workspace(tmp_path, views=6, size=16):
    """A workspace whose poses/transforms.json holds a coloured ball seen from a ring of cameras."""
    from datasets.nerfstudio import write_nerfstudio
    from datasets.scene import Frame, Scene
    from pipeline.runner.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    K = Intrinsics("pinhole", size, size, 18.0, 18.0, size / 2, size / 2)
    frames = []
    for i in range(views):
        angle = 2 * math.pi * i / views
        eye = (2.5 * math.cos(angle), 2.5 * math.sin(angle), 0.5)
        c2w = look_at(eye, (0, 0, 0))
        yy, xx = np.mgrid[0:size, 0:size]
        inside = (xx - size / 2 + 0.5) ** 2 + (yy - size / 2 + 0.5) ** 2 < (size / 3) ** 2
        rgba = np.zeros((size, size, 4), np.uint8)
        rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 60 + 20 * i, 40
        rgba[..., 3] = inside * 255
        path = img_dir / f"v{i}.png"
        iio.imwrite(path, rgba)
        frames.append(Frame(path, K, c2w))
    scene = Scene(frames, {"train": list(range(1, views)), "test": [0]})
    (ws.root / "poses").mkdir(parents=True)
    write_nerfstudio(scene, ws.root / "poses" / "transforms.json", relative_to=ws.root / "poses")
    return ws
