"""Checking tcnn-style JSON configs field by field.

A component declares its fields as ``{name: Field(type, default)}``; `parse_fields` fills in
defaults, rejects unknown names (listing the valid ones, so a typo is obvious) and wrong types,
and returns a plain dict that round-trips through JSON.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import ConfigError

_MISSING = object()


@dataclass(frozen=True)
class Field:
    type: type | tuple[type, ...]
    default: Any = _MISSING
    choices: tuple | None = None  # for strings: compared case-insensitively, stored canonical
    check: Callable[[Any], str | None] | None = None  # returns an error text or None
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t)
    return {int: "integer", float: "number", str: "string", bool: "true/false", list: "list", dict: "object"}.get(t, t.__name__)


def _article(t) -> str:
    name = _type_name(t)
    return ("an " if name[0] in "aeiou" else "a ") + name


def _coerce(name: str, value: Any, spec: Field, where: str) -> Any:
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    ok = False
    for t in types:
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            value, ok = float(value), True
            break
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            ok = True
            break
        if t is int and isinstance(value, float) and value.is_integer():
            value, ok = int(value), True
            break
        if t is bool and isinstance(value, bool):
            ok = True
            break
        if t not in (int, float, bool) and isinstance(value, t):
            ok = True
            break
        if t is type(None) and value is None:
            ok = True
            break
    if not ok:
        raise ConfigError(
            f"{where}: field '{name}' must be {_article(spec.type)}, got {value!r}",
            f"write e.g. \"{name}\": {spec.default!r}" if not spec.required else f"give '{name}' {_article(spec.type)}",
        )
    if spec.choices is not None and isinstance(value, str):
        lowered = {c.lower(): c for c in spec.choices}
        if value.lower() not in lowered:
            raise ConfigError(
                f"{where}: field '{name}' is {value!r}", f"use one of {', '.join(spec.choices)}"
            )
        value = lowered[value.lower()]
    if spec.check is not None:
        msg = spec.check(value)
        if msg:
            raise ConfigError(f"{where}: field '{name}' = {value!r} {msg}", f"change '{name}'")
    return value


def parse_fields(config: Mapping[str, Any], fields: Mapping[str, Field], where: str,
                 ignore: tuple[str, ...] = ("otype",)) -> dict[str, Any]:
    """Validate `config` against `fields`; return every field with defaults filled in."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: config must be a JSON object, got {type(config).__name__}",
                          'write it as {"otype": ..., ...}')
    out: dict[str, Any] = {}
    for key in config:
        if key in ignore:
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"valid fields: {', '.join(sorted(fields)) or '(none)'}"
            raise ConfigError(f"{where}: unknown field '{key}'", hint)
    for name, spec in fields.items():
        if name in config:
            out[name] = _coerce(name, config[name], spec, where)
        elif spec.required:
            raise ConfigError(f"{where}: field '{name}' is required", f"add \"{name}\": <{_type_name(spec.type)}>")
        else:
            out[name] = spec.default
    return out


def positive(v) -> str | None:
    return None if v > 0 else "must be > 0"


def at_least(n):
    def check(v):
        return None if v >= n else f"must be >= {n}"
    return check


def between(lo, hi):
    def check(v):
        return None if lo <= v <= hi else f"must be between {lo} and {hi}"
    return check
