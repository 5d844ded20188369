"""The IDR stage on a tiny rendered sphere (the ``sphere_workspace`` fixture): it writes its outputs,
the model renders, a short run learns the silhouette, and it trains on CUDA with a hash grid and
trainable cameras."""
import json

import numpy as np

from tests.conftest import requires_cuda
from tests.tiny_configs import tiny_idr_config


def test_idr_stage_writes_outputs_and_the_model_renders(sphere_workspace):
    import stages.idr as idr
    from pipeline.geometry.mesh import read_ply
    from pipeline.models.idr.io import load_trained
    from pipeline.models.render import SDFModel, render_image

    ws = sphere_workspace
    from pipeline.runner.stage import run_stage

    result = run_stage(idr.STAGE, ws, tiny_idr_config())
    out = ws.stage_dir("idr")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 25
    assert 0.0 <= metrics["mask_iou"] <= 1.0 and metrics["eval_views"] == "held-out"
    assert sorted(p.name for p in (out / "renders").iterdir()) == ["r_4.png", "r_4_normal.png", "r_9.png",
                                                                  "r_9_normal.png"]
    depth = np.load(out / "depth" / "r_4.npy")
    assert depth.shape == (24, 24)
    verts, faces, colors = read_ply(out / "mesh.ply")
    assert len(faces) > 0 and colors is not None
    model = load_trained(ws)
    assert isinstance(model, SDFModel)
    scene = ws.load_scene()
    image = render_image(model, scene.cameras([0]))
    assert image["rgb"].shape == (24, 24, 3) and image["normal"].shape == (24, 24, 3)
    assert set(np.unique(image["acc"].numpy())) <= {0.0, 1.0}
    assert result.manifest["status"] == "done"


def test_idr_learns_the_sphere_silhouette(sphere_workspace):
    """A short run (~10 s) must already match the masks better than the initial sphere does."""
    from pipeline.runner.stage import run_stage
    import stages.idr as idr

    config = tiny_idr_config(max_steps=150, **{"sdf.init_radius": 0.25})
    run_stage(idr.STAGE, sphere_workspace, config)
    metrics = json.loads((sphere_workspace.stage_dir("idr") / "metrics.json").read_text())
    assert metrics["mask_iou"] > 0.8, metrics


@requires_cuda
def test_idr_stage_trains_on_cuda_with_hash_geometry_and_trainable_cameras(sphere_workspace):
    from pipeline.runner.stage import run_stage
    import stages.idr as idr

    config = tiny_idr_config(device="cuda", train_cameras="true", **{"sdf.encoding": "hashgrid"})
    run_stage(idr.STAGE, sphere_workspace, config)
    metrics = json.loads((sphere_workspace.stage_dir("idr") / "metrics.json").read_text())
    assert metrics["iterations"] == 25 and np.isfinite(metrics["psnr"])
    assert (sphere_workspace.stage_dir("idr") / "cameras.json").exists()
