"""Networks built from tiny-cuda-nn style JSON configs: MLPs, SIREN, and encoding + network.

``build_network({"otype": "FullyFusedMLP", ...}, n_input_dims, n_output_dims)`` accepts tcnn's
network configs unchanged and writes them back (`config`, defaults filled in) so a run folder can
rebuild the same module. Every network maps ``[..., n_input_dims]`` to ``[..., n_output_dims]``.

What was checked against tcnn's source (NVlabs/tiny-cuda-nn: src/network.cu, src/fully_fused_mlp.cu,
src/cutlass_mlp.cu, include/tiny-cuda-nn/gpu_matrix.h, src/cpp_api.cu, DOCUMENTATION.md):

* ``otype``: "FullyFusedMLP" (and its old name "MegakernelMLP"), "CutlassMLP" and "MLP" are all the
  same maths; tcnn only picks a different kernel. A config without "otype" means "MLP", as in tcnn.
* Defaults: ``n_neurons = 128`` and ``n_hidden_layers = 5`` (``create_network`` and the docs).
* ``n_hidden_layers`` counts hidden layers (each with an activation): ``n_hidden_layers + 1``
  weight matrices, and 0 hidden layers is one linear map (CutlassMLP allows it; tcnn's
  FullyFusedMLP refuses it and only supports widths 16..256 -- the PyTorch path has no such limits).
* No biases anywhere. Note that tcnn pads the network input with the constant **1** up to a
  multiple of 16 (see ``identity.h``: padded outputs are set to 1), so in tcnn the first layer has an
  implicit bias whenever the input width is not a multiple of 16. fieldstudio has no such padding.
* Init: every weight matrix is uniform Xavier, ``U(-s, s)`` with ``s = sqrt(6 / (fan_in + fan_out))``
  (``initialize_xavier_uniform``), computed on tcnn's *padded* shapes (input and output widths
  rounded up to 16), which we reproduce. With activation "Sine" tcnn instead uses SIREN's init with
  omega_0 = 30 folded into the weights: first matrix ``U(±30 / fan_in)``, the others
  ``U(±sqrt(6 / fan_in))``.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from fieldstudio.config import Field, at_least, parse_fields, positive
from fieldstudio.errors import ConfigError

from .activations import ACTIVATION_NAMES, Activation

#: tcnn rounds network input/output widths up to this many (tensor-core tile width); it matters
#: here only for reproducing tcnn's initialisation bounds.
TCNN_ALIGNMENT = 16


def _padded(n: int) -> int:
    return -(-n // TCNN_ALIGNMENT) * TCNN_ALIGNMENT


def _check_dims(where: str, n_input_dims: int, n_output_dims: int) -> tuple[int, int]:
    for name, value in (("n_input_dims", n_input_dims), ("n_output_dims", n_output_dims)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r}",
                              "check the encoder output width / the number of output channels")
    return int(n_input_dims), int(n_output_dims)


class Network(nn.Module):
    """Shared contract: built from a config, maps ``[..., n_input_dims] -> [..., n_output_dims]``."""

    #: canonical name, e.g. "MLP"
    otype: ClassVar[str] = ""
    #: other names accepted in configs (compared case-insensitively)
    aliases: ClassVar[tuple[str, ...]] = ()
    #: the config fields this network accepts, with types and defaults
    fields: ClassVar[dict[str, Field]] = {}

    def __init__(self, n_input_dims: int, n_output_dims: int, config: Mapping[str, Any] | None = None):
        super().__init__()
        config = dict(config or {})
        # Keep the otype exactly as the user spelled it, so the written-back config is the one
        # they gave (e.g. "CutlassMLP" stays "CutlassMLP", not our canonical name).
        given = config.get("otype", self.otype)
        names = {n.lower() for n in (self.otype, *self.aliases)}
        if not isinstance(given, str) or given.lower() not in names:
            raise ConfigError(f"{type(self).__name__} cannot be built from otype {given!r}",
                              f"use one of {', '.join((self.otype, *self.aliases))} or call build_network")
        self._otype = given
        where = f"network '{given}'"
        self.n_input_dims, self.n_output_dims = _check_dims(where, n_input_dims, n_output_dims)
        self.cfg = parse_fields(config, self.fields, where=where)

    @property
    def config(self) -> dict[str, Any]:
        """The full JSON config (defaults included) that rebuilds this network."""
        return {"otype": self._otype, **self.cfg}

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.n_input_dims:
            raise ValueError(f"{self._otype}: expected inputs with {self.n_input_dims} dims in the last axis, "
                             f"got shape {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"n_input_dims={self.n_input_dims}, n_output_dims={self.n_output_dims}, " + ", ".join(
            f"{k}={v}" for k, v in self.cfg.items())


_REGISTRY: dict[str, type[Network]] = {}


def register(cls: type[Network]) -> type[Network]:
    """Class decorator: make `cls` buildable by its otype and aliases."""
    for name in (cls.otype, *cls.aliases):
        _REGISTRY[name.lower()] = cls
    return cls


@register
class MLP(Network):
    """tcnn's FullyFusedMLP / CutlassMLP in plain PyTorch.

    ``n_hidden_layers`` hidden layers of ``n_neurons`` units, each followed by ``activation``, then
    a linear output layer followed by ``output_activation``; ``n_hidden_layers + 1`` weight
    matrices in all. Weights live in ``self.layers`` (``nn.Linear``, weight shape ``[out, in]``,
    tcnn's row-major layout without the padding).

    ``bias`` (fieldstudio only, default false): tcnn networks have no bias vectors, so with the
    default every parameter here is one tcnn weight matrix and the two can be swapped. Biases, when
    enabled, start at zero so the network at initialisation is the same function as without them.
    """

    otype = "MLP"
    aliases = ("FullyFusedMLP", "CutlassMLP", "MegakernelMLP")
    fields = {
        "n_neurons": Field(int, 128, check=positive, doc="units per hidden layer"),
        "n_hidden_layers": Field(int, 5, check=at_least(0), doc="number of hidden layers"),
        "activation": Field(str, "ReLU", choices=ACTIVATION_NAMES, doc="activation of hidden layers"),
        "output_activation": Field(str, "None", choices=ACTIVATION_NAMES, doc="activation of the output"),
        # Feedback alignment [Lillicrap et al. 2016] trains with fixed random backward weights; it
        # only exists in tcnn's fused CUDA kernel. Accepted so tcnn configs load; ignored here
        # (ordinary backpropagation, ordinary Xavier init).
        "feedback_alignment": Field(bool, False, doc="accepted for tcnn compatibility; ignored"),
        "bias": Field(bool, False, doc="add bias vectors (tcnn has none)"),
        # NeuRBF's multi-frequency composition on the first layer (fieldstudio only): the first
        # hidden layer becomes h + sin(m' * h), m' log-spaced over its units, in place of the activation
        "first_layer_frequencies": Field((list, type(None)), None, check=lambda v: None if v is None or (
            isinstance(v, list) and len(v) == 2 and all(isinstance(a, (int, float)) and a > 0 for a in v))
            else "must be [m_min, m_max] (two positive numbers) or null",
            doc="[m_min, m_max]: first hidden layer h + sin(m' * h) instead of its activation"),
    }

    def __init__(self, n_input_dims: int, n_output_dims: int, config: Mapping[str, Any] | None = None):
        super().__init__(n_input_dims, n_output_dims, config)
        c = self.cfg
        widths = [self.n_input_dims] + [c["n_neurons"]] * c["n_hidden_layers"] + [self.n_output_dims]
        self.layers = nn.ModuleList(
            nn.Linear(w_in, w_out, bias=c["bias"]) for w_in, w_out in zip(widths[:-1], widths[1:]))
        self.activation = Activation(c["activation"])
        self.output_activation = Activation(c["output_activation"])
        pair = c["first_layer_frequencies"]
        if pair is not None and c["n_hidden_layers"] < 1:
            raise ConfigError("network 'MLP': first_layer_frequencies needs at least one hidden layer",
                              "set n_hidden_layers >= 1 or first_layer_frequencies to null")
        if pair is not None:
            m = torch.exp2(torch.linspace(math.log2(pair[0]), math.log2(pair[1]), c["n_neurons"], dtype=torch.float64))
            self.register_buffer("first_freqs", m, persistent=False)
        else:
            self.first_freqs = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draw the weights the way tcnn initialises them (see the module docstring)."""
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            # tcnn's matrices include the padding: the input width and output width are rounded up
            fan_out, fan_in = layer.weight.shape
            fan_in = _padded(fan_in) if i == 0 else fan_in
            fan_out = _padded(fan_out) if i == n - 1 else fan_out
            if self.activation.name == "Sine":
                bound = 30.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in)
            else:
                bound = math.sqrt(6.0 / (fan_in + fan_out))
            layer.weight.uniform_(-bound, bound)
            if layer.bias is not None:
                layer.bias.zero_()

    def forward(self, x: torch.Tensor, modulate=None) -> torch.Tensor:
        """``modulate(i, h) -> h`` (optional) rewrites hidden layer ``i``'s pre-activation (CAM's hook)."""
        self._check_input(x)
        *hidden, last = self.layers
        for i, layer in enumerate(hidden):
            h = layer(x)
            if modulate is not None:
                h = modulate(i, h)
            if i == 0 and self.first_freqs is not None:
                x = h + torch.sin(h * self.first_freqs.to(h.dtype))
            else:
                x = self.activation(h)
        return self.output_activation(last(x))


@register
class Siren(Network):
    """SIREN (Sitzmann et al., NeurIPS 2020), as in the official vsitzmann/siren ``Siren`` module.

    Sine layers ``y = sin(omega * (W x + b))`` -- omega multiplies the bias too, as in the official
    code. Layout: a first sine layer (``first_omega_0``), ``n_hidden_layers`` more sine layers
    (``hidden_omega_0``), then an output layer: linear when ``outermost_linear``, else a sine
    layer with ``hidden_omega_0``. That is ``n_hidden_layers + 2`` weight matrices -- the official
    code's ``hidden_layers`` count, one more than an MLP with the same ``n_hidden_layers`` (kept so
    the paper's settings copy over: 3 hidden layers x 256 = the image model).

    Init (official code): first layer ``W ~ U(-1/n_in, 1/n_in)``; every later layer
    ``W ~ U(-c, c)`` with ``c = sqrt(6 / n_in) / hidden_omega_0``; biases keep PyTorch's default
    ``U(-1/sqrt(n_in), 1/sqrt(n_in))``. This keeps the pre-activations of every hidden layer at
    unit-order standard deviation however deep the network is (the paper's key property).
    ``hidden_omega_0 = 1`` gives the variant used by the geographic location encoders.
    """

    otype = "SIREN"
    fields = {
        "n_neurons": Field(int, 256, check=positive, doc="units per layer"),
        "n_hidden_layers": Field(int, 3, check=at_least(0), doc="sine layers after the first"),
        "first_omega_0": Field(float, 30.0, check=positive, doc="frequency factor of the first layer"),
        "hidden_omega_0": Field(float, 30.0, check=positive, doc="frequency factor of later layers"),
        "outermost_linear": Field(bool, True, doc="linear (not sine) output layer"),
    }

    def __init__(self, n_input_dims: int, n_output_dims: int, config: Mapping[str, Any] | None = None):
        super().__init__(n_input_dims, n_output_dims, config)
        c = self.cfg
        widths = [self.n_input_dims] + [c["n_neurons"]] * (c["n_hidden_layers"] + 1) + [self.n_output_dims]
        self.layers = nn.ModuleList(nn.Linear(w_in, w_out) for w_in, w_out in zip(widths[:-1], widths[1:]))
        # omega of every layer that ends in a sine; the linear output layer (if any) has none
        n_sine = len(self.layers) - (1 if c["outermost_linear"] else 0)
        self.omegas: list[float] = [c["first_omega_0"]] + [c["hidden_omega_0"]] * (n_sine - 1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draw weights with the official SIREN init; biases get PyTorch's Linear default."""
        hidden_omega = self.cfg["hidden_omega_0"]
        for i, layer in enumerate(self.layers):
            layer.reset_parameters()  # PyTorch default, for the bias
            fan_in = layer.in_features
            bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / hidden_omega
            layer.weight.uniform_(-bound, bound)

    def preactivations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``omega * (W x + b)`` of every sine layer, in order (for diagnostics and tests)."""
        self._check_input(x)
        out = []
        for layer, omega in zip(self.layers, self.omegas):
            z = omega * layer(x)
            out.append(z)
            x = torch.sin(z)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        for layer, omega in zip(self.layers, self.omegas):
            x = torch.sin(omega * layer(x))
        if len(self.omegas) < len(self.layers):  # outermost_linear
            x = self.layers[-1](x)
        return x


def network_class(otype: str) -> type[Network]:
    """The network class for `otype` (case-insensitive); `ConfigError` naming the known ones."""
    if not isinstance(otype, str):
        raise ConfigError(f"network 'otype' must be a string, got {otype!r}", 'e.g. "otype": "FullyFusedMLP"')
    cls = _REGISTRY.get(otype.lower())
    if cls is None:
        names = list_networks()
        close = difflib.get_close_matches(otype, names, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown network otype '{otype}'", f"{hint}known networks: {', '.join(names)}")
    return cls


def list_networks() -> list[str]:
    """Every accepted network otype (aliases included: they are all real tcnn names)."""
    return sorted(name for cls in set(_REGISTRY.values()) for name in (cls.otype, *cls.aliases))


def build_network(config: Mapping[str, Any], n_input_dims: int, n_output_dims: int) -> Network:
    """Build a network from a tcnn-style config dict; a missing "otype" means "MLP", as in tcnn."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"a network config must be a JSON object, got {type(config).__name__}",
                          'write e.g. {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 2}')
    return network_class(config.get("otype", "MLP"))(n_input_dims, n_output_dims, config)


class NetworkWithInputEncoding(nn.Module):
    """tcnn's NetworkWithInputEncoding: ``network(encoding(x))``.

    ``encoding`` is built by `fieldstudio.encoders.build_encoding` and ``network`` by
    `build_network` with the encoder's output width as its input width.
    """

    def __init__(self, n_input_dims: int, n_output_dims: int, encoding_config: Mapping[str, Any],
                 network_config: Mapping[str, Any], backend: str = "auto"):
        super().__init__()
        # imported here so fieldstudio.fields does not load every encoder module on import
        from fieldstudio.encoders import build_encoding

        self.n_input_dims, self.n_output_dims = _check_dims("NetworkWithInputEncoding", n_input_dims, n_output_dims)
        self.encoding = build_encoding(encoding_config, self.n_input_dims, backend=backend)
        self.network = build_network(network_config, self.encoding.n_output_dims, self.n_output_dims)

    @property
    def config(self) -> dict[str, Any]:
        """``{"encoding": ..., "network": ...}``, each the full config that rebuilds that part."""
        return {"encoding": self.encoding.config, "network": self.network.config}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(self.encoding(x))
