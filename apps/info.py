"""What ``fieldstudio info`` reports: versions, the device, and which optional backends will be used."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def collect_info() -> dict[str, Any]:
    from fieldstudio import __version__
    from fieldstudio.device import optional_backends, pick_device

    dev = pick_device("auto")
    return {
        "fieldstudio": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(0) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "grid_path": _grid_path(),
        "rbf_path": _rbf_path(),
        "render_path": _render_path(),
        "dense_path": _dense_path(),
        "backends": optional_backends(),
    }


def _grid_path() -> str:
    from fieldstudio.device import optional_backends
    from fieldstudio.kernels import kernel_status

    active, why = kernel_status()  # compiles the kernels on the first call in an environment
    cpu = f"CPU: {why}, input gradients and second order included" if active else f"CPU: {why}"
    gpu = "CUDA: tinycudann" if optional_backends()["tinycudann"]["used"] else "CUDA: PyTorch"
    return f"{cpu}; {gpu}"


def _render_path() -> str:
    from fieldstudio.kernels import render_kernel_status
    from fieldstudio.renderers.volume import nerfacc_status

    _, why = render_kernel_status()  # compiles the kernels on the first call in an environment
    gpu = "CUDA: nerfacc" if nerfacc_status()[0] else "CUDA: PyTorch"
    return f"CPU: {why}; {gpu}"


def _rbf_path() -> str:
    from fieldstudio.kernels import kernel_status

    active, why = kernel_status()
    cpu = f"CPU: {why}, PyTorch where inputs need gradients (SDF)" if active else f"CPU: {why}"
    return f"{cpu}; CUDA: PyTorch"


def _dense_path() -> str:
    from fieldstudio.kernels import dense_kernel_status

    _, why = dense_kernel_status()  # compiles the kernels on the first call in an environment
    return f"CPU: {why}, PyTorch where points need gradients; CUDA: PyTorch"


def format_info(info: dict[str, Any]) -> str:
    lines = [
        f"fieldstudio {info['fieldstudio']}  (python {info['python']}, torch {info['torch']})",
        f"device      {info['device']}  [{info['device_name']}], {info['cpu_threads']} CPU threads of {info['cpu_count']}",
        f"grid path   {info['grid_path']}",
        f"NeuRBF path {info['rbf_path']}",
        f"render path {info['render_path']}",
        f"dense path  {info['dense_path']}  (TensoRF, voxel grids)",
        "optional backends:",
    ]
    for name, b in info["backends"].items():
        state = "used" if b["used"] else ("found, not used: " + str(b["note"]) if b["found"] else "not found")
        detail = f" ({b['detail']})" if b["found"] else ""
        lines.append(f"  {name:<11} {state}{detail}  - {b['role']}")
        if not b["found"] and "fails" in str(b["detail"]):
            lines.append(f"              {b['detail']}")
    return "\n".join(lines)
