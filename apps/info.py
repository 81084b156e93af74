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
        "grid_path": "tinycudann on CUDA tensors, PyTorch otherwise"
        if optional_backends()["tinycudann"]["used"] else "PyTorch (vectorised gather + hand-written backward)",
        "backends": optional_backends(),
    }


def format_info(info: dict[str, Any]) -> str:
    lines = [
        f"fieldstudio {info['fieldstudio']}  (python {info['python']}, torch {info['torch']})",
        f"device      {info['device']}  [{info['device_name']}], {info['cpu_threads']} CPU threads of {info['cpu_count']}",
        f"grid path   {info['grid_path']}",
        "optional backends:",
    ]
    for name, b in info["backends"].items():
        state = "used" if b["used"] else ("found, not used: " + str(b["note"]) if b["found"] else "not found")
        detail = f" ({b['detail']})" if b["found"] else ""
        lines.append(f"  {name:<11} {state}{detail}  - {b['role']}")
        if not b["found"] and "fails" in str(b["detail"]):
            lines.append(f"              {b['detail']}")
    return "\n".join(lines)
