"""Reference centres (evaluation only) and the error measures: a similarity-moved copy of the truth
has no centre or rotation error, a rescaled one is wrong in metres but right in relative units."""
import numpy as np

from pipeline.geometry.normalize import Similarity
from pipeline.panoramas.ground_truth import centre_errors, read_reference
from tests.panorama_room import random_similarity, write_metric_dataset


def test_built_in_room_layout_is_read_and_errors_are_zero_for_a_moved_copy(tmp_path):
    data = write_metric_dataset(tmp_path / "data", count=6)
    ref = read_reference(data)
    assert ref.names == [f"pano_{i:03d}" for i in range(6)] and ref.room_size_m == np.hypot(6, 5)
    moved = random_similarity(3).apply_c2w(ref.c2w)
    err = centre_errors(ref.names, moved, "relative", ref)
    assert err["centre_error_sim3_max_m"] < 1e-9 and err["rotation_error_median_deg"] < 1e-6
    assert err["distance_error_max_pct"] < 1e-9  # relative units: compared after the best common scale
    scaled = Similarity(1.1).apply_c2w(ref.c2w)
    err_m = centre_errors(ref.names, scaled, "m", ref)
    assert abs(err_m["distance_error_median_pct"] - 10) < 1e-6  # metres are compared as they are
    assert err_m["centre_error_rigid2d_median_m"] > 0.01


def test_zind_reference_in_the_world_frame(shared_data):
    ref = read_reference(shared_data("zind-room06"))
    assert len(ref.names) == 13
    assert np.allclose(ref.c2w[:, 2, 3], ref.c2w[0, 2, 3]) and 1.0 < ref.c2w[0, 2, 3] < 2.0  # camera height, m
    assert "no room bounds" in ref.room_size_from
