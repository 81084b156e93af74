"""Fused CPU kernels, compiled on first use, with the PyTorch code as their twin and fallback.

Three extension modules, each built from its own sources: `cpu_kernels()` (the grid encoding
and NeuRBF, ``csrc/grid.cpp``, ``csrc/rbf.cpp``), `render_kernels()` (ray marching and packed
compositing, ``csrc/render.cpp``) and `dense_kernels()` (TensoRF's VM product and the dense voxel
grid, ``csrc/dense.cpp``). Each returns the compiled module, or None when it cannot be used (no C++
compiler, a failed build, or ``FIELDSTUDIO_KERNELS=torch`` in the environment, which disables
all of them). The first call in a fresh environment compiles the sources with torch's
``cpp_extension`` (about a minute; cached by torch under ``~/.cache/torch_extensions``). The
module name carries a hash of the sources, so two checkouts with different sources never load
each other's cached build. Callers fall back to their PyTorch path when a loader returns None,
after one warning, so the package installs and runs on machines without a compiler.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

_CSRC = Path(__file__).parent / "csrc"
_STATE: dict[str, dict] = {}
_LOCK = threading.Lock()


def _wanted() -> tuple[bool, str]:
    mode = os.environ.get("FIELDSTUDIO_KERNELS", "auto").strip().lower()
    if mode in ("torch", "off", "0", "none"):
        return False, "disabled by FIELDSTUDIO_KERNELS=torch"
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        return False, "no C++ compiler found (install g++ to enable them)"
    return True, ""


def _versioned_name(module_name: str, sources: list[Path], flags: list[str]) -> str:
    digest = hashlib.sha1(" ".join(flags).encode())
    for s in sources:
        digest.update(s.read_bytes())
    return f"{module_name}_{digest.hexdigest()[:10]}"


# at::parallel_for is OpenMP in a header: without -fopenmp an extension's loops run on one thread
_CFLAGS = ("-O3", "-fopenmp")


def _load(key: str, module_name: str, sources: tuple[str, ...], cflags: tuple[str, ...] = ()):
    """The extension ``module_name`` built from ``csrc/<sources>``, or None; decided once per key."""
    state = _STATE.get(key)
    if state is not None:
        return state["module"]
    with _LOCK:
        if key in _STATE:
            return _STATE[key]["module"]
        ok, why = _wanted()
        module = None
        if ok:
            try:
                from torch.utils import cpp_extension

                paths = [_CSRC / s for s in sources]
                flags = [*_CFLAGS, *cflags]
                module = cpp_extension.load(
                    name=_versioned_name(module_name, paths, flags), sources=[str(p) for p in paths],
                    extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
            except Exception as exc:  # a failed build must never break fitting: use the PyTorch twins
                why = f"the build failed ({type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ''})"
                module = None
        if module is None and "disabled" not in why:
            warnings.warn(f"fieldstudio: fused CPU kernels ({key}) unavailable, using the PyTorch paths: {why}",
                          RuntimeWarning, stacklevel=4)
        _STATE[key] = {"module": module, "why": why}
        return module


def cpu_kernels():
    """The compiled grid-encoding kernels, or None (see `kernel_status` for why)."""
    return _load("grid", "fieldstudio_cpu_kernels", ("grid.cpp", "rbf.cpp", "huge_alloc.cpp"))


def render_kernels():
    """The compiled ray-marching / compositing kernels, or None (see `render_kernel_status`)."""
    # no fused multiply-adds: the marcher reproduces the PyTorch lattice arithmetic bit for bit
    return _load("render", "fieldstudio_cpu_render", ("render.cpp",), ("-ffp-contract=off",))


def dense_kernels():
    """The compiled dense-grid kernels (TensoRF VM, voxel grid), or None (see `dense_kernel_status`)."""
    return _load("dense", "fieldstudio_cpu_dense", ("dense.cpp",))


def dense_kernel_applies(points, table) -> bool:
    """Whether the dense-grid kernels can look ``points`` up in ``table``: CPU, float32/64, and no
    gradient wanted for the points (the kernels have none; fitting radiance needs none, an SDF's
    normals would)."""
    import torch

    return (points.device.type == "cpu" and table.device.type == "cpu"
            and table.dtype in (torch.float32, torch.float64) and not points.requires_grad
            and dense_kernels() is not None)


def _status(key: str, module) -> tuple[bool, str]:
    if module is not None:
        return True, "fused C++ kernels (compiled, cached by torch.utils.cpp_extension)"
    return False, f"PyTorch twins ({_STATE.get(key, {}).get('why', '')})"


def kernel_status() -> tuple[bool, str]:
    """``(active, explanation)`` of the grid kernels for `fieldstudio info`; compiles them if needed."""
    return _status("grid", cpu_kernels())


def render_kernel_status() -> tuple[bool, str]:
    """``(active, explanation)`` of the rendering kernels; compiles them if needed."""
    return _status("render", render_kernels())


def dense_kernel_status() -> tuple[bool, str]:
    """``(active, explanation)`` of the dense-grid kernels; compiles them if needed."""
    return _status("dense", dense_kernels())


def reset_for_tests() -> None:
    """Forget the cached decisions (tests flip FIELDSTUDIO_KERNELS)."""
    _STATE.clear()
