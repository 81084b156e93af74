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
    # CAM (encoders/cam.py): a grid over the pixel coordinates modulating every hidden layer of the MLP
    "modulation": Field((dict, type(None)), None, doc='{"otype": "CAM", ...} or null'),
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
        self.modulation = None
        if self.cfg["modulation"] is not None:
            self.modulation = _build_modulation(self.cfg["modulation"], self.network)
            self.cfg["modulation"] = self.modulation.config

    @property
    def config(self) -> dict[str, Any]:
        return {"otype": "ImageField", **self.cfg}

    @property
    def channel_names(self) -> tuple[str, ...]:
        return ("rgb",) if self.cfg["n_channels"] >= 3 else ("gray",)

    def forward(self, uv: torch.Tensor) -> torch.Tensor:
        x = uv * 2.0 - 1.0 if self.cfg["input_range"] == "signed" else uv
        if self.modulation is None:
            out = self.network(self.encoding(x))
        else:
            # the grid always sees pixel coordinates in [0, 1], whatever range the encoder wants
            gamma, beta = self.modulation.gamma_beta(uv)
            out = self.network(self.encoding(x),
                               modulate=lambda i, h: self.modulation.modulate(h, gamma, beta, i))
        if self.cfg["output_range"] == "signed":
            out = out * 0.5 + 0.5
        return out

    def channels(self, uv: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named outputs (the contract every field keeps, so tools can work on any field)."""
        return {self.channel_names[0]: self(uv)}


def _build_modulation(cfg: Mapping[str, Any], network):
    from fieldstudio.encoders import build_encoding
    from fieldstudio.errors import ConfigError
    from .networks import MLP

    if not isinstance(network, MLP) or network.cfg["n_hidden_layers"] < 1:
        raise ConfigError("image field: a modulation needs an MLP network with hidden layers",
                          'use an MLP network (e.g. "otype": "FullyFusedMLP") or drop "modulation"')
    mod = build_encoding(cfg, 2, backend="torch")
    if mod.otype != "CAM":
        raise ConfigError(f"image field: modulation otype '{mod.otype}' is not a modulation", 'use "otype": "CAM"')
    n, width = network.cfg["n_hidden_layers"], network.cfg["n_neurons"]
    if mod.cfg["n_layers"] != n or mod.cfg["n_channels"] not in (1, width):
        raise ConfigError(f"image field: the CAM grid has {mod.cfg['n_layers']} layers x {mod.cfg['n_channels']} "
                          f"channels but the network has {n} hidden layers x {width}",
                          f"set n_layers {n} and n_channels 1 (shared) or {width}")
    if mod.cfg["norm"] not in ("sample", "none"):
        raise ConfigError(f"image field: normalisation '{mod.cfg['norm']}' does not apply to pixel samples",
                          'use norm "sample" or "none"')
    return mod


def cam_image_modulation(n_hidden_layers: int) -> dict[str, Any]:
    """The paper's image CAM: a 2-channel 32 x 32 grid over (x, y), gamma and beta shared by all
    channels, each pixel's features normalised over their channels, on every hidden layer."""
    return {"otype": "CAM", "resolution": [32, 32], "n_layers": n_hidden_layers, "n_channels": 1,
            "norm": "sample", "lr_factor": 10.0}


#: the FFN's width with CAM: three 32 x 32 x 2 grids (6144 values) on top of the 3 x 256 FFN
#: (263,683 values) would add 2.3%; 252 units bring FFN + CAM to 263,691 (+0.003%)
FFN_CAM_WIDTH = 252


def image_field_preset(name: str, n_channels: int, image_size: tuple[int, int], cam: bool = False) -> dict[str, Any]:
    """Config of a sensible field for ``--encoder NAME`` on an image of ``(H, W)`` pixels.

    hashgrid follows instant-ngp's image config (16 levels x 2 features, N_max = max(H, W) / 2,
    2 x 64 ReLU MLP); frequency is NeRF's positional encoding with a ReLU MLP; siren is the
    official image SIREN (3 x 256 hidden, omega_0 = 30, coordinates and targets in [-1, 1]);
    ffn is the CAM paper's Fourier feature network. ``cam=True`` adds the paper's image CAM to
    the ffn preset (the only one it is defined for here).
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
    if name == "ffn":
        # the CAM paper's FFN baseline (Tancik et al.'s Fourier feature network): 256 Gaussian
        # frequencies with sigma 10, 3 x 256 ReLU layers with biases, sigmoid output
        cfg = {
            "n_channels": n_channels,
            "encoding": {"otype": "RandomFourierFeatures", "n_frequencies": 256, "sigma": 10.0, "seed": 0},
            "network": {"otype": "MLP", "activation": "ReLU", "output_activation": "Sigmoid",
                        "n_neurons": FFN_CAM_WIDTH if cam else 256, "n_hidden_layers": 3, "bias": True},
        }
        if cam:
            cfg["modulation"] = cam_image_modulation(3)
        return cfg
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


#: Adam learning rate that suits each preset (tcnn's image sample uses 1e-2 for grids; SIREN's paper 1e-4;
#: the CAM paper's FFN 1e-3).
#: NeuRBF: the official 1e-2 (network) with 5e-3 (kernels, grid) was unstable over a few hundred
#: steps (the first layer's sin(m' h), m' up to 100, amplifies early updates); half of both works
#: (kodim05, 128 px crop, 150 steps: 30.5 dB at the official rates, 33.9 dB at half)
PRESET_LR = {"hashgrid": 1e-2, "frequency": 1e-3, "siren": 1e-4, "neurbf": 5e-3, "neurbf-nosine": 5e-3, "ffn": 1e-3}
IMAGE_PRESETS = tuple(PRESET_LR)
