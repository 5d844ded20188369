"""The floor's height under levelled panoramas from the images themselves: a photometric plane sweep.

The frame is gravity-aligned (+z up) and the floor is one horizontal plane z = z_f below every
camera. For a candidate z_f, the pixels of panorama A in a band of the lower hemisphere (latitude
-70..-25 deg by default: below it the tripod and the nadir's smear, above it mostly walls) are the
rays that hit the floor; their points on the plane project into a nearby panorama B. Where z_f is
right, B seen through that mapping looks like A's floor: the local zero-mean normalised
cross-correlation (ZNCC, 7x7 windows; robust to the exposure and white balance of each panorama)
of A with the warped B peaks. The score of a candidate is the mean ZNCC over A's textured windows
that land on B's floor band, for every ordered pair of each panorama with its nearest neighbours.

Search: z_f = (lowest camera z) - h, h log-spaced from a small fraction of the cameras' spread to
several times it (relative steps: the precision needed is relative, and nothing about the units is
known), first on half-size images over the whole range, then at full size around the peak.
Every pair gives its own estimate (the peak of its curve, refined by a parabola in log h): their
median is the floor, their spread its uncertainty and the check that the pairs agree. The sweep
fails, with the reason, when the floor band has no texture, the pairs' curves have no clear peak
or the pairs disagree: a floor of one colour gives no number rather than a wrong one.

Units are the cameras' (no metric scale needed); per-camera heights are camera z - z_f.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.geometry.cameras import Cameras, Intrinsics, pixel_grid
from pipeline.panoramas.floor import FloorFit, FloorFitError
from pipeline.runner.runtime import torch_threads


@dataclass
class SweepConfig:
    width: int = 512  # panorama width of the finest search level (height = width / 2)
    levels: int = 3  # coarse to fine: widths width / 4, width / 2, width
    band_lat_deg: tuple[float, float] = (-70.0, -25.0)  # the floor band of the reference panorama A
    other_min_lat_deg: float = -72.0  # in panorama B, below this: tripod / nadir, not used
    max_range_ratio: float = 2.5  # a floor point's distance from B over that from A (foreshortening)
    window: int = 7  # ZNCC window (pixels) at the finest width; coarser levels keep its angle (odd, >= 3)
    neighbours: int = 2  # pairs: each panorama with its nearest ones
    min_texture: float = 0.01  # a window counts when its grey-level std (0..1) is above this
    min_textured_fraction: float = 0.03  # of A's floor band; less: the pair is not used
    height_range: tuple[float, float] = (0.03, 4.0)  # searched h, in units of the cameras' spread
    coarse_step: float = 0.05  # log step of h at the coarsest level (5 %) over the whole range
    refine: tuple[tuple[float, float], ...] = ((0.1, 0.01), (0.04, 0.004))  # finer levels: +-range, step
    min_prominence: float = 0.05  # a pair's coarse peak ZNCC above its curve's median, to count
    min_pairs: int = 3  # pairs with a clear peak, fewer: no floor
    agree_rel: float = 0.08  # a pair agrees when its estimate of h is within 8 % of the median
    min_agreeing: float = 0.5  # of the pairs with a peak
    max_rel_spread: float = 0.08  # robust std (1.4826 MAD) of the pairs' heights over the height, at most
    control: tuple[float, float] = (0.8, 1.25)  # heights (x the estimate) where the floor must match worse
    min_evidence: float = 0.04  # well-matched fraction of the band at the estimate over that at the controls
    min_band_texture: float = 0.6  # median over the panoramas of the textured fraction of the floor band


@dataclass
class PairCurve:
    """The sweep of one ordered pair: A's floor band scored against the warped B."""

    a: int
    b: int
    textured: int  # A's textured windows in the band
    scores: np.ndarray  # (C,) mean ZNCC per candidate; nan where too few windows land on B's floor
    prominence: float = 0.0  # of the peak of the whole-range curve over its median; 0 without a clear one
    log_h: Optional[float] = None  # log of the height under the lowest camera at the peak, refined
    level: int = 0  # the width of the finest level whose window held the peak
    estimate: Optional[float] = None  # z_f at the pair's peak, None without a clear peak


@dataclass
class SweepResult:
    z_floor: float
    sigma: float  # 1-sigma of z_floor
    heights: np.ndarray  # (N,) camera z - z_floor
    pairs: list[PairCurve]
    curve: dict = field(default_factory=dict)  # the mean score over pairs: candidates and scores
    details: dict = field(default_factory=dict)


def load_grey(path: Path) -> np.ndarray:
    """A panorama as grey levels 0..1: (H, W) float32."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FloorFitError(f"{path}: cannot read the panorama (missing or not an image)")
    if image.shape[1] != 2 * image.shape[0]:
        raise FloorFitError(f"{path}: {image.shape[1]}x{image.shape[0]} is not a 2:1 equirectangular panorama")
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0


def resized(grey: np.ndarray, width: int) -> np.ndarray:
    """(H, W) -> (width / 2, width), area-averaged when smaller."""
    import cv2

    interp = cv2.INTER_AREA if width < grey.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(grey, (width, width // 2), interpolation=interp)


def neighbour_pairs(centres: np.ndarray, k: int) -> list[tuple[int, int]]:
    """Ordered pairs (a, b), a != b: each panorama with its k nearest in the plan, both directions
    (each direction sees another part of the floor and gives its own estimate)."""
    d = np.linalg.norm(centres[:, None, :2] - centres[None, :, :2], axis=-1)
    np.fill_diagonal(d, np.inf)
    near = set()
    for a in range(len(centres)):
        for b in np.argsort(d[a])[:k]:
            if np.isfinite(d[a, b]):
                near |= {(a, int(b)), (int(b), a)}
    return sorted(near)


def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over k x k windows at the positions where the window fits: (C, h, w) -> (C, h-k+1,
    w-k+1). OpenCV's separable box filter on the candidates stacked vertically (a window crossing
    from one candidate to the next is cut away), 10x faster than avg_pool2d on the CPU."""
    import cv2

    c, h, w = x.shape
    r = k // 2
    flat = cv2.boxFilter(x.reshape(c * h, w).numpy(), -1, (k, k), borderType=cv2.BORDER_REPLICATE)
    return torch.from_numpy(flat.reshape(c, h, w)[:, r:h - r, r:w - r])


class _Level:
    """Images and cameras at one resolution, and each panorama's floor band (rays, texture)."""

    def __init__(self, greys: list[np.ndarray], c2w: np.ndarray, cfg: SweepConfig, window: int):
        self.h, self.w = greys[0].shape
        self.window = window
        self.cams = Cameras.from_intrinsics([Intrinsics("equirect", self.w, self.h)] * len(greys), c2w)
        # one column of padding on each side, copied from the other edge: longitude wraps around
        self.padded = [torch.from_numpy(np.concatenate([g[:, -1:], g, g[:, :1]], 1))[None, None] for g in greys]
        top = int(math.floor((90.0 - cfg.band_lat_deg[1]) / 180.0 * self.h))
        bottom = int(math.ceil((90.0 - cfg.band_lat_deg[0]) / 180.0 * self.h))
        self.rows = (top, bottom)
        self.uv = pixel_grid(self.w, bottom - top) + torch.tensor([0.0, top])
        self.greys = [torch.from_numpy(g[top:bottom]) for g in greys]
        self.stats = []
        for g in self.greys:
            a = g[None]
            mean = _box(a, window)
            var = (_box(a * a, window) - mean ** 2).clamp_min(0)
            self.stats.append((mean, var, var > cfg.min_texture ** 2))

    def rays(self, a: int) -> torch.Tensor:
        """World directions (P, 3) of A's band pixels, row-major (band rows x w)."""
        return self.cams[a].generate_rays(self.uv)[1]


def _pair_scores(level: _Level, a: int, b: int, z_cands: np.ndarray,
                 cfg: SweepConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean ZNCC of A's band with B warped through each candidate floor z: (C,) (nan where fewer
    than a fifth of A's textured windows land on B's floor band); the fraction of all A's windows
    landing there that are textured and match well (ZNCC > 0.5): (C,); A's textured window count."""
    mean_a, var_a, tex_a = level.stats[a]
    textured = int(tex_a.sum())
    hb = level.rows[1] - level.rows[0]
    dirs = level.rays(a)  # (P, 3)
    centre_a = level.cams.c2w[a, :3, 3]
    z = torch.from_numpy(np.asarray(z_cands, np.float32))
    t = (z[:, None] - centre_a[2]) / dirs[None, :, 2]  # (C, P) distance along the ray to the plane
    points = centre_a + t[..., None] * dirs[None]  # (C, P, 3)
    cam_b = level.cams[b]
    in_b = cam_b.world_to_camera(points.reshape(-1, 3))
    uv_b = cam_b.project(in_b)
    lat_b = 90.0 - uv_b[:, 1] / level.h * 180.0
    range_ratio = in_b.norm(dim=-1) / t.reshape(-1)
    valid = (t.reshape(-1) > 0) & (lat_b > cfg.other_min_lat_deg) & (lat_b < -2.0) & \
        (range_ratio < cfg.max_range_ratio) & (range_ratio > 1.0 / cfg.max_range_ratio)
    # grid_sample's normalised coordinates (align_corners=False) in the padded image (one column each side)
    gx = 2.0 * (uv_b[:, 0] + 1.0) / (level.w + 2) - 1.0
    gy = 2.0 * uv_b[:, 1] / level.h - 1.0
    grid = torch.stack([gx, gy], -1).reshape(1, len(z) * hb, level.w, 2)
    warped = F.grid_sample(level.padded[b], grid, mode="bilinear", padding_mode="border", align_corners=False)
    warped = warped.reshape(len(z), hb, level.w)
    mask = valid.reshape(len(z), hb, level.w).float()
    warped = warped * mask
    k = level.window
    full = _box(mask, k) > 0.999  # every pixel of the window lands on B's floor band
    mean_b = _box(warped, k)
    var_b = (_box(warped * warped, k) - mean_b ** 2).clamp_min(0)
    cov = _box(warped * level.greys[a][None], k) - mean_a * mean_b
    # a textureless window in B where A has texture: the hypothesis is wrong there, ZNCC 0
    zncc = torch.where(var_b > (0.5 * cfg.min_texture) ** 2, cov / torch.sqrt(var_a * var_b + 1e-10),
                       torch.zeros_like(cov))
    use = full & tex_a
    count = use.sum(dim=(1, 2))
    scores = (zncc * use).sum(dim=(1, 2)) / count.clamp_min(1)
    scores = torch.where(count >= max(1, textured // 5), scores, torch.full_like(scores, float("nan")))
    matched = ((zncc > 0.5) & use).sum(dim=(1, 2)) / full.sum(dim=(1, 2)).clamp_min(1)
    return scores.numpy(), matched.numpy(), textured


def _parabola_peak(x: np.ndarray, y: np.ndarray, i: int) -> tuple[float, float]:
    """Vertex (x, curvature 2a > 0 when a maximum) of the parabola through points i-1, i, i+1."""
    x0, x1, x2 = x[i - 1:i + 2]
    y0, y1, y2 = y[i - 1:i + 2]
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
    if a >= 0:
        return float(x1), 0.0
    return float(np.clip(-b / (2 * a), x0, x2)), float(-2 * a)


def _curve_peak(log_h: np.ndarray, scores: np.ndarray) -> Optional[tuple[float, float, float]]:
    """(log h at the peak, peak score, prominence over the curve's median) or None when the peak is
    at the end of the range or the curve is undefined there."""
    finite = np.isfinite(scores)
    if finite.sum() < 5:
        return None
    filled = np.where(finite, scores, -np.inf)
    i = int(np.argmax(filled))
    if i == 0 or i == len(scores) - 1 or not np.all(finite[i - 1:i + 2]):
        return None
    x, _ = _parabola_peak(log_h, filled, i)
    return x, float(scores[i]), float(scores[i] - np.median(scores[finite]))


def _level_widths(cfg: SweepConfig) -> list[int]:
    widths = [cfg.width // 2 ** (cfg.levels - 1 - i) for i in range(cfg.levels)]
    if widths[0] < 64 or any(w % 2 for w in widths):
        raise ValueError(f"floor sweep: width={cfg.width} with levels={cfg.levels} gives panoramas of "
                         f"{widths}: the coarsest must be >= 64 and all even")
    return widths


def sweep_floor(images: Sequence[Path], c2w: np.ndarray, cfg: SweepConfig = SweepConfig()) -> SweepResult:
    """The floor height z_f under the panoramas ``images`` with poses ``c2w`` (N, 4, 4) (OpenCV,
    +z up, levelled). Raises :class:`FloorFitError` with the reason when the images do not show it."""
    start = time.perf_counter()
    c2w = np.asarray(c2w, np.float64)
    if len(images) < 2:
        raise FloorFitError("the photometric floor sweep needs at least two panoramas")
    centres = c2w[:, :3, 3]
    spread = float(np.ptp(centres[:, :2], axis=0).max())
    if spread <= 0:
        raise FloorFitError("the panoramas share one centre: no parallax to place the floor")
    pairs = neighbour_pairs(centres, cfg.neighbours)
    z_top = float(centres[:, 2].min())
    widths = _level_widths(cfg)
    greys = [load_grey(p) for p in images]
    log_h = np.arange(math.log(cfg.height_range[0] * spread), math.log(cfg.height_range[1] * spread),
                      cfg.coarse_step)
    with torch.inference_mode(), torch_threads(1):  # small ops: one thread (see runner.runtime)
        coarse = _Level([resized(g, widths[0]) for g in greys], c2w, cfg,
                        max(3, int(round(cfg.window * widths[0] / cfg.width)) | 1))
        curves, skipped = [], []
        for a, b in pairs:
            scores, _, textured = _pair_scores(coarse, a, b, z_top - np.exp(log_h), cfg)
            if textured < cfg.min_textured_fraction * coarse.stats[a][2].numel():
                skipped.append((a, b))
            else:
                curves.append(PairCurve(a, b, textured, scores))
        if not curves:
            raise FloorFitError(f"the floor band (latitude {cfg.band_lat_deg[0]:g}..{cfg.band_lat_deg[1]:g} deg) "
                                f"of the panoramas has no texture (fewer than {cfg.min_textured_fraction:.0%} of "
                                "its windows vary): the images cannot place the floor")
        mean_curve = _nanmean_rows(np.stack([c.scores for c in curves]))
        coarse_peak = _curve_peak(log_h, mean_curve)
        if coarse_peak is None:
            raise FloorFitError(f"the photometric floor sweep's mean score over {len(curves)} pairs has no peak "
                                f"inside the searched heights ({np.exp(log_h[0]):.3g}..{np.exp(log_h[-1]):.3g})")
        for c in curves:  # the pair's own evidence: a clear peak of its whole-range curve
            peak = _curve_peak(log_h, c.scores)
            if peak is not None and peak[2] >= cfg.min_prominence:
                c.prominence, c.log_h = peak[2], peak[0]
        for width, (half_range, step) in zip(widths[1:], cfg.refine):  # each pair around its own peak
            level = _Level([resized(g, width) for g in greys], c2w, cfg,
                           max(3, int(round(cfg.window * width / cfg.width)) | 1))
            offsets = np.arange(-half_range, half_range + 1e-9, step)
            for c in curves:
                if c.log_h is None:
                    continue
                scores = _pair_scores(level, c.a, c.b, z_top - np.exp(c.log_h + offsets), cfg)[0]
                peak = _curve_peak(c.log_h + offsets, scores)
                if peak is not None:  # else the peak left the window: keep the coarser level's
                    c.log_h, c.level = peak[0], width
        for c in curves:
            if c.log_h is not None:
                c.estimate = z_top - math.exp(c.log_h)
        result = _summarise(centres, curves, skipped, log_h, mean_curve, coarse_peak, z_top, cfg, widths)
        _check_evidence(level if len(widths) > 1 else coarse, result, z_top, cfg)
    result.details["seconds"] = round(time.perf_counter() - start, 2)
    return result


def _check_evidence(level: _Level, result: SweepResult, z_top: float, cfg: SweepConfig) -> None:
    """The floor's own texture must drive the match: at the estimate, a clearly larger part of the
    band matches well (ZNCC > 0.5) than at the control heights. On a plain floor only the edges of
    walls and furniture match (they stand on it, so they peak near the right height, but they are
    few): measured 0.07 on zind-room06, 0.37 on the built-in room, 0.015 with its floor painted
    one colour."""
    h = z_top - result.z_floor
    texture = float(np.median([float(stats[2].float().mean()) for stats in level.stats]))
    result.details["band_textured_fraction"] = texture
    if texture < cfg.min_band_texture:
        raise FloorFitError(f"the floor band of the panoramas is mostly plain: a median {texture:.0%} of its "
                            f"{level.window}x{level.window} windows at {level.w} px vary (need "
                            f"{cfg.min_band_texture:.0%}); the matches come from the edges of things on the floor")
    z = z_top - h * np.array([1.0, *cfg.control])
    fractions = np.mean([_pair_scores(level, c.a, c.b, z, cfg)[1] for c in result.pairs], 0)
    evidence = float(fractions[0] - fractions[1:].max())
    result.details.update(matched_fraction=float(fractions[0]), matched_fraction_controls=fractions[1:].tolist(),
                          floor_evidence=evidence)
    if evidence < cfg.min_evidence:
        raise FloorFitError(f"the floor's texture does not place it: at the best height {h:.3g} under the lowest "
                            f"camera {fractions[0]:.1%} of the floor band matches between the panoramas, at "
                            f"{cfg.control[0]:g}x and {cfg.control[1]:g}x that height {fractions[1]:.1%} and "
                            f"{fractions[2]:.1%} (need {cfg.min_evidence:.0%} more): a plain floor, only the "
                            "edges of things on it match")


def _nanmean_rows(rows: np.ndarray) -> np.ndarray:
    """Mean over the first axis ignoring nan; nan where a column has no value (no warning)."""
    count = np.isfinite(rows).sum(0)
    return np.where(count > 0, np.nansum(rows, 0) / np.maximum(count, 1), np.nan)


def _summarise(centres, curves, skipped, log_h, mean_curve, coarse_peak, z_top, cfg: SweepConfig,
               widths: list[int]) -> SweepResult:
    """The floor from the pairs' estimates (median), its sigma, and the checks that it is one."""
    peaked = [c for c in curves if c.estimate is not None]
    if len(peaked) < cfg.min_pairs:
        raise FloorFitError(f"only {len(peaked)} of {len(curves)} panorama pairs have a clear photometric floor "
                            f"peak (ZNCC {cfg.min_prominence:g} above the curve's median) near the best height "
                            f"(need {cfg.min_pairs}): the floor's texture does not match between the panoramas")
    z_pairs = np.array([c.estimate for c in peaked])
    z_floor = float(np.median(z_pairs))
    h_pairs = z_top - z_pairs
    h = z_top - z_floor
    agree = np.abs(h_pairs / h - 1.0) <= cfg.agree_rel
    if agree.sum() < cfg.min_agreeing * len(peaked):
        raise FloorFitError(f"the panorama pairs disagree on the floor: {int(agree.sum())} of {len(peaked)} pairs "
                            f"place it within {cfg.agree_rel:.0%} of the median height (need "
                            f"{cfg.min_agreeing:.0%}); spread of the pairs' heights "
                            f"{np.std(h_pairs) / h:.1%}")
    # robust spread of the pairs that agree, as a standard error of the median; pairs share panoramas,
    # so count at most one independent estimate per panorama
    good = h_pairs[agree]
    mad = 1.4826 * float(np.median(np.abs(good - np.median(good))))
    rel_spread = 1.4826 * float(np.median(np.abs(h_pairs - h))) / h
    if rel_spread > cfg.max_rel_spread:  # edges of things on a plain floor: each pair has its own peak
        raise FloorFitError(f"the panorama pairs' floor heights scatter by {rel_spread:.1%} (robust std; at most "
                            f"{cfg.max_rel_spread:.0%}): the floor's own texture does not drive the match")
    n_eff = max(1, min(len(good), len(centres)))
    sigma_spread = 1.2533 * mad / math.sqrt(n_eff)
    # the step of the finest level bounds what a sigma can claim
    sigma = max(sigma_spread, 0.5 * (cfg.refine[-1][1] if cfg.refine else cfg.coarse_step) * h)
    # the peak's sharpness, reported: the mean coarse curve's width at half its height over its baseline
    base = float(np.nanmedian(mean_curve))
    half = mean_curve >= base + 0.5 * (coarse_peak[1] - base)
    width = float(np.exp(log_h[half].max()) - np.exp(log_h[half].min())) / h if half.any() else None
    details = {
        "pairs_used": len(curves), "pairs_with_peak": len(peaked), "pairs_agreeing": int(agree.sum()),
        "pairs_skipped_textureless": len(skipped),
        "pair_heights": {"min": float(h_pairs.min()), "median": float(np.median(h_pairs)),
                         "max": float(h_pairs.max()), "robust_std_rel": rel_spread},
        "peak_zncc": float(coarse_peak[1]), "peak_prominence": float(coarse_peak[2]),
        "mean_curve_peak_height": float(np.exp(coarse_peak[0])), "peak_halfmax_width_rel": width,
        "sigma_from_pairs": sigma_spread,
        "searched_heights": [float(np.exp(log_h[0])), float(np.exp(log_h[-1]))],
        "widths": widths,
    }
    return SweepResult(z_floor, float(sigma), centres[:, 2] - z_floor, curves,
                       {"heights": np.exp(log_h).tolist(), "mean_zncc": mean_curve.tolist()}, details)


def sweep_floor_fit(images: Sequence[Path], c2w: np.ndarray, names: Sequence[str],
                    cfg: SweepConfig = SweepConfig()) -> FloorFit:
    """:func:`sweep_floor` as a level :class:`FloorFit` (normal +z), its details (pairs by name) kept."""
    result = sweep_floor(images, c2w, cfg)
    good = [c for c in result.pairs if c.estimate is not None]
    z_pairs = np.array([c.estimate for c in good])
    rms = float(np.sqrt(np.mean((z_pairs - result.z_floor) ** 2)))
    details = {**result.details,
               "pair_estimates": [{"pair": [names[c.a], names[c.b]], "height": float(result.heights[c.a] +
                                   result.z_floor - c.estimate), "prominence": c.prominence, "width": c.level}
                                  for c in good]}
    return FloorFit(np.array([0.0, 0.0, 1.0]), result.z_floor, len(good), len(result.pairs), rms, result.sigma,
                    method="photometric sweep", details=details)
