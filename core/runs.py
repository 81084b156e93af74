"""The run folder: the one format every command writes and reads.

::

    RUN/
      config.json          everything needed to rebuild the field (field config, data, training)
      weights.safetensors  the field's weights (backend-neutral: grids store one tensor per level)
      metrics.json         final numbers (PSNR, SSIM, params, steps, seconds, ...)
      history.json         the training curve (step, seconds, loss, psnr)
      log.txt              what was printed
      state.pt             optimiser state and step, for --resume
      outputs...           reconstructions, renders, meshes

Every file is written to a temporary name and renamed into place, so a run stopped at any
moment never holds a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import torch

from .errors import InputError

CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
METRICS = "metrics.json"
HISTORY = "history.json"
STATE = "state.pt"
LOG = "log.txt"
FORMAT_VERSION = 1


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_weights(path: str | Path, module: torch.nn.Module) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata={"format": "fieldstudio", "version": str(FORMAT_VERSION)}))


def save_torch(path: str | Path, obj: Any) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: Path, what: str) -> Any:
    if not path.exists():
        raise InputError(f"{what} not found: {path}", "is this a fieldstudio run folder? (it needs config.json and weights.safetensors)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})", "fix the file or re-run the command") from exc


def build_field(config: dict[str, Any], backend: str = "auto") -> torch.nn.Module:
    """Rebuild a field from its config (the ``"field"`` entry of a run's config.json)."""
    from fieldstudio.fields.registry import build_field as _build

    return _build(config, backend=backend)


@dataclass
class Run:
    """An opened run folder: its config, metrics and the field with its trained weights."""

    path: Path
    config: dict[str, Any]
    field: torch.nn.Module
    metrics: dict[str, Any] = dc_field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.config.get("kind", "?")


def load_run(path: str | Path, device: str | torch.device | None = None, backend: str = "auto") -> Run:
    """Open a run folder written by any fieldstudio command and rebuild its field on ``device``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise InputError(f"run folder not found: {path}", "pass the --out folder of a finished fieldstudio command")
    config = read_json(path / CONFIG, "run config")
    version = config.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise InputError(f"{path} was written by a newer fieldstudio (format {version})", "upgrade fieldstudio to open it")
    if "field" not in config:
        raise InputError(f"{path / CONFIG} has no 'field' entry", "this run cannot be rebuilt; re-run the command")
    fld = build_field(config["field"], backend=backend)
    weights = path / WEIGHTS
    if not weights.exists():
        raise InputError(f"weights not found: {weights}", "the run did not finish its first checkpoint; re-run it")
    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise InputError(f"cannot read {weights}: {exc}", "the file is damaged; re-run or resume the command") from exc
    prefix = config.get("weights_prefix", "")
    if prefix:  # runs that save more than the field (e.g. a scene's occupancy grid) prefix its keys
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    fld.load_state_dict(state, strict=True)
    fld = fld.to(device or "cpu").eval()
    metrics = json.loads((path / METRICS).read_text()) if (path / METRICS).exists() else {}
    return Run(path=path, config=config, field=fld, metrics=metrics)
