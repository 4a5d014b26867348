"""Dataclass configs, presets as data files, dotted overrides.

A config is a (nested) dataclass whose fields all have defaults. A preset is a YAML file holding any subset
of its keys; presets live in a package folder and are listed by name (``tiny``, ``default``, ``paper``).
``--config NAME|PATH`` picks one, and ``key.sub=value`` overrides follow. Unknown keys and wrong types are
rejected with the offending dotted key named. The resolved config is written as ``config.yaml`` into
every output folder, so each output says what made it (as nanoGPT saves its config in every checkpoint).

    cfg = load_config(BuildConfig, "default", ["filter.min_clip_seconds=2"], preset_dir=PRESETS)
    save_config(cfg, out_dir)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from auteur.errors import ConfigError
from auteur.io import atomic_write_text

T = TypeVar("T")


class _Raw(str):
    """A value typed on the command line; converted according to the field it lands in."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _yaml(value: str, key: str) -> Any:
    """A command-line value read as YAML (``[a, b]``, ``{k: v}``); ConfigError when it does not parse."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"config key '{key}': {value!r} is not valid YAML ({str(e).splitlines()[0]})") from None


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting command-line strings); raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return _yaml(value, key) if isinstance(value, _Raw) else value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if isinstance(value, _Raw) and value.strip().lower() in {"null", "none", "~"} and type(None) in args:
            return None
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"config key '{key}': null is not allowed (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config key '{key}': {value!r} is not {_type_name(tp)}")
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, _Raw):
            for c in choices:
                if str(c) == value:
                    return c
        if value in choices:
            return value
        raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(map(str, choices))}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, _Raw):
            value = _yaml(value, key)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if isinstance(value, _Raw):
            # "a,b" on the command line is a list too (paths rarely parse as YAML lists)
            value = _yaml(value, key) if value.lstrip().startswith("[") else [_Raw(v) for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if isinstance(value, _Raw):
            value = _yaml(value, key)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {type(value).__name__}")
        args = get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, _Raw):
            low = value.strip().lower()
            if low in {"true", "yes", "on", "1"}:
                return True
            if low in {"false", "no", "off", "0"}:
                return False
        elif isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, _Raw):
            try:
                return int(value)
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, _Raw) or (isinstance(value, str) and not isinstance(value, bool)):
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {type(value).__name__} {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"config key '{key}': expected a path, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported field type {_type_name(tp)}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (partial) mapping; unknown keys and wrong types raise ConfigError."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{key}' (known here: {known})")
        kwargs[k] = _convert(v, hints[k], key)
    # nested dataclass fields that were not given still need their own defaults
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"config {cls.__name__}: {e}") from None


def to_dict(obj: Any) -> Any:
    """A plain (YAML-safe) mapping of a dataclass config: paths as strings, tuples as lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _set_dotted(tree: dict[str, Any], cls: type, dotted: str, raw: str) -> None:
    """Set ``dotted`` in the nested mapping ``tree``, checking each part against the dataclass ``cls``."""
    parts = dotted.split(".")
    node, node_cls = tree, cls
    for depth, part in enumerate(parts):
        key = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if node_cls is not None:
            names = {f.name for f in dataclasses.fields(node_cls)}
            if part not in names:
                raise ConfigError(f"unknown config key '{key}' (known here: {', '.join(sorted(names))})")
            hint = _hints(node_cls)[part]
            next_cls = hint if dataclasses.is_dataclass(hint) else None
        else:
            next_cls = None  # inside a free-form dict field
        if last:
            node[part] = _Raw(raw)
            return
        child = node.get(part)
        if not isinstance(child, dict):
            if node_cls is not None and next_cls is None and get_origin(_hints(node_cls)[part]) is not dict:
                raise ConfigError(f"config key '{key}' has no sub-keys (cannot set '{dotted}')")
            child = {}
            node[part] = child
        node, node_cls = child, next_cls


def parse_overrides(cls: type, overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested mapping of raw values, checking every key against ``cls``."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has no key")
        _set_dotted(tree, cls, key, raw)
    return tree


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def list_presets(preset_dir: str | Path) -> list[str]:
    """Names of the presets (``*.yaml`` files) in ``preset_dir``, sorted."""
    return sorted(p.stem for p in Path(preset_dir).glob("*.yaml"))


def read_preset(name_or_path: str | Path, preset_dir: str | Path) -> dict[str, Any]:
    """The mapping in a preset file, found by name in ``preset_dir`` or by path."""
    text = str(name_or_path)
    path = Path(preset_dir) / f"{text}.yaml"
    if not path.exists():
        path = Path(text)
        if not (path.suffix in {".yaml", ".yml"} and path.exists()):
            if not path.exists() and (path.suffix in {".yaml", ".yml"} or len(path.parts) > 1):
                raise ConfigError(f"no such checkpoint folder or preset file: {text}")
            names = ", ".join(list_presets(preset_dir)) or "none"
            raise ConfigError(f"unknown preset '{text}': not a preset name ({names}) nor an existing .yaml file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"preset {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must hold a mapping of config keys, not {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:  # a preset may extend another: `base: default` then only the keys that differ
        if str(base) == text or Path(str(base)).stem == path.stem:
            raise ConfigError(f"preset {path} names itself as its base")
        data = _deep_merge(read_preset(base, preset_dir), data)
    return data


def load_config(
    cls: type[T],
    name_or_path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    preset_dir: str | Path | None = None,
) -> T:
    """Resolve a config: the dataclass defaults, then the preset (if any), then the dotted overrides."""
    data: dict[str, Any] = {}
    if name_or_path is not None:
        if preset_dir is None:
            raise ConfigError("a preset name was given but no preset folder is known")
        data = read_preset(name_or_path, preset_dir)
    data = _deep_merge(data, parse_overrides(cls, overrides))
    return from_dict(cls, data)


def dump_config(cfg: Any) -> str:
    """The YAML text of a resolved config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: Any, folder: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config as ``config.yaml`` in ``folder`` (atomically)."""
    return atomic_write_text(Path(folder) / name, dump_config(cfg))
