"""Adam that steps only the rows a sparse gradient touches ("lazy" Adam), for explicit grids.

A batch of rays reaches a few percent of a dense voxel grid's cells, yet a dense gradient and
Adam's pass over every cell cost time in proportion to the whole grid: on two CPU cores, a 96^3 x 28
grid spends about 35 of its 65 ms per step zeroing the gradient and stepping Adam. A field that
returns a *sparse* gradient for such a grid (`VoxelField`) skips both; `LazyAdam` then updates the
moments and values of the touched cells only, as Plenoxels updates its sparse grid. Cells no ray
reaches keep their value (dense Adam would keep moving them on their old momentum).

Dense gradients take the usual Adam step, so one optimiser serves a field that mixes both. The
state has Adam's keys (``step``, ``exp_avg``, ``exp_avg_sq``), so a checkpoint of one loads into the other.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class LazyAdam(torch.optim.Optimizer):
    """Adam (Kingma & Ba) where a sparse COO gradient updates only the entries it holds.

    Each parameter's ``step`` counts the optimiser steps that reached it (bias correction uses it,
    as TensorFlow's LazyAdam does); a sparse gradient's dense dimensions are stepped as whole rows.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if lr < 0 or eps < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"LazyAdam: invalid lr {lr}, betas {betas} or eps {eps}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["step"] += 1
                t = float(st["step"])
                bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
                m, v = st["exp_avg"], st["exp_avg_sq"]
                g = p.grad
                if not g.is_sparse:
                    m.lerp_(g, 1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    p.addcdiv_(m, (v / bc2).sqrt_().add_(eps), value=-lr / bc1)
                    continue
                g = g.coalesce()
                # rows of the flattened sparse dimensions, each a block of the dense dimensions
                rows = _flat_rows(g.indices(), g.shape[:g.sparse_dim()])
                vals = g.values().reshape(rows.numel(), -1)
                m2, v2, p2 = (t_.view(-1, vals.shape[1]) for t_ in (m, v, p))
                kernels = _row_kernels(p2)
                if kernels is not None:
                    kernels.adam_rows(p2, m2, v2, rows.contiguous(), vals.contiguous(), lr, b1, b2, eps, bc1, bc2)
                else:
                    adam_rows_torch(p2, m2, v2, rows, vals, lr, b1, b2, eps, bc1, bc2)
        return loss


def adam_rows_torch(p, m, v, rows, g, lr, b1, b2, eps, bc1, bc2) -> None:
    """Adam's step on the distinct ``rows`` of the ``[R, C]`` tensors ``p``, ``m``, ``v`` with
    their gradient ``g`` ``[U, C]``, in place: the twin of the fused CPU kernel (any device)."""
    mr = m.index_select(0, rows).lerp_(g, 1 - b1)
    vr = v.index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
    m.index_copy_(0, rows, mr)
    v.index_copy_(0, rows, vr)
    p.index_add_(0, rows, mr / (vr / bc2).sqrt_().add_(eps), alpha=-lr / bc1)


def _row_kernels(p: torch.Tensor):
    if p.device.type != "cpu" or p.dtype not in (torch.float32, torch.float64) or not p.is_contiguous():
        return None
    from fieldstudio.kernels import dense_kernels

    return dense_kernels()


def _flat_rows(indices: torch.Tensor, shape) -> torch.Tensor:
    rows = torch.zeros(indices.shape[1], dtype=torch.long, device=indices.device)
    for k, size in enumerate(shape):
        rows = rows * int(size) + indices[k]
    return rows


def wants_sparse_updates(module: nn.Module) -> bool:
    """Whether any submodule returns sparse gradients (declares ``sparse_gradients = True``)."""
    return any(getattr(m, "sparse_gradients", False) for m in module.modules())


def adam(module: nn.Module, lr: float, param_groups: Iterable[dict] | None = None,
         betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-15) -> torch.optim.Optimizer:
    """Adam with tiny-cuda-nn's settings for ``module``'s trainable parameters (or ``param_groups``).

    `LazyAdam` when the module has sparse gradients; otherwise PyTorch's fused Adam where every
    parameter allows it (one pass over each tensor instead of one per operation: 3-5x faster on a
    CPU for a hash table of a million entries)."""
    groups = list(param_groups) if param_groups is not None else [
        {"params": [p for p in module.parameters() if p.requires_grad]}]
    if wants_sparse_updates(module):
        return LazyAdam(groups, lr=lr, betas=betas, eps=eps)
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(groups, lr=lr, betas=betas, eps=eps, fused=True if fused else None)
