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


def from_dict(cls, data, prefix: str = "", op: str | None = None):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by their dotted name.

    A field's metadata may add ``choices`` (allowed values) or ``check`` (a range test) with ``needs`` (what a
    value must be). ``op`` (e.g. "augment op 'cutout'") names the mapping as the parameters of one op: its
    messages then say "unknown / missing parameter", and a missing field without a default is named here
    rather than left to the dataclass's TypeError.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'recipe'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            if op is not None:
                raise ConfigError(f"{op}: unknown parameter {key!r}; expected one of: {', '.join(fields) or 'none'}")
            dotted = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"unknown config key {dotted!r}; valid keys here: {', '.join(sorted(fields))}")
    if op is not None:
        for key, f in fields.items():
            if key not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{op}: missing parameter {key!r}")
    kwargs = {}
    for key, value in data.items():
        meta = fields[key].metadata
        dotted = f"{op}: parameter {key!r}" if op is not None else (f"{prefix}.{key}" if prefix else str(key))
        try:
            kwargs[key] = _coerce(value, hints[key], dotted if op is None else key)
        except ConfigError as e:
            if op is None:
                raise
            raise ConfigError(f"{dotted} {meta.get('needs') or 'is invalid'} ({e}), got {value!r}") from None
        choices, check = meta.get("choices"), meta.get("check")
        if choices and kwargs[key] not in choices:
            raise ConfigError(f"{dotted}: {kwargs[key]!r} is not one of {', '.join(choices)}")
        if check is not None and not check(kwargs[key]):
            raise ConfigError(f"{dotted} {meta.get('needs') or 'is invalid'}, got {value!r}")
    return cls(**kwargs)


def parse_params(cls, params: dict, stage: str):
    """Check a stage's method-specific ``params`` against the method's dataclass."""
    return from_dict(cls, params, f"stages.{stage}.params")
