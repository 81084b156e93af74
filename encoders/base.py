"""The contract every encoder keeps.

An encoder maps coordinates ``[..., n_input_dims]`` to features ``[..., n_output_dims]``. It is
built from a tcnn-style JSON config and writes that config back (`config`), so a run folder can
rebuild it and a tcnn config file runs unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from fieldstudio.config import Field, parse_fields


class Encoding(nn.Module):
    #: canonical tcnn name, e.g. "HashGrid"
    otype: ClassVar[str] = ""
    #: other names accepted in configs (compared case-insensitively)
    aliases: ClassVar[tuple[str, ...]] = ()
    #: the config fields this encoder accepts, with types and defaults
    fields: ClassVar[dict[str, Field]] = {}

    def __init__(self, n_input_dims: int, config: Mapping[str, Any] | None = None):
        super().__init__()
        self.n_input_dims = int(n_input_dims)
        self.cfg = parse_fields(dict(config or {}), self.fields, where=f"encoding '{self.otype}'")

    @property
    def n_output_dims(self) -> int:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    @property
    def config(self) -> dict[str, Any]:
        """The full JSON config (defaults included) that rebuilds this encoder."""
        return {"otype": self.otype, **self.cfg}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.n_input_dims:
            raise ValueError(
                f"{self.otype}: expected inputs with {self.n_input_dims} dims in the last axis, got shape {tuple(x.shape)}"
            )

    def extra_repr(self) -> str:
        return f"n_input_dims={self.n_input_dims}, n_output_dims={self.n_output_dims}, " + ", ".join(
            f"{k}={v}" for k, v in self.cfg.items() if not isinstance(v, (list, dict))
        )
