"""Image fields: pixel coordinates in [0, 1]^2 -> colour, as encoder + network.

The field owns the convention between image space and the encoder's domain (grids want
[0, 1], SIREN wants [-1, 1]) and between the network's output and colour, so a run folder's
config rebuilds exactly what was trained.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from fieldstudio.config import Field, parse_fields
from .budget import build_encoding_and_network

_FIELDS = {
    "n_channels": Field(int, 3, check=lambda v: None if 1 <= v <= 4 else "must be 1 to 4"),
    "encoding": Field(dict),
    "network": Field(dict),
    # where pixel coordinates go before the encoder: "unit" keeps [0,1], "signed" maps to [-1,1]
    "input_range": Field(str, "unit", choices=("unit", "signed")),
    # how the network output becomes colour: "linear" as is; "signed" maps [-1,1] -> [0,1] (SIREN targets)
    "output_range": Field(str, "linear", choices=("linear", "signed")),
}


class ImageField(nn.Module):
    """``forward(uv)`` with ``uv`` ``[..., 2]`` in [0, 1] (x right, y down) -> ``[..., n_channels]``."""

    kind = "image"

    def __init__(self, config: Mapping[str, Any], backend: str = "auto"):
        super().__init__()
        self.cfg = parse_fields(config, _FIELDS, where="image field", ignore=("otype",))
        self.encoding, self.network = build_encoding_and_network(self.cfg["encoding"], self.cfg["network"], 2,
                                                                 self.cfg["n_channels"], backend=backend)
        # keep the canonical (defaults filled in) sub-configs, so the written config is complete
        self.cfg["encoding"] = self.encoding.config
        self.cfg["network"] = self.network.config

    @property
    def config(self) -> dict[str, Any]:
        return {"otype": "ImageField", **self.cfg}

    @property
    def channel_names(self) -> tuple[str, ...]:
        return ("rgb",) if self.cfg["n_channels"] >= 3 else ("gray",)

    def forward(self, uv: torch.Tensor) -> torch.Tensor:
        x = uv * 2.0 - 1.0 if self.cfg["input_range"] == "signed" else uv
        out = self.network(self.encoding(x))
        if self.cfg["output_range"] == "signed":
            out = out * 0.5 + 0.5
        return out

    def channels(self, uv: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named outputs (the contract every field keeps, so tools can work on any field)."""
        return {self.channel_names[0]: self(uv)}


def image_field_preset(name: str, n_channels: int, image_size: tuple[int, int]) -> dict[str, Any]:
    """Config of a sensible field for ``--encoder NAME`` on an image of ``(H, W)`` pixels.

    hashgrid follows instant-ngp's image config (16 levels x 2 features, N_max = max(H, W) / 2,
    2 x 64 ReLU MLP); frequency is NeRF's positional encoding with a ReLU MLP; siren is the
    official image SIREN (3 x 256 hidden, omega_0 = 30, coordinates and targets in [-1, 1]).
    """
    import math

    n_max = max(image_size) / 2
    if name == "hashgrid":
        n_levels, base = 16, 16
        scale = math.exp(math.log(max(n_max, base + 1) / base) / (n_levels - 1))
        return {
            "n_channels": n_channels,
            "encoding": {"otype": "HashGrid", "n_levels": n_levels, "n_features_per_level": 2,
                         "log2_hashmap_size": 19, "base_resolution": base, "per_level_scale": round(scale, 6)},
            "network": {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None",
                        "n_neurons": 64, "n_hidden_layers": 2},
        }
    if name == "frequency":
        n_freq = max(4, int(math.ceil(math.log2(max(image_size)))))
        return {
            "n_channels": n_channels,
            "encoding": {"otype": "Frequency", "n_frequencies": n_freq},
            "network": {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None",
                        "n_neurons": 128, "n_hidden_layers": 4, "bias": True},
        }
    if name == "siren":
        return {
            "n_channels": n_channels,
            "input_range": "signed",
            "output_range": "signed",
            "encoding": {"otype": "Identity"},
            "network": {"otype": "SIREN", "n_neurons": 256, "n_hidden_layers": 3,
                        "first_omega_0": 30.0, "hidden_omega_0": 30.0},
        }
    if name in ("neurbf", "neurbf-nosine"):
        return neurbf_image_preset(n_channels, image_size, sine=name == "neurbf")
    raise KeyError(name)


def neurbf_image_preset(n_channels: int, image_size: tuple[int, int], sine: bool = True,
                        param_budget: int | None = None) -> dict[str, Any]:
    """NeuRBF's image config (official configs/img.py) at the parameter count of the hashgrid preset.

    Full anisotropic inverse-quadratic kernels, 4 neighbours, 32 channels composed with
    frequencies 2^-3..2^12; a 2-level x 2-feature grid (N_min 16, N_max = max(H, W) / 2) beside
    them; the hashgrid preset's 2 x 64 ReLU MLP with biases and h + sin(m' h), m' in 10..100,
    after its first layer. ``sine=False`` is the ablation without both sinusoidal compositions.
    The kernel count fills ``param_budget`` (default: the hashgrid preset's parameter count on
    this image size), so the two compare iso-parameter.
    """
    if param_budget is None:
        ref = ImageField(image_field_preset("hashgrid", n_channels, image_size), backend="torch")
        param_budget = sum(p.numel() for p in ref.parameters())
    n_max = max(image_size) / 2
    base = 16
    return {
        "n_channels": n_channels,
        "encoding": {"otype": "NeuRBF", "kernel": "ivq", "shape": "full", "n_kernels": "auto",
                     "param_budget": int(param_budget), "n_neighbors": 4, "n_features": 32,
                     "frequencies": [2.0 ** -3, 2.0 ** 12] if sine else None,
                     "grid": {"otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2,
                              "log2_hashmap_size": 19, "base_resolution": base,
                              "per_level_scale": round(max(n_max, base + 1) / base, 6)}},
        "network": {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None",
                    "n_neurons": 64, "n_hidden_layers": 2, "bias": True,
                    "first_layer_frequencies": [10.0, 100.0] if sine else None},
    }


#: Adam learning rate that suits each preset (tcnn's image sample uses 1e-2 for grids; SIREN's paper 1e-4).
#: NeuRBF: the official 1e-2 (network) with 5e-3 (kernels, grid) was unstable over a few hundred
#: steps (the first layer's sin(m' h), m' up to 100, amplifies early updates); half of both works
#: (kodim05, 128 px crop, 150 steps: 30.5 dB at the official rates, 33.9 dB at half)
PRESET_LR = {"hashgrid": 1e-2, "frequency": 1e-3, "siren": 1e-4, "neurbf": 5e-3, "neurbf-nosine": 5e-3}
IMAGE_PRESETS = tuple(PRESET_LR)
