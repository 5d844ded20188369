"""1-sigma uncertainty of panorama centres and of the distances between them, from the bundle
adjustment's covariance (pycolmap ``estimate_ba_covariance`` on ``W/poses/sparse/``).

Steps:
1. Re-run bundle adjustment on the model (intrinsics fixed; it is already converged, so the poses
   barely move) to get the Ceres problem at the optimum, and the a-posteriori reprojection sigma
   ``sigma0 = sqrt(2 * final_cost / (residuals - effective parameters + 7))``: COLMAP's covariance
   assumes 1 px noise; the real noise is what the residuals say.
2. ``estimate_ba_covariance`` (points eliminated by the Schur complement) gives the joint covariance
   of all poses (cam_from_world, tangent order [rotation, translation]). The problem's gauge (7 DoF:
   where the world is, how it is turned, how large it is) is left free and handled by the damping
   of the solver: the covariance then holds huge variances along the gauge directions.
3. Propagate to the camera centres c = -R^T t (Jacobian :func:`centre_jacobian`), then remove the
   gauge: project out the 7 similarity motions of the centres (an S-transform to the "inner
   constraints", Baarda / Pope): the centres' covariance relative to their centroid, at fixed
   overall size and orientation. Distances between centres are gauge-free quantities, so their
   variance does not depend on this choice; per-centre sigmas are relative to the centroid.
4. Map through the normalisation and the metric scale (a similarity: covariances scale by its
   scale squared, rotate with it); the scale's own uncertainty is added where distances are formed
   (:mod:`pipeline.panoramas.distances`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Ceres' EigenQuaternionManifold: x + delta = [cos|delta|, sin|delta| delta/|delta|] * x, i.e. a
# rotation vector of 2 * delta applied on the left (R' = Exp(2 delta) R). Checked against Monte
# Carlo bundle adjustments in tests/panoramas/test_uncertainty.py.
ROTATION_TANGENT_FACTOR = 2.0


class CovarianceError(RuntimeError):
    """The covariance could not be computed; the message says why."""


@dataclass
class CentreCovariance:
    """Joint covariance of camera centres in the sparse model's (COLMAP) frame, gauge removed."""

    names: list[str]  # image stems, in the order of the blocks
    centres: np.ndarray  # (N, 3) COLMAP frame, after the re-run bundle adjustment
    covariance: np.ndarray  # (3N, 3N), already multiplied by sigma0^2
    sigma0_px: float
    details: dict = field(default_factory=dict)


def skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def centre_jacobian(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """d c / d [rotation tangent, translation] (3, 6) for c = -R^T t, with R' = Exp(f delta) R and
    t' = t + dt (f = ROTATION_TANGENT_FACTOR). First order: c' = c - R^T dt - f R^T [t]x delta."""
    r_t = rotation.T
    return np.hstack([-ROTATION_TANGENT_FACTOR * r_t @ skew(translation), -r_t])


def gauge_basis(centres: np.ndarray) -> np.ndarray:
    """(3N, 7): how the stacked centres (N, 3) move under the similarity gauge (3 translations,
    3 rotations about the centroid, 1 scaling about the centroid)."""
    n = len(centres)
    rel = centres - centres.mean(0)
    basis = np.zeros((3 * n, 7))
    for k in range(3):
        basis[k::3, k] = 1.0
        axis = np.eye(3)[k]
        basis[:, 3 + k] = np.cross(axis, rel).reshape(-1)
    basis[:, 6] = rel.reshape(-1)
    return basis


def remove_gauge(cov: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Project the similarity gauge out of a centres' covariance (3N, 3N)."""
    q, _ = np.linalg.qr(gauge_basis(centres))
    p = np.eye(len(cov)) - q @ q.T
    out = p @ cov @ p.T
    return (out + out.T) / 2


def _pose_arrays(image) -> tuple[np.ndarray, np.ndarray]:
    pose = image.cam_from_world()
    m = np.asarray(pose.matrix())
    return m[:, :3], m[:, 3]


def ba_centre_covariance(sparse_dir: Path, names: list[str], damping: float = 1e-6) -> CentreCovariance:
    """The centres' covariance (see the module doc) of the images whose stems are ``names``.
    Raises :class:`CovarianceError` when pycolmap is missing, names are not in the model or the
    covariance cannot be estimated."""
    try:
        import pycolmap
    except ImportError as exc:
        raise CovarianceError(f"pycolmap is not installed ({exc})") from None
    rec = pycolmap.Reconstruction(str(sparse_dir))
    by_stem = {Path(im.name).stem: iid for iid, im in rec.images.items() if im.has_pose}
    missing = [n for n in names if n not in by_stem]
    if missing:
        raise CovarianceError(f"{sparse_dir}: images {', '.join(missing)} are not registered in the sparse model")
    ids = [by_stem[n] for n in names]
    config = pycolmap.BundleAdjustmentConfig()
    for iid in rec.reg_image_ids():
        config.add_image(iid)
    for cid in rec.cameras:
        config.set_constant_cam_intrinsics(cid)
    options = pycolmap.BundleAdjustmentOptions(refine_focal_length=False, refine_extra_params=False,
                                               refine_principal_point=False, print_summary=False)
    adjuster = pycolmap.create_default_ceres_bundle_adjuster(options, config, rec)
    summary = adjuster.solve().ceres_summary
    dof = summary.num_residuals_reduced - summary.num_effective_parameters_reduced + 7
    if dof <= 0:
        raise CovarianceError(f"{sparse_dir}: too few observations for a covariance ({dof} degrees of freedom)")
    sigma0 = float(np.sqrt(2.0 * summary.final_cost / dof))
    cov_options = pycolmap.BACovarianceOptions(params=pycolmap.BACovarianceOptionsParams.POSES, damping=damping)
    cov = pycolmap.estimate_ba_covariance(cov_options, rec, adjuster)
    if cov is None:
        raise CovarianceError(f"{sparse_dir}: pycolmap could not estimate the bundle adjustment's covariance")
    n = len(ids)
    pose_cov = np.zeros((6 * n, 6 * n))
    for a, ia in enumerate(ids):
        for b, ib in enumerate(ids[a:], start=a):
            block = cov.get_cam_cov_from_world(ia) if a == b else cov.get_cam_cross_cov_from_world(ia, ib)
            if block is None or np.shape(block) != (6, 6):
                raise CovarianceError(f"{sparse_dir}: no full pose covariance for {names[a]} / {names[b]}")
            pose_cov[6 * a:6 * a + 6, 6 * b:6 * b + 6] = block
            pose_cov[6 * b:6 * b + 6, 6 * a:6 * a + 6] = np.asarray(block).T
    jac = np.zeros((3 * n, 6 * n))
    centres = np.zeros((n, 3))
    for a, iid in enumerate(ids):
        rotation, translation = _pose_arrays(rec.images[iid])
        jac[3 * a:3 * a + 3, 6 * a:6 * a + 6] = centre_jacobian(rotation, translation)
        centres[a] = -rotation.T @ translation
    centre_cov = remove_gauge(jac @ pose_cov @ jac.T, centres) * sigma0 ** 2
    details = {"method": "bundle adjustment covariance (pycolmap estimate_ba_covariance, points eliminated by "
                         "the Schur complement), propagated to the camera centres; gauge removed by projecting out "
                         "the 7 similarity motions of the centres (sigmas are relative to the centroid of the "
                         "panoramas; the scale's own uncertainty comes from the scale source)",
               "sigma0_px": sigma0, "observations": int(summary.num_residuals_reduced // 2),
               "points": int(rec.num_points3D()), "pycolmap": pycolmap.__version__}
    return CentreCovariance(list(names), centres, centre_cov, sigma0, details)
