"""PLY files written by ``pipeline.geometry.mesh`` read back the same, by our reader and by an
independent one (plyfile)."""
import numpy as np

from pipeline.geometry.mesh import read_ply


def test_ply_files_round_trip_through_plyfile_with_colours_normals_and_faces(tmp_path):
    from plyfile import PlyData

    from pipeline.geometry.mesh import write_ply

    rng = np.random.default_rng(0)
    verts = rng.normal(size=(50, 3))
    faces = rng.integers(0, 50, size=(80, 3))
    colors = rng.integers(0, 256, size=(50, 3)).astype(np.uint8)
    normals = rng.normal(size=(50, 3))
    path = write_ply(tmp_path / "m.ply", verts, faces, colors=colors, normals=normals)
    ply = PlyData.read(str(path))  # an independent reader
    v = ply["vertex"]
    assert np.allclose(np.stack([v["x"], v["y"], v["z"]], -1), verts, atol=1e-6)
    assert np.allclose(np.stack([v["nx"], v["ny"], v["nz"]], -1), normals, atol=1e-6)
    assert np.array_equal(np.stack([v["red"], v["green"], v["blue"]], -1), colors)
    assert np.array_equal(np.stack(ply["face"]["vertex_indices"]), faces)
    points_only, no_faces, _ = read_ply(write_ply(tmp_path / "p.ply", verts))
    assert no_faces is None and np.allclose(points_only, verts, atol=1e-6)
