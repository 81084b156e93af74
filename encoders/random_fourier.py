"""Random Fourier features (Tancik et al., "Fourier Features Let Networks Learn High Frequency
Functions in Low Dimensional Domains", NeurIPS 2020): ``[sin(2 pi sigma B x), cos(2 pi sigma B x)]``.

``B`` has standard normal entries, one row per frequency. It is drawn from ``seed`` when the encoder is
built and kept as a persistent buffer, so a run folder's weights hold the exact matrix that was
trained and loading them restores it even if the generator changes.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from fieldstudio.config import Field, at_least, positive

from .base import Encoding
from .registry import register


@register
class RandomFourierFeatures(Encoding):
    """Gaussian random Fourier features of inputs in [0, 1] (the FFN baseline of the CAM paper).

    Config: ``n_frequencies`` (256), ``sigma`` (10: the standard deviation of the frequencies, in
    cycles per unit input), ``seed`` (0). Output dims: ``2 * n_frequencies`` (all sines, then all cosines).
    """

    otype: ClassVar[str] = "RandomFourierFeatures"
    aliases: ClassVar[tuple[str, ...]] = ("FourierFeatures", "GaussianFourier")
    fields: ClassVar[dict[str, Field]] = {
        "n_frequencies": Field(int, 256, check=at_least(1), doc="random frequencies (outputs: twice as many)"),
        "sigma": Field(float, 10.0, check=positive, doc="standard deviation of the frequencies"),
        "seed": Field(int, 0, doc="seed of the frequency matrix"),
    }

    def __init__(self, n_input_dims: int, config=None):
        super().__init__(n_input_dims, config)
        gen = torch.Generator().manual_seed(self.cfg["seed"])
        b = torch.randn(self.cfg["n_frequencies"], self.n_input_dims, generator=gen) * self.cfg["sigma"]
        self.register_buffer("B", b)

    @property
    def n_output_dims(self) -> int:
        return 2 * self.cfg["n_frequencies"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        arg = (2 * math.pi) * (x @ self.B.to(x.dtype).t())
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)
