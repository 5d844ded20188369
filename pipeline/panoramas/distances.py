"""Pairwise distances between panorama centres and their 1-sigma, through the metric scale.

Inputs: the centres' joint covariance (3N, 3N) in the OUTPUT frame's units with the gauge removed
(:mod:`pipeline.panoramas.uncertainty`, mapped through the similarity to the output frame) and the
scale source (:class:`pipeline.panoramas.scale.MetricFrame`). The distance d_ij = |c_i - c_j| has
the shape variance g_ij^T C g_ij (g: the unit baseline at i, minus it at j), and then:
- relative units / dataset poses: that alone;
- camera height: plus (d_ij * scale_rel_sigma)^2 (the floor fit and the stated height);
- known distance D between a and b: d_ij = D * r_ij / r_ab is a RATIO of estimated distances, so
  var = d_ij^2 [var r_ij / r_ij^2 + var r_ab / r_ab^2 - 2 cov(r_ij, r_ab) / (r_ij r_ab) + (sD / D)^2];
  for the known pair itself this is exactly sD.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from pipeline.panoramas.scale import MetricFrame


def baseline_gradients(centres: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """Pairs (i < j), their distances (P,) and the gradients (P, 3N) of each distance wrt the
    stacked centres (N, 3)."""
    n = len(centres)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    grads = np.zeros((len(pairs), 3 * n))
    dist = np.zeros(len(pairs))
    for p, (i, j) in enumerate(pairs):
        diff = centres[i] - centres[j]
        dist[p] = np.linalg.norm(diff)
        u = diff / max(dist[p], 1e-12)
        grads[p, 3 * i:3 * i + 3] = u
        grads[p, 3 * j:3 * j + 3] = -u
    return pairs, dist, grads


def distance_sigmas(centres: np.ndarray, covariance: Optional[np.ndarray], frame: MetricFrame,
                    names: list[str]) -> Optional[np.ndarray]:
    """(N, N) 1-sigma of every pairwise distance (0 on the diagonal), or None without a covariance.
    centres (N, 3) and covariance (3N, 3N) in the output frame's units."""
    if covariance is None:
        return None
    pairs, dist, grads = baseline_gradients(centres)
    pair_cov = grads @ covariance @ grads.T  # (P, P) covariance of the estimated distances
    var = np.diag(pair_cov).copy()
    if frame.source == "camera_height" and frame.rel_sigma is not None:
        var = var + (dist * frame.rel_sigma) ** 2
    elif frame.source == "known_distance" and frame.known is not None:
        a, b = sorted((names.index(frame.known.first), names.index(frame.known.second)))
        k = pairs.index((a, b))
        rel = (var / dist ** 2 + pair_cov[k, k] / dist[k] ** 2 - 2 * pair_cov[:, k] / (dist * dist[k])
               + (frame.known.sigma_m / frame.known.metres) ** 2)
        var = dist ** 2 * np.maximum(rel, 0.0)
    out = np.zeros((len(centres), len(centres)))
    for p, (i, j) in enumerate(pairs):
        out[i, j] = out[j, i] = np.sqrt(max(var[p], 0.0))
    return out


def scale_rel_sigma(frame: MetricFrame, centres: np.ndarray, covariance: Optional[np.ndarray],
                    names: list[str]) -> Optional[float]:
    """The relative 1-sigma of the metric scale: camera height as stated by the frame; a known
    distance adds the estimated distance's own uncertainty to the measurement's."""
    if frame.source != "known_distance" or frame.known is None:
        return frame.rel_sigma
    if covariance is None:
        return None
    i, j = names.index(frame.known.first), names.index(frame.known.second)
    g = np.zeros(3 * len(centres))
    diff = centres[i] - centres[j]
    d = np.linalg.norm(diff)
    g[3 * i:3 * i + 3], g[3 * j:3 * j + 3] = diff / d, -diff / d
    return float(np.sqrt(g @ covariance @ g / d ** 2 + (frame.known.sigma_m / frame.known.metres) ** 2))


def centre_covariances(centres: np.ndarray, covariance: Optional[np.ndarray],
                       scale_sigma: Optional[float]) -> Optional[np.ndarray]:
    """(N, 3, 3) per-centre covariance relative to the centroid: the shape part plus the scale's
    (a wrong scale moves each centre along its offset from the centroid)."""
    if covariance is None:
        return None
    n = len(centres)
    blocks = np.stack([covariance[3 * i:3 * i + 3, 3 * i:3 * i + 3] for i in range(n)])
    if scale_sigma:
        rel = centres - centres.mean(0)
        blocks = blocks + scale_sigma ** 2 * np.einsum("ni,nj->nij", rel, rel)
    return blocks
