"""Typed configs: YAML files in ``configs/`` loaded into dataclasses, with ``key=value`` overrides.

Built on OmegaConf structured configs, which type-check every value; errors are re-raised as
:class:`ConfigError` naming the key, the source (file or command line) and the valid keys.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, Optional, Sequence, Type, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from pipeline.runner.log import get_logger

T = TypeVar("T")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """An invalid configuration: the message names the key and lists the valid ones."""


def _field_types(cls) -> dict:
    """Field name -> its type, with postponed (string) annotations resolved: stage modules use
    ``from __future__ import annotations``, so ``dataclasses.fields(cls)[i].type`` is a string."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: fall back to what dataclasses holds
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}


def valid_keys(cls, prefix: str = "") -> list[str]:
    """Every settable key of a config dataclass, nested ones dotted (``model.grid.finest_resolution``)."""
    keys = []
    for name, tp in _field_types(cls).items():
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            keys += valid_keys(tp, prefix + name + ".")
        else:
            keys.append(prefix + name)
    return keys


def _explain(exc: OmegaConfBaseException, cls, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    valid = ", ".join(valid_keys(cls))
    if isinstance(exc, ConfigKeyError):
        msg = f"unknown config key {key!r} in {source}; valid keys of {cls.__name__}: {valid}"
    elif isinstance(exc, ValidationError):
        detail = str(exc).splitlines()[0]
        msg = f"wrong type for config key {key!r} in {source}: {detail}"
    else:
        msg = f"invalid config in {source} (key {key!r}): {str(exc).splitlines()[0]}; valid keys: {valid}"
    return ConfigError(msg)


def resolve_config_path(path: str | Path) -> Path:
    """A config given as a path, or as a bare name looked up in ``configs/`` (``nerf-hash``)."""
    p = Path(path)
    if p.exists():
        return p
    for candidate in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if candidate.exists():
            return candidate
    raise ConfigError(f"config file {str(path)!r} not found (looked in the current folder and {CONFIG_DIR}); "
                      f"available: {', '.join(sorted(q.stem for q in CONFIG_DIR.glob('*.yaml')))}")


def _rename_key(cls, key: str, source: str) -> str:
    """A config key renamed in this release -> its new name, with a warning (``cls.renamed_keys``,
    a ClassVar dict old -> new, keeps old configs and command lines working for one release)."""
    renamed = getattr(cls, "renamed_keys", {})
    if key not in renamed:
        return key
    get_logger("config").warning(f"config key {key!r} ({source}) is renamed {renamed[key]!r}; "
                                 f"the old name stops working in the next release")
    return renamed[key]


def _field_type(cls, dotted: str):
    """The type of a dotted key of a config dataclass, or None when it names no field."""
    tp = cls
    for name in dotted.split("."):
        if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            return None
        tp = _field_types(tp).get(name)
    return tp


def _keep_string(cls, override: str) -> str:
    """``key=value`` with the value quoted when the key is a string field: YAML would read ``on``,
    ``off``, ``yes`` or ``no`` as a boolean and hand the field ``'True'`` (``inside_out=on``)."""
    key, value = override.split("=", 1)
    if _field_type(cls, key) is str and value and value[0] not in "'\"" and "'" not in value:
        return f"{key}='{value}'"
    return override


def load_config(cls: Type[T], path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> T:
    """Build a ``cls`` instance from its defaults, then a YAML file, then ``key=value`` overrides."""
    try:
        conf = OmegaConf.structured(cls)
    except OmegaConfBaseException as exc:  # a bug in the dataclass itself
        raise ConfigError(f"config class {cls.__name__} is invalid: {exc}") from exc
    if path is not None:
        resolved = resolve_config_path(path)
        try:
            loaded = OmegaConf.load(resolved)
        except Exception as exc:
            raise ConfigError(f"{resolved}: not valid YAML ({' '.join(str(exc).split())}); fix the file") from None
        if getattr(cls, "renamed_keys", None) and isinstance(loaded, DictConfig):
            loaded = OmegaConf.create({_rename_key(cls, str(k), str(resolved)): v for k, v in loaded.items()})
        try:
            conf = OmegaConf.merge(conf, loaded)
        except OmegaConfBaseException as exc:
            raise _explain(exc, cls, str(resolved)) from None
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}; valid keys: {', '.join(valid_keys(cls))}")
    overrides = [_rename_key(cls, o.split("=", 1)[0], "command line") + "=" + o.split("=", 1)[1] for o in overrides]
    overrides = [_keep_string(cls, o) for o in overrides]
    try:
        conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(conf)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise _explain(exc, cls, "command-line overrides") from None


def config_to_dict(config: Any) -> dict:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def config_hash(config: Any) -> str:
    """A stable hash of a config's values (used to decide whether a stage is up to date)."""
    blob = json.dumps(config_to_dict(config), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
