"""IDR: geometric init, sphere tracing, sample network gradients, losses, cameras, masks, and the
stage end to end on a tiny rendered sphere."""
from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from pipeline.geometry.cameras import look_at
from pipeline.models.idr.cameras import PoseCorrections, axis_angle_to_matrix
from pipeline.models.idr.losses import LossConfig, eikonal_loss, mask_alpha, mask_loss, smoothness_loss
from pipeline.models.idr.model import NeuralRenderer, RendererConfig, sample_network
from pipeline.models.idr.sdf_network import SDFNetwork, SDFNetworkConfig
from pipeline.models.idr.sphere_tracing import TracingConfig, trace_surface
from tests.conftest import requires_cuda


def sphere_sdf(radius=0.5):
    return lambda p: p.norm(dim=-1) - radius


def rays_towards_origin(count=400, distance=3.0, spread=0.2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    rays_o = torch.tensor([0.0, 0.0, -distance], dtype=dtype).repeat(count, 1)
    rays_d = torch.tensor([0.0, 0.0, 1.0], dtype=dtype) + spread * torch.randn(count, 3, generator=g, dtype=dtype)
    return rays_o, rays_d / rays_d.norm(dim=-1, keepdim=True)


def analytic_first_hit(rays_o, rays_d, radius):
    b = (rays_o * rays_d).sum(-1)
    disc = b * b - ((rays_o * rays_o).sum(-1) - radius ** 2)
    return -b - disc.clamp_min(0).sqrt(), disc > 0


# --- geometry network --------------------------------------------------------------------------


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


# --- sphere tracing ----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 3.0, 0.3])  # exact SDF, overshooting field, slow field
def test_sphere_tracing_hits_analytic_sphere(scale):
    rays_o, rays_d = rays_towards_origin()
    sdf = sphere_sdf(0.5)
    # the tracer may trust fronts that pass each other only for fields with |grad f| <= lipschitz
    config = TracingConfig(radius=1.0, steps=12, lipschitz=max(1.0, scale))
    hits = trace_surface(lambda p: scale * sdf(p), rays_o, rays_d, config)
    t_true, hit_true = analytic_first_hit(rays_o, rays_d, 0.5)
    assert 50 < int(hit_true.sum()) < 400
    assert torch.equal(hits.hit, hit_true)
    assert (hits.t - t_true)[hit_true].abs().max() < 1e-4


def test_sphere_tracing_misses_report_the_smallest_sdf_point():
    rays_o = torch.tensor([[0.0, 0.7, -3.0]])
    rays_d = torch.tensor([[0.0, 0.0, 1.0]])
    hits = trace_surface(sphere_sdf(0.5), rays_o, rays_d, TracingConfig(radius=1.0))
    assert not hits.hit[0]
    closest = rays_o + hits.t[:, None] * rays_d  # the ray passes closest to the sphere at z = 0
    assert abs(float(closest[0, 2])) < 0.1


# --- sample network ----------------------------------------------------------------------------


def _tiny_net():
    torch.manual_seed(0)
    net = SDFNetwork(SDFNetworkConfig(num_freqs=2, hidden_dim=8, num_layers=3, skip_layers=[], feature_dim=1,
                                      init_radius=0.5, softplus_beta=20.0)).double()
    with torch.no_grad():  # move away from the symmetric init so every parameter matters
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
        net._calibrate_init()  # and keep the zero level set near radius 0.5
    return net


def test_sample_network_gradient_matches_finite_differences(one_thread):
    net = _tiny_net()
    rays_o, rays_d = rays_towards_origin(count=5, spread=0.05, dtype=torch.float64)
    precise = TracingConfig(radius=1.0, steps=10, threshold=1e-12, samples=16, secant_steps=12)
    weights = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)

    def surface_objective():
        hits = trace_surface(net.sdf, rays_o, rays_d, precise)
        assert bool(hits.hit.all())
        return (rays_o + hits.t[:, None] * rays_d) @ weights, hits

    hits = trace_surface(net.sdf, rays_o, rays_d, precise)
    assert int(hits.hit.sum()) >= 3
    rays_o, rays_d = rays_o[hits.hit], rays_d[hits.hit]
    _, hits = surface_objective()
    x0 = rays_o + hits.t[:, None] * rays_d
    sdf, _, grad = net.sdf_and_gradient(x0, create_graph=True)
    points = sample_network(x0, rays_d, sdf, grad)
    assert torch.allclose(points, x0)  # same value, new gradients
    params = list(net.parameters())
    analytic = torch.autograd.grad((points @ weights).sum(), params)
    eps = 1e-6
    checked = 0
    for p, g in zip(params, analytic):
        for k in range(min(p.numel(), 2)):
            with torch.no_grad():
                p.view(-1)[k] += eps
            plus = surface_objective()[0].sum()
            with torch.no_grad():
                p.view(-1)[k] -= 2 * eps
            minus = surface_objective()[0].sum()
            with torch.no_grad():
                p.view(-1)[k] += eps
            numeric = float(plus - minus) / (2 * eps)
            assert abs(numeric - float(g.view(-1)[k])) < 1e-4 + 1e-3 * abs(numeric)
            checked += 1
    assert checked >= 6


def test_coarse_to_fine_grid_matches_the_dense_grid_near_the_surface():
    from pipeline.geometry.mesh import sample_grid
    from pipeline.models.idr.sdf_mesh import sample_sdf_grid

    calls = []

    def two_spheres(p):
        calls.append(len(p))
        return torch.minimum(p.norm(dim=-1) - 0.5, (p - torch.tensor([0.5, 0.0, 0.0])).norm(dim=-1) - 0.2)

    bounds = np.array([[-1.0] * 3, [1.0] * 3])
    sparse = sample_sdf_grid(two_spheres, bounds, 120, coarse=32)
    evaluated = sum(calls)
    dense = sample_grid(two_spheres, bounds, sparse.shape[0])
    assert sparse.shape == (129, 129, 129)
    assert evaluated < 0.25 * 129 ** 3
    assert np.array_equal(sparse > 0, dense > 0)
    near = np.abs(dense) < 0.05
    assert np.abs(sparse - dense)[near].max() < 1e-6


# --- losses ------------------------------------------------------------------------------------


def test_eikonal_loss_is_zero_for_an_exact_sdf_only():
    points = torch.randn(2000, 3, dtype=torch.float64).requires_grad_(True)
    for scale, expected in ((1.0, 0.0), (3.0, 4.0)):
        sdf = scale * (points.norm(dim=-1) - 0.5)
        (grad,) = torch.autograd.grad(sdf.sum(), points)
        assert abs(float(eikonal_loss(grad)) - expected) < 1e-8


def test_smoothness_loss_is_small_on_a_sphere_and_large_on_a_bumpy_surface():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(2000, 3, dtype=torch.float64, generator=g)
    points = 0.5 * points / points.norm(dim=-1, keepdim=True)
    nearby = points + 0.01 * torch.randn(points.shape, dtype=torch.float64, generator=g)

    def normals(sdf, x):
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(sdf(x).sum(), x)
        return grad

    def sphere(x):
        return x.norm(dim=-1) - 0.5

    def bumpy(x):  # the sphere with 40 bumps per radian of amplitude 0.01
        return sphere(x) + 0.01 * torch.sin(40 * x).prod(dim=-1)

    smooth = float(smoothness_loss(normals(sphere, points), normals(sphere, nearby)))
    rough = float(smoothness_loss(normals(bumpy, points), normals(bumpy, nearby)))
    assert smooth < 0.03 < 0.1 < rough  # neighbours 0.01 apart on r = 0.5 differ by ~0.02 rad


def test_renderer_appearance_grid_adds_position_features_and_trains():
    torch.manual_seed(0)
    renderer = NeuralRenderer(8, RendererConfig(hidden_dim=32, num_layers=3, weight_norm=False,
                                                position_encoding="hashgrid", hash_levels=4, hash_log2_size=10,
                                                hash_max_resolution=64))
    assert renderer.encode_points(torch.zeros(5, 3)).shape == (5, 3 + 4 * 2)
    points, normals, dirs, feature = torch.rand(64, 3) * 2 - 1, torch.randn(64, 3), torch.randn(64, 3), torch.zeros(64, 8)
    renderer(points, normals, dirs, feature).sum().backward()
    assert renderer.encoding.table.grad is not None and renderer.encoding.table.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="position_encoding"):
        NeuralRenderer(8, RendererConfig(position_encoding="fourier"))


def test_appearance_grid_levels_fade_in_coarsest_first():
    renderer = NeuralRenderer(8, RendererConfig(hidden_dim=16, num_layers=2, weight_norm=False,
                                                position_encoding="hashgrid", hash_levels=4, hash_log2_size=10,
                                                hash_max_resolution=64, coarse_to_fine=0.5))
    points = torch.rand(32, 3) * 2 - 1
    renderer.set_progress(0.0)
    assert torch.equal(renderer.encode_points(points)[:, 3:], torch.zeros(32, 8))  # only x itself
    renderer.set_progress(0.25)  # half-way through the fade: the two coarse levels, nothing finer
    assert renderer.level_weights().tolist() == [1.0, 1.0, 0.0, 0.0]
    renderer.set_progress(1.0)
    full = renderer.encode_points(points)
    assert renderer.level_weights() is None and torch.equal(full[:, 3:], renderer.encoding(((points + 1) / 2)))


def test_mask_loss_and_alpha_schedule():
    config = LossConfig()
    assert mask_alpha(config, 0.0) == 50.0
    assert mask_alpha(config, 0.3) == 200.0
    assert mask_alpha(config, 1.0) == 50.0 * 2 ** 5
    # a ray in the mask whose smallest SDF is negative costs little; positive costs a lot
    good = mask_loss(torch.tensor([-0.1]), torch.tensor([True]), 50.0, 1)
    bad = mask_loss(torch.tensor([0.1]), torch.tensor([True]), 50.0, 1)
    assert float(good) < 0.01 < float(bad)


# --- trainable cameras -------------------------------------------------------------------------


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


# --- masks -------------------------------------------------------------------------------------


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


# --- the stage on a tiny rendered scene --------------------------------------------------------


def write_sphere_scene(root, size=24, radius=0.5, views=10):
    """A Blender-format scene: a shaded sphere (RGBA, alpha = mask), views on a ring."""
    from pipeline.geometry.cameras import pinhole_from_fov, Cameras, pixel_grid
    from datasets.nerfstudio import opengl_to_opencv

    root.mkdir(parents=True, exist_ok=True)
    k = pinhole_from_fov(size, size, math.radians(40))
    frames = {"train": [], "test": []}
    for i in range(views):
        angle = 2 * math.pi * i / views
        eye = 2.5 * np.array([math.cos(angle), math.sin(angle), 0.4])
        c2w = look_at(eye, np.zeros(3))
        cam = Cameras.from_intrinsics([k], c2w[None])
        rays_o, rays_d, _ = cam.generate_rays(pixel_grid(size, size))
        t, hit = analytic_first_hit(rays_o, rays_d, radius)
        normal = (rays_o + t[:, None] * rays_d) / radius
        shade = 0.3 + 0.7 * normal[:, 2:3].clamp_min(0)
        rgb = torch.where(hit[:, None], shade * torch.tensor([0.9, 0.5, 0.3]), torch.ones(3))
        rgba = torch.cat([rgb, hit[:, None].float()], -1).reshape(size, size, 4)
        split = "test" if i % 5 == 4 else "train"
        name = f"{split}/r_{i}"
        (root / split).mkdir(exist_ok=True)
        iio.imwrite(root / f"{name}.png", (rgba.numpy() * 255 + 0.5).astype(np.uint8))
        frames[split].append({"file_path": f"./{name}",
                              "transform_matrix": opengl_to_opencv(c2w).tolist()})
    for split, fr in frames.items():
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": math.radians(40), "frames": fr}))
    return root


def tiny_config(**overrides):
    from pipeline.runner.config import load_config
    from stages.idr import IDRConfig

    base = ["max_steps=25", "batch_rays=256", "eikonal_points=64", "mesh_resolution=32", "sdf.hidden_dim=32",
            "sdf.feature_dim=8", "sdf.init_radius=0.4", "renderer.hidden_dim=32", "tracing.steps=8",
            "tracing.samples=16"]
    return load_config(IDRConfig, None, base + [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture
def sphere_workspace(tmp_path):
    from pipeline.runner.stage import run_stage
    from pipeline.runner.workspace import Workspace
    from stages.poses import STAGE, PosesConfig

    data = write_sphere_scene(tmp_path / "sphere")
    ws = Workspace(tmp_path / "ws")
    run_stage(STAGE, ws, PosesConfig(data=str(data)))
    return ws


def test_idr_stage_writes_outputs_and_the_model_renders(sphere_workspace):
    import stages.idr as idr
    from pipeline.geometry.mesh import read_ply
    from pipeline.models.idr.io import load_trained
    from pipeline.models.render import SDFModel, render_image

    ws = sphere_workspace
    from pipeline.runner.stage import run_stage

    result = run_stage(idr.STAGE, ws, tiny_config())
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

    config = tiny_config(max_steps=150, **{"sdf.init_radius": 0.25})
    run_stage(idr.STAGE, sphere_workspace, config)
    metrics = json.loads((sphere_workspace.stage_dir("idr") / "metrics.json").read_text())
    assert metrics["mask_iou"] > 0.8, metrics


@requires_cuda
def test_idr_stage_trains_on_cuda_with_hash_geometry_and_trainable_cameras(sphere_workspace):
    from pipeline.runner.stage import run_stage
    import stages.idr as idr

    config = tiny_config(device="cuda", train_cameras="true", **{"sdf.encoding": "hashgrid"})
    run_stage(idr.STAGE, sphere_workspace, config)
    metrics = json.loads((sphere_workspace.stage_dir("idr") / "metrics.json").read_text())
    assert metrics["iterations"] == 25 and np.isfinite(metrics["psnr"])
    assert (sphere_workspace.stage_dir("idr") / "cameras.json").exists()


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


def _settings(**values):
    from pipeline.training.idr import TrainSettings

    base = dict(max_steps=4, max_time_s=0.0, batch_rays=128, eikonal_points=32, lr=1e-3, lr_grid=1e-2,
                lr_cameras=1e-3, lr_final_factor=0.1, checkpoint_every=0, checkpoint_every_s=0.0, seed=0,
                config_hash="same-config", camera_gauge=True)
    return TrainSettings(**{**base, **values})


def _model(cfg):
    from pipeline.models.idr.io import build_model

    return build_model(cfg.sdf, cfg.renderer, cfg.tracing, [1, 1, 1])


def test_training_resumes_from_checkpoint(sphere_workspace, tmp_path, one_thread):
    import logging

    from pipeline.training.idr_data import MaskOptions, RayBank, load_masks, load_views
    from pipeline.training.idr import CHECKPOINT_NAME, train

    scene = sphere_workspace.load_scene()
    idx = scene.split("train")
    views = load_views(scene, idx, load_masks(scene, idx, MaskOptions()), 1)
    bank = RayBank(views, 1.0)
    cfg = tiny_config()
    resume = tmp_path / "resume"
    resume.mkdir()

    log = logging.getLogger("test")
    first = train(_model(cfg), views.cameras, None, bank, cfg.loss, _settings(max_steps=4), resume, log)
    assert first["steps"] == 4 and (resume / CHECKPOINT_NAME).exists()
    second = train(_model(cfg), views.cameras, None, bank, cfg.loss, _settings(max_steps=6), resume, log)
    assert second["steps"] == 6
    assert torch.load(resume / CHECKPOINT_NAME, weights_only=False)["iteration"] == 6


def test_time_budget_stops_training(sphere_workspace, tmp_path, one_thread):
    import logging

    from pipeline.training.idr_data import MaskOptions, RayBank, load_masks, load_views
    from pipeline.training.idr import train

    scene = sphere_workspace.load_scene()
    idx = scene.split("train")
    views = load_views(scene, idx, load_masks(scene, idx, MaskOptions()), 1)
    cfg = tiny_config()
    settings = _settings(max_steps=10 ** 6, max_time_s=1.0, config_hash="x")
    summary = train(_model(cfg), views.cameras, None, RayBank(views, 1.0), cfg.loss, settings,
                    tmp_path, logging.getLogger("test"))
    assert summary["stopped_by_time"] and 0 < summary["steps"] < 10 ** 6


def test_budgets_zero_means_no_limit_and_a_negative_value_names_the_key():
    from pipeline.training.common import Budget, CheckpointSchedule

    unlimited = Budget(max_steps=10, max_time_s=0.0)
    assert not unlimited.done(9, 1e9) and unlimited.done(10, 0.0) and unlimited.progress(5, 1e9) == 0.5
    timed = Budget(max_steps=10, max_time_s=100.0)
    assert timed.done(1, 100.0) and timed.progress(5, 75.0) == 0.75
    with pytest.raises(ValueError, match="max_time_s"):
        Budget(max_steps=10, max_time_s=-1.0)
    assert not CheckpointSchedule(0, 0.0).due(100)
    assert CheckpointSchedule(25, 0.0).due(100) and not CheckpointSchedule(25, 0.0).due(101)
    with pytest.raises(ValueError, match="checkpoint_every_s"):
        CheckpointSchedule(0, -1.0)


def test_scene_without_masks_gets_a_clear_error(sphere_workspace, tmp_path):
    from datasets.scene import SceneError
    from pipeline.training.idr_data import MaskOptions, load_masks

    scene = sphere_workspace.load_scene()
    for frame in scene.frames:  # pretend the photos were JPEGs without alpha
        frame.image_path = frame.image_path.with_suffix(".jpg")
    with pytest.raises(SceneError, match="mask_source=threshold"):
        load_masks(scene, [0], MaskOptions())
