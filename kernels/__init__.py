"""Fused CPU kernels, compiled on first use, with the PyTorch code as their twin and fallback.

`cpu_kernels()` returns the compiled extension module, or None when it cannot be used (no C++
compiler, a failed build, or ``FIELDSTUDIO_KERNELS=torch`` in the environment). The first call
in a fresh environment compiles ``csrc/*.cpp`` with torch's ``cpp_extension`` (about a minute;
the result is cached by torch under ``~/.cache/torch_extensions`` and reused, rebuilt only when
the sources change). Callers fall back to their PyTorch path when it returns None, after one
warning, so the package installs and runs on machines without a compiler.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

_SOURCES = ("grid.cpp", "rbf.cpp")
_STATE: dict = {}
_LOCK = threading.Lock()


def _wanted() -> tuple[bool, str]:
    mode = os.environ.get("FIELDSTUDIO_KERNELS", "auto").strip().lower()
    if mode in ("torch", "off", "0", "none"):
        return False, "disabled by FIELDSTUDIO_KERNELS=torch"
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        return False, "no C++ compiler found (install g++ to enable them)"
    return True, ""


def cpu_kernels():
    """The compiled kernel module, or None (see `kernel_status` for why)."""
    if "module" in _STATE:
        return _STATE["module"]
    with _LOCK:
        if "module" in _STATE:
            return _STATE["module"]
        ok, why = _wanted()
        module = None
        if ok:
            try:
                from torch.utils import cpp_extension

                src = Path(__file__).parent / "csrc"
                module = cpp_extension.load(
                    name="fieldstudio_cpu_kernels", sources=[str(src / s) for s in _SOURCES],
                    # -fopenmp: at::parallel_for is an inline OpenMP region in torch's headers;
                    # without the flag it compiles to a serial loop
                    extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
            except Exception as exc:  # a failed build must never break fitting: use the PyTorch twins
                why = f"the build failed ({type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ''})"
                module = None
        if module is None and "disabled" not in why:
            warnings.warn(f"fieldstudio: fused CPU kernels unavailable, using the PyTorch paths: {why}",
                          RuntimeWarning, stacklevel=3)
        _STATE.update(module=module, why=why)
        return module


def kernel_status() -> tuple[bool, str]:
    """``(active, explanation)`` for `fieldstudio info`; compiles the kernels if needed."""
    module = cpu_kernels()
    if module is not None:
        return True, "fused C++ kernels (compiled, cached by torch.utils.cpp_extension)"
    return False, f"PyTorch twins ({_STATE.get('why', '')})"


def reset_for_tests() -> None:
    """Forget the cached decision (tests flip FIELDSTUDIO_KERNELS)."""
    _STATE.clear()
