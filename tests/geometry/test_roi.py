"""The region of interest of the sdf stage: from sparse points (background points left out), from
the cameras' common view, from a box in original units; the similarity into the model's frame and
back; a bad box names its key."""
import math

import numpy as np
import pytest
import torch

from datasets.scene import Frame, Scene
from pipeline.geometry.cameras import look_at, pinhole_from_fov
from pipeline.geometry.normalize import Similarity
from pipeline.geometry.roi import (RegionOfInterest, box_distance, choose_roi, holding_cameras, move_scene, parse_box,
                                   points_box, roi_from_cameras, roi_from_points)
from pipeline.runner.config import ConfigError

TARGET = np.array([0.3, -0.2, 0.1])


def ring_scene(views=12, distance=3.0, fov_deg=40.0, target=TARGET, bounds=None) -> Scene:
    k = pinhole_from_fov(64, 48, math.radians(fov_deg))
    frames = []
    for i in range(views):
        a = 2 * math.pi * i / views
        eye = target + distance * np.array([math.cos(a), math.sin(a), 0.3])
        frames.append(Frame(image_path=f"v{i}.png", intrinsics=k, c2w=look_at(eye, target, up=(0, 0, 1))))
    return Scene(frames, {}, bounds)


def test_from_the_cameras_common_view():
    scene = ring_scene()
    roi = choose_roi("auto", scene, Similarity(), 1.0, margin=0.0)
    assert roi.source == "cameras"
    np.testing.assert_allclose(roi.center, TARGET, atol=1e-6)
    # every camera looks straight at the target from 3 * sqrt(1.09): the ball fits the 40-degree
    # field's narrower (vertical) half-angle
    k = scene.frames[0].intrinsics
    half = math.atan2(k.cy, k.fy)
    assert roi.radius == pytest.approx(3.0 * math.sqrt(1.09) * math.sin(half), rel=1e-6)
    assert choose_roi("auto", scene, Similarity(), 1.0, margin=0.1).radius == pytest.approx(1.1 * roi.radius)
    # cameras that look away from each other have no common view
    assert roi_from_cameras(np.stack([np.eye(4), np.diag([-1.0, 1, -1, 1])]), [k, k], 0.1) is None


def test_from_sparse_points_without_the_background():
    scene = ring_scene(views=16)
    rng = np.random.default_rng(0)
    obj = TARGET + rng.uniform(-0.25, 0.25, (500, 3))
    # a wall far behind camera 0's view of the object: only the cameras on that side see it
    c0 = scene.frames[0].c2w[:3, 3]
    wall = TARGET - 4 * (c0 - TARGET) / np.linalg.norm(c0 - TARGET) + rng.normal(0, 0.5, (200, 3))
    roi = choose_roi("auto", scene, Similarity(), 1.0, points=np.concatenate([obj, wall]), margin=0.0)
    assert roi.source == "points" and "500 of 700" in roi.reason
    np.testing.assert_allclose(roi.center, TARGET, atol=0.02)
    assert roi.radius == pytest.approx(0.25 * math.sqrt(3), rel=0.05)
    # too few points: the cameras decide
    assert roi_from_points(obj[:5], np.stack([f.c2w for f in scene.frames]),
                           [f.intrinsics for f in scene.frames], 0.1) is None
    assert choose_roi("auto", scene, Similarity(), 1.0, points=obj[:5]).source == "cameras"


def test_known_bounds_and_sphere_keep_the_normalised_ball():
    bounds = np.array([[-1, -1, -1], [1, 1, 1]]) / math.sqrt(3)  # the poses stage put this box's ball at r = 1
    roi = choose_roi("auto", ring_scene(bounds=bounds), Similarity(), 1.0)
    assert roi.source == "bounds"
    sim = roi.similarity(1.0)
    assert sim.scale == 1.0 and not sim.translation.any()  # exactly the identity
    # the poses stage rotates the dataset's box (up axis): transforms.json holds the larger
    # axis-aligned box of the rotated one, and the ROI is still the box's own ball
    from scipy.spatial.transform import Rotation

    rotation = Rotation.from_rotvec([0.1, -0.05, 0.02]).as_matrix()
    normalization = Similarity(0.5, rotation, np.zeros(3))
    box = np.array([[-1.0, -2.0, -0.5], [1.0, 2.0, 0.5]])
    corners = normalization.apply_points(np.stack(np.meshgrid(*zip(*box), indexing="ij"), -1).reshape(-1, 3))
    scene = ring_scene(bounds=np.stack([corners.min(0), corners.max(0)]))
    roi = choose_roi("auto", scene, normalization, 1.0)
    assert roi.radius == pytest.approx(0.5 * np.linalg.norm([1.0, 2.0, 0.5]), rel=1e-9)
    assert np.linalg.norm(corners.max(0) - corners.min(0)) / 2 > 1.05 * roi.radius  # the naive ball is larger
    np.testing.assert_allclose(roi.box, box, atol=1e-9)  # the dataset's own box, back in original units
    sphere = choose_roi("sphere", ring_scene(), Similarity(), 0.8)
    assert sphere.radius == 0.8 and not sphere.similarity(0.8).translation.any()


def test_a_box_in_original_units_overrides_and_round_trips():
    normalization = Similarity(0.5, np.eye(3), np.array([1.0, 0.0, -2.0]))  # original -> normalised
    box = [0.0, 0.0, 0.0, 2.0, 4.0, 4.0]
    for mode in ("box", "auto"):  # a given box wins over the estimates
        roi = choose_roi(mode, ring_scene(), normalization, 1.0, box=box)
        assert roi.source == "box"
    np.testing.assert_allclose(roi.center, normalization.apply_points(np.array([[1.0, 2.0, 2.0]]))[0])
    assert roi.radius == pytest.approx(0.5 * 3.0)  # half the diagonal (6) in normalised units
    to_model = roi.similarity(1.0)
    corners = np.array([[0.0, 0, 0], [2, 4, 4], [2, 0, 4]])
    in_model = to_model.apply_points(normalization.apply_points(corners))
    np.testing.assert_allclose(np.linalg.norm(in_model, axis=1), 1.0)  # the box's corners on the unit ball
    back = to_model.compose(normalization).inverse()
    np.testing.assert_allclose(back.apply_points(in_model), corners, atol=1e-12)
    np.testing.assert_allclose(roi.box.reshape(-1), box)
    # the box's signed distance, measured in the model's frame: 1 original unit is to_model.scale x 0.5
    probes = np.array([[1.0, 2.0, 2.0], [1.0, 2.0, 5.0], [2.0, 4.0, 4.0], [3.0, 5.0, 4.0]])  # centre, above, corner, off
    distance = box_distance(torch.as_tensor(to_model.apply_points(normalization.apply_points(probes))), roi.box, back)
    np.testing.assert_allclose(distance.numpy() * back.scale, [-1.0, 1.0, 0.0, math.sqrt(2)], atol=1e-12)
    # cameras move with it; depths scale by the same factor
    scene = move_scene(ring_scene(), to_model)
    c2w = ring_scene().frames[3].c2w
    np.testing.assert_allclose(scene.frames[3].c2w, to_model.apply_c2w(c2w))
    assert scene.meta["recon"]["depth_scale"] == pytest.approx(to_model.scale)


@pytest.mark.parametrize("box,message", [([0, 0, 0, 1, 1], "roi_box must be 6"),
                                         ([0, 0, 0, 1, -1, 1], "roi_box: each max must exceed its min"),
                                         (["a", 0, 0, 1, 1, 1], "roi_box must be 6 numbers")])
def test_a_bad_box_names_the_key(box, message):
    with pytest.raises(ConfigError, match=message):
        parse_box(box)
    with pytest.raises(ConfigError, match="roi=box needs roi_box"):
        choose_roi("box", ring_scene(), Similarity(), 1.0, box=[])
    with pytest.raises(ConfigError, match="roi must be one of auto, sphere, box"):
        choose_roi("ball", ring_scene(), Similarity(), 1.0)


def test_a_framed_model_renders_in_the_outer_frame():
    """A model trained in the ROI frame answers in the normalised frame: SDF values, depths."""
    from pipeline.models.framed import FramedModel

    class Ball(torch.nn.Module):  # a unit ball at the origin of its own frame
        background = torch.ones(3)
        bounds = np.array([[-1.0] * 3, [1.0] * 3])

        def query_sdf(self, p):
            return p.norm(dim=-1) - 1.0

        def render_rays(self, o, d):
            b = (o * d).sum(-1)
            t = -b - (b * b - (o * o).sum(-1) + 1).clamp_min(0).sqrt()
            return {"t": t, "rgb": torch.zeros_like(o), "acc": torch.ones_like(t), "normal": o + t[:, None] * d}

    to_inner = Similarity(2.0, np.eye(3), np.array([-1.0, 0.0, 0.0]))  # outer ball: centre (0.5, 0, 0), r 0.5
    framed = FramedModel(Ball(), to_inner)
    points = torch.tensor([[0.5, 0.0, 0.0], [1.5, 0.0, 0.0]])
    torch.testing.assert_close(framed.query_sdf(points), torch.tensor([-0.5, 0.5]))
    out = framed.render_rays(torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([[-1.0, 0.0, 0.0]]))
    torch.testing.assert_close(out["t"], torch.tensor([2.0]))  # hits x = 1 from x = 3
    np.testing.assert_allclose(framed.bounds, [[0, -0.5, -0.5], [1, 0.5, 0.5]])


def test_a_region_seen_from_inside_grows_to_hold_every_camera():
    roi = RegionOfInterest(np.array([1.0, 0.0, 0.0]), 2.0, "points")
    centres = np.array([[1.0, 0.5, 0.0], [4.0, 0.0, 0.0], [1.0, -2.5, 0.0]])
    grown = holding_cameras(roi, centres, margin=0.1)
    assert grown.radius == pytest.approx(3.3) and np.array_equal(grown.center, roi.center)
    assert "grown from 2 to hold all 3 cameras" in grown.reason
    assert holding_cameras(roi, centres[:1], margin=0.1) is roi  # already inside: unchanged


def test_the_box_of_what_cameras_inside_a_street_saw():
    """Sparse points on two facades and the ground of a street (z up), a bird far above it, a point
    behind every camera: the box holds the street and stops at the roofs."""
    from pipeline.geometry.cameras import Intrinsics

    rng = np.random.default_rng(0)
    facades = np.stack([np.where(rng.random(300) < 0.5, -1.0, 1.0), rng.uniform(0, 10, 300), rng.uniform(0, 2, 300)], 1)
    ground = np.stack([rng.uniform(-1, 1, 100), rng.uniform(0, 10, 100), np.zeros(100)], 1)
    bird, behind = np.array([[0.0, 8.0, 40.0]]), np.array([[0.0, -30.0, 1.0]])
    points = np.concatenate([facades, ground, bird, behind])
    # cameras walking down the street (+y) 1.5 above the ground; OpenCV axes: x right, y down, z forward
    c2w = np.stack([np.array([[1, 0, 0, 0], [0, 0, 1, y0], [0, -1, 0, 1.5], [0, 0, 0, 1]], dtype=float)
                    for y0 in np.linspace(-4, 6, 6)])
    intrinsics = [Intrinsics("pinhole", 640, 480, 300.0, 300.0, 320.0, 240.0)] * len(c2w)
    box = points_box(points, c2w, intrinsics, margin=0.05)
    assert box[1][2] < 2.2 and box[0][1] > -1  # neither the bird nor the point behind the cameras
    assert box[0][0] < -0.95 and box[1][0] > 0.95 and box[0][2] < 0.0  # both facades and the ground
    assert points_box(points[:5], c2w, intrinsics, margin=0.05) is None  # too few to say
