"""Fingerprints of what a stage reads, to decide whether its output is up to date, and the words that
say what changed when it is not.

Workspace inputs (``poses/transforms.json``) are hashed by content. Data outside the workspace (a
dataset folder) is fingerprinted by its listing: every file's relative name, size and modification
time, so a folder of thousands of photos costs one ``stat`` per file, not a read of every byte.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Optional

# a listing is kept in the manifest for the "what changed" message; above this many files only its
# digest is kept (the message then says the folder changed, not which files)
MAX_LISTED_FILES = 20000


def file_fingerprint(path: Path) -> str:
    """A workspace input: a stage folder by its manifest, a file by its content (size and mtime
    above 64 MiB)."""
    if path.is_dir():
        manifest = path / "manifest.json"
        return file_fingerprint(manifest) if manifest.exists() else f"dir:{path.stat().st_mtime_ns}"
    st = path.stat()
    if st.st_size > 64 << 20:
        return f"size:{st.st_size}:mtime:{st.st_mtime_ns}"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def data_listing(path: Path, exclude: Iterable[Path] = ()) -> dict[str, list[int]]:
    """``relative name -> [size, mtime_ns]`` of every file under the folder ``path`` (hidden files and
    folders, and the folders in ``exclude`` such as the workspace itself, left out). A file path
    stands for its folder: a ``transforms.json`` or ``*_par.txt`` names images beside it."""
    path = Path(path)
    root = path if path.is_dir() else path.parent
    excluded = {Path(p).resolve() for p in exclude}
    listing = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() not in excluded)
        for name in sorted(files):
            if name.startswith("."):
                continue
            try:
                st = (here / name).stat()
            except OSError:  # a dangling link: the reader reports it
                continue
            listing[str((here / name).relative_to(root))] = [st.st_size, st.st_mtime_ns]
    return listing


def listing_digest(listing: dict) -> str:
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()[:16]


def describe_listing_change(old: Optional[dict], new: dict, label: str) -> str:
    """``"dataset /d: 15 files removed (r_10.png, r_11.png, ...), 1 modified (a.png)"``."""
    if old is None:
        return f"{label} changed"
    removed = sorted(set(old) - set(new))
    added = sorted(set(new) - set(old))
    modified = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    parts = []
    for count_name, names in (("added", added), ("removed", removed), ("modified", modified)):
        if names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            parts.append(f"{len(names)} file{'s' if len(names) > 1 else ''} {count_name} ({shown})")
    return f"{label}: " + ("; ".join(parts) if parts else "changed")


def flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def describe_config_change(old: Optional[dict], new: dict) -> str:
    """``"config: max_time_s 600 -> 60, model.width 64 -> 32"``."""
    if old is None:
        return "config changed"
    a, b = flatten(old), flatten(new)
    changed = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if not changed:
        return "config changed"
    return "config: " + ", ".join(changed[:5]) + (f" (+{len(changed) - 5} more)" if len(changed) > 5 else "")
