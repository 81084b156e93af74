"""Radiance fields: position (+ view direction) -> density and colour, for volume rendering.

Two fields, one contract, so later tools can distil one into the other (PVD's unified layout):

* `NGPRadianceField` -- Instant-NGP: hash grid -> density MLP (1 hidden layer x 64) with 16 outputs;
  output 0 is the log-density, outputs 1..15 a geometry feature; colour MLP (2 hidden x 64) on those
  15 features + the degree-4 spherical harmonics (16 values) of the view direction; sigmoid rgb.
* `VanillaNeRF` -- the MLP NeRF: Frequency encoding of the position -> ReLU trunk with a skip
  connection -> the same 16 outputs; colour MLP on the 15 features + Frequency encoding of the view
  direction.

Inputs: positions ``x [..., 3]`` in [0, 1]^3 -- the scene box normalised to the unit cube (the
renderer's closures map world points there) -- and *unit* view directions ``d [..., 3]`` (the
direction encodings take ``(d + 1) / 2``, tcnn's convention). Outputs:

* ``density(x, d=None) -> sigma [...]``, ``forward(x, d) -> (rgb [..., 3], sigma [...])``;
* ``channels(x, d=None)`` -> ``{"density", "log_density", "feature", "rgb"}`` (rgb only with ``d``):
  ``feature`` is the raw 16-d density-MLP output (PVD's ``feature_sigma_color``, entry 0 included),
  ``log_density`` its entry 0 after the optional ``log_density_clip`` (PVD clamps to [-2, 7]; off by
  default, as in instant-ngp), and ``density = trunc_exp(log_density)``.

``trunc_exp`` is instant-ngp's density activation: ``exp(x)`` forward, gradient ``exp(clamp(x, -15, 15))``
(instant-ngp's ``network_to_density_derivative``, torch-ngp's ``trunc_exp``), which keeps a single
huge log-density from producing an exploding gradient.

Density is per unit of the world ``t`` the renderer uses (the field does not know the scene scale).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import torch
from torch import nn

from fieldstudio.config import Field, at_least, parse_fields, positive
from fieldstudio.encoders import build_encoding
from fieldstudio.encoders.cam import normalize
from fieldstudio.errors import ConfigError

from .networks import build_network

#: width of the density MLP output / the shared "feature" channel: log-density + 15 features
N_FEATURES = 16


class _TruncExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(-15.0, 15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """``exp(x)`` whose gradient is computed as ``exp(clamp(x, -15, 15))`` (instant-ngp)."""
    return _TruncExp.apply(x)


def ngp_per_level_scale(n_max: float = 2048.0, base_resolution: int = 16, n_levels: int = 16) -> float:
    """instant-ngp's growth factor ``exp(ln(N_max / N_min) / (L - 1))`` (N_max = 2048 * aabb_scale for NeRF)."""
    if n_levels <= 1:
        return 1.0
    return math.exp(math.log(max(n_max, base_resolution) / base_resolution) / (n_levels - 1))


def _check_clip(v) -> str | None:
    if v is None:
        return None
    if len(v) != 2 or not all(isinstance(a, (int, float)) for a in v) or not v[0] < v[1]:
        return "must be [low, high] with low < high, or null"
    return None


def _direction_input(d: torch.Tensor) -> torch.Tensor:
    return (d + 1.0) * 0.5


class _RadianceField(nn.Module):
    """What both fields share: the 16-d feature -> channels, density, colour head."""

    kind = "radiance"
    channel_names = ("density", "log_density", "feature", "rgb")
    #: whether `density` reads the view direction (CAM); renderers gather directions only then
    view_dependent_density = False

    def _init_head(self, dir_cfg: Mapping[str, Any], rgb_cfg: Mapping[str, Any], backend: str) -> None:
        self.direction_encoding = build_encoding(dir_cfg, 3, backend=backend)
        self.rgb_network = build_network(rgb_cfg, self.direction_encoding.n_output_dims + N_FEATURES - 1, 3)
        self.cfg["direction_encoding"] = self.direction_encoding.config
        self.cfg["rgb_network"] = self.rgb_network.config

    def feature(self, x: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _log_density(self, feature: torch.Tensor) -> torch.Tensor:
        raw = feature[..., 0]
        clip = self.cfg["log_density_clip"]
        return raw if clip is None else raw.clamp(clip[0], clip[1])

    def _rgb(self, feature: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.direction_encoding(_direction_input(d)), feature[..., 1:]], dim=-1)
        return torch.sigmoid(self.rgb_network(h))

    def density(self, x: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """``sigma [...]`` at positions ``x [..., 3]`` in [0, 1]^3.

        Only a field whose density depends on the view direction (CAM) reads ``d``; without it such
        a field returns an upper bound over all directions (what an occupancy grid needs).
        """
        return trunc_exp(self._log_density(self.feature(x, d)))

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rgb [..., 3] in [0, 1], sigma [...])`` at positions ``x`` seen from unit directions ``d``."""
        f = self.feature(x, d)
        return self._rgb(f, d), trunc_exp(self._log_density(f))

    def channels(self, x: torch.Tensor, d: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Named outputs (the contract every field keeps): density, log_density, feature, rgb (with ``d``)."""
        f = self.feature(x, d)
        log_density = self._log_density(f)
        out = {"density": trunc_exp(log_density), "log_density": log_density, "feature": f}
        if d is not None:
            out["rgb"] = self._rgb(f, d)
        return out


# ------------------------------------------------------------------------------------------------
# Instant-NGP
# ------------------------------------------------------------------------------------------------

NGP_ENCODING = {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
                "base_resolution": 16, "per_level_scale": round(ngp_per_level_scale(2048, 16, 16), 6)}
NGP_DENSITY_NETWORK = {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None",
                       "n_neurons": 64, "n_hidden_layers": 1}
NGP_DIRECTION_ENCODING = {"otype": "SphericalHarmonics", "degree": 4}
NGP_RGB_NETWORK = {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None",
                   "n_neurons": 64, "n_hidden_layers": 2}

_NGP_FIELDS = {
    "encoding": Field(dict, NGP_ENCODING, doc="position encoding (inputs in [0, 1]^3)"),
    "density_network": Field(dict, NGP_DENSITY_NETWORK, doc="encoding -> 16 (log-density + 15 features)"),
    "direction_encoding": Field(dict, NGP_DIRECTION_ENCODING, doc="view direction encoding, input (d + 1) / 2"),
    "rgb_network": Field(dict, NGP_RGB_NETWORK, doc="15 features + direction encoding -> rgb (sigmoid applied)"),
    "log_density_clip": Field((list, type(None)), None, check=_check_clip, doc="clamp the log-density (PVD: [-2, 7])"),
    "cam": Field((dict, type(None)), None, doc="CAM on the density MLP's hidden layer (view-direction grid), or null"),
}

#: CAM for the NGP field: the Mip-NeRF variant's 10 x 3 (azimuth x elevation) view-direction grid,
#: one gamma and beta shared by all channels, at 10x the learning rate. The paper normalises per
#: ray (GroupNorm over a ray's samples and channels); here each sample is normalised over its
#: channels, because the NGP renderer's samples per ray depend on the occupancy grid and on early
#: stopping (and differ between the culling pass and the shading pass), so per-ray statistics would
#: make a point's density depend on which other samples the sampler happened to keep.
NGP_CAM = {"otype": "CAM", "coordinates": "direction", "resolution": [10, 3], "n_layers": 1, "n_channels": 1,
           "norm": "sample", "lr_factor": 10.0}


class NGPRadianceField(_RadianceField):
    """Instant-NGP's NeRF network (paper layout: 16 levels x 2 features, T = 2^19, N_min = 16,
    N_max = 2048 -> per_level_scale 1.381913; 1 x 64 density MLP, 2 x 64 colour MLP; no biases, as tcnn).

    Note: the colour MLP reads the 15 features after the log-density (the issue's and PVD's layout;
    instant-ngp itself feeds all 16). The SH band 0 is a constant input, which stands in for tcnn's
    padding-with-ones bias.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, backend: str = "auto"):
        super().__init__()
        self.cfg = copy.deepcopy(parse_fields(config or {}, _NGP_FIELDS, where="NGPRadianceField", ignore=("otype",)))
        self.encoding = build_encoding(self.cfg["encoding"], 3, backend=backend)
        self.density_network = build_network(self.cfg["density_network"], self.encoding.n_output_dims, N_FEATURES)
        self.cfg["encoding"] = self.encoding.config
        self.cfg["density_network"] = self.density_network.config
        self._init_head(self.cfg["direction_encoding"], self.cfg["rgb_network"], backend)
        self.cam = None
        if self.cfg["cam"] is not None:
            self.cam = _build_cam(self.cfg["cam"], self.density_network)
            self.cfg["cam"] = self.cam.config
        self.view_dependent_density = self.cam is not None

    @property
    def config(self) -> dict[str, Any]:
        return {"otype": "NGPRadianceField", **copy.deepcopy(self.cfg)}

    def feature(self, x: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """The raw 16-d density-MLP output ``[..., 16]`` (entry 0: log-density before any clip).

        With CAM the density MLP is modulated by the view direction ``d``; without ``d`` a CAM
        field returns, per output, an upper bound over every direction (`_feature_bound`).
        """
        e = self.encoding(x)
        if self.cam is None:
            return self.density_network(e)
        if d is None:
            return self._feature_bound(e)
        gamma, beta = self.cam.gamma_beta(d.to(e.dtype))
        return self.density_network(e, modulate=lambda i, h: self.cam.modulate(h, gamma, beta, i))

    def _feature_bound(self, e: torch.Tensor) -> torch.Tensor:
        """Upper bound over all view directions of each density-MLP output (interval arithmetic).

        gamma and beta at any direction are interpolations of grid nodes, so they lie within the
        nodes' [min, max]. The normalised pre-activation n does not depend on the direction, so
        gamma * n + beta lies in [min(g_lo n, g_hi n) + b_lo, max(g_lo n, g_hi n) + b_hi]; the
        activation is monotonic, and the output layer's positive weights take the upper end and
        its negative weights the lower end. The occupancy grid thus never drops a cell that some
        direction sees as dense (a direction-free density would otherwise be undefined).
        """
        net = self.density_network
        hidden, last = net.layers[0], net.layers[1]
        n = normalize(hidden(e), self.cam.norm, eps=self.cam.cfg["eps"])
        g_lo, g_hi, b_lo, b_hi = (v.to(e.dtype) for v in self.cam.modulation_range(0))
        a, b = g_lo * n, g_hi * n
        h_hi = net.activation(torch.maximum(a, b) + b_hi)
        h_lo = net.activation(torch.minimum(a, b) + b_lo)
        w = last.weight
        out = h_hi @ w.clamp(min=0).t() + h_lo @ w.clamp(max=0).t()
        if last.bias is not None:
            out = out + last.bias
        return net.output_activation(out)


def _build_cam(cfg: Mapping[str, Any], network):
    from .networks import MLP

    cam = build_encoding(cfg, 3, backend="torch")
    if cam.otype != "CAM" or cam.cfg["coordinates"] != "direction":
        raise ConfigError("NGPRadianceField: 'cam' must be a CAM over the view direction",
                          'use {"otype": "CAM", "coordinates": "direction", "resolution": [10, 3]}')
    # the direction-free bound (occupancy) is exact interval arithmetic for one modulated hidden
    # layer followed by the output layer, with a monotonic activation
    if not isinstance(network, MLP) or network.cfg["n_hidden_layers"] != 1 or \
            network.cfg["activation"] not in ("ReLU", "None", "Softplus", "Sigmoid", "Exponential") or \
            network.cfg["output_activation"] != "None" or network.first_freqs is not None:
        raise ConfigError("NGPRadianceField: CAM needs a density MLP with one hidden layer, a monotonic activation "
                          "and a linear output", 'use {"otype": "FullyFusedMLP", "n_hidden_layers": 1, "activation": "ReLU"}')
    width = network.cfg["n_neurons"]
    if cam.cfg["n_layers"] != 1 or cam.cfg["n_channels"] not in (1, width) or cam.cfg["norm"] not in ("sample", "none"):
        raise ConfigError("NGPRadianceField: the CAM grid must have n_layers 1, n_channels 1 or the MLP width, "
                          "and norm sample or none", "start from fieldstudio.fields.radiance.NGP_CAM")
    return cam


# ------------------------------------------------------------------------------------------------
# Vanilla (MLP) NeRF
# ------------------------------------------------------------------------------------------------

_NERF_FIELDS = {
    "position_encoding": Field(dict, {"otype": "Frequency", "n_frequencies": 10}),
    "direction_encoding": Field(dict, {"otype": "Frequency", "n_frequencies": 4}),
    "include_input": Field(bool, True, doc="concatenate the raw inputs to their encodings (NeRF)"),
    "n_neurons": Field(int, 128, check=positive, doc="trunk width (NeRF: 256)"),
    "n_hidden_layers": Field(int, 4, check=at_least(1), doc="trunk depth (NeRF: 8)"),
    "skips": Field(list, [2], doc="trunk layers after which the encoded position is concatenated again (NeRF: [4])"),
    "rgb_network": Field(dict, {"otype": "MLP", "activation": "ReLU", "output_activation": "None",
                                "n_neurons": 64, "n_hidden_layers": 1, "bias": True}),
    "log_density_clip": Field((list, type(None)), None, check=_check_clip),
}


class VanillaNeRF(_RadianceField):
    """The MLP NeRF (Mildenhall et al. 2020) with the shared 16-d head.

    Default: a CPU-sized trunk of 4 x 128 ReLU layers with a skip after layer 2 (the paper's is 8 x 256
    with the skip after layer 4: ``{"n_neurons": 256, "n_hidden_layers": 8, "skips": [4]}``), biases
    and PyTorch's default init as NeRF's code; position encoding tcnn's Frequency with 10 octaves and
    the raw position (63 inputs); direction: Frequency with 4 octaves of ``(d + 1) / 2`` and that input itself (27).
    Unlike the paper, the density is ``trunc_exp`` of the first of 16 linear outputs (not a ReLU) and
    the colour head reads the other 15 (PVD's MLP teacher layout), so both fields expose the same channels.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, backend: str = "auto"):
        super().__init__()
        self.cfg = copy.deepcopy(parse_fields(config or {}, _NERF_FIELDS, where="VanillaNeRF", ignore=("otype",)))
        c = self.cfg
        bad = [s for s in c["skips"] if not isinstance(s, int) or not 0 <= s < c["n_hidden_layers"] - 1]
        if bad:
            raise ConfigError(f"VanillaNeRF: skips {bad} are not trunk layers followed by another",
                              f"use indices from 0 to {c['n_hidden_layers'] - 2}")
        self.position_encoding = build_encoding(c["position_encoding"], 3, backend=backend)
        c["position_encoding"] = self.position_encoding.config
        n_in = self.position_encoding.n_output_dims + (3 if c["include_input"] else 0)
        layers, width = [], n_in
        for i in range(c["n_hidden_layers"]):
            layers.append(nn.Linear(width, c["n_neurons"]))
            width = c["n_neurons"] + (n_in if i in c["skips"] else 0)
        self.trunk = nn.ModuleList(layers)
        self.feature_layer = nn.Linear(width, N_FEATURES)
        self._init_head(c["direction_encoding"], c["rgb_network"], backend)

    @property
    def config(self) -> dict[str, Any]:
        return {"otype": "VanillaNeRF", **copy.deepcopy(self.cfg)}

    def _encode(self, enc, v):
        e = enc(v)
        return torch.cat([v, e], dim=-1) if self.cfg["include_input"] else e

    def feature(self, x: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """The raw 16-d output of the trunk's last linear layer ``[..., 16]`` (entry 0: log-density); ``d`` unused."""
        inp = self._encode(self.position_encoding, x)
        h = inp
        skips = self.cfg["skips"]
        for i, layer in enumerate(self.trunk):
            h = torch.relu(layer(h))
            if i in skips:
                h = torch.cat([h, inp], dim=-1)
        return self.feature_layer(h)

    def _rgb(self, feature: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self._encode(self.direction_encoding, _direction_input(d)), feature[..., 1:]], dim=-1)
        return torch.sigmoid(self.rgb_network(h))

    def _init_head(self, dir_cfg, rgb_cfg, backend):
        self.direction_encoding = build_encoding(dir_cfg, 3, backend=backend)
        n_dir = self.direction_encoding.n_output_dims + (3 if self.cfg["include_input"] else 0)
        self.rgb_network = build_network(rgb_cfg, n_dir + N_FEATURES - 1, 3)
        self.cfg["direction_encoding"] = self.direction_encoding.config
        self.cfg["rgb_network"] = self.rgb_network.config
