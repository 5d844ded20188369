"""IDR training data (``pipeline.training.idr_data``): masks thresholded from a black background, a
ray bank that draws a share near the silhouette edges, a clear error for a scene without masks."""
import numpy as np
import pytest
import torch


def test_threshold_mask_of_a_black_background():
    from pipeline.evaluation.metrics import mask_iou
    from pipeline.training.idr_data import threshold_mask

    rng = np.random.default_rng(0)
    v, u = np.mgrid[0:64, 0:64]
    disk = (u - 32) ** 2 + (v - 30) ** 2 < 15 ** 2
    image = rng.uniform(0, 0.03, (64, 64, 3))  # dark sensor noise
    image[disk] = rng.uniform(0.3, 0.9, (int(disk.sum()), 3))
    image[30, 30] = 0.0  # a dark pixel inside the object is a hole to fill
    image[5, 5] = 0.8  # a speck in the background is dropped
    mask = threshold_mask(image, "black", 0.1)
    assert mask[30, 30] and not mask[5, 5] and mask_iou(mask, disk) > 0.97
    gap = (np.abs(u - 32) < 3) & (np.abs(v - 30) < 8)  # 75 px of background seen through the object
    image[gap] = 0.0
    mask = threshold_mask(image, "black", 0.1, max_hole_fraction=0.01)  # holes up to 41 px are filled
    assert not mask[gap].any() and mask_iou(mask, disk & ~gap) > 0.97


def test_ray_bank_draws_a_share_of_rays_near_the_silhouette_edges(sphere_workspace):
    from pipeline.geometry.masks import mask_edges
    from pipeline.training.idr_data import MaskOptions, RayBank, load_masks, load_views

    square = torch.zeros(9, 9, dtype=torch.bool)
    square[2:7, 2:7] = True
    edges = mask_edges(square, 1)
    # a 1 px band on each side of the outline: the 7x7 dilated square less the 3x3 eroded one
    assert edges.sum() == 7 * 7 - 3 * 3 and edges[1:8, 1:8].sum() == 40 and not edges[3:6, 3:6].any()

    scene = sphere_workspace.load_scene()
    idx = scene.split("train")
    views = load_views(scene, idx, load_masks(scene, idx, MaskOptions()), 1)
    bank = RayBank(views, 1.0, mask_fraction=0.5, edge_fraction=0.25, edge_width=2)
    view, uv, _, mask = bank.sample(4000, torch.Generator().manual_seed(0))
    edges = torch.stack([mask_edges(torch.from_numpy(m), 2) for m in views.masks])  # (views, H, W)
    near_edge = edges[view, uv[:, 1].long(), uv[:, 0].long()]
    # the last quarter comes from the edge band; the rest keeps the inside/outside split
    assert near_edge[3000:].all() and near_edge[:3000].float().mean() < 0.5
    assert mask[:1500].all() and not mask[1500:3000].any()


def test_scene_without_masks_gets_a_clear_error(sphere_workspace, tmp_path):
    from datasets.scene import SceneError
    from pipeline.training.idr_data import MaskOptions, load_masks

    scene = sphere_workspace.load_scene()
    for frame in scene.frames:  # pretend the photos were JPEGs without alpha
        frame.image_path = frame.image_path.with_suffix(".jpg")
    with pytest.raises(SceneError, match="mask_source=threshold"):
        load_masks(scene, [0], MaskOptions())
