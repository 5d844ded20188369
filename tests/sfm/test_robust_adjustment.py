"""Step 4e's last adjustment with a Cauchy loss scaled by the keypoint noise (pipeline/sfm/tracks.py,
pipeline/sfm/refine.py), on small hand-made reconstructions (a second)."""
import numpy as np
import pytest

from datasets.scene import SceneError
from pipeline.geometry.cameras import look_at
from pipeline.sfm.config import EstimationConfig, check_config
from pipeline.sfm.refine import adjust_on_long_tracks
from pipeline.sfm.tracks import keypoint_noise_px
from tests.sfm.test_final_adjustment import F, H, W, model_with_camera, weak_view_error_deg

pycolmap = pytest.importorskip("pycolmap")



def make_reconstruction(noise_px: float = 0.1, biased_fraction: float = 0.15, bias_px: float = 1.5, seed: int = 0):
    """(model, true world-to-camera rotations (V, 3, 3)): 8 cameras on an arc around 300 points
    that every view sees, keypoints with Gaussian noise of ``noise_px`` per axis. In view 0,
    ``biased_fraction`` of the keypoints (the leftmost) sit ``bias_px`` below their point: keypoints
    aligned on a neighbouring edge, within the 4 px reprojection limit that photos above 400 px keep,
    that pull the view's pose. The model is bundle-adjusted by least squares."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-1.0, 1.0, size=(300, 3))
    rec = model_with_camera()
    rotations = []
    for k in range(8):
        angle = np.deg2rad(-60 + 120 * k / 7)
        centre = np.array([6 * np.sin(angle), -6 * np.cos(angle), 1.5])
        rot = look_at(centre, (0.0, 0.0, 0.0))[:3, :3].T  # world-to-camera
        rotations.append(rot)
        cam = (xyz - centre) @ rot.T
        uv = F * cam[:, :2] / cam[:, 2:3] + [W / 2, H / 2] + rng.normal(0.0, noise_px, size=(len(xyz), 2))
        if k == 0:
            biased = uv[:, 0] < np.quantile(uv[:, 0], biased_fraction)
            uv[biased, 1] += bias_px
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"{k:02d}.png", keypoints=uv, camera_id=1, image_id=k + 1),
                                         pycolmap.Rigid3d(pycolmap.Rotation3d(rot), -rot @ centre))
    for i in range(len(xyz)):
        rec.add_point3D(xyz[i], pycolmap.Track([pycolmap.TrackElement(k + 1, i) for k in range(8)]))
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    options.refine_focal_length = False
    pycolmap.bundle_adjustment(rec, options)
    return rec, np.stack(rotations)


def test_keypoint_noise_is_read_from_the_residuals():
    rec, _ = make_reconstruction(noise_px=0.2, biased_fraction=0.0)
    # 8 views fit 300 points and 8 poses: the residuals keep ~85% of the noise's degrees of freedom
    assert 0.15 < keypoint_noise_px(rec) < 0.21


def test_a_robust_loss_lets_biased_keypoints_go():
    rec, truth = make_reconstruction()
    least_squares = pycolmap.Reconstruction(rec)
    adjust_on_long_tracks(pycolmap, least_squares, min_track_length=3, refine_intrinsics=False)
    robust = pycolmap.Reconstruction(rec)
    scale = 2.0 * keypoint_noise_px(rec)
    assert 0.15 < scale < 0.3  # the noise's, barely raised by the biased keypoints (2% of all)
    adjust_on_long_tracks(pycolmap, robust, min_track_length=3, refine_intrinsics=False, loss_scale_px=scale)
    assert weak_view_error_deg(least_squares, truth) > 0.15
    assert weak_view_error_deg(robust, truth) < 0.05


def test_a_negative_loss_scale_is_rejected():
    with pytest.raises(SceneError, match="align_loss_scale"):
        check_config(EstimationConfig(align_loss_scale=-1.0))
