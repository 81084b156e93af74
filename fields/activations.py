"""Activation functions by tiny-cuda-nn name (matched case-insensitively, as tcnn does).

Each definition below matches tcnn's ``warp_activation`` in
``include/tiny-cuda-nn/common_device.h`` (NVlabs/tiny-cuda-nn), so a network trained here
computes the same function as the tcnn network built from the same config. Two of them are *not*
the textbook functions: tcnn's Softplus and Squareplus are "zoomed out" by the compile-time
constant ``K_ACT = 10`` so that they hug ReLU more closely:

    Softplus(x)   = log(exp(10 x) + 1) / 10                       (= torch softplus, beta=10)
    Squareplus(x) = 0.5 * (X + sqrt(X*X + 4)) / 10,  X = 10 x

``SiLU`` (x * sigmoid(x)) is listed in some versions of tcnn's DOCUMENTATION.md but is absent from
the ``string_to_activation`` of the releases we read; treat it as a fieldstudio extension that an
older tcnn build rejects.
"""

from __future__ import annotations

import difflib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fieldstudio.errors import ConfigError

#: tcnn's sharpness constant for Softplus and Squareplus (``K_ACT`` in common_device.h).
K_ACT = 10.0

#: tcnn's LeakyReLU slope for negative inputs (hard-coded 0.01 in common_device.h).
LEAKY_RELU_SLOPE = 0.01


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _leaky_relu(x: torch.Tensor) -> torch.Tensor:
    # tcnn: x * (x > 0 ? 1 : 0.01)
    return F.leaky_relu(x, LEAKY_RELU_SLOPE)


def _softplus(x: torch.Tensor) -> torch.Tensor:
    # tcnn: logf(expf(x * K_ACT) + 1) / K_ACT. torch's softplus(beta=K_ACT) is the same function
    # but returns x once beta*x > threshold; at 40 the difference (exp(-40) / K_ACT) is below
    # double precision and exp(40) cannot overflow. tcnn's expf overflows to inf for x > ~8.9 --
    # we deliberately do not reproduce that.
    return F.softplus(x, beta=K_ACT, threshold=40.0)


def _squareplus(x: torch.Tensor) -> torch.Tensor:
    # tcnn: X = K_ACT * x; 0.5 * (X + sqrt(X*X + 4)) / K_ACT.
    # For X << 0 the sum X + sqrt(X^2 + 4) cancels catastrophically, so there we use the
    # algebraically equal 2 / (sqrt(X^2 + 4) - X). Both branches are finite everywhere (the
    # denominator is > |X| >= 0), so `where` stays NaN-free in the backward pass too.
    X = x * K_ACT
    root = torch.sqrt(X * X + 4.0)
    return torch.where(X >= 0, 0.5 * (X + root), 2.0 / (root - X)) / K_ACT


#: canonical tcnn name -> function; the order is the one error messages list them in.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "None": _identity,
    "ReLU": torch.relu,
    "LeakyReLU": _leaky_relu,
    "Exponential": torch.exp,
    "Sine": torch.sin,  # plain sin(x): tcnn has no omega_0; SIREN-style scaling lives in the weights
    "Sigmoid": torch.sigmoid,  # the logistic function
    "Squareplus": _squareplus,
    "Softplus": _softplus,
    "Tanh": torch.tanh,
    "SiLU": F.silu,  # x * sigmoid(x); fieldstudio extension (see module docstring)
}

#: the valid activation names, canonical spelling.
ACTIVATION_NAMES: tuple[str, ...] = tuple(ACTIVATIONS)

_BY_LOWER = {name.lower(): name for name in ACTIVATIONS}


def canonical_activation(name: str) -> str:
    """Return the canonical spelling of activation `name` (e.g. ``"relu"`` -> ``"ReLU"``).

    Raises `ConfigError` listing the valid names when `name` is unknown.
    """
    if isinstance(name, str) and name.lower() in _BY_LOWER:
        return _BY_LOWER[name.lower()]
    close = difflib.get_close_matches(str(name), list(ACTIVATION_NAMES), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(f"unknown activation {name!r}", f"{hint}valid activations: {', '.join(ACTIVATION_NAMES)}")


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The element-wise function for tcnn activation `name` (case-insensitive)."""
    return ACTIVATIONS[canonical_activation(name)]


class Activation(nn.Module):
    """An element-wise tcnn activation as a module, so it shows up in ``print(model)``."""

    def __init__(self, name: str):
        super().__init__()
        self.name = canonical_activation(name)
        self._fn = ACTIVATIONS[self.name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)

    def extra_repr(self) -> str:
        return self.name
