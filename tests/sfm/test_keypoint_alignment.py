"""Step 4e: a track's keypoints aligned on its reference view's patch (affine warp, gain, bias)."""
import numpy as np
import pytest
from scipy.ndimage import affine_transform, gaussian_filter

from pipeline.sfm.keypoints import align_track_keypoints_affine

pycolmap = pytest.importorskip("pycolmap")

SIZE = 240


def texture(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (gaussian_filter(rng.normal(size=(SIZE, SIZE)), 2.0) * 60 + 128).clip(0, 255).astype(np.float32)


def warped(image: np.ndarray, A: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The image seen through x' = A x + t (COLMAP pixel coordinates, centres at +0.5)."""
    inv = np.linalg.inv(A)
    # affine_transform maps output (row, col) indices to input ones: x = A^-1 (x' - t) in (x, y) pixels
    swap = np.array([[0, 1], [1, 0]])
    matrix = swap @ inv @ swap
    offset = swap @ (inv @ (np.array([0.5, 0.5]) - t) - 0.5)
    return affine_transform(image, matrix, offset=offset, order=3, mode="nearest").astype(np.float32)


def three_view_model(points1: np.ndarray, given: dict) -> "pycolmap.Reconstruction":
    """Images 1-3 with centres at x = 0, -1, +1 looking down +z at points at z = 5: image 1 is every
    track's most central view (the reference). ``given``: {image id: (N, 2) keypoints}."""
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=1, model="SIMPLE_PINHOLE", width=SIZE, height=SIZE,
                                                    params=[200.0, SIZE / 2, SIZE / 2]))
    for image_id, centre_x in ((1, 0.0), (2, -1.0), (3, 1.0)):
        image = pycolmap.Image(name=f"{image_id}.png", keypoints=given[image_id], camera_id=1, image_id=image_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(), [-centre_x, 0.0, 0.0]))
    for j in range(len(points1)):
        rec.add_point3D([0.0, 0.0, 5.0], pycolmap.Track([pycolmap.TrackElement(i, j) for i in (1, 2, 3)]))
    return rec


def test_keypoints_seen_under_an_affine_warp_are_moved_onto_the_reference_point():
    """Views 2 and 3 see the texture rotated, scaled and sheared; their keypoints, given 0.3-0.8 px
    off and with SIFT frames 5% off the true warp, end within a few hundredths of a pixel of where
    the reference keypoint's surface point is. The reference keypoints stay put."""
    rng = np.random.default_rng(2)
    image1 = texture()
    c, s = np.cos(np.radians(12)), np.sin(np.radians(12))
    warps = {2: (np.array([[1.08 * c, -s + 0.05], [s, 0.95 * c]]), np.array([-8.0, 11.0])),
             3: (np.array([[0.93 * c, s], [-s - 0.04, 1.05 * c]]), np.array([9.0, -6.0]))}
    g = np.arange(50, 191, 14, dtype=np.float64)
    p1 = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    truth = {i: p1 @ A.T + t for i, (A, t) in warps.items()}
    given = {1: p1, **{i: truth[i] + rng.uniform(0.3, 0.8, p1.shape) * rng.choice([-1, 1], p1.shape) for i in warps}}
    rec = three_view_model(p1, given)
    frames = {1: np.tile(2.0 * np.eye(2), (len(p1), 1, 1)),
              **{i: np.tile(2.0 * 1.05 * A, (len(p1), 1, 1)) for i, (A, _) in warps.items()}}
    images = {1: image1, **{i: warped(image1, A, t) for i, (A, t) in warps.items()}}

    info = align_track_keypoints_affine(rec, frames, images)

    assert info["observations"] == 2 * len(p1) and info["moved"] >= 0.9 * info["observations"]
    np.testing.assert_array_equal(np.array([p.xy for p in rec.images[1].points2D]), p1)
    for i in warps:
        after = np.array([p.xy for p in rec.images[i].points2D])
        moved = np.any(after != given[i], axis=1)  # the others are left exactly as given
        residual = np.linalg.norm(after[moved] - truth[i][moved], axis=1)
        assert moved.mean() >= 0.9 and np.median(residual) < 0.05 and residual.max() < 0.2, \
            (i, moved.mean(), np.median(residual), residual.max())


def test_a_patch_without_texture_stays_where_it_was():
    """Where the image is flat nothing can be aligned: the keypoints are not moved."""
    image = np.full((SIZE, SIZE), 90.0, dtype=np.float32)
    p1 = np.array([[120.0, 120.0], [60.0, 150.0]])
    given = {1: p1, 2: p1 + 0.6, 3: p1 - 0.4}
    rec = three_view_model(p1, given)
    frames = {i: np.tile(2.0 * np.eye(2), (len(p1), 1, 1)) for i in (1, 2, 3)}

    info = align_track_keypoints_affine(rec, frames, {1: image, 2: image, 3: image})

    assert info["moved"] == 0
    for i in (2, 3):
        np.testing.assert_array_equal(np.array([p.xy for p in rec.images[i].points2D]), given[i])


def test_only_the_named_tracks_are_aligned():
    """Step 4f aligns again only the tracks that grew: the other tracks' keypoints stay as given."""
    rng = np.random.default_rng(3)
    image1 = texture()
    shift = np.array([3.0, -2.0])
    g = np.arange(60, 181, 30, dtype=np.float64)
    p1 = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    given = {1: p1, **{i: p1 + shift + rng.uniform(-0.6, 0.6, p1.shape) for i in (2, 3)}}
    rec = three_view_model(p1, given)
    frames = {i: np.tile(2.0 * np.eye(2), (len(p1), 1, 1)) for i in (1, 2, 3)}
    images = {1: image1, 2: warped(image1, np.eye(2), shift), 3: warped(image1, np.eye(2), shift)}
    named = set(sorted(rec.point3D_ids())[::2])
    named_rows = np.array([rec.images[1].points2D[j].point3D_id in named for j in range(len(p1))])

    info = align_track_keypoints_affine(rec, frames, images, points=named)

    assert info["observations"] == 2 * named_rows.sum()
    for i in (2, 3):
        after = np.array([p.xy for p in rec.images[i].points2D])
        np.testing.assert_array_equal(after[~named_rows], given[i][~named_rows])
        assert np.abs(after[named_rows] - (p1 + shift)[named_rows]).max() < 0.1
