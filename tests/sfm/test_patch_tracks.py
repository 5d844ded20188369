"""Step 4g: the model's points tracked by patch alignment into the views where SIFT gave them no keypoint."""
import numpy as np
import pytest

from pipeline.sfm.keypoints import align_track_keypoints_affine
from pipeline.sfm.patch_tracks import track_points_into_views
from tests.sfm.test_keypoint_alignment import SIZE, texture, warped

pycolmap = pytest.importorskip("pycolmap")

FOCAL, DEPTH, SHIFT = 200.0, 5.0, 40.0  # a camera 1 unit to the side sees the plane at z = 5 moved by 40 px


def plane_model(p1: np.ndarray, observed_by_3: np.ndarray, point_offset_px: float = 0.0):
    """Cameras 1-3 at x = 0, -1, +1 looking down +z at a textured plane z = 5; a point on the plane
    where camera 1 sees each pixel of ``p1`` (N, 2), observed by views 1 and 2 and, where
    ``observed_by_3``, view 3. Every view's keypoints are the true projections; the 3D points are
    ``point_offset_px`` (in camera 1's pixels) off in x, so their projections miss the truth."""
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=1, model="SIMPLE_PINHOLE", width=SIZE, height=SIZE,
                                                    params=[FOCAL, SIZE / 2, SIZE / 2]))
    truth = {1: p1, 2: p1 + [SHIFT, 0.0], 3: p1 - [SHIFT, 0.0]}
    for image_id, centre_x in ((1, 0.0), (2, -1.0), (3, 1.0)):
        keypoints = truth[image_id] if image_id != 3 else truth[3][observed_by_3]
        image = pycolmap.Image(name=f"{image_id}.png", keypoints=keypoints, camera_id=1, image_id=image_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(), [-centre_x, 0.0, 0.0]))
    index_in_3 = np.cumsum(observed_by_3) - 1
    for j, (u, v) in enumerate(p1):
        xyz = [(u - SIZE / 2 + point_offset_px) * DEPTH / FOCAL, (v - SIZE / 2) * DEPTH / FOCAL, DEPTH]
        elements = [pycolmap.TrackElement(1, j), pycolmap.TrackElement(2, j)]
        if observed_by_3[j]:
            elements.append(pycolmap.TrackElement(3, int(index_in_3[j])))
        rec.add_point3D(xyz, pycolmap.Track(elements))
    image1 = texture()
    images = {1: image1, 2: warped(image1, np.eye(2), np.array([SHIFT, 0.0])),
              3: warped(image1, np.eye(2), np.array([-SHIFT, 0.0]))}
    frames = {i: np.tile(2.0 * np.eye(2), (len(rec.images[i].points2D), 1, 1)) for i in (1, 2, 3)}
    return rec, images, frames, truth


def grid_points() -> np.ndarray:
    g = np.arange(60, 181, 12, dtype=np.float64)
    return np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)


def test_points_missing_from_a_view_are_found_there_at_their_true_position():
    """View 3 observes every other point; the others, projected 0.4 px off (their 3D points are),
    are aligned onto the true surface point and join their tracks as new keypoints of view 3."""
    p1 = grid_points()
    observed_by_3 = np.arange(len(p1)) % 2 == 0
    rec, images, frames, truth = plane_model(p1, observed_by_3, point_offset_px=0.4)
    keypoints_before = len(rec.images[3].points2D)

    info = track_points_into_views(pycolmap, rec, frames, images, per_view=1000)

    missing = np.flatnonzero(~observed_by_3)
    assert info["candidates"] == len(missing) and info["added"] >= 0.9 * len(missing), info
    points2D = rec.images[3].points2D
    assert len(points2D) == keypoints_before + info["added"] and len(frames[3]) == len(points2D)
    for point2D in list(points2D)[keypoints_before:]:
        point_id = point2D.point3D_id
        j = next(e.point2D_idx for e in rec.points3D[point_id].track.elements if e.image_id == 1)
        assert not observed_by_3[j]
        assert np.linalg.norm(np.asarray(point2D.xy) - truth[3][j]) < 0.05, (point2D.xy, truth[3][j])
    # the keypoints that SIFT gave stay the image's first ones, unchanged
    np.testing.assert_array_equal(np.array([p.xy for p in list(points2D)[:keypoints_before]]), truth[3][observed_by_3])


def test_a_view_that_sees_something_else_there_gets_no_observation():
    """Where view 3 shows another texture (an occluder in front of the points), no alignment
    correlates: nothing is added there."""
    p1 = grid_points()
    observed_by_3 = np.zeros(len(p1), dtype=bool)
    rec, images, frames, _ = plane_model(p1, observed_by_3)
    images[3] = texture(seed=7)

    info = track_points_into_views(pycolmap, rec, frames, images, per_view=1000)

    assert info["candidates"] == len(p1) and info["added"] <= 0.05 * len(p1), info


def test_each_view_tries_at_most_per_view_points_by_default_the_median_views_observations():
    p1 = grid_points()
    rec, images, frames, _ = plane_model(p1, np.zeros(len(p1), dtype=bool))

    info = track_points_into_views(pycolmap, rec, frames, images, per_view=10)
    assert info["candidates"] == 10 and info["per_view"] == 10

    rec, images, frames, _ = plane_model(p1, np.arange(len(p1)) < 30)  # views 1, 2: all points; view 3: 30
    info = track_points_into_views(pycolmap, rec, frames, images)
    assert info["per_view"] == len(p1) and info["candidates"] == len(p1) - 30


def test_the_new_keypoints_can_be_aligned_again_like_any_other():
    """Step 4e's alignment reads every observation's SIFT frame: the new keypoints come with one."""
    p1 = grid_points()
    rec, images, frames, _ = plane_model(p1, np.arange(len(p1)) % 2 == 0)
    track_points_into_views(pycolmap, rec, frames, images, per_view=1000)

    info = align_track_keypoints_affine(rec, frames, images)

    assert info["observations"] == rec.compute_num_observations() - rec.num_points3D()
