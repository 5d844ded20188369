"""Estimated camera poses against the dataset's own cameras."""
from __future__ import annotations

import json

import numpy as np

from datasets import read_scene
from pipeline.evaluation.ground_truth import dataset_folder
from pipeline.geometry.alignment import pose_errors
from pipeline.runner.workspace import Workspace


def evaluate_poses(workspace: Workspace, scene, sim) -> dict:
    """Pose errors (original frame, after a similarity alignment) against the dataset's cameras,
    when the poses stage estimated them; else ``{"skipped": reason}``."""
    report_path = workspace.stage_dir("poses") / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if report.get("mode", "import") == "import":
        return {"skipped": "poses were imported from the dataset (they are the reference)"}
    folder = dataset_folder(scene)
    if folder is None:
        return {"skipped": "the workspace does not record its dataset folder"}
    reference = read_scene(folder)
    ref_by_name = {f.name: f.c2w for f in reference.frames if f.c2w is not None}
    if not ref_by_name:
        return {"skipped": f"the dataset {folder} has no reference cameras"}
    inv = sim.inverse()
    pairs = [(inv.apply_c2w(f.c2w), ref_by_name[f.name]) for f in scene.frames if f.name in ref_by_name]
    if len(pairs) < 3:
        return {"skipped": f"only {len(pairs)} estimated cameras match reference cameras by name"}
    est, ref = (np.stack(x) for x in zip(*pairs))
    errors = pose_errors(est, ref)
    errors["reference"] = str(folder)
    errors["registered"] = f"{len(pairs)}/{len(reference.frames)}"
    return errors
