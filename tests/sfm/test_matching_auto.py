"""matcher=auto and mapper=auto (``pipeline.sfm.matching``, ``pipeline.sfm.mapping``): the strategy
chosen from the data and the one-line reason, the pairs each strategy matches, the checks behind
the choice (numbered names, consecutive overlap, EXIF GPS), and a real run of the pair and
retrieval matchers on temple-ring."""

import numpy as np
import pytest

from datasets.scene import Frame, Scene, SceneError
from pipeline.sfm.config import EstimationConfig, check_config, effective_settings
from pipeline.sfm.mapping import choose_mapper, global_ba_ratio
from pipeline.sfm.matching import (choose_matcher, consecutive_gain, count_matches, gps_positions, match_images,
                                   natural_key, numbered, prior_positions, sequential_pairs, spatial_pairs)


def frames(n, prefix="frame_"):
    return [f"{prefix}{i}.jpg" for i in range(n)]  # not zero-padded: natural order matters


def never(order):
    raise AssertionError("the ordered-capture check must not run here")


def test_small_set_is_matched_exhaustively_whatever_the_names():
    choice = choose_matcher(EstimationConfig(exhaustive_max_images=60), frames(60), never)
    assert choice.matcher == "exhaustive"
    assert choice.reason == "60 images <= exhaustive_max_images=60: every pair is affordable"


def test_numbered_frames_that_overlap_in_order_are_matched_sequentially():
    seen = []

    def gain(order):
        seen.append(order)
        return 5.5  # consecutive pairs share 5.5x the matches of distant ones (temple-ring: 5.5)

    choice = choose_matcher(EstimationConfig(exhaustive_max_images=10), frames(12), gain)
    assert choice.matcher == "sequential"
    assert seen[0][:3] == ["frame_0.jpg", "frame_1.jpg", "frame_2.jpg"] and seen[0][10] == "frame_10.jpg"
    assert "12 numbered images > exhaustive_max_images=10" in choice.reason and "5.5x" in choice.reason


def test_numbered_views_in_no_order_and_unnumbered_sets_use_retrieval():
    cfg = EstimationConfig(exhaustive_max_images=10, retrieval_neighbors=25)
    spread = choose_matcher(cfg, frames(12), lambda order: 1.2)  # the built-in scene's sphere of views: ~1.2
    assert spread.matcher == "retrieval"
    assert "numbered, but consecutive ones share only 1.2x" in spread.reason and "the 25 most similar" in spread.reason
    names = [f"{w}.jpg" for w in "north south east west roof door gate wall yard tree pond shed".split()]
    plain = choose_matcher(cfg, names, never)
    assert plain.matcher == "retrieval" and "not numbered" in plain.reason


def test_position_priors_select_spatial_matching_before_name_order():
    pos = np.random.default_rng(0).normal(size=(12, 3))
    choice = choose_matcher(EstimationConfig(exhaustive_max_images=10, spatial_neighbors=7), frames(12), never,
                            pos, "GPS in EXIF")
    assert choice.matcher == "spatial" and choice.positions is pos
    assert "positions from GPS in EXIF: the 7 nearest of each" in choice.reason


def test_explicit_matchers_win_and_invalid_values_are_errors():
    choice = choose_matcher(EstimationConfig(matcher="exhaustive", exhaustive_max_images=2), frames(12), never)
    assert (choice.matcher, choice.reason) == ("exhaustive", "matcher=exhaustive in the config, 12 images")
    with pytest.raises(SceneError, match=r"matcher must be one of .*'retrieval'.*got 'vocab'"):
        choose_matcher(EstimationConfig(matcher="vocab"), frames(12), never)
    with pytest.raises(SceneError, match="matcher must be one of"):
        check_config(EstimationConfig(matcher="fast"))
    with pytest.raises(SceneError, match="matcher=spatial needs position priors"):
        choose_matcher(EstimationConfig(matcher="spatial"), frames(12), never)
    with pytest.raises(SceneError, match="spatial_priors must be one of"):
        check_config(EstimationConfig(spatial_priors="exif"))
    with pytest.raises(SceneError, match="mapper must be one of"):
        check_config(EstimationConfig(mapper="glomap"))


def test_large_sets_are_mapped_globally():
    cfg = EstimationConfig()
    assert choose_mapper(cfg, 6000) == ("global", "6000 images >= global_min_images=5000")
    assert choose_mapper(cfg, 2000) == ("incremental", "2000 images < global_min_images=5000")
    assert choose_mapper(EstimationConfig(mapper="incremental"), 400) == ("incremental",
                                                                          "mapper=incremental in the config")


def test_large_sets_get_fewer_global_bundle_adjustments():
    assert global_ba_ratio(EstimationConfig(), 50) == 1.1  # COLMAP's for small sets
    assert global_ba_ratio(EstimationConfig(), 400) == 1.3
    assert global_ba_ratio(EstimationConfig(ba_global_ratio=1.5), 50) == 1.5
    with pytest.raises(SceneError, match="ba_global_ratio must be 0"):
        check_config(EstimationConfig(ba_global_ratio=0.9))


def test_names_order_and_pairs():
    assert numbered(frames(5)) and not numbered(["a.jpg", "b1.jpg"]) and not numbered(["x_1.jpg", "x_01.jpg"])
    assert sorted(frames(11), key=natural_key)[-2:] == ["frame_9.jpg", "frame_10.jpg"]
    pairs = sequential_pairs(frames(40), overlap=3)
    assert ("frame_9.jpg", "frame_10.jpg") in pairs and ("frame_0.jpg", "frame_3.jpg") in pairs
    assert ("frame_0.jpg", "frame_4.jpg") in pairs and ("frame_0.jpg", "frame_5.jpg") not in pairs  # 2^2 step
    line = np.array([[x, 0.0, 0.0] for x in range(10)])
    near = spatial_pairs(frames(10), line, k=2)
    assert ("frame_4.jpg", "frame_5.jpg") in near and ("frame_0.jpg", "frame_2.jpg") in near  # ends: 2 on one side
    assert ("frame_4.jpg", "frame_6.jpg") not in near
    assert all(abs(int(a[6:-4]) - int(b[6:-4])) <= 2 for a, b in near)


def test_descriptor_matches_tell_overlap_from_none():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 128)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    same = a + 0.01 * rng.normal(size=a.shape).astype(np.float32)
    other = rng.normal(size=(300, 128)).astype(np.float32)
    assert count_matches(a, same / np.linalg.norm(same, axis=1, keepdims=True)) >= 290
    assert count_matches(a, other / np.linalg.norm(other, axis=1, keepdims=True)) <= 15


def test_gps_in_exif_becomes_positions_in_metres(tmp_path):
    from PIL import Image

    paths = []
    for i, (lat_s, lon_s) in enumerate([(0.0, 0.0), (3.6, 0.0), (0.0, 3.6)]):  # 3.6" = 1/1000 deg
        exif = Image.Exif()
        exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 8.0, lat_s), 3: "E", 4: (11.0, 34.0, lon_s), 6: 500.0})
        path = tmp_path / f"img_{i}.jpg"
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, exif=exif)
        paths.append(path)
    pos = gps_positions(paths)
    assert pos.shape == (3, 3)
    assert pos[1, 1] == pytest.approx(111.2, abs=0.5) and abs(pos[1, 0]) < 1e-6  # 1/1000 deg north
    assert pos[2, 0] == pytest.approx(111.2 * np.cos(np.radians(48 + 8 / 60)), abs=0.5)
    scene = Scene([Frame(p, None) for p in paths])
    assert prior_positions(EstimationConfig(), scene, [0, 1, 2], paths)[1] == "GPS in EXIF"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(paths[2])  # one photo without GPS: no priors
    assert gps_positions(paths) is None
    assert prior_positions(EstimationConfig(), scene, [0, 1, 2], paths) == (None, "")
    with pytest.raises(SceneError, match="spatial_priors=poses needs a dataset with camera poses"):
        prior_positions(EstimationConfig(spatial_priors="poses"), scene, [0, 1, 2], paths)


@pytest.fixture
def temple_features(shared_data, tmp_path):
    """temple-ring's 16 ordered photos with SIFT features (320 px, at most 1024: seconds) in a COLMAP database."""
    pycolmap = pytest.importorskip("pycolmap")
    folder = tmp_path
    (folder / "images").mkdir()
    for src in sorted(shared_data("temple-ring").glob("*.png")):
        (folder / "images" / src.name).symlink_to(src)
    options = pycolmap.FeatureExtractionOptions()
    options.max_image_size = 320
    options.sift.max_num_features = 1024
    options.num_threads = 2
    pycolmap.extract_features(folder / "database.db", folder / "images", extraction_options=options,
                              device=pycolmap.Device.cpu)
    return pycolmap, folder / "database.db", sorted(p.name for p in (folder / "images").iterdir())


def matched_pairs(pycolmap, db_path):
    db = pycolmap.Database.open(str(db_path))
    try:
        names = {im.image_id: im.name for im in db.read_all_images()}
        pair_ids, _ = db.read_two_view_geometries()
        return {tuple(sorted(names[i] for i in pycolmap.pair_id_to_image_pair(p))) for p in pair_ids}
    finally:
        db.close()


def test_temple_ring_is_found_ordered_and_each_strategy_matches_its_pairs(temple_features):
    """On real photos: auto finds the ring order from the features; sequential matches exactly its
    pairs through COLMAP's pair matcher; retrieval builds its own vocabulary tree (no download)."""
    pycolmap, db_path, names = temple_features
    cfg = EstimationConfig(exhaustive_max_images=8, sequential_overlap=2, retrieval_neighbors=3, num_threads=2)
    eff = effective_settings(cfg, [(640, 480)])
    choice = choose_matcher(cfg, names, lambda order: consecutive_gain(pycolmap, db_path, order))
    assert choice.matcher == "sequential", choice.reason
    match_images(pycolmap, db_path, choice, {}, cfg, eff, pycolmap.Device.cpu, False, names)
    expected = {tuple(sorted(p)) for p in sequential_pairs(names, 2)}
    verified = matched_pairs(pycolmap, db_path)
    assert verified <= expected and len(verified) >= 8  # 320 px: about half of the pairs verify

    retrieval = EstimationConfig(matcher="retrieval", retrieval_neighbors=3, num_threads=2)
    match_images(pycolmap, db_path, choose_matcher(retrieval, names), {}, retrieval, eff, pycolmap.Device.cpu,
                 False, names)
    assert (db_path.parent / "vocab_tree.bin").exists()
    found = matched_pairs(pycolmap, db_path)
    assert 8 <= len(found) <= 16 * 3 and found != verified
