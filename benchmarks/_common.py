"""Small helpers shared by the scripts in ``benchmarks/`` (not an installed package).

* `ensure_fieldstudio` makes ``import fieldstudio`` work from a bare checkout (no pip install),
* `build_cpu_kernels` compiles the fused CPU kernels before anything is timed,
* `sync` / `time_steps` time a step with warm-ups, synchronising CUDA before reading the clock,
* `cuda_step_memory` and the ``*_rss_*`` functions measure the peak memory of one step,
* `machine_info` / `write_json` record where and how a benchmark ran.

Scripts import it as ``from _common import ...``: running ``python benchmarks/<name>.py`` puts
``benchmarks/`` first on ``sys.path``.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

REPO_ROOT = Path(__file__).resolve().parent.parent


def ensure_fieldstudio() -> None:
    """Import ``fieldstudio`` from this checkout when it is not installed.

    The installed layout maps ``fieldstudio`` -> ``core/`` and ``fieldstudio.<sub>`` -> ``<sub>/``
    at the repository root; a package whose search path is ``[core/, root/]`` reproduces that.
    """
    if "fieldstudio" in sys.modules:
        return
    try:
        import fieldstudio  # noqa: F401
        return
    except ModuleNotFoundError:
        pass
    spec = importlib.util.spec_from_file_location(
        "fieldstudio", REPO_ROOT / "core" / "__init__.py",
        submodule_search_locations=[str(REPO_ROOT / "core"), str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["fieldstudio"] = module
    spec.loader.exec_module(module)


def build_cpu_kernels() -> None:
    """Build (or load) the fused CPU kernels now. They compile on first use, which takes a minute
    or more after a change of source or checkout path; a run timed against a budget would
    otherwise spend that minute inside its first step."""
    ensure_fieldstudio()
    from fieldstudio.kernels import cpu_kernels, dense_kernels, render_kernels

    for load in (cpu_kernels, render_kernels, dense_kernels):
        load()


# --- timing ---------------------------------------------------------------------------------------

def sync(device) -> None:
    """Wait for queued GPU work; a no-op on the CPU."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(steps: Mapping[str, Callable[[], Any]], repeats: int, warmup: int, device) -> dict[str, list[float]]:
    """Seconds per call of each step: ``warmup`` untimed calls each, then ``repeats`` timed ones.

    Several steps are timed interleaved (a, b, a, b, ...) so that load from other processes on a
    shared machine hits them alike, which keeps their ratio meaningful.
    """
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def median(values) -> float:
    return float(statistics.median(values))


# --- memory ---------------------------------------------------------------------------------------

def cuda_step_memory(fn: Callable[[], Any], device) -> dict[str, Any]:
    """Peak CUDA memory of one call of ``fn``, from the caching allocator's statistics."""
    import torch

    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"method": "cuda_max_memory_allocated", "before_bytes": before, "peak_bytes": peak,
            "step_peak_bytes": peak - before}


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", _STATUS.read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def current_rss_bytes() -> int | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def peak_rss_bytes(use_hwm: bool) -> int:
    """Peak RSS of this process: VmHWM (since the last reset) or the lifetime ru_maxrss."""
    if use_hwm:
        return _status_kb("VmHWM") * 1024
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru if sys.platform == "darwin" else ru * 1024  # bytes on macOS, kB elsewhere


def cpu_step_memory(fn: Callable[[], Any]) -> dict[str, Any]:
    """Peak RSS during one call of ``fn`` minus the RSS just before it.

    Meant to run in a fresh process (see the benchmark scripts) with glibc told to return large
    freed blocks to the OS (``MALLOC_MMAP_THRESHOLD_``), so the RSS before the step holds only
    what is alive, not buffers cached from earlier steps.
    """
    import gc

    gc.collect()
    use_hwm = reset_peak_rss()
    before = current_rss_bytes()
    if before is None:  # no /proc: fall back to ru_maxrss, which is the peak so far
        before = peak_rss_bytes(False)
    fn()
    peak = peak_rss_bytes(use_hwm)
    return {"method": "VmHWM reset via /proc/self/clear_refs" if use_hwm else "ru_maxrss",
            "before_bytes": before, "peak_bytes": peak, "step_peak_bytes": max(0, peak - before)}


#: environment for the fresh processes that measure CPU memory
CPU_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


# --- machine info and output ----------------------------------------------------------------------

def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine_info(device) -> dict[str, Any]:
    import torch

    dev = torch.device(device)
    info: dict[str, Any] = {
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(dev),
        "cpu_name": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cuda_available": torch.cuda.is_available(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty_files": (_git("status", "--porcelain", "--untracked-files=no") or "").splitlines(),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(device_name=torch.cuda.get_device_name(dev), cuda_version=torch.version.cuda,
                    gpu_memory_bytes=props.total_memory)
    else:
        info["device_name"] = info["cpu_name"]
    return info


def write_json(path, payload: Mapping[str, Any], device, machine: Mapping[str, Any] | None = None) -> Path:
    """Write ``payload`` plus ``machine`` info and a timestamp to ``path`` (folders created).

    Pass ``machine`` (from `machine_info`, taken when the run started) to record the load and git
    state at the start; otherwise they are read now.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": dict(machine) if machine is not None else machine_info(device), **payload}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def fmt_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned text table (first column left-aligned, the rest right-aligned)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(r):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])
