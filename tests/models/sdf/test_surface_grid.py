"""Empty-space skipping of the sdf stage (``pipeline.models.sdf.surface_grid``): the kept cells hug
the surface, each ray's span keeps its surface crossing, rays past the object get none."""
import math

import torch

from pipeline.models.sdf.surface_grid import SurfaceGrid


def sphere_sdf(points: torch.Tensor) -> torch.Tensor:
    return points.norm(dim=-1) - 0.5


def test_before_an_update_every_ray_keeps_its_whole_span():
    grid = SurfaceGrid(radius=1.0, resolution=16)
    near, far = torch.tensor([0.5, 1.0]), torch.tensor([2.5, 3.0])
    new_near, new_far, crosses = grid.ray_span(torch.zeros(2, 3), torch.eye(3)[:2], near, far)
    assert torch.equal(new_near, near) and torch.equal(new_far, far) and crosses.all()


def test_kept_cells_hug_the_surface_of_a_sphere():
    grid = SurfaceGrid(radius=1.0, resolution=32, margin=2.0)
    grid.update(sphere_sdf)
    distance = sphere_sdf(grid.centres()).abs()
    reach = 2.0 * 0.5 * math.sqrt(3) * grid.cell_size
    assert torch.equal(grid.kept, distance <= reach)
    # every cell the surface crosses is kept; far from it none is
    surface = torch.nn.functional.normalize(torch.randn(5000, 3), dim=-1) * 0.5
    assert grid.is_kept(surface).all()
    assert 0.02 < grid.kept_fraction() < 0.2


def test_ray_spans_keep_the_surface_crossing_and_drop_rays_that_miss_it():
    grid = SurfaceGrid(radius=1.0, resolution=32)
    grid.update(sphere_sdf)
    torch.manual_seed(0)
    # rays from a ring of cameras at distance 3 towards random points near the centre
    origins = torch.nn.functional.normalize(torch.randn(400, 3), dim=-1) * 3.0
    targets = torch.randn(400, 3) * 0.4
    dirs = torch.nn.functional.normalize(targets - origins, dim=-1)
    b = (origins * dirs).sum(-1)
    disc = b ** 2 - (origins.norm(dim=-1) ** 2 - 1.0)
    near, far = -b - disc.clamp_min(0).sqrt(), -b + disc.clamp_min(0).sqrt()  # the unit sphere's chord
    new_near, new_far, crosses = grid.ray_span(origins, dirs, near, far)
    inner = b ** 2 - (origins.norm(dim=-1) ** 2 - 0.25)  # the object's (radius 0.5) chord
    hits = inner > 0
    first_hit = -b - inner.clamp_min(0).sqrt()
    assert crosses[hits].all()
    assert ((new_near[hits] <= first_hit[hits]) & (first_hit[hits] <= new_far[hits])).all()
    # the spans end inside the object, near the first crossing: the samples gather near the surface
    # (rays that only graze the object never reach a solid cell: theirs run to the far side)
    deep = hits & (origins.norm(dim=-1) ** 2 - b ** 2 < 0.3 ** 2)
    assert deep.sum() > 50 and (new_far[deep] - first_hit[deep]).max() < 5 * grid.cell_size
    assert (new_far - new_near)[hits].mean() < 0.4 * (far - near)[hits].mean()
    # rays passing well outside the object keep no cell
    clear_miss = (b ** 2 - (origins.norm(dim=-1) ** 2 - 0.7 ** 2)) < 0
    assert clear_miss.any() and not crosses[clear_miss].any()
