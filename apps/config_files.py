"""Reading a user's ``--encoder config.json``: one place for the checks every fitting command makes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from fieldstudio.errors import ConfigError, InputError


def read_encoder_file(encoder: str, presets: Iterable[str], example: str = '{"otype": "HashGrid"}') -> dict[str, Any]:
    """``encoder`` names no preset, so it must be a JSON file holding an object; return that object."""
    path = Path(encoder)
    if path.suffix.lower() != ".json":
        raise ConfigError(f"unknown encoder '{encoder}'", f"use one of {', '.join(presets)} or a path to a JSON config")
    if not path.exists():
        raise InputError(f"encoder config not found: {path}", "check the path")
    return _json_object(path.read_text(), str(path), example)


def read_config_arg(value: str, flag: str, example: str) -> dict[str, Any]:
    """A flag's JSON object, written inline (``'{"resolution": 160}'``) or as the path of a JSON file."""
    if value.lstrip().startswith("{"):
        return _json_object(value, flag, example)
    path = Path(value)
    if not path.is_file():
        raise InputError(f"{flag}: {path} is neither a JSON object nor a file",
                         f"write the object inline, e.g. {flag} '{example}', or give the path of a .json file")
    return _json_object(path.read_text(), str(path), example)


def _json_object(text: str, source: str, example: str) -> dict[str, Any]:
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source} is not valid JSON ({exc.msg}, line {exc.lineno})", "fix the JSON syntax") from exc
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source} must hold a JSON object", f"e.g. {example}")
    return cfg
