"""The tcnn ``SphericalHarmonics`` encoding: real SH of a direction, tcnn basis and signs.

tcnn conventions, all kept here so weights and configs transfer:

* ``degree`` is the number of bands: bands ``l = 0..degree-1``, ``degree**2`` outputs, 1 <= degree <= 8.
* The input is a direction stored in [0, 1]^3 as ``(v + 1) / 2``; it is mapped back with
  ``v = 2x - 1`` and *not* normalised (tcnn does not normalise either; the caller passes unit
  vectors). Gradients w.r.t. ``x`` therefore carry tcnn's factor 2.
* Output index ``l*l + l + m`` for ``m = -l..l``; with the Condon-Shortley phase, so band 1 is
  ``(-c*y, +c*z, -c*x)``. Equivalently: tcnn's ``Y_lm = sqrt(2) Re Y_l^m`` for m > 0,
  ``sqrt(2) Im Y_l^|m|`` for m < 0 and ``Y_l^0`` for m = 0, with the complex ``Y_l^m`` of
  physics/scipy (which include ``(-1)^m``).

Instead of tcnn's 64 generated polynomials we evaluate the basis by recurrences, which give the
same polynomials (tcnn's generator uses the same split, a polynomial in z times the
``(x + iy)^m`` parts), so the outputs agree even for inputs that are not exactly unit length:

* ``C_m + i S_m = (x + i y)^m`` by ``C_m = x C_{m-1} - y S_{m-1}``, ``S_m = x S_{m-1} + y C_{m-1}``
  (on the unit sphere these are ``sin^m(theta) cos(m phi)`` and ``sin^m(theta) sin(m phi)``);
* ``Q_l^m(z) = P_l^m(z) / (1 - z^2)^(m/2)``, the associated Legendre function with its
  ``sin^m`` factor removed (a plain polynomial, so no square roots and smooth gradients at the poles):
  ``Q_m^m = (-1)^m (2m-1)!!``, ``Q_{m+1}^m = (2m+1) z Q_m^m``,
  ``(l-m) Q_l^m = (2l-1) z Q_{l-1}^m - (l+m-1) Q_{l-2}^m``;
* ``Y_lm = K_lm Q_l^|m|(z) * (C_|m| or S_|m|)`` with
  ``K_lm = sqrt((2l+1)/(4 pi) (l-|m|)!/(l+|m|)!)``, times ``sqrt(2)`` for m != 0.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import torch

from fieldstudio.config import Field, between
from fieldstudio.errors import ConfigError

from .base import Encoding
from .registry import register

#: tcnn implements bands up to l = 7
MAX_DEGREE = 8


def _double_factorial(n: int) -> int:
    """n!! for odd n >= -1 (with (-1)!! = 1)."""
    return math.prod(range(n, 0, -2)) if n > 0 else 1


def _norm(l: int, m: int) -> float:
    """Normalisation making the real basis orthonormal on the unit sphere (m >= 0)."""
    k = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - m) / math.factorial(l + m))
    return k if m == 0 else math.sqrt(2.0) * k


def real_sh(v: torch.Tensor, degree: int) -> torch.Tensor:
    """tcnn's real SH basis of directions ``v`` ([..., 3], components x, y, z) -> ``[..., degree**2]``.

    Plain torch ops, so it is differentiable, works in any float dtype and on any device; the
    Python loops run over (l, m) only, never over points.
    """
    if not 1 <= degree <= MAX_DEGREE:
        raise ValueError(f"degree must be in 1..{MAX_DEGREE}, got {degree}")
    x, y, z = v.unbind(-1)
    out: dict[int, torch.Tensor] = {}  # output index l*l + l + m -> values

    cos_m, sin_m = torch.ones_like(x), torch.zeros_like(x)  # (x + iy)^0
    for m in range(degree):
        if m > 0:
            cos_m, sin_m = x * cos_m - y * sin_m, x * sin_m + y * cos_m
        # Q_l^m for l = m, m+1, ... by the three-term recurrence in l; starting it from
        # Q_{m-1}^m = 0 makes the l = m+1 step the general formula too.
        q_prev = torch.zeros_like(z)
        q = torch.full_like(z, float((-1) ** m * _double_factorial(2 * m - 1)))
        for l in range(m, degree):
            if l > m:
                q_prev, q = q, ((2 * l - 1) * z * q - (l + m - 1) * q_prev) / (l - m)
            c = _norm(l, m)
            if m == 0:
                out[l * l + l] = c * q
            else:
                out[l * l + l + m] = c * q * cos_m
                out[l * l + l - m] = c * q * sin_m
    return torch.stack([out[i] for i in range(degree * degree)], dim=-1)


@register
class SphericalHarmonics(Encoding):
    """Real spherical harmonics of a 3-D direction given in [0, 1]^3 (tcnn layout and signs).

    Config (tcnn names and defaults): ``degree`` (integer 1..8, 4): number of bands; the output
    has ``degree**2`` dims. The input must be 3-D.
    """

    otype: ClassVar[str] = "SphericalHarmonics"
    fields: ClassVar[dict[str, Field]] = {
        "degree": Field(int, 4, check=between(1, MAX_DEGREE), doc="number of SH bands (l = 0..degree-1)"),
    }

    def __init__(self, n_input_dims: int, config: Mapping[str, Any] | None = None):
        super().__init__(n_input_dims, config)
        if self.n_input_dims != 3:
            raise ConfigError(
                f"encoding '{self.otype}' encodes 3-D directions, got n_input_dims={self.n_input_dims}",
                "feed it exactly the 3 direction dims, e.g. inside a Composite with \"n_dims_to_encode\": 3",
            )

    @property
    def n_output_dims(self) -> int:
        return self.cfg["degree"] ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        # Like tcnn, compute in at least float32 and only then cast to the input's precision:
        # the unnormalised Legendre terms reach 13!! = 135135 at degree 8, beyond float16's range.
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        # tcnn stores directions as (v + 1) / 2; undo exactly that, no renormalisation.
        out = real_sh(work * 2 - 1, self.cfg["degree"])
        return out.to(x.dtype) if x.is_floating_point() else out
