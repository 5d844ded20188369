"""Occupancy grid for skipping empty space (instant-ngp) and the ray marcher that uses it.

The grid keeps an exponential moving average (EMA) of the field's density in ``R^3`` cells per
cascade; cascade ``c`` covers the scene box scaled by ``2^c`` around its centre (one cascade for
bounded scenes, more for unbounded ones). Every few training steps the density is re-sampled at a
random point of a subset of cells (all cells during warm-up), ``grid = max(grid * decay, sigma)``,
and a cell is occupied when its density exceeds ``min(mean density, threshold / step_size)``
(i.e. one step through it would absorb more than ``threshold`` of the light).

Cells that fewer than ``min_views`` training cameras see (:meth:`OccupancyGrid.restrict_to_views`)
stay empty: nothing constrains the density there, and with few views such cells grow floaters that
one training view explains by painting the object behind them (instant-ngp marks cells no camera
sees; two views are needed to pin a point's depth).

Ray marching uses ONE global schedule of distances ``t_k`` shared by all rays: constant steps
``step_size`` near the camera, growing as ``t * cone_angle`` further away (``cone_angle = 0``:
uniform). A ray takes the schedule's entries inside its [near, far], jittered in training, and
keeps those in occupied cells: a packed list of samples sorted by ray. On the CPU a C++ loop
(:mod:`pipeline.kernels.occupancy_cpu`) visits the candidates instead of building (rays, steps)
tensors: the same samples in less time.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.kernels import occupancy_cpu
from pipeline.models.components.batch_rows import BatchRows, uniform_rows


class OccupancyGrid(nn.Module):
    """aabb: (2, 3) scene box; resolution: R cells per axis; cascades: C nested boxes."""

    def __init__(self, aabb: torch.Tensor, resolution: int = 64, cascades: int = 1, threshold: float = 0.01,
                 decay: float = 0.95):
        super().__init__()
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
        self.resolution, self.cascades, self.threshold, self.decay = resolution, cascades, threshold, decay
        self.register_buffer("aabb", aabb)
        self.register_buffer("density", torch.zeros(cascades, resolution ** 3))
        self.register_buffer("occupied", torch.ones(cascades, resolution ** 3, dtype=torch.bool))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("visible", torch.ones(cascades, resolution ** 3, dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # models saved before the visibility mask existed: every cell visible
        state_dict.setdefault(prefix + "visible", torch.ones_like(self.visible))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def cell_points(self, c: int, cells: torch.Tensor, within: torch.Tensor | float = 0.5) -> torch.Tensor:
        """Points (M, 3) in the flat cells (M,) of cascade c (the order of ``occupied[c]``), at
        ``within`` (M, 3) or a scalar in [0, 1) of each cell's extent (0.5: the centres)."""
        R = self.resolution
        coords = torch.stack([cells // (R * R), (cells // R) % R, cells % R], -1).float()
        box = self.cascade_box(c)
        return box[0] + (coords + within) / R * (box[1] - box[0])

    @torch.no_grad()
    def restrict_to_views(self, cameras, min_views: int = 2) -> None:
        """Keep empty every cell whose centre fewer than ``min_views`` of ``cameras`` see (in front
        of the camera, inside its image), then grow the seen region by one cell so that cells the
        views only graze are kept. ``min_views`` is capped by the number of cameras; 0 disables."""
        from pipeline.geometry.cameras import visibility_counts

        if min_views <= 0 or len(cameras) == 0:
            self.visible.fill_(True)
            return
        needed = min(min_views, len(cameras))
        R = self.resolution
        cameras = cameras.to(self.density.device)
        all_cells = torch.arange(R ** 3, device=self.density.device)
        for c in range(self.cascades):
            seen = visibility_counts(self.cell_points(c, all_cells), cameras) >= needed
            grown = torch.nn.functional.max_pool3d(seen.view(1, 1, R, R, R).float(), 3, stride=1, padding=1)
            self.visible[c] = grown.view(-1) > 0
        self.occupied &= self.visible

    def cascade_box(self, c: int) -> torch.Tensor:
        """(2, 3) box of cascade c."""
        center = (self.aabb[0] + self.aabb[1]) / 2
        half = (self.aabb[1] - self.aabb[0]) / 2 * (2 ** c)
        return torch.stack([center - half, center + half])

    def outer_box(self) -> torch.Tensor:
        return self.cascade_box(self.cascades - 1)

    def cell_index(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points (M, 3) -> (flat index into ``occupied.view(-1)`` (M,), inside the outer box (M,))."""
        center = (self.aabb[0] + self.aabb[1]) / 2
        half = (self.aabb[1] - self.aabb[0]) / 2
        rel = (points - center) / half  # base box = [-1, 1]^3
        extent = rel.abs().amax(-1)
        if self.cascades > 1:
            cascade = torch.ceil(torch.log2(extent.clamp_min(1e-6))).clamp(0, self.cascades - 1)
        else:
            cascade = torch.zeros_like(extent)
        scale = torch.exp2(cascade)
        inside = extent <= scale
        grid = ((rel / scale[:, None] + 1) * 0.5 * self.resolution).long().clamp(0, self.resolution - 1)
        R = self.resolution
        flat = cascade.long() * R ** 3 + (grid[:, 0] * R + grid[:, 1]) * R + grid[:, 2]
        return flat, inside

    def is_occupied(self, points: torch.Tensor) -> torch.Tensor:
        """points (M, 3) -> bool (M,)."""
        flat, inside = self.cell_index(points)
        return self.occupied.view(-1)[flat] & inside

    @torch.no_grad()
    def update(self, density_fn, step_size: float, all_cells: bool, fraction: float = 0.25,
               generator: torch.Generator | None = None, chunk: int | None = None) -> None:
        """Re-sample the density of all cells (warm-up) or of ``fraction`` random cells plus as many
        occupied ones (all of them when fewer); density_fn: points (M, 3) -> sigma (M,), called on
        ``chunk`` points at a time (default: 2^16 on GPUs, 2^14 on the CPU)."""
        R, device = self.resolution, self.density.device
        if chunk is None:
            # on the CPU, an 8x256 MLP's activations for 2^16 points (64 MiB) would fault in afresh
            # on every call (pipeline.runner.runtime.keep_freed_memory)
            chunk = 1 << 16 if device.type == "cuda" else 1 << 14
        n_cells = R ** 3
        for c in range(self.cascades):
            if all_cells:
                cells = torch.arange(n_cells, device=device)
            else:
                k = max(1, int(n_cells * fraction))
                uniform = torch.randint(0, n_cells, (k,), device=device, generator=generator)
                occupied = self.occupied[c].nonzero()[:, 0]
                if occupied.numel() > k:
                    occupied = occupied[torch.randint(0, occupied.numel(), (k,), device=device, generator=generator)]
                # every occupied cell once when there are fewer than k (nerfacc): drawing k of them with
                # replacement would evaluate the same few cells several times each
                cells = torch.cat([uniform, occupied])
            jitter = torch.rand(cells.shape[0], 3, device=device, generator=generator)
            points = self.cell_points(c, cells, jitter)
            sigma = torch.cat([density_fn(points[i:i + chunk]).float() for i in range(0, points.shape[0], chunk)])
            current = self.density[c]
            # duplicate cells: keep the largest fresh value
            fresh = torch.zeros(n_cells, device=device).scatter_reduce(0, cells, sigma, "amax", include_self=False)
            sampled = torch.zeros(n_cells, dtype=torch.bool, device=device)
            sampled[cells] = True
            current[sampled] = torch.maximum(current[sampled] * self.decay, fresh[sampled])
        mean = self.density.mean()
        threshold = min(float(mean), self.threshold / step_size)
        # >=: a field whose densities all tie (an untrained one in bf16 gives one value everywhere)
        # stays occupied; with > the grid would empty at once and training would never see a sample
        self.occupied.copy_((self.density >= threshold) & self.visible)
        self.updates += 1

    def occupied_box(self) -> torch.Tensor:
        """(2, 3) the smallest box around all occupied cells (all cascades); empty (min > max) when
        no cell is occupied. Rays are clipped to it: no candidate samples are made in front of or
        behind the object (the marcher's cost grows with the candidates, not the kept samples).
        Kept until ``occupied`` or ``aabb`` changes (training asks every step, the grid changes
        every 16)."""
        key = (self.occupied.data_ptr(), self.occupied._version, self.aabb.data_ptr(), self.aabb._version)
        cached = getattr(self, "_box_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        box = self._occupied_box()
        self._box_cache = (key, box)
        return box

    def _occupied_box(self) -> torch.Tensor:
        R = self.resolution
        lo_all, hi_all = [], []
        for c in range(self.cascades):
            occ = self.occupied[c].view(R, R, R)
            if not bool(occ.any()):
                continue
            box = self.cascade_box(c)
            cell = (box[1] - box[0]) / R
            axes_lo, axes_hi = [], []
            for axis in range(3):
                others = tuple(a for a in range(3) if a != axis)
                used = torch.nonzero(occ.any(dim=others[1]).any(dim=others[0]))[:, 0]
                axes_lo.append(used[0])
                axes_hi.append(used[-1] + 1)
            lo_all.append(box[0] + torch.stack(axes_lo).to(box.dtype) * cell)
            hi_all.append(box[0] + torch.stack(axes_hi).to(box.dtype) * cell)
        if not lo_all:
            return torch.stack([self.aabb[1], self.aabb[0]])  # empty: every ray misses it
        return torch.stack([torch.stack(lo_all).amin(0), torch.stack(hi_all).amax(0)])

    def occupancy_fraction(self) -> float:
        return float(self.occupied.float().mean())


def march_schedule(t_max: float, step_size: float, cone_angle: float = 0.0, max_step: float = 1e10) -> torch.Tensor:
    """Distances t_k (K,) from 0 to t_max: steps of ``clamp(t * cone_angle, step_size, max_step)``."""
    if cone_angle <= 0:
        return torch.arange(0.0, t_max + step_size, step_size, dtype=torch.float64).float()
    ts = [0.0]
    while ts[-1] < t_max:
        ts.append(ts[-1] + min(max(ts[-1] * cone_angle, step_size), max_step))
    return torch.tensor(ts, dtype=torch.float32)


@torch.no_grad()
def march_rays(grid: OccupancyGrid, schedule: torch.Tensor, rays_o: torch.Tensor, rays_d: torch.Tensor,
               near: torch.Tensor, far: torch.Tensor, perturb: bool, max_samples_per_ray: int = 1024,
               generator: torch.Generator | None = None, use_kernel: bool = True, rows: BatchRows | None = None):
    """Packed samples in occupied space. rays_o, rays_d (N, 3); near, far (N,); schedule (K,).

    Returns ray_index (M,) long (sorted), t (M,), deltas (M,) (the step length at each sample).
    On the CPU the candidates are visited by the C++ loop of :mod:`pipeline.kernels.occupancy_cpu` when
    it is built (``use_kernel``); it uses the same random numbers and keeps the same samples as the
    tensor code. ``rows``: the N rays are a global batch, of which only these rows are marched (the
    jitter drawn for all of it; ``ray_index`` counts from ``rows.start``).
    """
    device = rays_o.device
    schedule = schedule.to(device)
    first = torch.searchsorted(schedule, near.contiguous()).clamp_max(schedule.numel() - 2)
    last = torch.searchsorted(schedule, far.contiguous()).clamp_max(schedule.numel() - 1)
    count = (last - first).clamp(0, max_samples_per_ray)
    width = int(count.max()) if rays_o.shape[0] else 0  # of the whole batch: it shapes the jitter drawn
    if rows is not None:
        if rays_o.shape[0] != rows.total:
            raise ValueError(f"march_rays: {rays_o.shape[0]} rays given for a batch of {rows.total}")
        rays_o, rays_d, far, first, count = (x[rows.slice] for x in (rays_o, rays_d, far, first, count))
    n = rays_o.shape[0]
    empty = torch.zeros(0, device=device)
    if width == 0:
        return torch.zeros(0, dtype=torch.long, device=device), empty, empty
    u = uniform_rows(rows, n, width, generator, device) if perturb else None  # drawn even for no rows
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=device), empty, empty
    if use_kernel and occupancy_cpu.supports(rays_o, rays_d):
        return occupancy_cpu.march_occupied(grid.occupied, grid.aabb, grid.resolution, schedule, rays_o, rays_d, far,
                                            first, count, u, width)
    k = first[:, None] + torch.arange(width, device=device)  # (N, W) schedule intervals
    valid = torch.arange(width, device=device)[None] < count[:, None]
    steps = schedule[1:] - schedule[:-1]  # (K - 1,)
    k = k.clamp_max(steps.numel() - 1)
    delta = steps[k]
    t = schedule[k] + (0.5 if u is None else u) * delta
    valid &= t < far[:, None]
    rows, cols = valid.nonzero(as_tuple=True)
    t_sel = t[rows, cols]
    points = rays_o[rows] + rays_d[rows] * t_sel[:, None]
    keep = grid.is_occupied(points)
    return rows[keep], t_sel[keep], delta[rows, cols][keep]


__all__ = ["OccupancyGrid", "march_schedule", "march_rays"]
