"""The eval stage's headline metrics as a printed table."""
from __future__ import annotations


def format_table(metrics: dict) -> str:
    """The headline metrics as an aligned two-column table."""
    rows = [("method", metrics.get("method", "?"))]
    views = metrics.get("views", {})

    def fmt(value, digits=4):
        return "n/a" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)

    for key, label in (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("lpips", "LPIPS"), ("mask_iou", "mask IoU"),
                       ("depth_abs_rel", "depth AbsRel"), ("depth_rmse", "depth RMSE (orig. units)")):
        if key in views:
            rows.append((label, fmt(views[key])))
    if "lpips_unavailable" in views:
        # the recorded reason (package or weights missing...), as in metrics.json
        reason = views["lpips_unavailable"].removeprefix("LPIPS unavailable: ")
        rows.append(("LPIPS", f"unavailable: {reason}"))
    if views:
        rows.append(("views", f"{views.get('views')} ({views.get('split')})"))
    for name, row in metrics.get("holdout", {}).get("panoramas", {}).items():
        rows.append((f"holdout {name} WS-PSNR (dB)", f"NeRF {fmt(row['nerf']['ws_psnr'])} | nearest panorama "
                     f"{fmt(row['baseline']['ws_psnr'])} ({row['nearest']})"))
        rows.append((f"holdout {name} SSIM", f"NeRF {fmt(row['nerf']['ssim'])} | nearest panorama "
                     f"{fmt(row['baseline']['ssim'])}"))
    if "gain_ws_psnr_db" in metrics.get("holdout", {}):
        rows.append(("holdout mean WS-PSNR gain (dB)", fmt(metrics["holdout"]["gain_ws_psnr_db"])))
    geo = metrics.get("geometry", {})
    if "chamfer_l1" in geo:
        rows += [("Chamfer-L1 (orig. units)", fmt(geo["chamfer_l1"])),
                 ("Chamfer-L1 / object radius", fmt(geo["chamfer_l1_over_radius"])),
                 (f"F-score @ {geo['threshold']:.3g}", fmt(geo["fscore"])),
                 ("components outside frusta", fmt(geo["components_outside_frusta"]))]
    poses = metrics.get("poses", {})
    if "rotation_deg_median" in poses:
        rows += [("pose rotation err (deg, median)", fmt(poses["rotation_deg_median"]))]
        if "orientation_deg_median" in poses:
            rows += [("pose orientation err (deg, median)", fmt(poses["orientation_deg_median"])),
                     ("pose pairwise rotation err (deg)", fmt(poses["relative_rotation_deg_median"]))]
        rows += [("pose centre err (/ring radius)", fmt(poses["center_rel_median"]))]
    for key, value in metrics.get("skipped", {}).items():
        rows.append((f"{key}: skipped", value))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {name.ljust(width)}  {value}" for name, value in rows)
