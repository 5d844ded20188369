"""Analytic stand-ins for trained models, and a workspace around them, for export/eval tests
(their own test: ``tests/models/test_render_protocols.py``).

``SphereSDF`` is an IDR-like model (exact ray-sphere intersection, ``query_sdf``);
``SphereDensity`` is a NeRF-like model (volume rendering of a soft sphere, ``query_density``),
optionally with floater blobs. Both implement ``pipeline.models.render``'s protocols in the normalised
frame and colour points by a smooth function of their ORIGINAL-frame coordinates, so renders are
the same whatever normalisation the poses stage chose. ``make_sphere_workspace`` writes a
nerfstudio dataset of the sphere (images, GT depth, masks, GT mesh), runs the real poses stage
on it and registers a finished fake ``nerf``/``idr`` run whose ``load_trained``
(``pipeline.models.<method>.io``) returns the model.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from pipeline.geometry.cameras import Cameras, look_at
from pipeline.geometry.camera_paths import intrinsics_from_fov
from pipeline.geometry.normalize import Similarity
from pipeline.models.render import render_image

# the sphere in ORIGINAL units (deliberately off-centre and not unit-sized)
CENTER = np.array([1.0, -2.0, 0.5])
RADIUS = 0.8


class SphereSDF:
    """An SDF sphere in the normalised frame. ``to_original`` maps normalised -> original points."""

    def __init__(self, center, radius: float, to_original: Similarity | None = None, background: float = 1.0):
        self.center = torch.as_tensor(np.asarray(center), dtype=torch.float32)
        self.radius = float(radius)
        self.to_original = to_original or Similarity()
        self.background = background

    def color(self, points: torch.Tensor) -> torch.Tensor:
        """rgb (N, 3): smooth stripes in ORIGINAL coordinates relative to the GT sphere."""
        sim = self.to_original
        rot = torch.as_tensor(sim.scale * sim.rotation, dtype=points.dtype, device=points.device)
        shift = torch.as_tensor(sim.translation - CENTER, dtype=points.dtype, device=points.device)
        u = (points @ rot.T + shift) / RADIUS
        phase = torch.tensor([0.0, 2.1, 4.2], dtype=u.dtype, device=u.device)
        return 0.5 + 0.4 * torch.sin(2.5 * u + phase)

    def query_sdf(self, points: torch.Tensor) -> torch.Tensor:
        return (points - self.center.to(points)).norm(dim=-1) - self.radius

    def query_color(self, points: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        return self.color(points)

    def render_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor) -> dict:
        oc = rays_o - self.center.to(rays_o)
        b = (oc * rays_d).sum(-1)
        disc = b * b - ((oc * oc).sum(-1) - self.radius ** 2)
        t = -b - torch.sqrt(disc.clamp_min(0))
        hit = (disc > 0) & (t > 0)
        t = torch.where(hit, t, torch.zeros_like(t))
        x = rays_o + t[:, None] * rays_d
        normal = (x - self.center.to(x)) / self.radius
        rgb = torch.where(hit[:, None], self.color(x), torch.full_like(x, self.background))
        return {"rgb": rgb, "t": t, "acc": hit.float(), "normal": torch.where(hit[:, None], normal, 0 * normal)}


class SphereDensity(SphereSDF):
    """A NeRF-like soft sphere: sigma = sigma_max * sigmoid(-sdf / softness), so the iso-surface
    sigma = sigma_max / 2 is exactly the sphere; ``floaters`` are extra (center, radius) blobs.
    Rendered by quadrature with ``n_samples`` per ray inside a bounding sphere."""

    def __init__(self, center, radius, to_original=None, background=1.0, sigma_max: float = 400.0,
                 softness: float = 0.01, floaters=(), n_samples: int = 128, scene_radius: float = 2.0):
        super().__init__(center, radius, to_original, background)
        self.sigma_max, self.softness, self.n_samples, self.scene_radius = sigma_max, softness, n_samples, scene_radius
        self.floaters = [(torch.as_tensor(np.asarray(c), dtype=torch.float32), float(r)) for c, r in floaters]

    def query_density(self, points: torch.Tensor) -> torch.Tensor:
        sdf = self.query_sdf(points)
        for c, r in self.floaters:
            sdf = torch.minimum(sdf, (points - c.to(points)).norm(dim=-1) - r)
        return self.sigma_max * torch.sigmoid(-sdf / self.softness)

    def render_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor) -> dict:
        b = (rays_o * rays_d).sum(-1)
        disc = (b * b - ((rays_o * rays_o).sum(-1) - self.scene_radius ** 2)).clamp_min(0)
        near, far = (-b - disc.sqrt()).clamp_min(0), (-b + disc.sqrt()).clamp_min(1e-3)
        s = torch.linspace(0, 1, self.n_samples, device=rays_o.device)
        t = near[:, None] + (far - near)[:, None] * s  # (N, S)
        delta = torch.diff(t, dim=-1, append=t[:, -1:] + 1e10)
        points = rays_o[:, None] + t[..., None] * rays_d[:, None]  # (N, S, 3)
        sigma = self.query_density(points.reshape(-1, 3)).reshape(t.shape)
        alpha = 1 - torch.exp(-sigma * delta)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1] + 1e-10], -1), -1)
        w = alpha * trans
        acc = w.sum(-1)
        colors = self.color(points.reshape(-1, 3)).reshape(*t.shape, 3)
        rgb = (w[..., None] * colors).sum(1) + (1 - acc[:, None]) * self.background
        return {"rgb": rgb, "t": (w * t).sum(-1) / acc.clamp_min(1e-8), "acc": acc}


# ----------------------------------------------------------------------------------------------
# A workspace around the analytic sphere.


def ring_cameras(n: int, distance: float = 3.0, size: int = 40, fov_deg: float = 40.0, center=CENTER):
    """(intrinsics, c2w (n, 4, 4)) on a ring around ``center`` at alternating elevations."""
    k = intrinsics_from_fov(size, size, fov_deg)
    poses = []
    for i in range(n):
        az, el = 2 * math.pi * i / n, math.radians(15 if i % 2 else 35)
        eye = np.asarray(center) + distance * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az),
                                                        math.sin(el)])
        poses.append(look_at(eye, center))
    return k, np.stack(poses)


def sphere_mesh(center=CENTER, radius=RADIUS, resolution: int = 96):
    """A marching-cubes mesh of a sphere (verts (V, 3), faces (F, 3))."""
    from pipeline.geometry.mesh import marching_cubes, sample_grid

    c = torch.as_tensor(np.asarray(center), dtype=torch.float32)
    bounds = np.stack([np.asarray(center) - 1.2 * radius, np.asarray(center) + 1.2 * radius])
    grid = sample_grid(lambda p: (p - c).norm(dim=-1) - radius, bounds, resolution)
    return marching_cubes(grid, bounds, 0.0)


def write_sphere_dataset(root: Path, n_views: int = 8, size: int = 40) -> Path:
    """A nerfstudio dataset (original units) of the analytic sphere with GT depth, masks, mesh."""
    from datasets.nerfstudio import opencv_to_opengl
    from pipeline.geometry.mesh import write_ply

    root.mkdir(parents=True, exist_ok=True)
    k, poses = ring_cameras(n_views, size=size)
    model = SphereSDF(CENTER, RADIUS)  # in the original frame: identity mapping
    frames = []
    for i, c2w in enumerate(poses):
        cam = Cameras.from_intrinsics([k], c2w[None])
        r = render_image(model, cam)
        name = f"view_{i:02d}"
        iio.imwrite(root / f"{name}.png", (r["rgb"].numpy() * 255 + 0.5).astype(np.uint8))
        iio.imwrite(root / f"{name}_mask.png", (r["acc"].numpy() * 255).astype(np.uint8))
        np.save(root / f"{name}_depth.npy", np.where(r["acc"].numpy() > 0.5, r["depth"].numpy(), 0).astype(np.float32))
        frames.append({"file_path": f"{name}.png", "mask_path": f"{name}_mask.png",
                       "depth_file_path": f"{name}_depth.npy", "transform_matrix": opencv_to_opengl(c2w).tolist()})
    write_ply(root / "mesh_gt.ply", *sphere_mesh())
    lo, hi = CENTER - 1.25 * RADIUS, CENTER + 1.25 * RADIUS
    data = {"camera_model": "PINHOLE", "fl_x": k.fx, "fl_y": k.fy, "cx": k.cx, "cy": k.cy, "w": k.width, "h": k.height,
            "frames": frames, "train_filenames": [f["file_path"] for i, f in enumerate(frames) if i % 4],
            "test_filenames": [f["file_path"] for i, f in enumerate(frames) if i % 4 == 0],
            "recon_bounds": [lo.tolist(), hi.tolist()],
            "recon": {"mesh_gt": "mesh_gt.ply", "object_radius": RADIUS}}
    (root / "transforms.json").write_text(json.dumps(data))
    return root


def make_sphere_workspace(tmp_path: Path, monkeypatch, method: str = "idr", n_views: int = 8, size: int = 40,
                          **model_kwargs):
    """A workspace posed by the real poses stage with a finished fake ``method`` run. Returns
    (workspace, the model in the normalised frame)."""
    from pipeline.runner.stage import run_stage
    from pipeline.runner.io import write_json
    from pipeline.runner.workspace import Workspace
    from stages import poses

    data = write_sphere_dataset(tmp_path / "data", n_views, size)
    ws = Workspace(tmp_path / "ws")
    run_stage(poses.STAGE, ws, poses.STAGE.load_config(overrides=[f"data={data}"]))
    sim = ws.normalization()
    center, radius = sim.apply_points(CENTER[None])[0], RADIUS * sim.scale
    model = (SphereSDF(center, radius, sim.inverse()) if method == "idr"
             else SphereDensity(center, radius, sim.inverse(), **model_kwargs))
    (ws.root / method).mkdir()
    write_json(ws.root / method / "manifest.json", {"stage": method, "status": "done"})
    monkeypatch.setattr(f"pipeline.models.{method}.io.load_trained", lambda workspace, device: model)
    return ws, model
