"""Where the metric scale of the panorama centres comes from, and the frame the centres are given in.

Structure from motion knows shape, not size. The sources, in the order they are tried:
1. ``known_distance=A,B,metres``: one measured distance between two panorama centres;
2. ``camera_height_m=H``: the cameras stood H above the floor; the floor plane is fitted to the sparse
   points under the cameras (:mod:`pipeline.panoramas.floor`) and found by a photometric sweep of
   the panoramas' lower hemispheres (:mod:`pipeline.panoramas.floor_sweep`), one of them chosen
   (:mod:`pipeline.panoramas.floor_choice`);
3. ``dataset poses``: the poses were imported from a dataset that states its poses are in metres
   (a ZInD ``poses.json``, the built-in room's ``centers.json``); the dataset's own frame is kept;
4. none: the centres stay in the poses stage's normalised frame, in relative units.
A source that cannot be used (no floor to fit) is reported and the next one is tried.

The output frame: the normalised frame (+z up) scaled to metres; when a floor plane was fitted it
is levelled onto the floor and z = 0 is the floor. :class:`MetricFrame` holds the similarity from
the normalised frame to this output frame and the scale's relative 1-sigma.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.geometry.normalize import Similarity, rotation_aligning
from pipeline.panoramas.floor import FloorFit


@dataclass
class KnownDistance:
    first: str
    second: str
    metres: float
    sigma_m: float


@dataclass
class MetricFrame:
    """How normalised coordinates become output coordinates (x_out = transform(x_normalised))."""

    units: str  # "m" | "relative"
    source: str  # "known_distance" | "camera_height" | "dataset poses" | "none"
    transform: Similarity
    rel_sigma: Optional[float]  # relative 1-sigma of the scale; None when the scale is taken as exact
    details: dict = field(default_factory=dict)  # what the scale rests on, in numbers and words
    known: Optional[KnownDistance] = None

    def to_dict(self) -> dict:
        return {"name": self.source, "units": self.units, "scale_rel_sigma": self.rel_sigma, **self.details}


def parse_known_distance(text: str, names: list[str], sigma_m: float) -> KnownDistance:
    """``"A,B,metres"`` -> KnownDistance; A and B are image stems (a file name's extension is dropped).
    Raises ValueError naming what is wrong and listing the panoramas there are."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"known_distance={text!r}: give two panorama names and a distance in metres, "
                         f"e.g. known_distance={names[0]},{names[-1]},3.20")
    try:
        metres = float(parts[2])
    except ValueError:
        raise ValueError(f"known_distance={text!r}: {parts[2]!r} is not a distance in metres") from None
    if not metres > 0:
        raise ValueError(f"known_distance={text!r}: the distance must be positive")
    stems = [Path(p).stem if Path(p).stem in names else p for p in parts[:2]]
    missing = [s for s in stems if s not in names]
    if missing:
        raise ValueError(f"known_distance={text!r}: no posed panorama named {', '.join(map(repr, missing))}; "
                         f"the panoramas are: {', '.join(names)}")
    if stems[0] == stems[1]:
        raise ValueError(f"known_distance={text!r}: the two panoramas must differ")
    return KnownDistance(stems[0], stems[1], metres, float(sigma_m))


def _floor_frame(scale: float, floor: Optional[FloorFit]) -> Similarity:
    """Normalised -> output: scaled; levelled onto the floor with z = 0 on it when there is one."""
    if floor is None:
        return Similarity(scale)
    rotation = rotation_aligning(floor.normal, np.array([0.0, 0.0, 1.0]))
    # rotation @ normal = +z, so the output z of x is scale * (normal . x - offset)
    return Similarity(scale, rotation, np.array([0.0, 0.0, -scale * floor.offset]))


def _floor_details(floor: Optional[FloorFit], scale: float) -> dict:
    if floor is None:
        return {}
    d = {"fitted": True, **floor.to_dict()}
    for key in ("residual_rms", "offset_sigma", "sigma_from_pairs", "mean_curve_peak_height"):
        if d.get(key) is not None:  # lengths: into the output units
            d[key] *= scale
    if "searched_heights" in d:
        d["searched_heights"] = [h * scale for h in d["searched_heights"]]
    if "pair_heights" in d:
        d["pair_heights"] = {k: v if k.endswith("_rel") else v * scale for k, v in d["pair_heights"].items()}
    for pair in d.get("pair_estimates", []):
        pair["height"] *= scale
    d.pop("offset")
    return {"floor": d}


def from_known_distance(known: KnownDistance, names: list[str], centres: np.ndarray,
                        floor: Optional[FloorFit]) -> MetricFrame:
    """Scale so that the two named centres (normalised frame, (N, 3)) are ``known.metres`` apart."""
    i, j = names.index(known.first), names.index(known.second)
    relative = float(np.linalg.norm(centres[i] - centres[j]))
    if relative < 1e-9:
        raise ValueError(f"known_distance: {known.first} and {known.second} have the same estimated centre")
    scale = known.metres / relative
    details = {"pair": [known.first, known.second], "distance_m": known.metres, "distance_sigma_m": known.sigma_m,
               "text": f"the measured distance {known.metres:g} m between {known.first} and {known.second}"}
    # the scale's own uncertainty from the centres is added where the distances are computed
    return MetricFrame("m", "known_distance", _floor_frame(scale, floor), known.sigma_m / known.metres,
                       {**details, **_floor_details(floor, scale)}, known)


def from_camera_height(height_m: float, height_sigma_m: float, centres: np.ndarray, floor: FloorFit) -> MetricFrame:
    """Scale so that the cameras (normalised centres (N, 3)) stand ``height_m`` above the fitted floor
    on average. The scale's relative sigma combines the floor offset's sigma, the spread of the
    cameras' heights (a tripod kept at one height: small) and the stated sigma of H."""
    heights = floor.height(centres)
    mean = float(heights.mean())
    if mean <= 0:
        raise ValueError("the fitted floor is not below the cameras")
    scale = height_m / mean
    spread = float(heights.std(ddof=1)) if len(heights) > 1 else 0.0
    rel = np.sqrt((floor.offset_sigma ** 2 + spread ** 2 / len(heights)) / mean ** 2 + (height_sigma_m / height_m) ** 2)
    details = {"camera_height_m": height_m, "camera_height_sigma_m": height_sigma_m,
               "camera_heights_m": {"min": float(heights.min() * scale), "max": float(heights.max() * scale),
                                    "std": spread * scale},
               "text": f"the cameras stood {height_m:g} m above the floor plane "
                       f"({'fitted to the sparse points' if floor.method == 'sparse points' else 'from the ' + floor.method})"}
    return MetricFrame("m", "camera_height", _floor_frame(scale, floor), float(rel),
                       {**details, **_floor_details(floor, scale)})


def relative_frame(floor: Optional[FloorFit], reason: str) -> MetricFrame:
    text = ("relative units: no metric scale was given (known_distance=A,B,metres or camera_height_m=H), "
            "so distances are in the poses stage's normalised units (the scene fits a sphere of radius 1); "
            "only their ratios mean something") + (f"; {reason}" if reason else "")
    return MetricFrame("relative", "none", _floor_frame(1.0, floor), None,
                       {"text": text, **_floor_details(floor, 1.0)})


def dataset_units(source: Optional[Path]) -> Optional[str]:
    """Why the dataset at ``source`` holds metric poses, or None when it does not say so. Known: a
    ZInD-style ``poses.json`` (``center_xy_m``, units metres) and the built-in room (``centers.json``,
    metres)."""
    if source is None or not Path(source).is_dir():
        return None
    source = Path(source)
    try:
        if (source / "centers.json").is_file():
            convention = json.loads((source / "centers.json").read_text()).get("convention", "")
            if "metres" in convention or "meters" in convention:
                return f"{source / 'centers.json'} states its world frame is in metres"
        if (source / "poses.json").is_file():
            data = json.loads((source / "poses.json").read_text())
            units = str(data.get("units", "")).lower()
            entries = data.get("panoramas", [])
            if units in ("metres", "meters", "m") or (entries and "center_xy_m" in entries[0]):
                return f"{source / 'poses.json'} gives ZInD poses in metres (center_xy_m, camera_height_m)"
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return None


def from_dataset(normalization: Similarity, reason: str) -> MetricFrame:
    """The dataset's own metric frame: undo the poses stage's normalisation."""
    return MetricFrame("m", "dataset poses", normalization.inverse(), None,
                       {"text": f"the imported poses' own units: {reason}"})
