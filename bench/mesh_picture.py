#!/usr/bin/env python3
"""A picture of a mesh seen from one of the workspace's cameras (for README and bench/figures).

    python bench/mesh_picture.py --workspace W --mesh W/export/mesh.ply --view 3 --out bench/figures/lund-sdf-mesh.png

The mesh (original scene units, as ``export`` and the surface stages write it) is moved into the
workspace's normalised frame and drawn from frame ``--view``'s camera: dense random points on
every triangle (barycentric, as many as the triangle covers pixels, times ``--density``), a depth
buffer, the vertex colours (``--shade-only``: grey) lit by the face normal against the view
direction; projected by the project's cameras (lens distortion included). No renderer dependency;
left beside the training photo of the same view.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datasets.scene import load_image_file  # noqa: E402
from pipeline.geometry.cameras import Cameras  # noqa: E402
from pipeline.geometry.mesh import read_ply  # noqa: E402
from pipeline.runner.workspace import Workspace  # noqa: E402


def surface_samples(verts: np.ndarray, faces: np.ndarray, camera: Cameras, density: float, seed: int = 0):
    """Random points on the triangles that face into the ``camera``'s image, as many per triangle as
    it covers pixels times ``density``: (points (P, 3), face of each (P,), barycentric (P, 3))."""
    h, w = int(camera.height), int(camera.width)
    uv, z = project(camera, verts)
    tri_uv = uv[faces]  # (F, 3, 2)
    area = 0.5 * np.abs(np.cross(tri_uv[:, 1] - tri_uv[:, 0], tri_uv[:, 2] - tri_uv[:, 0]))
    front = (z[faces] > 1e-6).all(1)
    inside = ((tri_uv[..., 0].max(1) >= 0) & (tri_uv[..., 0].min(1) < w) & (tri_uv[..., 1].max(1) >= 0)
              & (tri_uv[..., 1].min(1) < h))
    area = np.where(front & inside, area, 0.0)
    counts = np.minimum(np.ceil(area * density), 10_000).astype(np.int64)
    face_of = np.repeat(np.arange(len(faces)), counts)
    rng = np.random.default_rng(seed)
    r1, r2 = rng.random(len(face_of)), rng.random(len(face_of))
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], -1)  # uniform on the triangle
    pts = np.einsum("nk,nkd->nd", bary, verts[faces[face_of]])
    return pts, face_of, bary


def project(camera: Cameras, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (N, 2) and depths (N,) of world points (N, 3) in one camera."""
    uv, depth = camera.project_world(torch.from_numpy(points))
    return uv.numpy(), depth.numpy()


def silhouette(verts: np.ndarray, faces: np.ndarray, camera: Cameras, density: float = 8.0,
               supersample: int = 3) -> np.ndarray:
    """(H, W) bool: the pixels whose area the mesh covers at least half of in ``camera``. Dense
    surface points are splatted on a grid ``supersample`` times finer (``density`` points per fine
    cell: a covered cell is missed with odds below 1e-3 per layer), and a pixel counts when most of
    its cells are hit: like a renderer's opacity >= 0.5, not "any point touches it" (which grows
    the outline by up to a pixel)."""
    h, w, k = int(camera.height), int(camera.width), max(1, int(supersample))
    pts, _, _ = surface_samples(verts, faces, camera, density * k * k)
    uv, z = project(camera, pts)
    px, py = np.floor(uv[:, 0] * k).astype(np.int64), np.floor(uv[:, 1] * k).astype(np.int64)
    ok = (px >= 0) & (px < w * k) & (py >= 0) & (py < h * k) & (z > 0)
    fine = np.zeros((h * k, w * k), bool)
    fine[py[ok], px[ok]] = True
    return fine.reshape(h, k, w, k).sum((1, 3)) * 2 > k * k


def draw(verts: np.ndarray, faces: np.ndarray, colors: np.ndarray | None, camera: Cameras,
         density: float = 3.0, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 picture of the mesh (verts (V, 3), faces (F, 3), colours (V, 3) uint8 or None)
    from one perspective ``camera`` (its lens distortion included); white where nothing is seen."""
    h, w = int(camera.height), int(camera.width)
    centre = camera.c2w.reshape(-1, 4, 4)[0, :3, 3].numpy()
    pts, face_of, bary = surface_samples(verts, faces, camera, density, seed)
    corners = faces[face_of]
    normals = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    view_dir = pts - centre
    view_dir /= np.maximum(np.linalg.norm(view_dir, axis=1, keepdims=True), 1e-12)
    light = 0.25 + 0.75 * np.abs(np.einsum("nd,nd->n", normals[face_of], view_dir))
    base = (np.einsum("nk,nkd->nd", bary, colors[corners].astype(np.float64)) / 255.0 if colors is not None
            else np.full((len(pts), 3), 0.8))
    shade = np.clip(base * light[:, None], 0, 1)
    p_uv, p_z = project(camera, pts)
    px, py = np.floor(p_uv[:, 0]).astype(np.int64), np.floor(p_uv[:, 1]).astype(np.int64)
    ok = (px >= 0) & (px < w) & (py >= 0) & (py < h) & (p_z > 0)
    px, py, p_z, shade = px[ok], py[ok], p_z[ok], shade[ok]
    pixel = py * w + px
    order = np.lexsort((p_z, pixel))  # by pixel, nearest first
    pixel, shade = pixel[order], shade[order]
    first = np.ones(len(pixel), bool)
    first[1:] = pixel[1:] != pixel[:-1]
    image = np.ones((h * w, 3))
    image[pixel[first]] = shade[first]
    return (image.reshape(h, w, 3) * 255 + 0.5).astype(np.uint8)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--mesh", type=Path, required=True, help="PLY in original scene units (export, sdf, idr)")
    parser.add_argument("--view", type=int, default=0, help="frame index of the camera to draw from")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--density", type=float, default=3.0, help="points per covered pixel")
    parser.add_argument("--shade-only", action="store_true", help="grey surface: the shape alone")
    parser.add_argument("--no-photo", action="store_true", help="the mesh alone, not beside the photo")
    args = parser.parse_args(argv)
    from PIL import Image

    ws = Workspace(args.workspace)
    scene = ws.load_scene()
    frame = scene.frames[args.view]
    verts, faces, colors = read_ply(args.mesh)
    if faces is None or len(faces) == 0:
        sys.exit(f"error: {args.mesh} has no faces; give a mesh (export --what mesh, or the sdf/idr stage's mesh.ply)")
    verts = ws.normalization().apply_points(verts.astype(np.float64))
    if frame.intrinsics.model == "equirect":
        sys.exit("error: view %d is a panorama; pick a perspective view" % args.view)
    camera = scene.cameras([args.view], dtype=torch.float64)  # a batch of one
    picture = draw(verts, faces, None if args.shade_only else colors, camera, args.density)
    if not args.no_photo:
        photo = load_image_file(frame.image_path)  # float32 (H, W, 3 or 4) in [0, 1]
        photo = (np.clip(photo[..., :3], 0, 1) * 255 + 0.5).astype(np.uint8)
        photo = np.asarray(Image.fromarray(photo).resize((picture.shape[1], picture.shape[0])))
        picture = np.concatenate([photo, picture], 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(args.out)
    print(f"{args.out}: {len(faces)} faces from view {args.view} ({frame.image_path.name})")


if __name__ == "__main__":
    main()
