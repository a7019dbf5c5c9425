"""Typed configuration for every layer: dataclasses loaded from YAML, overridable from the command
line, with the range checks their ``__post_init__`` run.

Why in ``shards``: it is the bottom layer (it imports neither ``trainer`` nor ``eval``), so the
shard tools, the trainer and the eval jobs all load their configs with this one loader. Each
component declares its own ``Config`` dataclass next to the code that uses it; a run is one tree of
them. Unknown keys, wrong types and out-of-range values are refused with one ``ConfigError`` naming
the dotted key (``reader.batch_size: must be >= 1, got 0``) while the config is loaded on the
driver, before any worker starts. A union of dataclasses that each carry a ``kind`` literal is a
tagged union: ``kind`` picks the member. A dataclass may define ``prepare_config(data) -> data``
(a classmethod) to fill in defaults that depend on other keys before its fields are built.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

__all__ = ["ConfigError", "above", "apply_override", "at_least", "from_dict", "load", "one_of",
           "require", "to_dict", "within"]


class ConfigError(ValueError):
    """A configuration a user wrote is wrong; the message names the key.

    ``key`` is set when a config's own check raised it (the field name, relative to that config);
    ``under`` re-roots it at the section the loader was building.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(f"{key}: {message}" if key else message)
        self.key, self.detail = key, message

    def under(self, section: str) -> "ConfigError":
        if not (self.key and section):
            return self
        return ConfigError(self.detail, f"{section}.{self.key}")


def require(ok: bool, key: str, message: str) -> None:
    """Raise ``ConfigError(message, key)`` unless ``ok``."""
    if not ok:
        raise ConfigError(message, key)


def at_least(cfg: Any, key: str, low: float, optional: bool = False) -> None:
    """``cfg.<key> >= low`` (``None`` passes when ``optional``)."""
    value = getattr(cfg, key)
    if optional and value is None:
        return
    require(value >= low, key, f"must be >= {low}, got {value!r}")


def above(cfg: Any, key: str, low: float) -> None:
    """``cfg.<key> > low``."""
    value = getattr(cfg, key)
    require(value > low, key, f"must be > {low}, got {value!r}")


def within(cfg: Any, key: str, low: float, high: float, high_open: bool = False) -> None:
    """``low <= cfg.<key> <= high`` (``< high`` when ``high_open``)."""
    value = getattr(cfg, key)
    ok = low <= value and (value < high if high_open else value <= high)
    require(ok, key, f"must be in [{low}, {high}{')' if high_open else ']'}, got {value!r}")


def one_of(cfg: Any, key: str, known: Iterable[str], many: bool = False) -> None:
    """``cfg.<key>`` (or, with ``many``, each item of it) is one of ``known``."""
    value, known = getattr(cfg, key), list(known)
    bad = [v for v in value if v not in known] if many else ([] if value in known else [value])
    require(not bad, key, f"unknown {', '.join(map(repr, bad))}; known: {', '.join(known)}")

T = TypeVar("T")


def from_dict(cls: type[T], data: dict | None, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    prepare = getattr(cls, "prepare_config", None)
    if prepare is not None:
        try:
            data = prepare(dict(data))
        except ConfigError as e:  # a check of the raw mapping names its key; add the section
            raise e.under(path) from None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" under '{path}'" if path else ""
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}{where}; "
            f"known: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{path}.{name}" if path else name)
    try:
        return cls(**kwargs)
    except ConfigError as e:  # the config's own range checks name the field; add the section
        raise e.under(path) from None


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config tree (YAML/JSON friendly)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file (optional) with ``key.sub=value`` overrides applied on top."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
    for item in overrides or []:
        apply_override(data, item)
    return from_dict(cls, data)


def apply_override(data: dict, item: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (so 3, true, [1,2])."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r} has an empty key part")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: '{part}' is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError:
        node[parts[-1]] = raw


def _tagged_members(args: tuple) -> dict[str, type]:
    """``{kind: dataclass}`` when every non-None member of a union is a dataclass whose ``kind``
    field is a one-value Literal (a tagged union), else ``{}``."""
    members = {}
    for arg in args:
        if arg is type(None):
            continue
        if not dataclasses.is_dataclass(arg):
            return {}
        kind = typing.get_type_hints(arg).get("kind")
        values = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else ()
        if len(values) != 1:
            return {}
        members[values[0]] = arg
    return members


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tagged = _tagged_members(args)
        if tagged:
            kind = value.get("kind") if isinstance(value, dict) else None
            if kind not in tagged:
                raise ConfigError(f"{path}.kind: {kind!r} is not one of {', '.join(map(repr, tagged))}")
            return from_dict(tagged[kind], value, path)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def add_arguments(parser: Any, cls: type, defaults: Any = None) -> None:
    """One ``--field-name`` flag per scalar field of dataclass ``cls`` (bools as ``--x / --no-x``),
    defaulting to ``defaults``' values, so a command line exposes a config without re-declaring it;
    ``from_arguments`` builds the config back, through the same checks as a YAML file."""
    import argparse

    defaults = defaults if defaults is not None else cls()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, flag = hints[f.name], "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default)
        elif tp in (int, float, str):
            parser.add_argument(flag, dest=f.name, type=tp, default=default, metavar=f.name.upper(),
                                help=f"default {default}")


def from_arguments(cls: type[T], namespace: Any) -> T:
    """The ``cls`` config from flags ``add_arguments`` declared (range checks name the flag)."""
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if hasattr(namespace, f.name)}
    try:
        return from_dict(cls, values)
    except ConfigError as e:
        if e.key:
            raise ConfigError(e.detail, "--" + e.key.replace("_", "-")) from None
        raise
