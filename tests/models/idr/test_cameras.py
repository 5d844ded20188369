"""IDR's trainable camera corrections (``pipeline.models.idr.cameras``): the common similarity (the
gauge) is removed, per-view corrections kept; axis-angle rotations are right and smooth at zero."""
import math

import numpy as np
import torch

from pipeline.geometry.cameras import look_at
from pipeline.models.idr.cameras import PoseCorrections, axis_angle_to_matrix


def test_camera_corrections_lose_a_common_similarity_and_keep_the_rest():
    """All cameras turned, shifted and scaled together are a gauge motion (the scene can follow):
    remove_gauge takes it out and leaves per-view corrections alone."""
    torch.manual_seed(0)
    angles = torch.linspace(0, 2 * math.pi, 13)[:-1]
    centres = torch.stack([3 * torch.cos(angles), 3 * torch.sin(angles), 0.5 + 0.3 * torch.sin(3 * angles)], -1)
    c2w = torch.from_numpy(np.stack([look_at(c.numpy(), np.zeros(3)) for c in centres])).double()
    R, c = c2w[:, :3, :3], c2w[:, :3, 3]
    phi, tau, s = torch.tensor([0.01, -0.02, 0.015]), torch.tensor([0.03, 0.01, -0.02]), 0.02
    corrections = PoseCorrections(len(c2w)).double()
    with torch.no_grad():  # the same small world similarity for every camera, in camera frames
        dc = torch.cross(phi.double().expand_as(c), c, dim=-1) + tau.double() + s * c
        corrections.rotation.copy_((R.transpose(1, 2) @ phi.double().expand_as(c).unsqueeze(-1)).squeeze(-1))
        corrections.translation.copy_((R.transpose(1, 2) @ dc.unsqueeze(-1)).squeeze(-1))
    corrections.remove_gauge(c2w)
    assert corrections.rotation.abs().max() < 1e-9 and corrections.translation.abs().max() < 1e-9
    own = 0.01 * torch.randn(len(c2w), 3, dtype=torch.float64), 0.01 * torch.randn(len(c2w), 3, dtype=torch.float64)
    with torch.no_grad():
        corrections.rotation.copy_(own[0]), corrections.translation.copy_(own[1])
    corrections.remove_gauge(c2w)
    once = corrections.rotation.clone(), corrections.translation.clone()
    corrections.remove_gauge(c2w)  # a projection: a second pass changes nothing
    assert torch.allclose(corrections.rotation, once[0], atol=1e-12)
    assert torch.allclose(corrections.translation, once[1], atol=1e-12)
    # 12 views x 6 numbers lose 7 degrees of freedom: most of a random correction stays
    kept = torch.cat(once).detach().norm() / torch.cat(own).norm()
    assert 0.7 < float(kept) < 1.0


def test_axis_angle_matches_scipy_and_is_smooth_at_zero():
    from scipy.spatial.transform import Rotation

    omega = torch.tensor([[0.3, -0.2, 0.5], [1e-6, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    expected = Rotation.from_rotvec(omega.numpy()).as_matrix()
    assert np.allclose(axis_angle_to_matrix(omega).numpy(), expected, atol=1e-9)
    corrections = PoseCorrections(2)
    c2w = torch.eye(4).expand(2, 4, 4)
    out = corrections.apply(c2w, torch.tensor([0, 1]))
    out[:, 0, 1].sum().backward()  # a skew (antisymmetric) entry: sums of all entries cancel
    assert torch.isfinite(corrections.rotation.grad).all()
    assert corrections.rotation.grad.abs().sum() > 0  # rotations can learn from the first step
