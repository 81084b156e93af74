"""Fields on the globe: ``(lon, lat)`` in degrees -> class logits or a value, as encoder + network.

The field owns everything needed to turn its raw output back into the user's units -- the task,
the class names, and the mean / standard deviation the regression target was normalised with --
so a run folder's config rebuilds a field that predicts in the units it was trained on.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from fieldstudio.config import Field, parse_fields, positive
from fieldstudio.encoders import build_encoding

from .networks import build_network

TASKS = ("classify", "regress")

_FIELDS = {
    "task": Field(str, "classify", choices=TASKS, doc="classify (logits) or regress (a value)"),
    "encoding": Field(dict, doc="a location encoder config, e.g. {\"otype\": \"SphericalHarmonicsGeo\"}"),
    "network": Field(dict, doc="a network config, e.g. {\"otype\": \"SIREN\", ...}"),
    # classify: names of the classes; 2 classes use one logit (sigmoid), K > 2 use K logits (softmax)
    "classes": Field(list, ["0", "1"]),
    # regress: the network predicts (value - target_mean) / target_std
    "target_mean": Field(float, 0.0),
    "target_std": Field(float, 1.0, check=positive),
    "target_name": Field(str, "target"),
}


class GeoField(nn.Module):
    """``forward(lonlat)`` with ``lonlat`` ``[..., 2]`` in degrees -> raw network output ``[..., n_outputs]``.

    ``n_outputs`` is 1 for regression and for two classes (a single logit for the second class,
    trained with binary cross-entropy, as in the paper), K for K > 2 classes (softmax logits).
    `channels` gives named, user-unit outputs; `predict` the probabilities or values.
    """

    kind = "geo"

    def __init__(self, config: Mapping[str, Any], backend: str = "auto"):
        super().__init__()
        self.cfg = parse_fields(config, _FIELDS, where="geo field", ignore=("otype",))
        if self.cfg["task"] == "classify" and len(self.cfg["classes"]) < 2:
            from fieldstudio.errors import ConfigError

            raise ConfigError(f"geo field: a classifier needs at least 2 classes, got {self.cfg['classes']!r}",
                              "check the target column: it holds a single value")
        self.cfg["classes"] = [str(c) for c in self.cfg["classes"]]
        self.encoding = build_encoding(self.cfg["encoding"], 2, backend=backend)
        self.network = build_network(self.cfg["network"], self.encoding.n_output_dims, self.n_outputs)
        # keep the canonical (defaults filled in) sub-configs, so the written config is complete
        self.cfg["encoding"] = self.encoding.config
        self.cfg["network"] = self.network.config

    @property
    def config(self) -> dict[str, Any]:
        return {"otype": "GeoField", **self.cfg}

    @property
    def task(self) -> str:
        return self.cfg["task"]

    @property
    def classes(self) -> list[str]:
        return list(self.cfg["classes"])

    @property
    def n_outputs(self) -> int:
        if self.cfg["task"] == "regress":
            return 1
        k = len(self.cfg["classes"])
        return 1 if k == 2 else k

    def forward(self, lonlat: torch.Tensor) -> torch.Tensor:
        return self.network(self.encoding(lonlat))

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        """The raw output from already-encoded features (the encoders have no parameters, so a
        training loop may encode its points once)."""
        return self.network(features)

    def to_units(self, raw: torch.Tensor) -> torch.Tensor:
        """Regression: raw output -> value in target units (``[...]``)."""
        return raw[..., 0] * self.cfg["target_std"] + self.cfg["target_mean"]

    def probabilities(self, raw: torch.Tensor) -> torch.Tensor:
        """Classification: raw logits -> class probabilities ``[..., K]``."""
        if raw.shape[-1] == 1:
            p = torch.sigmoid(raw)
            return torch.cat([1 - p, p], dim=-1)
        return torch.softmax(raw, dim=-1)

    def channels(self, lonlat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named outputs: ``{"logits": [..., n_outputs]}`` or ``{"value": [...]}`` in target units."""
        raw = self(lonlat)
        if self.cfg["task"] == "regress":
            return {"value": self.to_units(raw)}
        return {"logits": raw}

    @torch.no_grad()
    def predict(self, lonlat: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[..., K]`` (classify) or values ``[...]`` in target units (regress)."""
        raw = self(lonlat)
        return self.to_units(raw) if self.cfg["task"] == "regress" else self.probabilities(raw)


# --- presets: the CLI's --encoder / --network names --------------------------------------------

#: CLI encoder name -> encoding otype
GEO_ENCODERS = {
    "sh": "SphericalHarmonicsGeo",
    "direct": "GeoDirect",
    "wrap": "GeoWrap",
    "grid": "GeoGrid",
    "theory": "GeoTheory",
    "spherec": "GeoSphereC",
    "spherec+": "GeoSphereCPlus",
    "spherem": "GeoSphereM",
    "spherem+": "GeoSphereMPlus",
    "cartesian3d": "GeoCartesian3D",
}
GEO_NETWORKS = ("siren", "mlp", "linear")


def geo_encoding_preset(name: str, L: int = 10, frequency_num: int = 16) -> dict[str, Any]:
    """Encoding config for a CLI name; ``L`` applies to ``sh``, ``frequency_num`` to the multi-scale ones."""
    otype = GEO_ENCODERS[name]
    if name == "sh":
        return {"otype": otype, "legendre_polys": L}
    if name in ("grid", "theory", "spherec", "spherec+", "spherem", "spherem+"):
        return {"otype": otype, "frequency_num": frequency_num,
                "min_radius": math.radians(10.0), "max_radius": math.radians(360.0)}
    return {"otype": otype}


def geo_network_preset(name: str, hidden: int = 64, layers: int = 2) -> dict[str, Any]:
    """Network config for a CLI name.

    ``layers`` counts hidden layers as the paper's code does: SIREN with ``layers = 2`` is two sine
    layers (the first with omega_0 = 30, then one with omega_0 = 1) and a linear output, i.e.
    fieldstudio's ``n_hidden_layers = layers - 1``; the MLP has ``layers`` ReLU layers with biases;
    ``linear`` is a single affine map (no hidden layer).
    """
    if name == "siren":
        return {"otype": "SIREN", "n_neurons": hidden, "n_hidden_layers": max(layers - 1, 0),
                "first_omega_0": 30.0, "hidden_omega_0": 1.0}
    if name == "mlp":
        return {"otype": "MLP", "n_neurons": hidden, "n_hidden_layers": layers, "activation": "ReLU",
                "output_activation": "None", "bias": True}
    if name == "linear":
        return {"otype": "MLP", "n_neurons": hidden, "n_hidden_layers": 0, "bias": True}
    raise KeyError(name)
