"""Winning-subnetwork masks (WSN, as PFNR uses them): per-layer top-c% of learned scores.

Every masked tensor ``W`` has a score tensor of the same shape. During a session the mask is the
top ``capacity`` fraction of ``|score|`` *per tensor*; the straight-through estimator hands the
mask's gradient to the scores unchanged, so the scores learn which weights to keep. Once a session
ends its mask is stored (a fixed boolean buffer) and the weights it used are frozen for every later
session, which may still reuse them. Decoding an earlier video only needs its own stored mask.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def topk_mask(score: torch.Tensor, capacity: float) -> torch.Tensor:
    """Boolean mask keeping exactly ``round(capacity * n)`` entries of largest ``|score|``.

    ``topk`` on indices rather than a threshold keeps the count exact even with tied scores.
    """
    n = score.numel()
    k = min(n, max(1, int(round(capacity * n))))
    mask = torch.zeros(n, dtype=torch.bool, device=score.device)
    mask[torch.topk(score.detach().abs().flatten(), k, sorted=False).indices] = True
    return mask.view_as(score)


def ste_mask(score: torch.Tensor, capacity: float) -> torch.Tensor:
    """The hard top-k mask in the forward pass; identity gradient to ``score`` in the backward pass."""
    hard = topk_mask(score, capacity).to(score.dtype)
    return hard + (score - score.detach())


class MaskedModule(nn.Module):
    """Base of layers whose tensors can be masked.

    ``mode``: ``"dense"`` (no mask: plain training), ``"score"`` (top-k of the scores with the STE)
    or ``"fixed"`` (the boolean buffer ``mask_<name>``, set when a session ends or when decoding).
    """

    masked_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.mode = "dense"
        self.capacity = 1.0

    def _init_scores(self) -> None:
        for name in self.masked_names:
            p = getattr(self, name)
            score = torch.empty_like(p)
            # kaiming-uniform like the weights themselves, as in WSN/PFNR
            bound = 1.0 / math.sqrt(max(1, p[0].numel() if p.dim() > 1 else p.numel()))
            nn.init.uniform_(score, -bound, bound)
            self.register_parameter(f"score_{name}", nn.Parameter(score))
            self.register_buffer(f"mask_{name}", torch.ones_like(p, dtype=torch.bool), persistent=False)

    def masked(self, name: str) -> torch.Tensor:
        p = getattr(self, name)
        if self.mode == "dense":
            return p
        if self.mode == "score":
            return p * ste_mask(getattr(self, f"score_{name}"), self.capacity)
        return p * getattr(self, f"mask_{name}").to(p.dtype)

    def current_mask(self, name: str) -> torch.Tensor:
        """The boolean mask the forward pass uses now."""
        p = getattr(self, name)
        if self.mode == "dense":
            return torch.ones_like(p, dtype=torch.bool)
        if self.mode == "score":
            return topk_mask(getattr(self, f"score_{name}"), self.capacity)
        return getattr(self, f"mask_{name}").clone()


def masked_modules(module: nn.Module) -> list[tuple[str, MaskedModule]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, MaskedModule)]


def set_mode(module: nn.Module, mode: str, capacity: float = 1.0) -> None:
    if mode not in ("dense", "score", "fixed"):
        raise ValueError(mode)
    for _, m in masked_modules(module):
        m.mode, m.capacity = mode, capacity


def masked_tensors(module: nn.Module) -> list[tuple[str, MaskedModule, str]]:
    """Every masked tensor as (qualified name, owning layer, attribute), in a fixed order."""
    return [(f"{n}.{a}" if n else a, m, a) for n, m in masked_modules(module) for a in m.masked_names]
