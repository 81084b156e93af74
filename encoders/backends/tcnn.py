"""tiny-cuda-nn as a drop-in for the grid encodings on CUDA tensors.

The grid keeps one flat parameter laid out exactly like tcnn's (level after level, features
innermost), so tcnn runs on that very buffer: no copy, and checkpoints stay backend-neutral.
tinycudann is imported lazily and only when CUDA tensors arrive.

Not exercised in our test suite: no tinycudann wheel exists for our GPU or CPU machines. The
PyTorch path is the reference and the default everywhere.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from fieldstudio.errors import ConfigError


@functools.lru_cache(maxsize=1)
def tcnn_available() -> bool:
    if importlib.util.find_spec("tinycudann") is None or not torch.cuda.is_available():
        return False
    try:
        import tinycudann  # noqa: F401
    except Exception:
        return False
    return True


def require_tcnn() -> None:
    if not tcnn_available():
        raise ConfigError("backend 'tcnn' needs tinycudann and a CUDA device",
                          "install tiny-cuda-nn's PyTorch bindings (see README) or use backend 'auto' / 'torch'")


def tcnn_supports(grid) -> bool:
    """tcnn's grid kernels exist for 2-D and 3-D inputs with the coherent prime hash."""
    return grid.n_input_dims in (2, 3) and grid.cfg["hash"] == "CoherentPrime"


def _tcnn_config(grid) -> dict:
    cfg = dict(grid.config)
    cfg.pop("hash", None)  # older tcnn builds reject the field; CoherentPrime is their only hash
    cfg["otype"] = "Grid"
    return cfg


def grid_forward_tcnn(grid, x: torch.Tensor) -> torch.Tensor:
    import tinycudann as tcnn

    if grid._tcnn is None or grid._tcnn[0] != x.device:
        with torch.cuda.device(x.device):
            module = tcnn.Encoding(grid.n_input_dims, _tcnn_config(grid), dtype=torch.float32)
        if module.params.numel() != grid.params.numel():
            raise ConfigError(f"tinycudann expects {module.params.numel()} grid parameters, fieldstudio has "
                              f"{grid.params.numel()}", "use backend 'torch' for this config")
        grid._tcnn = (x.device, module)
    module = grid._tcnn[1]
    out = tcnn.modules._module_function.apply(module.native_tcnn_module, x.contiguous().float(),
                                              grid.params.contiguous(), module.loss_scale)
    return out[:, : grid.n_output_dims].float()
