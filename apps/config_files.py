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
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})", "fix the JSON syntax") from exc
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} must hold a JSON object", f"e.g. {example}")
    return cfg
