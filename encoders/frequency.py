"""The tcnn ``Frequency`` encoding (NeRF positional encoding), with tcnn's exact output layout.

The layout matters beyond aesthetics: a network trained on tcnn's encoding, or weights loaded
from one, only lines up if feature ``j`` means the same thing here. tcnn orders outputs as

    j -> input dim ``j // (2n)``, frequency ``(j // 2) % n``, phase ``(j % 2) * pi/2``

i.e. for every input dim, for every frequency, the pair ``[sin, cos]`` of ``2^f * pi * x``.
Unlike the original NeRF encoding there is no raw-``x`` passthrough and the lowest frequency is
``pi`` (not 1): with inputs in [0, 1] the lowest band spans exactly one half period.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from fieldstudio.config import Field, at_least

from .base import Encoding
from .registry import register


@register
class Frequency(Encoding):
    """``sin(2^f * pi * x_i + phase)`` for every input dim ``i``, frequency ``f``, phase 0 or pi/2.

    Config (tcnn names and defaults): ``n_frequencies`` (integer >= 1, 12).
    Output dims: ``n_input_dims * n_frequencies * 2``.
    """

    otype: ClassVar[str] = "Frequency"
    fields: ClassVar[dict[str, Field]] = {
        "n_frequencies": Field(int, 12, check=at_least(1), doc="octaves per input dim; f = 0..n-1"),
    }

    @property
    def n_output_dims(self) -> int:
        return self.n_input_dims * self.cfg["n_frequencies"] * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        n = self.cfg["n_frequencies"]
        # Like tcnn, compute in at least float32 and cast to the input's precision at the end:
        # in float16 the argument 2^11 * pi * x has a resolution of ~4 rad, i.e. pure noise.
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        # Built per call (tiny) rather than stored as buffers: the encoder then has no state,
        # follows x to any device/dtype, and its state_dict stays empty like tcnn's.
        octaves = torch.pow(2.0, torch.arange(n, device=x.device, dtype=work.dtype))
        phase = torch.tensor([0.0, math.pi / 2], device=x.device, dtype=work.dtype)
        # Same order of operations as tcnn: exact power-of-two scaling first, then * pi, then
        # the phase shift; cos is sin(arg + pi/2), as tcnn evaluates it.
        arg = (work.unsqueeze(-1) * octaves) * math.pi  # [..., d, n]
        out = torch.sin(arg.unsqueeze(-1) + phase).flatten(-3)  # [..., d, n, 2] -> [..., 2dn]
        return out.to(x.dtype) if x.is_floating_point() else out
