#!/usr/bin/env python3
"""The poses stage's last step (4d), switched part by part on the same mapper models.

    python bench/pose_refinement.py                       # 9 built-in models, 3 lego-200 models, temple-ring, herzjesu-p8
    python bench/pose_refinement.py --models syn50s0 lego-200#1

Why the same models: the mapper's result is not repeatable from run to run (COLMAP's vocabulary
tree differs from build to build, and its multi-threaded mapping moves lego-200's worst view
between 1.1 and 5.1 deg with the same matches), so two whole runs compare two mappings as much as
two settings. Here each model is mapped once (the stage with ``extend_tracks=false
final_min_track_length=2``: the mapper's output as it is, cached under ``--work``), then step 4d
(``pipeline.sfm.tracks.finish_model``) runs on copies of it with:

- ``mapper``: nothing (every track, as mapped);
- ``long tracks``: ``final_min_track_length=3``, ``extend_tracks=false``;
- ``extended + long``: ``extend_tracks=true``, ``final_min_track_length=3``, ``align_keypoints=false``
  (adjustments stopped at a relative cost change of ``ba_function_tolerance=1e-6``);
- ``aligned``: the above and step 4e (``align_keypoints=true``: the tracks' keypoints aligned on
  image patches), then adjusted by least squares (``align_loss_scale=0``);
- ``robust``: the same with step 4e's adjustment under a Cauchy loss of twice the keypoint noise
  (``align_loss_scale=2``);
- ``extended again``: the same and step 4f (``extend_after_alignment=true``: the tracks extended
  again with step 4e's poses, the grown tracks aligned, the robust adjustment repeated);
- ``tracked into views``: the defaults, i.e. the same and step 4g (``track_into_views=true``: the
  points tracked by patch alignment into the views where SIFT gave them no keypoint), with one
  robust adjustment after steps 4f and 4g.

Models: ``syn<views>s<seed>`` is the built-in scene at 200 px with textures from ``seed``;
``lego-200#k``, ``temple-ring``, ``herzjesu-p8`` are datasets in ``../shared/data`` (``#k``: the
k-th mapping of the same dataset). Rotation errors after a similarity alignment to the true
cameras: median, 90th percentile, maximum (deg), and the views above 0.3 deg.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datasets import read_scene  # noqa: E402
from datasets.synthetic import SyntheticConfig, generate  # noqa: E402
from pipeline.geometry.alignment import pose_errors  # noqa: E402
from pipeline.runner.stage import run_stage  # noqa: E402
from pipeline.runner.workspace import Workspace  # noqa: E402
from pipeline.sfm.cameras import c2w_from_image  # noqa: E402
from pipeline.sfm.config import EstimationConfig  # noqa: E402
from pipeline.sfm.prepare import prepare, unique_name  # noqa: E402
from pipeline.sfm.keypoints import read_frames_and_images  # noqa: E402
from pipeline.sfm.tracks import finish_model  # noqa: E402
from stages.poses import STAGE  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
DEFAULT_MODELS = [f"syn{n}s{s}" for n in (50, 100, 200) for s in (0, 1, 2)] + \
    ["lego-200#1", "lego-200#2", "lego-200#3", "temple-ring", "herzjesu-p8"]
VARIANTS = {"mapper": None,
            "long tracks": dict(extend_tracks=False, final_min_track_length=3, align_keypoints=False),
            "extended + long": dict(extend_tracks=True, final_min_track_length=3, align_keypoints=False),
            "aligned": dict(align_loss_scale=0.0, extend_after_alignment=False, track_into_views=False),
            "robust": dict(extend_after_alignment=False, track_into_views=False),
            "extended again": dict(track_into_views=False),
            "tracked into views (default)": {}}


def dataset(model: str, work: Path) -> Path:
    if model.startswith("syn"):
        views, seed = (int(v) for v in model[3:].split("s"))
        out = work / f"synthetic-{views}-200-s{seed}"
        generate(out, SyntheticConfig(views=views, size=200, seed=seed))  # reuses a folder with the same config
        return out
    return DATA / model.split("#")[0]


def mapped(model: str, data: Path, work: Path) -> Path:
    """The workspace of ``model``'s mapper output (made once)."""
    ws = work / f"ws-{model.replace('#', '-')}"
    if not (ws / "poses" / "report.json").exists():
        shutil.rmtree(ws, ignore_errors=True)
        config = STAGE.load_config(None, [f"data={data}", "estimate=true", "extend_tracks=false",
                                          "final_min_track_length=2"])
        run_stage(STAGE, Workspace(ws), config, force=True)
    return ws


def rotation_stats(rec, truth: dict) -> dict:
    images = [rec.images[i] for i in sorted(rec.reg_image_ids())]
    errors = pose_errors(np.stack([c2w_from_image(im) for im in images]), np.stack([truth[im.name] for im in images]))
    r = np.asarray(errors["rotation_deg"])
    return {"median": float(np.median(r)), "p90": float(np.percentile(r, 90)), "max": float(r.max()),
            "over_0.3": int((r > 0.3).sum()), "views": len(r)}


def main(argv=None) -> None:
    import pycolmap

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/recon-bench-pose-refinement"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models:
        data = dataset(model, args.work)
        if not data.exists():
            print(f"{model}: {data} not found, skipped", file=sys.stderr)
            continue
        ws = mapped(model, data, args.work)
        report = json.loads((ws / "poses" / "report.json").read_text())
        scene = read_scene(data)
        image_dir = args.work / f"images-{model.replace('#', '-')}"  # the files COLMAP reads, as the stage makes them
        prepare(scene, image_dir, logging.getLogger("pose_refinement"))
        base = pycolmap.Reconstruction(str(ws / "poses" / "sparse"))
        db_path = ws / "poses" / "colmap" / "database.db"
        frames_and_images = read_frames_and_images(pycolmap, base, db_path, image_dir)
        used: set[str] = set()  # the stems the stage gave the images (every image of these datasets reads)
        by_stem = {unique_name(f.name or f.image_path.stem, used): f.c2w for f in scene.frames}
        truth = {im.name: by_stem[Path(im.name).stem] for im in base.images.values()}
        known = report["intrinsics"].startswith("known")
        row = {"model": model}
        for variant, settings in VARIANTS.items():
            rec = pycolmap.Reconstruction(base)
            started = time.time()
            if settings is not None:
                cfg = replace(EstimationConfig(), **settings)
                finish_model(pycolmap, rec, db_path, cfg, not known, report["effective_settings"]["max_reproj_error"],
                             frames_and_images=frames_and_images)
            row[variant] = dict(rotation_stats(rec, truth), seconds=time.time() - started)
        rows.append(row)
        print(f"{model}: " + "; ".join(f"{v} {row[v]['median']:.3f} / {row[v]['max']:.3f} deg, {row[v]['over_0.3']} over 0.3"
                                       for v in VARIANTS), file=sys.stderr, flush=True)
    print("| model | " + " | ".join(f"{v}: med / p90 / max (deg), > 0.3 deg" + (", step 4d" if v != "mapper" else "")
                                   for v in VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    for row in rows:
        cells = [f"{row[v]['median']:.3f} / {row[v]['p90']:.3f} / {row[v]['max']:.3f}, {row[v]['over_0.3']}"
                 + (f", {row[v]['seconds']:.1f} s" if v != "mapper" else "") for v in VARIANTS]
        print(f"| {row['model']} ({row['mapper']['views']} views) | " + " | ".join(cells) + " |")
    if rows:
        print("\nmean views above 0.3 deg: " + ", ".join(
            f"{v} {np.mean([r[v]['over_0.3'] for r in rows]):.1f}" for v in VARIANTS))
        for v in list(VARIANTS)[1:]:
            fewer = sum(r[v]["over_0.3"] < r["mapper"]["over_0.3"] for r in rows)
            more = sum(r[v]["over_0.3"] > r["mapper"]["over_0.3"] for r in rows)
            lower_p90 = sum(r[v]["p90"] < r["mapper"]["p90"] for r in rows)
            print(f"{v} against the mapper: fewer views above 0.3 deg in {fewer} of {len(rows)} models, more in "
                  f"{more}; lower 90th percentile in {lower_p90}")
        for new, old in (("robust", "aligned"), ("extended again", "robust"),
                         ("tracked into views (default)", "extended again")):
            print(f"{new} against {old}: " + "; ".join(
                f"{stat} lower in {sum(r[new][stat] < r[old][stat] for r in rows)}, higher in "
                f"{sum(r[new][stat] > r[old][stat] for r in rows)}" for stat in ("over_0.3", "median", "p90", "max")))
    (args.work / "rows.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
