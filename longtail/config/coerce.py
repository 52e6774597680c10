"""Mapping -> dataclass: every key checked against the annotation, named by its dotted path."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from ..errors import ConfigError


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp``; return it converted."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        # Stages are named in messages by their name, as --set addresses them.
        label = lambda i, v: v["name"] if dataclasses.is_dataclass(item) and isinstance(v, dict) and "name" in v else i  # noqa: E731
        return [_coerce(v, item, f"{key}.{label(i, v)}") for i, v in enumerate(value)]
    if origin is tuple:  # tuple[float, float] (a fixed length) or tuple[float, ...]
        args = typing.get_args(tp)
        items = (args[0],) * len(value) if len(args) == 2 and args[1] is Ellipsis and isinstance(value, (list, tuple)) else args
        if not isinstance(value, (list, tuple)) or len(value) != len(items) or not items:
            what = f"{len(args)} values" if Ellipsis not in args else "a non-empty list"
            raise ConfigError(f"{key}: expected {what} [..], got {value!r}")
        return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, items)))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        args = typing.get_args(tp)
        return {k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()} if args else dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "2e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def from_dict(cls, data, prefix: str = ""):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by their dotted name."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'recipe'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    fields_meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {dotted!r}; valid keys here: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(value, hints[key], dotted)
        choices = fields_meta[key].get("choices")
        if choices and kwargs[key] not in choices:
            raise ConfigError(f"{dotted}: {kwargs[key]!r} is not one of {', '.join(choices)}")
    return cls(**kwargs)


def parse_params(cls, params: dict, stage: str):
    """Check a stage's method-specific ``params`` against the method's dataclass."""
    return from_dict(cls, params, f"stages.{stage}.params")
