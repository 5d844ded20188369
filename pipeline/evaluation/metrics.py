"""Image and geometry metrics shared by the training stages and the eval stage.

LPIPS needs pretrained AlexNet/VGG weights that recon never downloads: it is computed only when
the ``lpips`` package and its weights are available locally, otherwise reported as unavailable
with the reason (``lpips_or_reason``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def _to_bchw(img) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(img) if not isinstance(img, torch.Tensor) else img).float()
    if t.ndim == 2:
        t = t[..., None]
    return t.permute(2, 0, 1)[None]


def psnr(pred, target, mask=None) -> float:
    """PSNR in dB of images in [0, 1] (H, W, C); ``mask`` (H, W) restricts the pixels."""
    p, t = torch.as_tensor(np.asarray(pred)).double(), torch.as_tensor(np.asarray(target)).double()
    err = (p - t) ** 2
    if mask is not None:
        m = torch.as_tensor(np.asarray(mask)).bool()
        err = err[m]
    mse = float(err.mean())
    return float("inf") if mse == 0 else -10.0 * np.log10(mse)


def ssim(pred, target, window: int = 11) -> float:
    """Mean SSIM (kornia, Gaussian window 11, as in the NeRF papers) of images (H, W, C) in [0, 1]."""
    import kornia

    return float(kornia.metrics.ssim(_to_bchw(pred), _to_bchw(target), window_size=window).mean())


def lpips_or_reason(pred, target, net: str = "alex") -> tuple[Optional[float], Optional[str]]:
    """(LPIPS value, None) when the lpips package and its weights load offline, else (None, reason):
    one line saying which is missing (the package, a module it needs, or the backbone weights)."""
    try:
        model = _load_lpips(net)
    except ModuleNotFoundError as exc:
        missing = "the lpips package is not installed" if exc.name == "lpips" else \
            f"the lpips package needs {exc.name or 'a module'}, which is not installed"
        return None, f"LPIPS unavailable: {missing}"
    except Exception as exc:  # missing weights (our FileNotFoundError), torchvision mismatch
        first = str(exc).splitlines()[0] if str(exc) else ""
        what = first if isinstance(exc, FileNotFoundError) else f"{type(exc).__name__}: {first}"
        return None, f"LPIPS unavailable: {what}"
    with torch.no_grad():
        value = model(_to_bchw(pred) * 2 - 1, _to_bchw(target) * 2 - 1)
    return float(value.mean()), None


_LPIPS_CACHE: dict = {}


def lpips_weights_dir() -> str:
    """Where torchvision keeps (and lpips would otherwise download) the backbone weights."""
    import os

    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _load_lpips(net: str):
    if net not in _LPIPS_CACHE:
        import os

        import lpips  # imported lazily: it needs torchvision, which may not import beside our torch

        # lpips fetches backbone weights through torchvision's hub when they are not cached;
        # refuse that: recon never downloads at run time.
        folder = lpips_weights_dir()
        names = os.listdir(folder) if os.path.isdir(folder) else []
        if not any(name.startswith(net[:4]) for name in names):
            raise FileNotFoundError(f"no {net} backbone weights in {folder} (recon never downloads them)")
        _LPIPS_CACHE[net] = lpips.LPIPS(net=net, verbose=False).eval()
    return _LPIPS_CACHE[net]


def mask_iou(pred, target) -> float:
    p, t = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def depth_errors(pred, target, mask=None) -> dict:
    """AbsRel and RMSE of depth maps on pixels with valid (> 0, finite) ground truth and ``mask``."""
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    valid = np.isfinite(t) & (t > 0) & np.isfinite(p)
    if mask is not None:
        valid &= np.asarray(mask).astype(bool)
    if not valid.any():
        return {"abs_rel": None, "rmse": None, "pixels": 0}
    d = p[valid] - t[valid]
    return {"abs_rel": float(np.mean(np.abs(d) / t[valid])), "rmse": float(np.sqrt(np.mean(d ** 2))),
            "pixels": int(valid.sum())}


def mesh_chamfer_fscore(verts_a, faces_a, verts_b, faces_b, threshold: float, samples: int = 100000,
                        seed: int = 0) -> dict:
    """Chamfer-L1 (mean of the two mean distances), accuracy (a -> b), completeness (b -> a),
    precision, recall and F-score at ``threshold`` between two triangle meshes (V, 3) / (F, 3):
    ``samples`` area-uniform points on each surface, each measured to the OTHER surface itself
    (point-to-triangle), so a mesh against itself scores exactly 0 and there is no sampling floor.
    A side given without faces (a point cloud) is used as points, and distances to it are to points."""
    from scipy.spatial import cKDTree

    from pipeline.geometry.mesh import point_mesh_distance, sample_surface

    def points_of(verts, faces):
        return np.asarray(verts, dtype=np.float64) if faces is None else sample_surface(verts, faces, samples, seed)

    def distance_to(points, verts, faces):
        if faces is None:
            return cKDTree(np.asarray(verts)).query(points, workers=-1)[0]
        return point_mesh_distance(points, verts, faces)

    d_ab = distance_to(points_of(verts_a, faces_a), verts_b, faces_b)
    d_ba = distance_to(points_of(verts_b, faces_b), verts_a, faces_a)
    precision, recall = float(np.mean(d_ab < threshold)), float(np.mean(d_ba < threshold))
    fscore = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"chamfer_l1": float(0.5 * (d_ab.mean() + d_ba.mean())), "accuracy": float(d_ab.mean()),
            "completeness": float(d_ba.mean()), "precision": precision, "recall": recall, "fscore": fscore,
            "threshold": float(threshold)}
