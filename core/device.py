"""Choosing the device and finding the optional accelerators (tinycudann, nerfacc, open3d, gradio)."""

from __future__ import annotations

import importlib
import importlib.util

import torch

from .errors import ConfigError


def pick_device(name: str | None = "auto") -> torch.device:
    """``auto`` is CUDA when available, else the CPU."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but PyTorch sees no CUDA device", "use --device cpu (or auto)")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device '{name}'", "use auto, cpu or cuda") from exc


def _probe(module: str) -> tuple[bool, str]:
    if importlib.util.find_spec(module) is None:
        return False, "not installed"
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # a broken install should be reported, not crash `info`
        return False, f"installed but fails to import: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return True, getattr(mod, "__version__", "?")


def optional_backends() -> dict[str, dict[str, object]]:
    """What is installed, and whether fieldstudio will use it on this machine."""
    cuda = torch.cuda.is_available()
    out: dict[str, dict[str, object]] = {}
    for name, module, role, needs_cuda in (
        ("tinycudann", "tinycudann", "grid encodings on CUDA tensors", True),
        ("nerfacc", "nerfacc", "ray marching on CUDA tensors", True),
        ("open3d", "open3d", "signed distances and mesh queries", False),
        ("gradio", "gradio", "the browser studio (fieldstudio app)", False),
    ):
        found, detail = _probe(module)
        used = found and (cuda or not needs_cuda)
        out[name] = {"found": found, "detail": detail, "used": used, "role": role,
                     "note": "" if used or not found else "needs a CUDA device"}
    return out
