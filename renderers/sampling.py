"""Evaluating a field on a regular grid of pixels, in memory-bounded chunks."""

from __future__ import annotations

from typing import Callable

import torch


def pixel_centers(height: int, width: int, device=None) -> torch.Tensor:
    """``[H*W, 2]`` coordinates (x, y) of pixel centres in [0, 1], row-major."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1).reshape(-1, 2)


@torch.no_grad()
def render_image(fn: Callable[[torch.Tensor], torch.Tensor], height: int, width: int, *,
                 chunk: int = 1 << 16, device=None) -> torch.Tensor:
    """``fn(uv [n, 2]) -> [n, C]`` evaluated at every pixel; returns ``[H, W, C]`` on the CPU."""
    rows = []
    uv_all = pixel_centers(height, width, device=device)
    for start in range(0, uv_all.shape[0], chunk):
        rows.append(fn(uv_all[start:start + chunk]).float().cpu())
    return torch.cat(rows, dim=0).reshape(height, width, -1)
