"""Level geometry of tiny-cuda-nn's multiresolution grids, computed exactly as tcnn does.

Kept apart from the encoder so the fast path, the plain reference twin and the tcnn adapter
all share one definition of scales, resolutions, table sizes and offsets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# tcnn's coherent prime hash: the first "prime" is 1 so that neighbours along x stay close in
# memory; the others are large primes that decorrelate the remaining axes.
COHERENT_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)


@dataclass(frozen=True)
class Level:
    scale: float  # s_l = N_min * b^l - 1, in float32 as tcnn computes it
    resolution: int  # R_l = ceil(s_l) + 1 vertices per axis
    size: int  # entries in this level's table
    offset: int  # first entry of this level in the concatenated table
    hashed: bool  # True when the dense index no longer fits and the hash is used
    dense_dims: int  # how many axes enter the dense index (tcnn stops once the stride exceeds the table)


def next_multiple(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def grid_levels(n_dims: int, n_levels: int, base_resolution: int, per_level_scale: float,
                log2_hashmap_size: int, grid_type: str) -> list[Level]:
    """Per-level layout for ``grid_type`` in {"Hash", "Dense", "Tiled"}."""
    levels: list[Level] = []
    offset = 0
    max_params = np.iinfo(np.uint32).max // 2
    log2_scale = np.float32(math.log2(per_level_scale))
    for lvl in range(n_levels):
        # float32 arithmetic on purpose: ceil() of a value that sits on an integer must agree with tcnn.
        scale = float(np.exp2(np.float32(lvl) * log2_scale, dtype=np.float32) * np.float32(base_resolution) - np.float32(1.0))
        resolution = int(math.ceil(scale)) + 1
        dense_size = resolution ** n_dims
        params = max_params if float(resolution) ** n_dims > max_params else dense_size
        params = next_multiple(params, 8)
        if grid_type == "Hash":
            params = min(params, 1 << log2_hashmap_size)
        elif grid_type == "Tiled":
            params = min(params, base_resolution ** n_dims)
        # tcnn's grid_index: add axes to the dense index while the stride still fits the table.
        stride, dims = 1, 0
        for _ in range(n_dims):
            if stride > params:
                break
            dims += 1
            stride *= resolution
        hashed = grid_type == "Hash" and params < stride
        levels.append(Level(scale, resolution, params, offset, hashed, dims))
        offset += params
    return levels
