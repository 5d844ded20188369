"""The surface of a trained IDR model as a mesh: marching cubes of its SDF, with vertex colours."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from pipeline.geometry.mesh import keep_large_components, marching_cubes
from pipeline.models.idr.model import IDRModel
from pipeline.models.idr.sdf_mesh import sample_sdf_grid


def extract_mesh(model: IDRModel, radius: float, lipschitz: float, resolution: int, min_component: float,
                 with_colors: bool, to_original) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Marching cubes of f over the cube around the bounding sphere of ``radius`` (``lipschitz``: the
    SDF's slope bound, lets the grid skip far cells); vertices in original units, optional colours."""
    bounds = np.array([[-radius] * 3, [radius] * 3])
    device = model.background.device
    values = sample_sdf_grid(lambda p: model.query_sdf(p.to(device)), bounds, resolution, lipschitz=lipschitz)
    verts, faces = marching_cubes(values, bounds, 0.0)
    if min_component > 0:
        verts, faces = keep_large_components(verts, faces, min_component)
    colors = None
    if with_colors and len(verts):
        parts = []
        pts_all = torch.from_numpy(verts).float()
        for s in range(0, len(pts_all), 32768):
            pts = pts_all[s:s + 32768].to(device)
            _, _, grad = model.sdf_network.sdf_and_gradient(pts)
            # look at each vertex head-on, along its inward normal
            parts.append(model.query_color(pts, -grad).cpu().numpy())
        colors = np.concatenate(parts)
    return to_original(verts), faces, colors
