#!/usr/bin/env python3
"""Benchmark of the poses stage: registration, accuracy against known poses, time per step.

    python bench/poses.py                        # built-in scene, temple-ring, lund, lego-200
    python bench/poses.py --scenes temple-ring lund --max-image-size 640 1024 -1
    python bench/poses.py --baseline             # also pycolmap with its defaults, for comparison
    python bench/poses.py --scenes herzjesu-p8 synthetic-1080 --baseline --estimate-too --repeat 2 \
        --quality fast balanced
        # high-resolution photos: our stage (the dataset's intrinsics, and estimated as pycolmap
        # does) and pycolmap's defaults back to back in the same run, with the ratios

``synthetic`` is the built-in scene at 200 px, ``synthetic-1080`` the same at 1080 px (generated
once under ``--work``, 8-16 min on 2 cores, or pass ``--synthetic-1080 DIR``); ``herzjesu-p8`` the Strecha set
in ``../shared/data`` (3072x2048, calibrated ``.camera`` files).

Each run is the real stage (``run_stage``) with ``estimate=True`` in a fresh workspace under
``--work`` (default /tmp/recon-bench-poses). Accuracy: estimated cameras aligned to the dataset's
cameras by a similarity (``pipeline.geometry.alignment``), rotation error in degrees and centre error in %
of the camera-ring radius. Prints a table (markdown). Wrap long runs in
``flock /tmp/recon-bench.lock`` on shared machines.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datasets import read_scene  # noqa: E402
from pipeline.geometry.alignment import pose_errors  # noqa: E402
from pipeline.runner.stage import run_stage  # noqa: E402
from pipeline.runner.workspace import Workspace  # noqa: E402
from stages.poses import STAGE  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TARGETS = {  # (min registered, median rotation deg, median centre % of radius) from the issue
    "synthetic": ("all", 0.2, 0.5),
    "temple-ring": (15, 1.0, 2.0),
    "lund": (27, None, None),
}
# herzjesu-p8 (issue #30): rotation and centre medians <= 0.8x pycolmap defaults', time <= 0.5x, same run


def dataset_path(name: str, work: Path, synthetic: Path | None = None, synthetic_1080: Path | None = None) -> Path:
    if name == "synthetic" and synthetic is not None:
        return synthetic
    if name == "synthetic-1080" and synthetic_1080 is not None:
        return synthetic_1080
    if name in ("synthetic", "synthetic-1080"):
        from datasets.synthetic import SyntheticConfig, generate

        out = work / ("synthetic-data" if name == "synthetic" else "synthetic-1080-data")
        # reuses an existing folder with the same config
        generate(out, SyntheticConfig() if name == "synthetic" else SyntheticConfig(views=50, size=1080))
        return out
    if name == "lund":
        return DATA / "lund" / "images"
    return DATA / name


def reference_cameras(path: Path) -> dict[str, np.ndarray]:
    """{resolved image path: (4, 4) c2w} of a dataset with poses (empty for plain photos)."""
    try:
        scene = read_scene(path)
    except Exception:
        return {}
    return {str(f.image_path.resolve()): f.c2w for f in scene.frames if f.c2w is not None}


def has_known_intrinsics(path: Path) -> bool:
    try:
        scene = read_scene(path)
    except Exception:
        return False
    return scene.has_poses and not scene.meta.get("intrinsics_guessed", False)


def run_one(name: str, path: Path, work: Path, overrides: list[str]) -> dict:
    ws_dir = work / f"ws-{name}-{abs(hash(tuple(overrides))) % 10**6}"
    shutil.rmtree(ws_dir, ignore_errors=True)
    config = STAGE.load_config(None, [f"data={path}", "estimate=true", *overrides])
    started = time.time()
    row = {"scene": name, "settings": " ".join(overrides) or "defaults"}
    try:
        run_stage(STAGE, Workspace(ws_dir), config, force=True)
    except Exception as exc:  # a failed registration is a result, not a crash of the benchmark
        row.update(error=str(exc).splitlines()[0], wall_s=time.time() - started)
        return row
    row["wall_s"] = time.time() - started
    report = json.loads((ws_dir / "poses" / "report.json").read_text())
    row.update(given=report["images_given"], registered=report["images_registered"], mapper=report["mapper"],
               timings=report["timings_s"], reproj=report["summary"]["mean_reprojection_error_px"])
    ref = reference_cameras(path)
    if ref:
        est_scene = Workspace(ws_dir).load_scene()
        pairs = [(f.c2w, ref[str(f.image_path.resolve())]) for f in est_scene.frames
                 if str(f.image_path.resolve()) in ref]
        if len(pairs) >= 2:
            errors = pose_errors(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
            row.update(rot_med=errors["rotation_deg_median"], rot_max=errors["rotation_deg_max"],
                       ctr_med=100 * errors["center_rel_median"], ctr_max=100 * errors["center_rel_max"],
                       orient_med=errors["orientation_deg_median"],
                       pair_med=errors["relative_rotation_deg_median"])
    return row


def run_baseline(name: str, path: Path, work: Path) -> dict:
    """pycolmap with its defaults (SIFT at full size, exhaustive matching, incremental mapping)."""
    import pycolmap

    from pipeline.sfm.prepare import prepare_images

    out = work / f"baseline-{name}"
    shutil.rmtree(out, ignore_errors=True)
    scene = read_scene(path)
    prepared, _ = prepare_images(scene, out / "images", "white" if scene.background == "none" else scene.background)
    names = [p.colmap_name for p in prepared]
    db = out / "database.db"
    times = {}
    t = time.time()
    pycolmap.extract_features(db, out / "images", image_names=names, camera_mode=pycolmap.CameraMode.AUTO)
    times["extract_s"] = time.time() - t
    t = time.time()
    pycolmap.match_exhaustive(db)
    times["match_s"] = time.time() - t
    t = time.time()
    models = pycolmap.incremental_mapping(db, out / "images", out / "sparse")
    times["map_s"] = time.time() - t
    best = max(models.values(), key=lambda r: r.num_reg_images()) if models else None
    row = {"scene": name, "settings": "pycolmap defaults", "given": len(scene),
           "registered": 0 if best is None else best.num_reg_images(), "timings": times,
           "wall_s": sum(times.values()), "mapper": "incremental"}
    ref = reference_cameras(path)
    if ref and best is not None and best.num_reg_images() >= 2:
        from pipeline.sfm.cameras import c2w_from_image

        by_name = {p.colmap_name: str(scene.frames[p.frame_index].image_path.resolve()) for p in prepared}
        images = [im for im in best.images.values() if im.has_pose]
        errors = pose_errors(np.stack([c2w_from_image(im) for im in images]),
                             np.stack([ref[by_name[im.name]] for im in images]))
        row.update(rot_med=errors["rotation_deg_median"], rot_max=errors["rotation_deg_max"],
                   ctr_med=100 * errors["center_rel_median"], ctr_max=100 * errors["center_rel_max"],
                   orient_med=errors["orientation_deg_median"], pair_med=errors["relative_rotation_deg_median"])
    return row


def fmt(value, digits=2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_table(rows: list[dict]) -> None:
    print("| scene | settings | registered | mapper | rot med / max (deg) | orientation / pairwise med (deg) | "
          "centre med / max (% radius) | reproj (px) | extract / match / map (s) | total (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['scene']} | {r['settings']} | FAILED: {r['error'][:90]} | | | | | | | {r['wall_s']:.1f} |")
            continue
        t = r["timings"]
        steps = " / ".join(fmt(t.get(k), 1) for k in ("extract_s", "match_s", "map_s"))
        print(f"| {r['scene']} | {r['settings']} | {r['registered']}/{r['given']} | {r['mapper']} | "
              f"{fmt(r.get('rot_med'), 3)} / {fmt(r.get('rot_max'), 3)} | {fmt(r.get('orient_med'), 3)} / "
              f"{fmt(r.get('pair_med'), 3)} | {fmt(r.get('ctr_med'))} / "
              f"{fmt(r.get('ctr_max'))} | {fmt(r.get('reproj'))} | {steps} | {r['wall_s']:.1f} |")


def print_ratios(rows: list[dict]) -> None:
    """Ours / pycolmap defaults, per scene and settings: ratios of the means over the runs of this
    invocation, and the time ratio of each repeat."""
    base = {}
    for r in rows:
        if r["settings"] == "pycolmap defaults" and "error" not in r:
            base.setdefault(r["scene"], []).append(r)
    if not base:
        return
    print("\n| scene | settings | time ours / theirs | rot med ours / theirs | centre med ours / theirs |")
    print("|---|---|---|---|---|")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["settings"] != "pycolmap defaults" and "error" not in r and r["scene"] in base:
            groups.setdefault((r["scene"], r["settings"]), []).append(r)

    def mean(rs, key):
        vals = [r[key] for r in rs if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    def ratio(a, b):
        return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"

    for (scene, settings), rs in groups.items():
        b = base[scene]
        # the k-th run of ours beside the k-th baseline (the same repeat: the load of the same minutes)
        per_run = ", ".join(ratio(r["wall_s"], p["wall_s"]) for r, p in zip(rs, b))
        print(f"| {scene} | {settings} | {ratio(mean(rs, 'wall_s'), mean(b, 'wall_s'))} (per run {per_run}) | "
              f"{ratio(mean(rs, 'rot_med'), mean(b, 'rot_med'))} | {ratio(mean(rs, 'ctr_med'), mean(b, 'ctr_med'))} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", nargs="+", default=["synthetic", "temple-ring", "lund", "lego-200"])
    parser.add_argument("--max-image-size", nargs="+", type=int, default=[None],
                        help="sweep of max_image_size (default: the config's)")
    parser.add_argument("--quality", nargs="+", default=[None], help="sweep of quality (fast, balanced, max)")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every run")
    parser.add_argument("--baseline", action="store_true", help="also run pycolmap with its defaults")
    parser.add_argument("--synthetic", type=Path, help="an already generated built-in scene (run.py synthetic)")
    parser.add_argument("--synthetic-1080", type=Path, help="an already generated built-in scene at 1080 px, 50 views")
    parser.add_argument("--estimate-too", action="store_true",
                        help="scenes with known intrinsics: also a run with intrinsics=estimate (as pycolmap's defaults)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (ours and baseline interleaved)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/recon-bench-poses"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.scenes:
        path = dataset_path(name, args.work, args.synthetic, args.synthetic_1080)
        if not path.exists():
            print(f"skipping {name}: {path} not found", file=sys.stderr)
            continue
        variants = [[]]
        if args.estimate_too and has_known_intrinsics(path):
            variants.append(["intrinsics=estimate"])
        for _ in range(args.repeat):  # interleaved: a shared machine's load hits both alike
            runs = [(z, q, v) for z in args.max_image_size for q in args.quality for v in variants]
            for size, quality, variant in runs:
                overrides = (list(args.set) + variant + ([f"quality={quality}"] if quality else [])
                             + ([f"max_image_size={size}"] if size is not None else []))
                rows.append(run_one(name, path, args.work, overrides))
                print(f"done: {name} {' '.join(overrides)} in {rows[-1]['wall_s']:.1f}s", file=sys.stderr, flush=True)
            if args.baseline:
                rows.append(run_baseline(name, path, args.work))
                print(f"done: {name} pycolmap defaults in {rows[-1]['wall_s']:.1f}s", file=sys.stderr, flush=True)
    print()
    print_table(rows)
    print_ratios(rows)
    print("\ntargets: synthetic all registered, rot <= 0.2 deg, centre <= 0.5%; temple-ring >= 15/16, "
          "rot <= 1 deg, centre <= 2%; lund >= 27/29; herzjesu-p8 rot and centre medians <= 0.8x pycolmap defaults', "
          "time <= 0.5x; synthetic-1080 no worse than 0.043 deg, 0.08%, 53-68 s")


if __name__ == "__main__":
    main()
