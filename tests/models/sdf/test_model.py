"""The volume-rendered SDF model: the background split (a ray that misses the object's sphere
takes its colour from the background field, one that hits an opaque surface from the
foreground; foreground and background weights never sum above 1), the inverted-sphere
coordinates, the field cut at the sphere for meshing, and a saved model that loads and renders
the same."""
import math

import pytest
import torch

from pipeline.models.sdf.background import BackgroundConfig, background_samples, inverted_sphere
from pipeline.models.sdf.io import load_model_file, save_model
from pipeline.models.sdf.model import SamplingConfig, SDFModelConfig, VolumeSDFModel
from pipeline.models.idr.sdf_network import SDFNetworkConfig

BG_COLOUR = torch.tensor([0.2, 0.7, 0.4])
CONSTANT = (1.0, 1.0, 1.0)


def small_model(background="nerf++", field="sdf", init_variance=0.6):
    """A small model whose geometry is the geometric init's sphere of radius 0.5 and whose
    sharpness s = exp(6) ~ 400 makes that sphere nearly opaque."""
    config = SDFModelConfig(field=field, sampling=SamplingConfig(samples=16, importance=16, upsample_steps=2,
                                                                 init_variance=init_variance),
                            sdf=SDFNetworkConfig(hidden_dim=32, feature_dim=8, init_radius=0.5, weight_norm=False),
                            background_field=BackgroundConfig(model=background, samples=8, width=16))
    torch.manual_seed(0)
    return VolumeSDFModel(config, CONSTANT)


def paint_background(model, colour=BG_COLOUR, density_bias=5.0):
    """Make the background field output one colour everywhere with a high density."""
    field = model.background_field
    with torch.no_grad():
        field.color_mlp.out.weight.zero_()
        field.color_mlp.out.bias.copy_(torch.logit(colour))
        field.density_mlp.out.weight[0].zero_()
        field.density_mlp.out.bias[0] = density_bias


def rays():
    """Rays from z = -3 towards +z: through the centre (hits the r = 0.5 sphere), through y = 0.8
    (crosses the unit sphere, misses the object) and through y = 1.5 (misses the unit sphere)."""
    rays_o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.8, -3.0], [0.0, 1.5, -3.0]])
    rays_d = torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3).contiguous()
    return rays_o, rays_d


@pytest.mark.parametrize("field", ["sdf", "occupancy"])
def test_rays_that_miss_the_object_take_the_background_fields_colour(field, one_thread):
    model = small_model(field=field)
    paint_background(model)
    out = model.render_rays(*rays())
    # the centre ray stops where the field crosses zero (near 2.5: the init sphere is approximate)
    t = torch.linspace(2.0, 3.0, 2001)
    crossing = float(t[(model.query_sdf(torch.stack([0 * t, 0 * t, t - 3.0], -1)) < 0).nonzero()[0, 0]])
    assert float(out["acc"][0]) > 0.95 and float(out["t"][0]) == pytest.approx(crossing, abs=0.01)
    assert float(out["acc"][2]) == 0.0  # outside the sphere: no foreground at all
    assert float(out["acc"][1]) < 0.02
    torch.testing.assert_close(out["rgb"][2], BG_COLOUR, atol=1e-3, rtol=0)
    torch.testing.assert_close(out["rgb"][1], BG_COLOUR, atol=0.02, rtol=0)
    # the hit ray shows the foreground (the untrained renderer's colour), not the background
    fg = model.query_color(torch.tensor([[0.0, 0.0, -0.5]]), torch.tensor([[0.0, 0.0, 1.0]]))[0]
    torch.testing.assert_close(out["rgb"][0], fg, atol=0.05, rtol=0)
    assert (out["rgb"][0] - BG_COLOUR).abs().max() > 0.05


def test_foreground_and_background_weights_sum_to_at_most_one(one_thread):
    model = small_model(init_variance=0.3)  # a soft surface: foreground and background both carry weight
    paint_background(model, density_bias=-2.0)
    generator = torch.Generator().manual_seed(1)
    rays_o = torch.randn(64, 3, generator=generator) * 0.3 + torch.tensor([0.0, 0.0, -3.0])
    rays_d = torch.nn.functional.normalize(torch.randn(64, 3, generator=generator) * 0.3 + torch.tensor([0, 0, 1.0]),
                                           dim=-1)
    out = {k: v.detach() for k, v in model.render_rays(rays_o, rays_d, training=True).items()}
    fg = out["weights"].sum(-1)  # the rays that cross the sphere
    torch.testing.assert_close(fg, out["acc"][out["hit"]])
    total = out["acc"] + (1 - out["acc"]) * out["acc_background"]
    assert (fg <= 1 + 1e-6).all() and (total <= 1 + 1e-6).all()
    assert 0.3 < float(out["acc"].max()) and float(out["acc"][out["hit"]].min()) < 0.9  # both parts show
    # the last background interval reaches infinity: the background is opaque behind any ray
    torch.testing.assert_close(out["acc_background"], torch.ones(64))
    assert torch.isfinite(out["gradients"]).all()


def test_without_a_background_field_misses_are_the_constant_colour(one_thread):
    model = small_model(background="none")
    out = model.render_rays(*rays())
    torch.testing.assert_close(out["rgb"][2], torch.tensor(CONSTANT))
    assert float(out["acc_background"].abs().max()) == 0.0


def test_inverted_sphere_coordinates_and_background_samples():
    points = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1000.0, 0.0]])
    coords = inverted_sphere(points, 1.0)
    torch.testing.assert_close(coords, torch.tensor([[1.0, 0.0, 0.0, 0.5], [0.0, 1.0, 0.0, 0.001]]))
    t, du = background_samples(torch.tensor([2.0]), 8, perturb=False)
    # uniform in u = 2 / t over (0.001, 1]: bin centres from u = 0.94 down to u = 0.063
    assert 2.0 < float(t[0, 0]) < 2.2 and float(t[0, -1]) > 30.0 and (t[:, 1:] > t[:, :-1]).all()
    assert float(du[0, -1]) == 1e10 and (du[0, :-1] > 0).all()


def test_the_field_is_cut_at_the_sphere_for_meshing():
    model = small_model()
    points = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    sdf = model.query_sdf(points)
    assert float(sdf[0]) < -0.1  # inside the init sphere (the small network only approximates |x| - 0.5)
    assert float(sdf[1]) >= 1.0  # at least |x| - r outside the sphere, whatever the network says


def test_a_saved_model_loads_and_renders_the_same(tmp_path, one_thread):
    model = small_model(field="occupancy")
    paint_background(model)
    save_model(tmp_path / "model.pt", model)
    loaded = load_model_file(tmp_path / "model.pt")
    assert loaded.config == model.config
    a, b = model.eval().render_rays(*rays()), loaded.render_rays(*rays())
    for key in ("rgb", "t", "acc"):
        torch.testing.assert_close(a[key], b[key])
    assert math.isclose(float(loaded.inv_s().detach()), float(model.inv_s().detach()))


def test_log_spacing_gives_each_step_the_same_share_of_the_distance():
    """A camera inside the scene (a street): samples from a wall a step away to the far end."""
    from pipeline.models.sdf.model import log_spaced_samples

    near, far = torch.tensor([0.0, 0.5]), torch.tensor([2.0, 1.0])
    z = log_spaced_samples(near, far, closest=0.002, num=8, perturb=False)
    ratios = z[:, 1:] / z[:, :-1]
    torch.testing.assert_close(ratios, ratios[:, :1].expand_as(ratios))  # equal steps in log t
    torch.testing.assert_close(ratios[0, 0], torch.tensor((2.0 / 0.002) ** (1 / 8)))
    assert float(z[0, 0]) > 0.002 and float(z[0, -1]) < 2.0  # bin centres inside [closest, far]
    assert float(z[1, 0]) > 0.5 and float(z[1, -1]) < 1.0  # a ray that starts farther keeps its near
    jittered = log_spaced_samples(near, far, 0.002, 8, True, torch.Generator().manual_seed(0))
    assert (jittered[:, 1:] > jittered[:, :-1]).all() and (jittered[0] >= 0.002).all() and (jittered[0] <= 2).all()


def test_log_and_linear_spacing_find_the_same_surfaces_from_inside(one_thread):
    """A camera at the centre of an inside-out field: both spacings see the same walls."""
    def render(spacing):
        config = SDFModelConfig(sampling=SamplingConfig(samples=16, importance=16, spacing=spacing, init_variance=0.6),
                                sdf=SDFNetworkConfig(hidden_dim=32, feature_dim=8, init_radius=0.9, weight_norm=False,
                                                     inside_out=True),
                                background_field=BackgroundConfig(samples=8, width=16))
        torch.manual_seed(0)
        rays_d = torch.nn.functional.normalize(torch.randn(32, 3, generator=torch.Generator().manual_seed(2)), dim=-1)
        return VolumeSDFModel(config, CONSTANT).render_rays(torch.zeros(32, 3), rays_d)

    linear, log = render("linear"), render("log")
    walls = linear["acc"] > 0.5
    assert walls.sum() > 10  # the small network's inside-out start has walls on most rays
    torch.testing.assert_close(log["acc"], linear["acc"], atol=0.05, rtol=0)
    assert (log["t"][walls] - linear["t"][walls]).abs().max() < 0.1
    with pytest.raises(ValueError, match="spacing must be one of"):
        VolumeSDFModel(SDFModelConfig(sampling=SamplingConfig(spacing="auto")))


def test_a_foreground_box_leaves_what_lies_beyond_it_to_the_background(one_thread):
    """A street seen from inside: over the box's top the surface field has no say, so a ray
    through there shows the background field even where the field has a surface."""
    from pipeline.models.components.volume_rendering import ray_aabb

    near, far = ray_aabb(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]]),
                             torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]),
                             torch.tensor([[-1.0, -1.0, -0.5], [1.0, 1.0, 0.5]]))
    torch.testing.assert_close(near[:1], torch.tensor([0.0]))  # from inside: from the camera to the top
    torch.testing.assert_close(far[:1], torch.tensor([0.5]))
    assert float(far[1]) < float(near[1])  # misses the box
    model = small_model()  # the sphere of radius 0.5 is opaque
    paint_background(model)
    rays_o, rays_d = torch.tensor([[0.0, 0.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    assert float(model.render_rays(rays_o, rays_d)["acc"][0]) > 0.9
    model.sampling.box = [-1.0, -1.0, 0.6, 1.0, 1.0, 1.0]  # a box that holds none of the sphere
    out = model.render_rays(rays_o, rays_d)
    assert float(out["acc"][0]) < 1e-3
    torch.testing.assert_close(out["rgb"][0], BG_COLOUR, atol=0.02, rtol=0)
