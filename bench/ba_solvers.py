#!/usr/bin/env python3
"""Ceres' linear solvers for the poses stage's bundle adjustments, on two hand-made shapes of scene.

    python bench/ba_solvers.py                  # both scenes, three solvers each (~4 min on 2 cores)
    python bench/ba_solvers.py --scenes walk --views 300

COLMAP factors the reduced camera system with a sparse Cholesky up to 1000 images and switches to
iterative Schur (conjugate gradients, Schur-Jacobi preconditioner) above. Which is faster depends
on the shape of the capture, not only on its size:

- ``object``: cameras all around a small object, every camera sees every point (the built-in
  scene's shape: a dense reduced camera system, costly to factor, well conditioned);
- ``walk``: cameras 0.5 m apart looking along a corridor, each seeing the next ~12 m (a house, a
  street, a drone strip: a banded system, cheap to factor, ill-conditioned for conjugate gradients).

Each scene starts from poses drifted along the capture (``--drift`` rad and 5x that in metres per
view) and points 5 cm off, and is adjusted by least squares to a relative cost change of 1e-6 (the
poses stage's ``ba_function_tolerance``). Printed: time, iterations, final cost, and the rotation
error of every camera relative to the first (free of the gauge), median / max (deg).
bench/RESULTS.md (poses at scale, thirty-fifth session) has the figures.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.geometry.alignment import rotation_angle_deg  # noqa: E402
from pipeline.geometry.cameras import look_at  # noqa: E402

W, H, F = 640, 480, 500.0


def _drifted(pycolmap, rot: np.ndarray, centre: np.ndarray, k: int, drift: float):
    """The camera-from-world pose of a camera at ``centre`` with rotation ``rot``, drifted by
    ``k * drift`` rad about the x axis and ``5 * k * drift`` m along z."""
    angle = drift * k
    start = pycolmap.Rotation3d(np.array([np.sin(angle / 2), 0.0, 0.0, np.cos(angle / 2)])).matrix() @ rot
    return pycolmap.Rigid3d(pycolmap.Rotation3d(start), -start @ (centre + [0.0, 0.0, 5 * drift * k]))


def make_scene(pycolmap, shape: str, views: int, drift: float, seed: int = 0):
    """(model, true world-to-camera rotations (V, 3, 3)) of the ``shape`` scene."""
    rng = np.random.default_rng(seed)
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=1, model="SIMPLE_PINHOLE", width=W, height=H,
                                                    params=[F, W / 2, H / 2]))
    if shape == "walk":
        n = 40 * views
        x = rng.uniform(-5, views * 0.5 + 5, n)
        side = rng.integers(0, 3, n)  # left wall, right wall, floor
        y = np.where(side == 0, -2.0, np.where(side == 1, 2.0, rng.uniform(-2, 2, n)))
        z = np.where(side == 2, -1.5, rng.uniform(-1.5, 1.5, n))
        xyz = np.c_[x, y, z]
    else:
        xyz = rng.uniform(-1.0, 1.0, size=(1000, 3))
    rotations, tracks = [], {}
    for k in range(views):
        if shape == "walk":
            centre = np.array([0.5 * k, 0.3 * np.sin(k / 7), 0.0])
            target = centre + [1.0, 0.1 * np.cos(k / 5), 0.0]
        else:  # a Fibonacci sphere of radius 6 around the points
            z_k = 1 - 2 * (k + 0.5) / views
            phi = k * np.pi * (3 - np.sqrt(5))
            centre = 6 * np.array([np.sqrt(1 - z_k ** 2) * np.cos(phi), np.sqrt(1 - z_k ** 2) * np.sin(phi), z_k])
            target = np.zeros(3)
        rot = look_at(centre, target)[:3, :3].T
        rotations.append(rot)
        cam = (xyz - centre) @ rot.T
        uv = F * cam[:, :2] / cam[:, 2:3] + [W / 2, H / 2]
        seen = np.flatnonzero((cam[:, 2] > 0.5) & (cam[:, 2] < 12) & (uv[:, 0] > 0) & (uv[:, 0] < W)
                              & (uv[:, 1] > 0) & (uv[:, 1] < H))
        keypoints = uv[seen] + rng.normal(0.0, 0.5, (len(seen), 2))
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"{k:04d}.png", keypoints=keypoints, camera_id=1,
                                                        image_id=k + 1), _drifted(pycolmap, rot, centre, k, drift))
        for j, i in enumerate(seen):
            tracks.setdefault(int(i), []).append((k + 1, j))
    for i, observations in tracks.items():
        if len(observations) >= 2:
            rec.add_point3D(xyz[i] + rng.normal(0.0, 0.05, 3),
                            pycolmap.Track([pycolmap.TrackElement(a, b) for a, b in observations]))
    return rec, np.stack(rotations)


def adjust(pycolmap, rec, solver: str) -> dict:
    """Adjust ``rec`` in place with ``solver``: "sparse" (COLMAP's choice below 1000 images),
    "schur-jacobi" (the poses stage's choice for a compact capture, COLMAP's above 1000 images) or
    "cluster-tridiagonal"; returns the Ceres summary's figures."""
    from pipeline.sfm.refine import _ba_options

    options = _ba_options(pycolmap, False, False, -1, 1e-6, iterative=solver != "sparse")
    if solver == "cluster-tridiagonal":
        solver_options = options.ceres.solver_options
        options.ceres.auto_select_solver_type = False
        solver_options.linear_solver_type = type(solver_options.linear_solver_type).ITERATIVE_SCHUR
        solver_options.preconditioner_type = type(solver_options.preconditioner_type).CLUSTER_TRIDIAGONAL
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in rec.reg_image_ids():
        config.add_image(image_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.THREE_POINTS)
    started = time.time()
    summary = pycolmap.create_default_bundle_adjuster(options, config, rec).solve().ceres_summary
    return {"seconds": time.time() - started, "iterations": summary.num_successful_steps + summary.num_unsuccessful_steps,
            "cost": summary.final_cost, "converged": "CONVERGENCE" == str(summary.termination_type).split(".")[-1]}


def relative_rotation_errors_deg(rec, truth: np.ndarray) -> np.ndarray:
    est = np.stack([rec.images[k + 1].cam_from_world().rotation.matrix() for k in range(len(truth))])
    relative = np.einsum("kij,lj->kil", est, est[0])  # R_k R_0^T: free of the gauge
    true_relative = np.einsum("kij,lj->kil", truth, truth[0])
    return rotation_angle_deg(np.einsum("kij,klj->kil", relative, true_relative))


def main(argv=None) -> None:
    import pycolmap

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", nargs="+", default=["object", "walk"], choices=["object", "walk"])
    parser.add_argument("--views", type=int, default=300)
    parser.add_argument("--drift", type=float, default=2e-4, help="rad per view (and 5x that in metres)")
    parser.add_argument("--solvers", nargs="+", default=["sparse", "schur-jacobi", "cluster-tridiagonal"])
    args = parser.parse_args(argv)
    print("| scene | views | observations | solver | time (s) | iterations | converged | final cost | rotation error med / max (deg) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for shape in args.scenes:
        for solver in args.solvers:
            rec, truth = make_scene(pycolmap, shape, args.views, args.drift)
            done = adjust(pycolmap, rec, solver)
            errors = relative_rotation_errors_deg(rec, truth)
            print(f"| {shape} | {args.views} | {rec.compute_num_observations()} | {solver} | {done['seconds']:.1f} | "
                  f"{done['iterations']} | {'yes' if done['converged'] else 'no'} | {done['cost']:.4g} | "
                  f"{np.median(errors):.3f} / {errors.max():.3f} |", flush=True)


if __name__ == "__main__":
    main()
