#!/usr/bin/env python3
"""How much of the sky a surface stage covered: for each held-out view of a workspace, the share
of its sky pixels (found in the photo by ``pipeline.geometry.sky.SkyDetector``, which the stage
never saw for these views) where the stage's depth map has a surface (foreground opacity >= 0.5).

    python bench/sky_cover.py W [W ...]            # the sdf stage's held-out depth maps
    python bench/sky_cover.py W --stage idr

0 means the sky was left to the background; a surface painted with sky over a street gives ~1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.geometry.sky import SkyDetector  # noqa: E402
from pipeline.runner.workspace import Workspace  # noqa: E402


def sky_cover(workspace: Path, stage: str = "sdf") -> dict[str, float]:
    """{view name: covered share of its sky} over the views with a depth map and some sky."""
    ws = Workspace(workspace)
    scene = ws.load_scene()
    detect = SkyDetector()
    out = {}
    for i, frame in enumerate(scene.frames):
        path = ws.stage_dir(stage) / "depth" / f"{frame.name}.npy"
        if not path.exists():
            continue
        sky = detect(scene.load_image(i))
        depth = np.load(path)
        if sky.any() and depth.shape == sky.shape:
            out[frame.name] = float(((depth > 0) & sky).sum() / sky.sum())
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workspaces", nargs="+", type=Path)
    parser.add_argument("--stage", default="sdf")
    args = parser.parse_args(argv)
    print("| workspace | views | sky covered (each) | mean |\n|---|---|---|---|")
    for w in args.workspaces:
        cover = sky_cover(w, args.stage)
        each = ", ".join(f"{k}: {v:.3f}" for k, v in cover.items())
        mean = f"{np.mean(list(cover.values())):.3f}" if cover else "-"
        print(f"| {w} | {len(cover)} | {each} | {mean} |")


if __name__ == "__main__":
    main()
