"""IDR's geometry network (``pipeline.models.idr.sdf_network``): the geometric init is a sphere
(also with a hash grid), gradients of unit norm, numerical gradients matching analytic ones, grid
levels fading in."""
import pytest
import torch

from pipeline.models.idr.sdf_network import SDFNetwork, SDFNetworkConfig


def test_geometric_init_is_close_to_a_sphere(one_thread):
    torch.manual_seed(0)
    net = SDFNetwork(SDFNetworkConfig(hidden_dim=128, feature_dim=16, init_radius=0.6))
    dirs = torch.randn(4000, 3)
    points = dirs / dirs.norm(dim=-1, keepdim=True) * torch.empty(4000, 1).uniform_(0.3, 1.0)
    with torch.no_grad():
        sdf, feature = net(points)
    error = sdf - (points.norm(dim=-1) - 0.6)
    assert feature.shape == (4000, 16)
    assert error.abs().mean() < 0.1
    # negative inside, positive outside: the zero level set is near the sphere
    assert (sdf[points.norm(dim=-1) < 0.45] < 0).float().mean() > 0.95
    assert (sdf[points.norm(dim=-1) > 0.8] > 0).float().mean() > 0.95


@pytest.mark.parametrize("encoding", ["fourier", "hashgrid"])
def test_inside_out_init_puts_free_space_inside_the_sphere(one_thread, encoding):
    """For cameras inside the scene (a street, a room): r - |x|, positive (free) inside."""
    torch.manual_seed(0)
    grid = dict(hidden_dim=64, num_layers=2, skip_layers=[], hash_levels=4, hash_log2_size=12,
                hash_max_resolution=64, hash_backend="torch") if encoding == "hashgrid" else dict(hidden_dim=128)
    net = SDFNetwork(SDFNetworkConfig(encoding=encoding, feature_dim=8, init_radius=0.6, inside_out=True, **grid))
    dirs = torch.randn(4000, 3)
    points = dirs / dirs.norm(dim=-1, keepdim=True) * torch.empty(4000, 1).uniform_(0.0, 1.0)
    with torch.no_grad():
        sdf = net.sdf(points).reshape(-1)
    assert (sdf[points.norm(dim=-1) < 0.45] > 0).float().mean() > 0.95
    assert (sdf[points.norm(dim=-1) > 0.75] < 0).float().mean() > 0.95


def test_hashgrid_variant_starts_as_a_sphere_and_trains_its_grid(one_thread):
    torch.manual_seed(0)
    net = SDFNetwork(SDFNetworkConfig(encoding="hashgrid", hidden_dim=64, num_layers=3, skip_layers=[], feature_dim=8,
                                      hash_levels=4, hash_log2_size=12, hash_max_resolution=64))
    dirs = torch.randn(2000, 3)
    points = dirs / dirs.norm(dim=-1, keepdim=True) * torch.empty(2000, 1).uniform_(0.3, 1.0)
    sdf, _, grad = net.sdf_and_gradient(points, create_graph=True)
    assert (sdf - (points.norm(dim=-1) - 0.6)).abs().mean() < 0.15  # a 3-layer MLP: a rougher sphere
    ((grad.norm(dim=-1) - 1) ** 2).mean().backward()  # eikonal reaches the grid table (double backward)
    table_grads = [p.grad for name, p in net.named_parameters() if name.startswith("encoding.")]
    assert table_grads and all(g is not None for g in table_grads)


def test_sdf_gradient_has_unit_norm_near_init_sphere(one_thread):
    torch.manual_seed(0)
    net = SDFNetwork(SDFNetworkConfig(hidden_dim=128, feature_dim=8))
    dirs = torch.randn(1000, 3)
    points = dirs / dirs.norm(dim=-1, keepdim=True) * 0.6
    _, _, grad = net.sdf_and_gradient(points)
    radial = (grad * points / 0.6).sum(-1) / grad.norm(dim=-1)
    assert radial.mean() > 0.9  # gradients point outwards like a sphere's normals


def test_numerical_gradient_matches_the_analytic_one_on_a_smooth_network(one_thread):
    torch.manual_seed(0)
    config = SDFNetworkConfig(hidden_dim=64, feature_dim=8, weight_norm=False)
    analytic = SDFNetwork(config)
    numerical = SDFNetwork(SDFNetworkConfig(**{**config.__dict__, "gradient": "numerical", "numerical_eps": 1e-3}))
    with torch.no_grad():  # move away from the init sphere: a field with some detail
        for p in analytic.parameters():
            p.add_(0.05 * torch.randn_like(p))
        numerical.load_state_dict(analytic.state_dict())
    points = torch.rand(500, 3, dtype=torch.float32) * 1.6 - 0.8
    sdf_a, feature_a, grad_a = analytic.sdf_and_gradient(points)
    sdf_n, feature_n, grad_n = numerical.sdf_and_gradient(points, create_graph=True)
    assert torch.allclose(sdf_a, sdf_n) and torch.allclose(feature_a, feature_n)
    assert (grad_n - grad_a).norm(dim=-1).max() < 5e-3 * grad_a.norm(dim=-1).max()
    # the eikonal loss on numerical gradients trains the network with first derivatives only
    ((grad_n.norm(dim=-1) - 1) ** 2).mean().backward()
    assert all(p.grad is not None for p in numerical.parameters())


def test_geometry_grid_fades_in_and_the_numerical_step_follows_the_finest_level_in_use(one_thread):
    torch.manual_seed(0)
    net = SDFNetwork(SDFNetworkConfig(encoding="hashgrid", hidden_dim=32, num_layers=3, skip_layers=[], feature_dim=8,
                                      hash_levels=4, hash_log2_size=12, hash_base_resolution=8,
                                      hash_max_resolution=64, gradient="numerical", coarse_to_fine=0.5))
    points = torch.rand(64, 3) * 2 - 1
    net.set_progress(0.0)
    assert torch.equal(net.encode(points)[:, 3:], torch.zeros(64, 8))  # x alone: the init sphere
    assert net.numerical_step() == pytest.approx(2.0 / 8)  # a cell of the coarsest level
    net.set_progress(0.25)  # half-way through the fade: two levels (resolutions 8 and 16)
    assert net.level_weights().tolist() == [1.0, 1.0, 0.0, 0.0]
    assert net.numerical_step() == pytest.approx(2.0 / 16)
    net.set_progress(1.0)  # inference: every level, the finest cell
    assert net.level_weights() is None and net.numerical_step() == pytest.approx(2.0 / 64)
    with pytest.raises(ValueError, match="sdf.gradient"):
        SDFNetwork(SDFNetworkConfig(gradient="finite"))


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_constant_sample_gradients_equal_autograds_and_leave_the_values_trainable(one_thread, backend):
    """The sdf stage's fast path: grad_x f by the chain rule by hand (MLP by autograd, the grid's input
    gradient alone) equals plain autograd, while sdf and feature still train the grid."""
    torch.manual_seed(0)
    net = SDFNetwork(SDFNetworkConfig(encoding="hashgrid", hash_backend=backend, hidden_dim=32, num_layers=2,
                                      skip_layers=[], feature_dim=8, weight_norm=False, hash_levels=6,
                                      hash_log2_size=12, hash_max_resolution=128, coarse_to_fine=0.5))
    with torch.no_grad():
        net.encoding.table.normal_(0.0, 0.1)  # a grid with structure, not the near-zero init
    net.set_progress(0.3)  # some levels partly faded in: their weights are in the chain
    points = torch.rand(300, 3) * 2.4 - 1.2  # some outside the grid's cube, where the clamp stops gradients
    sdf_ref, feature_ref, grad_ref = net.sdf_and_gradient(points, create_graph=False)
    sdf, feature, grad = net.sdf_and_gradient(points, keep_values_graph=True)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sdf.detach(), sdf_ref)
    assert not grad.requires_grad and sdf.requires_grad and feature.requires_grad
    (sdf.sum() + feature.sum()).backward()
    table_grad = net.encoding.table.grad.clone()
    net.zero_grad()
    sdf_plain, feature_plain = net(points)
    (sdf_plain.sum() + feature_plain.sum()).backward()
    torch.testing.assert_close(table_grad, net.encoding.table.grad)


def test_numerical_gradient_for_the_eikonal_loss_trains_with_first_derivatives_only(one_thread):
    torch.manual_seed(0)
    net = SDFNetwork(SDFNetworkConfig(encoding="hashgrid", hash_backend="cpu", hidden_dim=64, num_layers=2,
                                      skip_layers=[], feature_dim=8, weight_norm=False, hash_levels=4,
                                      hash_log2_size=12, hash_max_resolution=32, init_radius=0.5))
    dirs = torch.randn(500, 3)
    points = dirs / dirs.norm(dim=-1, keepdim=True) * torch.empty(500, 1).uniform_(0.2, 0.9)
    numerical = net.numerical_gradient(points)
    analytic = net.sdf_and_gradient(points)[2]
    assert numerical.requires_grad
    # the step is a cell of the finest level (1/16 here): close, not equal, to the analytic gradient
    assert (numerical - analytic).norm(dim=-1).mean() < 0.05 * analytic.norm(dim=-1).mean()
    ((numerical.norm(dim=-1) - 1) ** 2).mean().backward()
    # the geometric init gives the grid's features zero weight, so the loss reaches them first
    assert net.layers[0].weight.grad[:, 3:].abs().sum() > 0 and net.encoding.table.grad is not None
