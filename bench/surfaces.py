"""Surface methods side by side (issue #27): NeRF density meshes (nerf stage + ``export``), IDR
(needs masks), the volume-rendered SDF (``sdf``, no masks) and its occupancy variant
(``sdf field=occupancy``), each trained through ``run.py`` in its own workspace sharing one poses
stage, with the same time budget.

    nohup python bench/surfaces.py --time 240 > /tmp/notes/surfaces.log 2>&1 &
    python bench/surfaces.py --data /work/shared/data/temple-ring --mask-threshold 0.2 --background black
    python bench/surfaces.py --methods sdf,occupancy --time 60 --eval-views 2      # a quick look

Without ``--data`` the built-in scene is rendered first (``run.py synthetic``). Columns: method,
masks used in training, trained seconds, steps, test PSNR (the stage's own held-out renders),
mesh Chamfer-L1 over the object radius and F-score at 1% of it (when the scene has a GT mesh; the
same :func:`pipeline.evaluation.geometry.mesh_metrics` for every mesh), watertight, and mask IoU of
the rendered silhouettes (the stages' ``depth/*.npy`` > 0, i.e. opacity >= 0.5) and of the mesh
itself (its surface splatted from the same cameras) against the true masks (or threshold masks,
``--mask-threshold``) of the same held-out views. Stages run one after
another (never in parallel); the table goes to stdout and ``--write``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.evaluation.geometry import mesh_metrics  # noqa: E402
from pipeline.evaluation.ground_truth import load_ground_truth  # noqa: E402
from pipeline.geometry.mesh import is_watertight, read_ply  # noqa: E402
from pipeline.runner.workspace import Workspace  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from mesh_picture import silhouette  # noqa: E402

METHODS = ("nerf", "idr", "sdf", "occupancy")
# stage, its extra overrides, where its mesh lands
PLANS = {"nerf": ("nerf", [], "export/mesh.ply"), "idr": ("idr", [], "idr/mesh.ply"),
         "sdf": ("sdf", [], "sdf/mesh.ply"), "occupancy": ("sdf", ["field=occupancy"], "sdf/mesh.ply")}


def run_py(*args: str, log: Path) -> float:
    """``python run.py ARGS`` in a subprocess (output appended to ``log``); its wall time."""
    start = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ python run.py {' '.join(args)}\n")
        f.flush()
        proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], stdout=f, stderr=subprocess.STDOUT,
                              env=dict(os.environ, RECON_QUIET="1"), cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"run.py {' '.join(args)} exited {proc.returncode}; see {log}")
    return time.time() - start


def stage_metrics(ws: Path, stage: str) -> dict:
    """The stage's metrics.json when it writes one, over its manifest's metrics."""
    manifest = json.loads((ws / stage / "manifest.json").read_text()).get("metrics", {})
    path = ws / stage / "metrics.json"
    return {**manifest, **(json.loads(path.read_text()) if path.exists() else {})}


def true_masks(scene, names: list[str], threshold: float | None, background: str) -> dict:
    """name -> (H, W) bool: the scene's masks, or threshold masks (``threshold`` given)."""
    from pipeline.training.idr_data import MaskOptions, load_masks

    index = {f.name: i for i, f in enumerate(scene.frames)}
    idx = [index[n] for n in names if n in index]
    if threshold is not None:
        masks = load_masks(scene, idx, MaskOptions("threshold", "", threshold, background))
    else:
        masks = [scene.load_mask(i) for i in idx]
    return {scene.frames[i].name: m for i, m in zip(idx, masks) if m is not None}


def silhouette_iou(depth_dir: Path, masks: dict) -> float | None:
    """Mean IoU of (depth > 0) against the masks of the views with a depth file."""
    ious = []
    for name, mask in masks.items():
        path = depth_dir / f"{name}.npy"
        if path.exists():
            rendered = np.load(path) > 0
            if rendered.shape == mask.shape:
                ious.append((rendered & mask).sum() / max(1, (rendered | mask).sum()))
    return float(np.mean(ious)) if ious else None


def mesh_silhouette_iou(ws: Path, verts: np.ndarray, faces: np.ndarray, masks: dict) -> float | None:
    """Mean IoU of the mesh's own silhouette (verts in original units) against the masks, from the
    same held-out cameras: what the mesh keeps (or cuts, as a temple's cloth), not the renders."""
    import torch

    workspace = Workspace(ws)
    scene = workspace.load_scene()
    normalised = workspace.normalization().apply_points(np.asarray(verts, dtype=np.float64))
    index = {f.name: i for i, f in enumerate(scene.frames)}
    ious = []
    for name, mask in masks.items():
        covered = silhouette(normalised, faces, scene.cameras([index[name]], dtype=torch.float64))
        if covered.shape == mask.shape:
            ious.append((covered & mask).sum() / max(1, (covered | mask).sum()))
    return float(np.mean(ious)) if ious else None


def bench_method(method: str, base: Path, out: Path, args, log: Path) -> dict:
    stage, extra, mesh_rel = PLANS[method]
    ws = out / method
    if ws.exists():
        shutil.rmtree(ws)
    ws.mkdir(parents=True)
    shutil.copytree(base / "poses", ws / "poses")  # one poses stage for all
    overrides = [f"max_time_s={args.time}", f"eval_max_views={args.eval_views}", f"cpu_threads={args.threads}",
                 *extra, *args.set]
    if args.background:
        overrides.append(f"background={args.background}")
    if method == "idr" and args.mask_threshold is not None:
        overrides += ["mask_source=threshold", f"mask_threshold={args.mask_threshold}",
                      f"mask_background={args.background or 'black'}"]
    wall = run_py(stage, "--workspace", str(ws), *overrides, log=log)
    row = {"method": method, "stage_wall_s": round(wall, 1)}
    if method == "nerf":  # its mesh: marching cubes of the density, carved and culled (export defaults)
        try:
            row["export_wall_s"] = round(run_py("export", "--workspace", str(ws), "what=mesh", log=log), 1)
        except RuntimeError as exc:  # e.g. the density never reaches the threshold: the row says so
            row["mesh_error"] = str(exc)
    m = stage_metrics(ws, stage)
    row.update(masks="yes" if method == "idr" else "no", train_time_s=m.get("train_time_s"),
               steps=m.get("steps", m.get("iterations")), psnr=m.get("psnr"))
    mesh_path = ws / mesh_rel
    scene = Workspace(ws).load_scene()
    if mesh_path.exists():
        verts, faces, _ = read_ply(mesh_path)
        row["watertight"] = bool(len(faces)) and is_watertight(faces)
        row["faces"] = int(len(faces))
        gt = load_ground_truth(scene)
        if gt is not None and len(faces):
            mm = mesh_metrics(verts, faces, gt)
            row.update(chamfer_r=mm["chamfer_l1_over_radius"], fscore=mm.get("fscore"))
    depth_dir = ws / stage / "depth"
    names = sorted(p.stem for p in depth_dir.glob("*.npy")) if depth_dir.exists() else []
    masks = true_masks(scene, names, args.mask_threshold, args.background or "black")
    row["mask_iou"] = silhouette_iou(depth_dir, masks)
    if mesh_path.exists() and row.get("faces"):
        row["mesh_iou"] = mesh_silhouette_iou(ws, verts, faces, masks)
    row["roi"] = m.get("roi", {}).get("source") if isinstance(m.get("roi"), dict) else None
    print(json.dumps(row), flush=True)
    return row


def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def table(rows: list[dict], title: str) -> str:
    lines = [title, "", "| method | masks used | train time | steps | test PSNR | Chamfer-L1 (x r) | F-score @1% r | "
             "watertight | mask IoU (renders) | mask IoU (mesh) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} | | | | | | | | |")
            continue
        label = {"nerf": "nerf + export mesh", "occupancy": "sdf field=occupancy"}.get(r["method"], r["method"])
        chamfer = "" if r.get("chamfer_r") is None else f"{100 * r['chamfer_r']:.2f}%"
        lines.append(f"| {label} | {r['masks']} | {fmt(r.get('train_time_s'), '.0f')} s | {r.get('steps')} | "
                     f"{fmt(r.get('psnr'), '.2f')} dB | {chamfer} | {fmt(r.get('fscore'), '.3f')} | "
                     f"{'yes' if r.get('watertight') else 'no'} | {fmt(r.get('mask_iou'), '.3f')} | "
                     f"{fmt(r.get('mesh_iou'), '.3f')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="", help="dataset folder (default: render the built-in scene)")
    ap.add_argument("--out", default="/tmp/recon-bench-surfaces")
    ap.add_argument("--time", type=float, default=240.0, help="max_time_s of every training stage")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--eval-views", type=int, default=5, help="held-out views each stage renders (0 = all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mask-threshold", type=float, default=None,
                    help="masks from a dark background at this threshold (IDR's training masks and the IoU)")
    ap.add_argument("--background", default="", help="background=... for every stage (e.g. black)")
    ap.add_argument("--set", action="append", default=[], help="extra key=value for every stage")
    ap.add_argument("--write", default="", help="also write the table (markdown) to this file")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "stages.log"
    data = Path(args.data) if args.data else out / "scene"
    if not args.data and not (data / "scene_info.json").exists():
        run_py("synthetic", "--out", str(data), log=log)
    base = out / "base"
    run_py("poses", "--data", str(data), "--workspace", str(base), log=log)
    rows = []
    for method in methods:
        try:
            rows.append(bench_method(method, base, out, args, log))
        except Exception as exc:  # one failing method still leaves the others' rows
            rows.append({"method": method, "error": str(exc)[:200]})
            print(f"{method}: {exc}", flush=True)
    title = (f"### Surfaces side by side: {data.name if args.data else 'built-in scene'}, max_time_s={args.time:g}, "
             f"{args.threads} thread(s), {args.eval_views or 'all'} held-out views")
    text = table(rows, title)
    print(text, flush=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=2))
    if args.write:
        Path(args.write).write_text(text + "\n")


if __name__ == "__main__":
    main()
