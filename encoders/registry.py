"""Encoders by name: ``build_encoding({"otype": "HashGrid", ...}, n_input_dims=3)``.

Names are matched case-insensitively, as tiny-cuda-nn does. Each encoder module registers its
class with `register`; `build_encoding` imports them all lazily so importing the registry is cheap.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Mapping

from fieldstudio.errors import ConfigError

_REGISTRY: dict[str, type] = {}
_MODULES = (
    "identity",
    "frequency",
    "composite",
    "grid",
    "spherical_harmonics",
    "geo",
    "neurbf",
    "cam",
    "random_fourier",
    "tensorf",
)
_loaded = False


def register(cls):
    for name in (cls.otype, *cls.aliases):
        _REGISTRY[name.lower()] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _MODULES:
        importlib.import_module(f"fieldstudio.encoders.{mod}")
    _loaded = True


def encoding_class(otype: str):
    _load_all()
    if not isinstance(otype, str):
        raise ConfigError(f"encoding 'otype' must be a string, got {otype!r}", "e.g. \"otype\": \"HashGrid\"")
    cls = _REGISTRY.get(otype.lower())
    if cls is None:
        names = list_encodings()
        close = difflib.get_close_matches(otype, names, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"known encodings: {', '.join(names)}"
        raise ConfigError(f"unknown encoding otype '{otype}'", hint)
    return cls


def list_encodings() -> list[str]:
    _load_all()
    return sorted({cls.otype for cls in _REGISTRY.values()})


def build_encoding(config: Mapping[str, Any], n_input_dims: int, backend: str = "auto"):
    """Build an encoder from a tcnn-style config dict.

    ``backend="auto"`` runs tiny-cuda-nn when it is importable and the module is used on CUDA
    tensors, the PyTorch implementation otherwise; ``"torch"`` forces PyTorch; ``"tcnn"``
    requires tiny-cuda-nn.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"an encoding config must be a JSON object, got {type(config).__name__}",
                          'write e.g. {"otype": "HashGrid"}')
    if "otype" not in config:
        raise ConfigError("encoding config has no 'otype'", f"add \"otype\": one of {', '.join(list_encodings())}")
    cls = encoding_class(config["otype"])
    if backend not in ("auto", "torch", "tcnn"):
        raise ConfigError(f"unknown backend '{backend}'", "use auto, torch or tcnn")
    enc = cls(n_input_dims, config)
    if backend != "torch" and hasattr(enc, "set_backend"):
        enc.set_backend(backend)
    return enc
