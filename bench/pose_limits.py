#!/usr/bin/env python3
"""What limits the worst views' rotation: a finished poses workspace checked against ground truth.

    python bench/pose_limits.py --workspace /tmp/recon-bench-poses-scale/ws-synthetic-50-<id> \
        --data /tmp/recon-bench-poses-scale/synthetic-50-200 [--worst 8]

Needs a dataset with true poses and z-depth maps (the built-in scene: ``run.py synthetic``). For
the model's observations, the ground truth gives what a perfect pipeline could do with them:

- keypoint error: each observation against the same track's other keypoints carried into its view
  through the true depth and poses (px, median over the track; near-edge keypoints whose depth
  changes by more than 2% across their 2x2 pixels are skipped);
- noise: the per-axis keypoint noise that this error implies (median / 1.665 for the difference of
  two Gaussian keypoints);
- bound: the rotation's standard deviation (deg) with the true 3D points and this noise (the pose's
  6x6 information matrix from its observations);
- true-points fit: the rotation error (deg) of the pose re-fitted to its keypoints with the true 3D
  points, after leaving out the observations that are more than 1 px off the ground truth.

A view's estimate cannot be expected below its bound; a true-points fit well above the bound means
its keypoints are biased (not noisy) and no bundle adjustment of these observations fixes it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datasets import read_scene  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from pipeline.geometry.alignment import pose_errors, rotation_angle_deg  # noqa: E402
from pipeline.sfm.cameras import c2w_from_image  # noqa: E402

MEDIAN_DISTANCE_PER_SIGMA = 1.665  # median |a - b| of two 2-D Gaussian points, per-axis sigma 1


class Truth:
    """The dataset's cameras and depth maps, by image name."""

    def __init__(self, data: Path):
        scene = read_scene(data)
        self.frames = {f.image_path.name: f for f in scene.frames}
        self._depth = {}

    def K(self, name: str) -> np.ndarray:
        i = self.frames[name].intrinsics
        return np.array([[i.fx, 0.0, i.cx], [0.0, i.fy, i.cy], [0.0, 0.0, 1.0]])

    def w2c(self, name: str) -> np.ndarray:
        return np.linalg.inv(self.frames[name].c2w)

    def depth(self, name: str) -> np.ndarray:
        if name not in self._depth:
            self._depth[name] = np.load(self.frames[name].depth_path)
        return self._depth[name]

    def unproject(self, name: str, uv: np.ndarray) -> np.ndarray | None:
        """World point (3,) seen at pixel ``uv`` (COLMAP convention: pixel centres at +0.5), or None
        off the object or across a depth edge."""
        d = self.depth(name)
        x, y = uv[0] - 0.5, uv[1] - 0.5
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        if x0 < 0 or y0 < 0 or x0 + 1 >= d.shape[1] or y0 + 1 >= d.shape[0]:
            return None
        q = d[y0:y0 + 2, x0:x0 + 2]
        if (q <= 0).any() or q.max() / q.min() > 1.02:
            return None
        ax, ay = x - x0, y - y0
        z = (q[0, 0] * (1 - ax) * (1 - ay) + q[0, 1] * ax * (1 - ay) + q[1, 0] * (1 - ax) * ay + q[1, 1] * ax * ay)
        cam = np.linalg.solve(self.K(name), [uv[0], uv[1], 1.0]) * z
        c2w = self.frames[name].c2w
        return c2w[:3, :3] @ cam + c2w[:3, 3]


def project(K: np.ndarray, w2c: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Pixels (N, 2) of world points ``xyz`` (N, 3)."""
    p = (xyz @ w2c[:3, :3].T + w2c[:3, 3]) @ K.T
    return p[:, :2] / p[:, 2:3]


def pose_jacobian(K: np.ndarray, w2c: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """(2N, 6) derivative of the pixels of ``xyz`` (N, 3) by a camera-frame rotation (3) and translation (3)."""
    pc = xyz @ w2c[:3, :3].T + w2c[:3, 3]
    x, y, z = pc.T
    d_proj = np.zeros((len(pc), 2, 3))
    d_proj[:, 0, 0], d_proj[:, 0, 2] = K[0, 0] / z, -K[0, 0] * x / z ** 2
    d_proj[:, 1, 1], d_proj[:, 1, 2] = K[1, 1] / z, -K[1, 1] * y / z ** 2
    minus_skew = np.zeros((len(pc), 3, 3))  # d(R pc)/d(rotation vector) at zero: -[pc]x
    minus_skew[:, 0, 1], minus_skew[:, 0, 2] = z, -y
    minus_skew[:, 1, 0], minus_skew[:, 1, 2] = -z, x
    minus_skew[:, 2, 0], minus_skew[:, 2, 1] = y, -x
    return np.concatenate([d_proj @ minus_skew, d_proj], axis=2).reshape(-1, 6)


def rotation_bound_deg(K: np.ndarray, w2c: np.ndarray, xyz: np.ndarray, sigma_px: float) -> float:
    """Standard deviation (deg) of the rotation of a camera fitted to ``xyz`` (N, 3) seen with
    per-axis keypoint noise ``sigma_px``: the root of the trace of its rotation covariance."""
    J = pose_jacobian(K, w2c, xyz)
    cov = sigma_px ** 2 * np.linalg.inv(J.T @ J)
    return float(np.degrees(np.sqrt(np.trace(cov[:3, :3]))))


def refit_rotation_error_deg(K: np.ndarray, w2c: np.ndarray, xyz: np.ndarray, uv: np.ndarray, steps: int = 20) -> float:
    """Rotation error (deg) of the pose fitted to pixels ``uv`` (N, 2) of ``xyz`` (N, 3) by
    Gauss-Newton from the true pose ``w2c``."""
    R, t = w2c[:3, :3].copy(), w2c[:3, 3].copy()
    for _ in range(steps):
        current = np.eye(4)
        current[:3, :3], current[:3, 3] = R, t
        J = pose_jacobian(K, current, xyz)
        r = (project(K, current, xyz) - uv).ravel()
        step = -np.linalg.lstsq(J, r, rcond=None)[0]
        dR = Rotation.from_rotvec(step[:3]).as_matrix()
        R, t = dR @ R, dR @ t + step[3:]
    return float(rotation_angle_deg(R @ w2c[:3, :3].T))


def analyse(workspace: Path, data: Path, worst: int) -> tuple[list[dict], float, float, dict]:
    """(rows of the ``worst`` views, worst rotation first; per-axis keypoint noise (px); median
    keypoint error (px); the pose errors of every view)."""
    import pycolmap

    rec = pycolmap.Reconstruction(str(workspace / "poses" / "sparse"))
    truth = Truth(data)
    images = [rec.images[i] for i in sorted(rec.reg_image_ids())]
    errors = pose_errors(np.stack([c2w_from_image(im) for im in images]),
                         np.stack([truth.frames[im.name].c2w for im in images]))
    rotation = {im.image_id: r for im, r in zip(images, errors["rotation_deg"])}
    per_view = {im.image_id: [] for im in images}  # (true point, keypoint, keypoint error)
    for point_id in rec.point3D_ids():
        track = [(e.image_id, np.asarray(rec.images[e.image_id].points2D[e.point2D_idx].xy))
                 for e in rec.points3D[point_id].track.elements]
        world = {image_id: truth.unproject(rec.images[image_id].name, uv) for image_id, uv in track}
        for image_id, uv in track:
            others = [xyz for other, xyz in world.items() if other != image_id and xyz is not None]
            if not others:
                continue
            name = rec.images[image_id].name
            carried = project(truth.K(name), truth.w2c(name), np.stack(others))
            per_view[image_id].append((np.median(np.stack(others), axis=0), uv,
                                       float(np.median(np.linalg.norm(carried - uv, axis=1)))))
    all_errors = np.array([o[2] for obs in per_view.values() for o in obs])
    sigma = float(np.median(all_errors)) / MEDIAN_DISTANCE_PER_SIGMA
    rows = []
    for im in sorted(images, key=lambda im: -rotation[im.image_id])[:worst]:
        obs = per_view[im.image_id]
        K, w2c = truth.K(im.name), truth.w2c(im.name)
        xyz, uv, err = (np.stack([o[0] for o in obs]), np.stack([o[1] for o in obs]), np.array([o[2] for o in obs]))
        good = err <= 1.0
        rows.append({"view": im.name, "rotation_deg": rotation[im.image_id], "observations": im.num_points3D,
                     "keypoint_error_px": float(np.median(err)), "over_1px": float(np.mean(~good)),
                     "bound_deg": rotation_bound_deg(K, w2c, xyz, sigma),
                     "true_points_fit_deg": refit_rotation_error_deg(K, w2c, xyz[good], uv[good])
                     if good.sum() >= 6 else None})
    return rows, sigma, float(np.median(all_errors)), errors


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the dataset, with true poses and depth maps")
    parser.add_argument("--worst", type=int, default=8)
    args = parser.parse_args(argv)
    rows, sigma, median_error, errors = analyse(args.workspace, args.data, args.worst)
    print(f"rotation median {errors['rotation_deg_median']:.3f} / max {errors['rotation_deg_max']:.3f} deg; "
          f"keypoint error median {median_error:.3f} px -> noise {sigma:.3f} px per axis\n")
    print("| view | rotation error (deg) | observations | keypoint error (px) | > 1 px | bound (deg) | true-points fit (deg) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        fit = "-" if r["true_points_fit_deg"] is None else f"{r['true_points_fit_deg']:.3f}"
        print(f"| {r['view']} | {r['rotation_deg']:.3f} | {r['observations']} | {r['keypoint_error_px']:.3f} | "
              f"{100 * r['over_1px']:.0f}% | {r['bound_deg']:.3f} | {fit} |")


if __name__ == "__main__":
    main()
