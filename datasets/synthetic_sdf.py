"""Analytic signed distance functions of the built-in synthetic scenes (torch, metres, world up = +z).

Two scenes:
- the *object* (``analytic_sdf``): five primitives on a round base, inside a radius of ~1.06 m
  around the origin, like NeRF's lego;
- the *room* (``indoor_sdf``): a 6 x 5 x 3 m box seen from inside, floor at z = 0, with a few
  objects standing on the floor.

Primitives are combined with a hard union (``min``), which keeps the distance exact outside the
surface (sphere tracing and the mesh test rely on that). Every primitive carries a material id
(its index) used by the procedural textures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

# ----------------------------------------------------------------------------------------------
# Primitive SDFs in a local frame. p: (N, 3) -> (N,)


# Reductions over a tiny last dimension (``x.max(dim=-1)``, ``x.norm(dim=-1)`` on (N, 3)) are
# many times slower in torch than the same maths written with elementwise ops, and the sphere
# tracer calls these functions hundreds of times per view: hence the explicit components.


def _length2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(x * x + y * y)


def _length3(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(x * x + y * y + z * z)


def sd_sphere(p: torch.Tensor, radius: float) -> torch.Tensor:
    return _length3(p[:, 0], p[:, 1], p[:, 2]) - radius


def sd_round_box(p: torch.Tensor, half: tuple[float, float, float], rounding: float = 0.0) -> torch.Tensor:
    """Box with half extents ``half`` (outer size, edges rounded by ``rounding``)."""
    qx, qy, qz = (p[:, i].abs() - (half[i] - rounding) for i in range(3))
    outside = _length3(qx.clamp_min(0), qy.clamp_min(0), qz.clamp_min(0))
    inside = torch.maximum(torch.maximum(qx, qy), qz).clamp_max(0)
    return outside + inside - rounding


def sd_torus(p: torch.Tensor, major: float, minor: float) -> torch.Tensor:
    """Torus around the local z axis."""
    return _length2(_length2(p[:, 0], p[:, 1]) - major, p[:, 2]) - minor


def sd_round_cylinder(p: torch.Tensor, radius: float, half_height: float, rounding: float = 0.0) -> torch.Tensor:
    """Capped cylinder along the local z axis (outer radius / half height, rim rounded by ``rounding``)."""
    dr = _length2(p[:, 0], p[:, 1]) - radius + rounding
    dz = p[:, 2].abs() - half_height + rounding
    return torch.maximum(dr, dz).clamp_max(0) + _length2(dr.clamp_min(0), dz.clamp_min(0)) - rounding


def rotation_z(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def rotation_x(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])


@dataclass(frozen=True)
class Primitive:
    """One placed primitive: ``local_sdf`` evaluated at ``R^T (p - centre)``; ``sign=-1`` turns the
    shape inside out (a room seen from inside)."""

    name: str
    local_sdf: Callable[[torch.Tensor], torch.Tensor]
    centre: tuple[float, float, float]
    rotation: torch.Tensor | None = None  # (3, 3) local-to-world
    sign: float = 1.0

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        local = points - points.new_tensor(self.centre)
        if self.rotation is not None:
            local = local @ self.rotation.to(points)  # row vectors: p_local = R^T p  <=>  p @ R
        d = self.local_sdf(local)
        return -d if self.sign < 0 else d


class SDFScene:
    """A hard union of primitives; ``material(points)`` is the index of the nearest primitive."""

    def __init__(self, primitives: list[Primitive], bound_radius: float | None = None):
        self.primitives = primitives
        self.bound_radius = bound_radius  # every surface lies inside this sphere around the origin

    def distances(self, points: torch.Tensor) -> torch.Tensor:
        """points: (N, 3) -> (N, K) distance to each primitive."""
        return torch.stack([prim(points) for prim in self.primitives], -1)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """points: (N, 3) -> signed distance (N,)."""
        d = self.primitives[0](points)
        for prim in self.primitives[1:]:
            d = torch.minimum(d, prim(points))
        return d

    def material(self, points: torch.Tensor) -> torch.Tensor:
        """points: (N, 3) -> (N,) int64 index of the primitive whose surface is nearest."""
        return self.distances(points).argmin(dim=-1)

    def normals(self, points: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
        """points: (N, 3) -> unit outward normals (N, 3): the SDF gradient by a tetrahedral finite
        difference in float64 (exact to ~1e-8 here, and much cheaper than autograd on CPU)."""
        p = points.detach().double()
        corners = p.new_tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]])
        grad = sum(corner * self(p + h * corner)[:, None] for corner in corners)
        return torch.nn.functional.normalize(grad, dim=-1).to(points.dtype)


# ----------------------------------------------------------------------------------------------
# The two scenes.

OBJECT_RADIUS = 1.06  # metres: every surface point of the object lies within this distance of the origin


def object_scene() -> SDFScene:
    """The object: a round base with a sphere, a rounded box, a standing torus and a column on it."""
    prims = [
        Primitive("base", lambda p: sd_round_cylinder(p, 0.85, 0.08, 0.03), (0.0, 0.0, -0.55)),
        Primitive("sphere", lambda p: sd_sphere(p, 0.40), (-0.32, -0.28, -0.08)),
        Primitive("box", lambda p: sd_round_box(p, (0.20, 0.25, 0.32), 0.03), (0.38, -0.25, -0.17),
                  rotation_z(25.0)),
        Primitive("torus", lambda p: sd_torus(p, 0.30, 0.09), (0.30, 0.38, -0.10),
                  rotation_z(-35.0) @ rotation_x(90.0)),
        Primitive("column", lambda p: sd_round_cylinder(p, 0.14, 0.50, 0.02), (-0.35, 0.40, -0.02)),
    ]
    return SDFScene(prims, bound_radius=OBJECT_RADIUS)


ROOM_CENTRE = (0.0, 0.0, 1.5)
ROOM_HALF = (3.0, 2.5, 1.5)  # a 6 x 5 x 3 m room, floor at z = 0


def room_scene() -> SDFScene:
    """The indoor scene: the room shell (material 0) and four objects on the floor."""
    prims = [
        Primitive("room", lambda p: sd_round_box(p, ROOM_HALF), ROOM_CENTRE, sign=-1.0),
        Primitive("table", lambda p: sd_round_box(p, (0.6, 0.4, 0.38), 0.04), (1.4, 1.1, 0.38), rotation_z(15.0)),
        Primitive("ball", lambda p: sd_sphere(p, 0.45), (-1.6, -1.2, 0.45)),
        Primitive("pillar", lambda p: sd_round_cylinder(p, 0.25, 1.5, 0.0), (-1.9, 1.3, 1.5)),
        Primitive("ring", lambda p: sd_torus(p, 0.35, 0.12), (1.6, -1.4, 0.47), rotation_z(30.0) @ rotation_x(90.0)),
    ]
    return SDFScene(prims)


_OBJECT = object_scene()
_ROOM = room_scene()


def analytic_sdf(points: torch.Tensor) -> torch.Tensor:
    """The object's exact signed distance (metres, negative inside): points (N, 3) -> (N,)."""
    return _OBJECT(points)


def indoor_sdf(points: torch.Tensor) -> torch.Tensor:
    """The indoor scene's signed distance (positive in the room's free space): (N, 3) -> (N,)."""
    return _ROOM(points)


def object_bounds(margin: float = 0.05) -> torch.Tensor:
    """(2, 3) axis-aligned box around the object (its exact extent plus ``margin``)."""
    lo = torch.tensor([-0.85, -0.85, -0.63])
    hi = torch.tensor([0.85, 0.85, 0.48])
    return torch.stack([lo - margin, hi + margin])
