#!/usr/bin/env python3
"""Benchmark of the panorama chain (issue #25): poses of unposed panoramas, their centres in
metres, and leave-one-out interpolation, on the built-in room and on zind-room06.

    python bench/panoramas.py                       # everything (about 30 min on 2 CPU cores)
    python bench/panoramas.py --parts poses centres # no NeRF training
    python bench/panoramas.py --holdout-budget 120  # seconds of training per leave-one-out model

Every figure comes from the real CLI chain (``run.py poses --estimate``, ``centres``, ``eval
holdout=...``) in fresh workspaces under ``--work`` (default /tmp/recon-bench-panoramas), read
back from the stages' outputs; ground truth (the built-in room's ``centers.json``, ZInD's
``poses.json``) is used only to score. Beside our poses stage: ``pycolmap.panorama.reconstruct``
with its defaults on the same panoramas, in the same run. Prints the issue's target table
(markdown).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZIND = ROOT.parent / "shared" / "data" / "zind-room06"
ROOM_CAMERA_HEIGHT = 1.5  # datasets/synthetic.py PANORAMA_HEIGHT
ZIND_LOO = ("floor_01_partial_room_06_pano_11", "floor_01_partial_room_10_pano_16", "floor_01_partial_room_09_pano_5")


def cli(*args: str) -> float:
    """Run ``python run.py ARGS``; returns its wall time (s). Raises with its output on failure."""
    t = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"run.py {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.time() - t


def manifest_metrics(workspace: Path, stage: str) -> dict:
    return json.loads((workspace / stage / "manifest.json").read_text())["metrics"]


def built_in_room(work: Path) -> Path:
    """The built-in room's panoramas copied into a folder without their poses."""
    data = work / "room-data"
    if not (data / "panoramas" / "centers.json").exists():
        cli("synthetic", "--out", str(data), "--panoramas")
    folder = work / "room-panos"
    if not folder.exists():
        folder.mkdir(parents=True)
        for png in sorted((data / "panoramas").glob("pano_*.png")):
            shutil.copy(png, folder / png.name)
    return folder


def poses_and_centres(name: str, panos: Path, reference: Path, height: float, work: Path) -> dict:
    """poses --estimate, then centres with the camera height; the centres stage scores against
    ``reference`` (the dataset with the true centres) when the data says where it is."""
    ws = work / f"{name}-ws"
    shutil.rmtree(ws, ignore_errors=True)
    seconds = cli("poses", "--data", str(panos), "--workspace", str(ws), "--estimate")
    poses = manifest_metrics(ws, "poses")
    cli("centres", "--workspace", str(ws), f"camera_height_m={height}", f"reference={reference}")
    centres = manifest_metrics(ws, "centres")
    return {"workspace": ws, "poses_s": seconds, "poses": poses, "centres": centres}


def pycolmap_defaults(panos: Path, work: Path) -> dict:
    """``pycolmap.panorama.reconstruct`` with its default options (perspective rig, sequential
    matching, incremental mapping) on the same panoramas."""
    from pycolmap import panorama

    out = work / "pycolmap-defaults"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.time()
    models = panorama.reconstruct(panos, out, panorama.PanoramaReconstructionOptions(use_gpu=False,
                                                                                     show_progress=False))
    seconds = time.time() - t
    best = max(models.values(), key=lambda r: r.num_reg_frames(), default=None)
    return {"seconds": seconds, "registered": 0 if best is None else best.num_reg_frames(),
            "points": 0 if best is None else best.num_points3D()}


def leave_one_out(ws: Path, names: tuple[str, ...], budget_s: float) -> dict:
    """The nerf stage trained without the first name, then ``eval holdout=NAMES`` (the others are
    trained inside eval): WS-PSNR of each render vs the nearest-panorama baseline."""
    cli("nerf", "--workspace", str(ws), "--config", "nerf-panorama", f"holdout={names[0]}", f"max_time_s={budget_s}")
    cli("eval", "--workspace", str(ws), f"holdout={','.join(names)}", f"holdout_max_time_s={budget_s}")
    return json.loads((ws / "eval" / "metrics.json").read_text())["holdout"]


def fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/recon-bench-panoramas"))
    parser.add_argument("--parts", nargs="+", default=["poses", "centres", "loo", "baseline"])
    parser.add_argument("--holdout-budget", type=float, default=240.0)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []

    room_panos = built_in_room(args.work)
    room = poses_and_centres("room", room_panos, args.work / "room-data" / "panoramas", ROOM_CAMERA_HEIGHT, args.work)
    c = room["centres"]
    n_room = len(list(room_panos.glob("*.png")))
    rows += [
        ("built-in room", "registered", f"{room['poses']['images_registered']}/{n_room}", "all"),
        ("built-in room", "rotation error median (deg)", fmt(c.get("rotation_error_median_deg"), 3), "<= 0.1"),
        ("built-in room", "centre error after similarity, median / max (% of room)",
         f"{fmt(c.get('centre_error_sim3_median_pct'), 3)} / {fmt(c.get('centre_error_sim3_max_pct'), 3)}", "<= 0.5"),
        ("built-in room, camera_height_m exact", "pairwise distance error median / max (%)",
         f"{fmt(c.get('distance_error_median_pct'))} / {fmt(c.get('distance_error_max_pct'))} (units: {c.get('units')})",
         "<= 1 / <= 3"),
    ]
    zind = poses_and_centres("zind", ZIND / "panos", ZIND, 1.435, args.work) if ZIND.exists() else None
    if zind is not None:
        z = zind["centres"]
        rows += [
            ("zind-room06", "registered", f"{zind['poses']['images_registered']}/13", ">= 12/13"),
            ("zind-room06", "centre error, rigid 2-D, scale from camera height: median / max (m)",
             f"{fmt(z.get('centre_error_rigid2d_median_m'), 3)} / {fmt(z.get('centre_error_rigid2d_max_m'), 3)} "
             f"(units: {z.get('units')}; after a similarity: {fmt(z.get('centre_error_sim3_median_m'), 3)} / "
             f"{fmt(z.get('centre_error_sim3_max_m'), 3)})", "median <= 0.10"),
            ("zind-room06", "rotation error median (deg)", fmt(z.get("rotation_error_median_deg")), "-"),
            ("speed", "13 panoramas 1024x512, poses stage (s)", f"{zind['poses_s']:.1f} (stage's own: "
             f"{zind['poses']['time_total_s']:.1f})", "<= 60"),
        ]
    if "baseline" in args.parts and ZIND.exists():
        b = pycolmap_defaults(ZIND / "panos", args.work)
        rows.append(("speed", "pycolmap.panorama.reconstruct, defaults, same panoramas",
                     f"{b['seconds']:.1f} s, {b['registered']}/13 registered, {b['points']} points", "(reference)"))
    if "loo" in args.parts:
        for label, ws, names, target in (("built-in room", room["workspace"], ("pano_002", "pano_005", "pano_007"), 3.0),
                                         ("zind-room06", zind and zind["workspace"], ZIND_LOO, 1.5)):
            if ws is None:
                continue
            loo = leave_one_out(ws, names, args.holdout_budget)
            gain = loo["gain_ws_psnr_db"]
            detail = (f"mean {loo['nerf_ws_psnr']:.2f} vs {loo['baseline_ws_psnr']:.2f} over "
                      f"{len(loo['panoramas'])} panoramas")
            rows.append((f"{label}, leave-one-out", "WS-PSNR render vs nearest panorama (dB), mean gain",
                         f"{gain:+.2f} ({detail})", f">= +{target}"))

    print("| data | measure | reached | target |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
