"""Load a typed config: schema defaults <- YAML file(s) <- dotted CLI overrides, then validate.

Errors are `ConfigError`s that name the offending dotted key (and the file), never a deep traceback.
A YAML file may start from others with `_base_: other.yaml` (or a list), resolved relative to itself.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Iterable, List, Optional, Type, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem, with the dotted key (and file) that caused it."""


def _omega_message(err: OmegaConfBaseException, where: str) -> str:
    key = getattr(err, "full_key", None) or ""
    msg = str(err).split("\n")[0].strip()
    prefix = f"{where}: " if where else ""
    return f"{prefix}config key '{key}': {msg}" if key else f"{prefix}{msg}"


def _read_yaml(path: str, seen: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Return the YAML layers of `path`, bases first."""
    path = os.path.abspath(path)
    seen = list(seen or [])
    if path in seen:
        raise ConfigError(f"{path}: _base_ cycle through {seen}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    layers: List[Dict[str, Any]] = []
    for b in bases:
        layers += _read_yaml(os.path.join(os.path.dirname(path), b), seen + [path])
    layers.append({"__file__": path, "data": data})
    return layers


def _check_tree(obj: Any, path: str = "") -> None:
    """Run `check()` on every config dataclass, prefixing errors with its dotted path."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        _check_tree(getattr(obj, f.name), f"{path}{f.name}.")
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as e:
            name, _, msg = str(e).partition(": ")
            raise ConfigError(f"config key '{path}{name}': {msg}") from None


def load_config(schema: Type[T], path: Optional[str] = None, overrides: Iterable[str] = ()) -> T:
    """Build a validated `schema` instance from an optional YAML file and `key=value` overrides."""
    cfg = OmegaConf.structured(schema)
    where = ""
    try:
        if path:
            for layer in _read_yaml(path):
                where = layer["__file__"]
                cfg = OmegaConf.merge(cfg, layer["data"])
        where = "command line"
        overrides = list(overrides)
        for o in overrides:
            if "=" not in o:
                raise ConfigError(f"command line: override {o!r} is not of the form key=value")
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        where = path or ""
        obj = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        raise ConfigError(f"config key '{e.full_key}' is required but not set"
                          + (f" (in {path} or on the command line)" if path else "")) from None
    except OmegaConfBaseException as e:
        raise ConfigError(_omega_message(e, where)) from None
    except ValueError as e:  # a dataclass __post_init__ rejecting a value
        raise ConfigError(f"config: {e}") from None
    _check_tree(obj)
    from edit_rlhf.redaction import register_config

    register_config(obj)  # every writer's scrub() now masks these values wherever they appear
    return obj


def to_dict(cfg: Any) -> Dict[str, Any]:
    """Plain nested dict of a config dataclass (for YAML dumps and MLflow)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def to_yaml(cfg: Any) -> str:
    """YAML of a config dataclass or of a plain dict (e.g. `edit_rlhf.redaction.redacted_config`)."""
    return OmegaConf.to_yaml(OmegaConf.create(cfg) if isinstance(cfg, dict) else OmegaConf.structured(cfg))


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists are kept as their string form."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
