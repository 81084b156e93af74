"""The tcnn ``Identity`` encoding: pass coordinates through, optionally rescaled.

It exists mostly as a building block for ``Composite`` configs (e.g. "hash-grid the position,
pass the time through"), so it must accept the same two knobs as tiny-cuda-nn.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from fieldstudio.config import Field

from .base import Encoding
from .registry import register


@register
class Identity(Encoding):
    """``out = x * scale + offset``, one output per input dimension.

    Config (tcnn names and defaults): ``scale`` (number, 1.0), ``offset`` (number, 0.0).
    """

    otype: ClassVar[str] = "Identity"
    fields: ClassVar[dict[str, Field]] = {
        "scale": Field(float, 1.0, doc="multiplies every input"),
        "offset": Field(float, 0.0, doc="added after scaling"),
    }

    @property
    def n_output_dims(self) -> int:
        return self.n_input_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        # Always compute (even for scale 1 / offset 0) so the output is a fresh tensor: callers
        # may write into an encoder's output in place without touching their inputs.
        return x * self.cfg["scale"] + self.cfg["offset"]
