"""Camera models, projection and ray generation (torch, batched, CPU or CUDA).

One convention everywhere inside recon: OpenCV camera axes (x right, y down, z forward) and
camera-to-world 4x4 matrices. Pixel (u, v) = (0.5, 0.5) is the centre of the top-left pixel.
Conversions from OpenGL / Blender / nerfstudio conventions happen only in `datasets/`.

Models:
- ``pinhole``: fx, fy, cx, cy.
- ``opencv``: pinhole with radial-tangential distortion ``(k1, k2, p1, p2, k3)``.
- ``fisheye``: OpenCV fisheye (equidistant) model with ``(k1, k2, k3, k4)``.
- ``equirect``: a 360x180 degree panorama, width = 2 * height. Column u spans longitude
  -180..180 degrees left to right (longitude 0 looks along +z), row v spans latitude +90 (top,
  towards -y, i.e. up) to -90 (bottom).

Depth convention: depth maps of perspective models hold z-depth (distance along the optical axis);
those of ``equirect`` hold range (distance along the ray).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

CAMERA_MODELS = ("pinhole", "opencv", "fisheye", "equirect")
NUM_DIST_PARAMS = {"pinhole": 0, "opencv": 5, "fisheye": 4, "equirect": 0}


@dataclass(frozen=True)
class Intrinsics:
    """The intrinsics of one image (plain Python numbers, easy to serialise)."""

    model: str
    width: int
    height: int
    fx: float = 0.0
    fy: float = 0.0
    cx: float = 0.0
    cy: float = 0.0
    dist: tuple[float, ...] = ()

    def __post_init__(self):
        if self.model not in CAMERA_MODELS:
            raise ValueError(f"unknown camera model {self.model!r}; valid models: {', '.join(CAMERA_MODELS)}")
        n = NUM_DIST_PARAMS[self.model]
        dist = tuple(float(d) for d in self.dist)
        if len(dist) < n:
            dist = dist + (0.0,) * (n - len(dist))
        if len(dist) > n and any(d != 0.0 for d in dist[n:]):
            raise ValueError(f"camera model {self.model!r} takes {n} distortion parameters, got {len(dist)}: {dist}")
        object.__setattr__(self, "dist", dist[:n])

    def scaled(self, factor: float) -> "Intrinsics":
        """The same camera for an image resized by ``factor`` (pixel centres stay consistent)."""
        w, h = int(round(self.width * factor)), int(round(self.height * factor))
        sx, sy = w / self.width, h / self.height
        return replace(self, width=w, height=h, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy)

    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    def to_dict(self) -> dict:
        return {"model": self.model, "width": self.width, "height": self.height, "fx": self.fx, "fy": self.fy,
                "cx": self.cx, "cy": self.cy, "dist": list(self.dist)}

    @classmethod
    def from_dict(cls, d: dict) -> "Intrinsics":
        return cls(model=d["model"], width=int(d["width"]), height=int(d["height"]), fx=float(d.get("fx", 0)),
                   fy=float(d.get("fy", 0)), cx=float(d.get("cx", 0)), cy=float(d.get("cy", 0)),
                   dist=tuple(d.get("dist", ())))


def pinhole_from_fov(width: int, height: int, fov_x_rad: float) -> Intrinsics:
    """A centred pinhole camera with the given horizontal field of view."""
    f = 0.5 * width / math.tan(0.5 * fov_x_rad)
    return Intrinsics("pinhole", width, height, f, f, width / 2.0, height / 2.0)


# ----------------------------------------------------------------------------------------------
# Distortion models on normalised image coordinates.


def distort_opencv(xy: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """Radial-tangential distortion. xy: (N, 2) undistorted normalised coords; dist: (N, 5) or (5,)."""
    k1, k2, p1, p2, k3 = dist.unbind(-1)
    x, y = xy.unbind(-1)
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return torch.stack([xd, yd], -1)


def _opencv_residual_and_jacobian(xy, xy_d, dist):
    k1, k2, p1, p2, k3 = dist.unbind(-1)
    x, y = xy.unbind(-1)
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    d_radial_dr2 = k1 + r2 * (2 * k2 + 3 * k3 * r2)
    fx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xy_d[..., 0]
    fy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - xy_d[..., 1]
    # d(r2)/dx = 2x, d(r2)/dy = 2y
    fx_x = radial + x * d_radial_dr2 * 2 * x + 2 * p1 * y + p2 * (2 * x + 4 * x)
    fx_y = x * d_radial_dr2 * 2 * y + 2 * p1 * x + p2 * 2 * y
    fy_x = y * d_radial_dr2 * 2 * x + p1 * 2 * x + 2 * p2 * y
    fy_y = radial + y * d_radial_dr2 * 2 * y + p1 * (2 * y + 4 * y) + 2 * p2 * x
    return fx, fy, fx_x, fx_y, fy_x, fy_y


def undistort_opencv(xy_d: torch.Tensor, dist: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Inverse of :func:`distort_opencv` by Newton's method (float64 inside). xy_d: (N, 2)."""
    dtype = xy_d.dtype
    xy_d64, dist64 = xy_d.double(), dist.double()
    xy = xy_d64.clone()
    for _ in range(iterations):
        fx, fy, fx_x, fx_y, fy_x, fy_y = _opencv_residual_and_jacobian(xy, xy_d64, dist64)
        det = fx_x * fy_y - fx_y * fy_x
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        step_x = (fx * fy_y - fy * fx_y) / det
        step_y = (fy * fx_x - fx * fy_x) / det
        xy = xy - torch.stack([step_x, step_y], -1)
    return xy.to(dtype)


def distort_fisheye(xy: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """OpenCV fisheye (equidistant) distortion. xy: (N, 2) = (X/Z, Y/Z); dist: (N, 4) or (4,)."""
    k1, k2, k3, k4 = dist.unbind(-1)
    r = xy.norm(dim=-1)
    theta = torch.atan(r)
    t2 = theta * theta
    theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
    scale = torch.where(r > 1e-12, theta_d / r.clamp_min(1e-12), torch.ones_like(r))
    return xy * scale.unsqueeze(-1)


def _fisheye_theta_from_theta_d(theta_d: torch.Tensor, dist: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    k1, k2, k3, k4 = dist.double().unbind(-1)
    td = theta_d.double()
    theta = td.clone()
    for _ in range(iterations):
        t2 = theta * theta
        f = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))) - td
        df = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + 9 * t2 * k4)))
        theta = theta - f / df
    return theta.to(theta_d.dtype)


def undistort_fisheye(xy_d: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`distort_fisheye`. xy_d: (N, 2) -> (N, 2) = (X/Z, Y/Z)."""
    theta_d = xy_d.norm(dim=-1)
    theta = _fisheye_theta_from_theta_d(theta_d, dist)
    scale = torch.where(theta_d > 1e-12, torch.tan(theta) / theta_d.clamp_min(1e-12), torch.ones_like(theta_d))
    return xy_d * scale.unsqueeze(-1)


# ----------------------------------------------------------------------------------------------
# Batched cameras.


@dataclass
class Cameras:
    """A batch of N cameras of one model, as tensors.

    fx, fy, cx, cy: (N,); dist: (N, D) with D from the model; c2w: (N, 4, 4) OpenCV camera-to-world;
    width, height: (N,) integer tensors. Index with ``cams[idx]`` to gather one camera per ray.
    """

    model: str
    fx: torch.Tensor
    fy: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    c2w: torch.Tensor
    width: torch.Tensor
    height: torch.Tensor
    dist: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if self.model not in CAMERA_MODELS:
            raise ValueError(f"unknown camera model {self.model!r}; valid models: {', '.join(CAMERA_MODELS)}")
        if self.dist is None:
            self.dist = torch.zeros(self.fx.shape[0], NUM_DIST_PARAMS[self.model], dtype=self.fx.dtype,
                                    device=self.fx.device)

    @classmethod
    def from_intrinsics(cls, intrinsics: Sequence[Intrinsics], c2w, dtype=torch.float32,
                        device: torch.device | str = "cpu") -> "Cameras":
        """Stack per-image intrinsics and camera-to-world matrices ((N, 4, 4) array) into a batch."""
        models = {k.model for k in intrinsics}
        if len(models) != 1:
            raise ValueError(f"a camera batch needs one camera model, got {sorted(models)}; "
                             "undistort the images or split the batch by model")
        model = models.pop()

        def t(values):
            return torch.tensor(values, dtype=dtype, device=device)

        c2w_t = torch.as_tensor(np.asarray(c2w, dtype=np.float64), device=device).to(dtype)
        if c2w_t.shape[-2:] == (3, 4):
            bottom = torch.tensor([0, 0, 0, 1], dtype=dtype, device=device).expand(*c2w_t.shape[:-2], 1, 4)
            c2w_t = torch.cat([c2w_t, bottom], -2)
        n_dist = NUM_DIST_PARAMS[model]
        dist = t([list(k.dist) for k in intrinsics]) if n_dist else torch.zeros(len(intrinsics), 0, dtype=dtype,
                                                                                 device=device)
        return cls(model=model, fx=t([k.fx for k in intrinsics]), fy=t([k.fy for k in intrinsics]),
                   cx=t([k.cx for k in intrinsics]), cy=t([k.cy for k in intrinsics]), c2w=c2w_t.reshape(-1, 4, 4),
                   width=torch.tensor([k.width for k in intrinsics], device=device),
                   height=torch.tensor([k.height for k in intrinsics], device=device), dist=dist)

    def __len__(self) -> int:
        return self.fx.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Cameras(self.model, self.fx[idx], self.fy[idx], self.cx[idx], self.cy[idx], self.c2w[idx],
                       self.width[idx], self.height[idx], self.dist[idx])

    def to(self, device=None, dtype=None) -> "Cameras":
        def mv(x, is_float=True):
            return x.to(device=device, dtype=dtype if is_float else None)
        return Cameras(self.model, mv(self.fx), mv(self.fy), mv(self.cx), mv(self.cy), mv(self.c2w),
                       mv(self.width, False), mv(self.height, False), mv(self.dist))

    @property
    def device(self) -> torch.device:
        return self.fx.device

    # --- camera frame <-> pixels -----------------------------------------------------------

    def project(self, points_cam: torch.Tensor) -> torch.Tensor:
        """Camera-frame points (N, 3) -> pixels (N, 2). Points behind a perspective camera give
        meaningless pixels: check ``points_cam[:, 2] > 0`` yourself."""
        if self.model == "equirect":
            x, y, z = points_cam.unbind(-1)
            lon = torch.atan2(x, z)
            lat = torch.atan2(-y, torch.sqrt(x * x + z * z))
            u = (lon + math.pi) / (2 * math.pi) * self.width.to(points_cam.dtype)
            v = (math.pi / 2 - lat) / math.pi * self.height.to(points_cam.dtype)
            return torch.stack([u, v], -1)
        xy = points_cam[..., :2] / points_cam[..., 2:3]
        if self.model == "opencv":
            xy = distort_opencv(xy, self.dist)
        elif self.model == "fisheye":
            xy = distort_fisheye(xy, self.dist)
        return torch.stack([xy[..., 0] * self.fx + self.cx, xy[..., 1] * self.fy + self.cy], -1)

    def unproject(self, uv: torch.Tensor) -> torch.Tensor:
        """Pixels (N, 2) -> camera-frame directions (N, 3). Perspective models return directions
        with z = 1 (so ``depth * dir`` is the point for a z-depth); ``equirect`` returns unit vectors."""
        if self.model == "equirect":
            lon = uv[..., 0] / self.width.to(uv.dtype) * (2 * math.pi) - math.pi
            lat = math.pi / 2 - uv[..., 1] / self.height.to(uv.dtype) * math.pi
            return torch.stack([torch.cos(lat) * torch.sin(lon), -torch.sin(lat), torch.cos(lat) * torch.cos(lon)], -1)
        xy = torch.stack([(uv[..., 0] - self.cx) / self.fx, (uv[..., 1] - self.cy) / self.fy], -1)
        if self.model == "opencv":
            xy = undistort_opencv(xy, self.dist)
        elif self.model == "fisheye":
            xy = undistort_fisheye(xy, self.dist)
        return torch.cat([xy, torch.ones_like(xy[..., :1])], -1)

    # --- world <-> pixels -------------------------------------------------------------------

    def world_to_camera(self, points_world: torch.Tensor) -> torch.Tensor:
        """points_world: (N, 3) -> (N, 3) in each camera's frame (c2w broadcast per point)."""
        R, t = self.c2w[..., :3, :3], self.c2w[..., :3, 3]
        return torch.einsum("...ji,...j->...i", R, points_world - t)

    def project_world(self, points_world: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World points (N, 3) -> (pixels (N, 2), depth (N,)) with depth as in the module docstring."""
        pc = self.world_to_camera(points_world)
        depth = pc.norm(dim=-1) if self.model == "equirect" else pc[..., 2]
        return self.project(pc), depth

    def generate_rays(self, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pixels (N, 2) -> (rays_o (N, 3), rays_d (N, 3) unit length, z_scale (N,)).

        ``z_scale`` converts a distance t along the unit ray to the depth convention of the model:
        ``depth = t * z_scale`` (z-depth for perspective models, range for equirect).
        """
        d_cam = self.unproject(uv)
        norm = d_cam.norm(dim=-1, keepdim=True)
        d_cam_unit = d_cam / norm
        R = self.c2w[..., :3, :3]
        rays_d = torch.einsum("...ij,...j->...i", R, d_cam_unit)
        rays_o = self.c2w[..., :3, 3].expand_as(rays_d)
        z_scale = torch.ones_like(norm[..., 0]) if self.model == "equirect" else d_cam_unit[..., 2]
        return rays_o, rays_d, z_scale


def visibility_counts(points: torch.Tensor, cameras: Cameras) -> torch.Tensor:
    """How many cameras see each point (N, 3) inside their image and in front of them: (N,) int."""
    counts = torch.zeros(len(points), dtype=torch.int32, device=points.device)
    for i in range(len(cameras)):
        cam = cameras[i]
        pc = cam.world_to_camera(points)
        if cam.model == "equirect":
            counts += 1
            continue
        in_front = pc[:, 2] > 1e-6
        uv = cam.project(torch.where(in_front[:, None], pc, torch.ones_like(pc)))
        w, h = cam.width.to(points.dtype), cam.height.to(points.dtype)
        inside = in_front & (uv[:, 0] >= 0) & (uv[:, 0] <= w) & (uv[:, 1] >= 0) & (uv[:, 1] <= h)
        counts += inside.to(torch.int32)
    return counts


def pixel_grid(width: int, height: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """All pixel centres of an image, row-major: (H*W, 2) as (u, v) with centres at +0.5."""
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                          torch.arange(width, device=device, dtype=dtype), indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], -1) + 0.5


def image_rays(cameras: Cameras, index: int = 0, downscale: int = 1):
    """Rays of every pixel of camera ``index``: rays_o, rays_d (H*W, 3), z_scale (H*W,), and (H, W)."""
    cam = cameras[index]
    w, h = int(cam.width[0]) // downscale, int(cam.height[0]) // downscale
    uv = pixel_grid(w, h, device=cam.device, dtype=cam.fx.dtype) * downscale
    rays_o, rays_d, z_scale = cam.generate_rays(uv)
    return rays_o, rays_d, z_scale, (h, w)


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV camera-to-world (4, 4) for a camera at ``eye`` looking at ``target``; ``up`` is the
    world direction that should appear up in the image (image y points the other way)."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:  # looking along up: pick any perpendicular
        x = np.cross(z, np.array([1.0, 0, 0]) if abs(z[0]) < 0.9 else np.array([0, 1.0, 0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w
