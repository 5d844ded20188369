"""Sky detection without a network: the smooth blue region at the top of an outdoor photo (clouds
in it included) is sky; pale walls, textured things and plain studio backgrounds are not; what pose
estimation triangulated is never sky."""
import numpy as np

from pipeline.geometry.sky import SkyDetector, veto_seen_points


def street_photo(height=120, width=160, seed=0) -> np.ndarray:
    """A photo (H, W, 3) in [0, 1]: blue sky with a white cloud over the top 40%, a textured
    facade below it."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3))
    rows = np.linspace(0.0, 1.0, height)[:, None]
    image[..., 0], image[..., 1], image[..., 2] = 0.30 + 0.2 * rows, 0.50 + 0.2 * rows, 0.90 + 0.0 * rows
    yy, xx = np.mgrid[:height, :width]
    cloud = (yy - 18) ** 2 / 36 + (xx - 60) ** 2 / 300 < 1
    image[cloud] = 0.95
    facade = yy >= int(0.4 * height)
    brick = rng.uniform([0.45, 0.25, 0.2], [0.75, 0.45, 0.35], (int(facade.sum()), 3))  # noisy: not smooth
    image[facade] = brick
    return image, facade, cloud


def test_the_blue_sky_over_a_facade_is_found_with_its_cloud():
    image, facade, cloud = street_photo()
    sky = SkyDetector()(image)
    assert not (sky & facade).any()
    assert sky[cloud].all()  # inside the sky region, though white
    assert (sky | facade).mean() > 0.97  # nearly all the sky


def test_no_sky_in_a_pale_blue_wall_a_studio_background_or_a_photo_without_one():
    detector = SkyDetector()
    pale_wall = np.broadcast_to(np.array([0.49, 0.51, 0.65]), (120, 160, 3))  # Herz-Jesu's stone: smooth, blue-grey
    assert not detector(pale_wall).any()
    assert not detector(np.ones((120, 160, 3))).any()  # white (lego, the built-in scene's photos)
    assert not detector(np.zeros((120, 160, 3))).any()  # black (temple)
    image, facade, _ = street_photo()
    image[~facade] = np.random.default_rng(1).uniform(0.2, 0.9, (int((~facade).sum()), 3))  # texture up to the top
    assert not detector(image).any()


def test_the_sky_is_found_at_any_resolution():
    image, facade, _ = street_photo(480, 640)
    sky = SkyDetector(work_size=160)(image)
    assert sky.shape == (480, 640) and not (sky & facade).any() and (sky | facade).mean() > 0.95


def test_points_pose_estimation_saw_are_not_sky():
    sky = np.zeros((100, 100), bool)
    sky[:40] = True  # what the colours took for sky
    # a lone point on the rim (a roof edge) clears a disc around it and nothing more
    rim = veto_seen_points(sky, np.array([[50.5, 39.5]]), radius=3)
    assert not rim[37:40, 49:52].any() and rim[:30].all() and rim.sum() > sky.sum() - 30
    # points deep inside it, as dense as on the rest of the photo: a pale wall, not sky
    rng = np.random.default_rng(0)
    uv = np.concatenate([rng.uniform([0, 50], [100, 100], (30, 2)), rng.uniform([0, 12], [100, 28], (20, 2))])
    assert not veto_seen_points(sky, uv, radius=3).any()
    # without points nothing changes
    assert (veto_seen_points(sky, np.zeros((0, 2)), radius=3) == sky).all()
