"""The centres' uncertainty: the Jacobian of the camera centre in Ceres' pose tangent space, the gauge
removal, agreement with Monte Carlo bundle adjustments, and the required property: a known distance
shrinks the distance sigmas (the known pair's to the tape's sigma)."""
import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pipeline.panoramas.centres import level_c2w
from pipeline.panoramas.uncertainty import (ROTATION_TANGENT_FACTOR, ba_centre_covariance, centre_jacobian,
                                            gauge_basis, remove_gauge)
from pipeline.runner.stage import run_stage
from pipeline.runner.workspace import Workspace
from stages.centres import STAGE
from tests.panorama_room import colmap_model, random_similarity, room_cameras, room_points, write_estimated_workspace

pycolmap = pytest.importorskip("pycolmap")


def test_centre_jacobian_matches_finite_differences_of_the_ceres_perturbation():
    rng = np.random.default_rng(0)
    rotation = Rotation.random(random_state=1).as_matrix()
    translation = rng.normal(size=3)
    jac = centre_jacobian(rotation, translation)
    eps = 1e-7
    for k in range(6):
        delta = np.zeros(6)
        delta[k] = eps
        r = Rotation.from_rotvec(ROTATION_TANGENT_FACTOR * delta[:3]).as_matrix() @ rotation  # left, 2x angle
        numeric = (-r.T @ (translation + delta[3:]) + rotation.T @ translation) / eps
        assert np.allclose(numeric, jac[:, k], atol=1e-5)


def test_gauge_removal_leaves_nothing_along_the_similarity_motions():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 3))
    a = rng.normal(size=(15, 15))
    cov = remove_gauge(a @ a.T, centres)
    assert np.abs(cov @ gauge_basis(centres)).max() < 1e-9
    assert np.linalg.matrix_rank(cov, tol=1e-9) == 15 - 7


@pytest.fixture(scope="module")
def monte_carlo_scene():
    names, centres, yaws = room_cameras(6, 0)
    points = room_points(0, floor=30, walls=40, ceiling=10, table=10)
    sim = random_similarity(0)
    c2w = sim.apply_c2w(np.stack([level_c2w(c, y) for c, y in zip(centres, yaws)]))
    return names, c2w, sim.apply_points(points)


def _poses(rec, names):
    by_name = {im.name: im for im in rec.images.values()}
    mats = [np.asarray(by_name[f"{n}.png"].cam_from_world().matrix()) for n in names]
    return [m[:, :3] for m in mats], np.stack([-m[:, :3].T @ m[:, 3] for m in mats])


def test_predicted_sigmas_match_monte_carlo_bundle_adjustments(monte_carlo_scene, tmp_path):
    """Repeat the bundle adjustment with fresh 2 px noise: the spread of gauge-free quantities (relative
    rotation of two cameras, ratios of centre distances) matches the predicted sigmas."""
    names, c2w, points = monte_carlo_scene
    base = colmap_model(c2w, points, names, 2.0, seed=7)
    base.write(str(tmp_path))
    cc = ba_centre_covariance(tmp_path, names)
    assert cc.sigma0_px == pytest.approx(2.0, rel=0.15)
    rot0, cen0 = _poses(base, names)
    rel0 = rot0[1] @ rot0[0].T
    rot_err, ratios = [], []
    for k in range(40):
        rots, cens = _poses(colmap_model(c2w, points, names, 2.0, seed=100 + k), names)
        rot_err.append(Rotation.from_matrix(rots[1] @ rots[0].T @ rel0.T).as_rotvec())
        d = np.linalg.norm(cens[:, None] - cens[None], axis=-1)
        ratios.append(d[0, 2:] / d[0, 1])
    # relative rotation: predicted from the pose covariance's rotation blocks (tangent = half angle)
    rec = pycolmap.Reconstruction(str(tmp_path))
    config = pycolmap.BundleAdjustmentConfig()
    for iid in rec.reg_image_ids():
        config.add_image(iid)
    options = pycolmap.BundleAdjustmentOptions(refine_focal_length=False, refine_extra_params=False, print_summary=False)
    adjuster = pycolmap.create_default_ceres_bundle_adjuster(options, config, rec)
    adjuster.solve()
    cov = pycolmap.estimate_ba_covariance(pycolmap.BACovarianceOptions(
        params=pycolmap.BACovarianceOptionsParams.POSES, damping=1e-6), rec, adjuster)
    ids = {im.name: iid for iid, im in rec.images.items()}
    i0, i1 = ids[f"{names[0]}.png"], ids[f"{names[1]}.png"]
    c11, c22 = cov.get_cam_cov_from_world(i0)[:3, :3], cov.get_cam_cov_from_world(i1)[:3, :3]
    c12 = cov.get_cam_cross_cov_from_world(i0, i1)[:3, :3]
    var = c22 + rel0 @ c11 @ rel0.T - rel0 @ c12 - c12.T @ rel0.T
    predicted_rot = ROTATION_TANGENT_FACTOR * cc.sigma0_px * np.sqrt(np.diag(var))
    assert np.all((np.std(rot_err, axis=0) / predicted_rot > 0.7) & (np.std(rot_err, axis=0) / predicted_rot < 1.4))
    # distance ratios: predicted from the centres' covariance
    c, cv = cc.centres, cc.covariance
    def grad(i, j):
        g = np.zeros(3 * len(c))
        u = (c[i] - c[j]) / np.linalg.norm(c[i] - c[j])
        g[3 * i:3 * i + 3], g[3 * j:3 * j + 3] = u, -u
        return g
    d01 = np.linalg.norm(c[0] - c[1])
    for j in range(2, len(c)):
        d0j = np.linalg.norm(c[0] - c[j])
        g = grad(0, j) / d0j - grad(0, 1) / d01
        predicted = d0j / d01 * np.sqrt(g @ cv @ g)
        assert 0.65 < np.std(np.array(ratios)[:, j - 2]) / predicted < 1.5


def _sigma_matrix(workspace, *overrides):
    run_stage(STAGE, Workspace(workspace), STAGE.load_config(None, list(overrides)), force=True)
    data = json.loads((workspace / "centres" / "centres.json").read_text())
    return (data["distances"]["names"], np.array(data["distances"]["matrix"]), np.array(data["distances"]["sigma"]),
            data)


def test_a_known_distance_shrinks_the_distance_uncertainty(tmp_path):
    workspace = tmp_path / "W"
    truth = write_estimated_workspace(workspace, noise_px=1.0)
    a, b = "pano_000", "pano_003"
    names = truth["names"]
    true_ab = float(np.linalg.norm(truth["centres"][names.index(a)] - truth["centres"][names.index(b)]))
    _, d_h, s_h, _ = _sigma_matrix(workspace, "camera_height_m=1.5")
    _, d_k, s_k, data = _sigma_matrix(workspace, f"known_distance={a},{b},{true_ab:.4f}")
    _, d_r, s_r, _ = _sigma_matrix(workspace)
    i, j = names.index(a), names.index(b)
    assert s_k[i, j] == pytest.approx(0.005, rel=1e-6)  # the tape's sigma, nothing from the estimate
    assert s_k[i, j] < 0.75 * s_h[i, j]  # 1 cm on 1.5 m of height is 0.67% of 1.33 m: 8.9 mm
    off = ~np.eye(len(names), dtype=bool)
    # every distance, relative to its length: the known distance beats the camera height's 1 cm / 1.5 m
    assert np.median(s_k[off] / d_k[off]) < 0.7 * np.median(s_h[off] / d_h[off])
    # and in relative units no distance can be more certain than its shape alone allows
    assert np.all(s_h[off] / d_h[off] >= s_r[off] / d_r[off] * 0.999)
    assert data["scale_source"]["scale_rel_sigma"] > 0.005 / true_ab  # the estimate's own share is added
