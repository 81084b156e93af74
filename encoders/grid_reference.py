"""The plain twin of the grid encoder: the obvious PyTorch code, kept as the reference.

One level at a time, one corner at a time, ``table[idx]`` gathers and autograd for everything.
It shares only the level layout (`grid_layout`) with the fast path, so tests can hold the two
against each other, and benchmarks report the fast path's speed as a ratio to this one.
"""

from __future__ import annotations

import torch

from .grid_layout import COHERENT_PRIMES, Level


def corner_index(corner: torch.Tensor, lv: Level) -> torch.Tensor:
    """Index into the level's table of integer grid points ``corner`` ``[N, d]`` (int64)."""
    d = corner.shape[1]
    if lv.hashed:
        h = torch.zeros_like(corner[:, 0])
        for k in range(d):
            h = h ^ (corner[:, k] * COHERENT_PRIMES[k])
        return h % lv.size
    idx = torch.zeros_like(corner[:, 0])
    stride = 1
    for k in range(lv.dense_dims):
        idx = idx + corner[:, k] * stride
        stride *= lv.resolution
    return idx % lv.size


def grid_encode_reference(x: torch.Tensor, tables: list[torch.Tensor], levels: list[Level],
                          interpolation: str = "Linear") -> torch.Tensor:
    """``x`` ``[N, d]``; ``tables[l]`` ``[size_l, F]``; returns ``[N, L*F]``."""
    n, d = x.shape
    outs = []
    for lv, table in zip(levels, tables):
        pos = x * lv.scale + 0.5
        base = torch.floor(pos.detach())
        frac = pos - base
        if interpolation == "Smoothstep":
            frac = frac * frac * (3 - 2 * frac)
        i0 = base.long()
        if interpolation == "Nearest":
            outs.append(table[corner_index(i0, lv)])
            continue
        acc = 0
        for c in range(1 << d):
            bits = torch.tensor([(c >> k) & 1 for k in range(d)], device=x.device)
            w = torch.where(bits.bool(), frac, 1 - frac).prod(dim=1, keepdim=True)
            acc = acc + w * table[corner_index(i0 + bits, lv)]
        outs.append(acc)
    return torch.cat(outs, dim=1)
