"""Resize a field config to a parameter budget, so encoders can be compared at equal size.

One knob is turned per config: the hash table (``log2_hashmap_size``) of a hash-grid encoding,
otherwise the width (``n_neurons``) of the network. The largest setting whose field has at most
``budget`` parameters wins; parameters are counted on PyTorch's meta device, which allocates no
memory, so a 2^24-entry table costs nothing to measure.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from fieldstudio.errors import ConfigError

LOG2_RANGE = (8, 24)
WIDTH_RANGE = (4, 2048)


def count_params(build: Callable[[dict[str, Any]], torch.nn.Module], cfg: dict[str, Any]) -> int:
    with torch.device("meta"):
        module = build(cfg)
    return sum(p.numel() for p in module.parameters())


def _largest(lo: int, hi: int, fits: Callable[[int], bool]) -> int | None:
    """Largest v in [lo, hi] with fits(v), assuming fits is monotone (true, then false)."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def fit_to_budget(cfg: dict[str, Any], budget: int, build: Callable[[dict[str, Any]], torch.nn.Module]
                  ) -> tuple[dict[str, Any], int]:
    """``(resized copy of cfg, its parameter count)``; ``build(cfg)`` constructs the field."""
    if budget < 1:
        raise ConfigError(f"the parameter budget must be positive, got {budget}", "e.g. a budget of 100000")
    cfg = copy.deepcopy(cfg)
    enc = cfg.get("encoding", {})
    otype = str(enc.get("otype", "")).lower()
    if otype == "hashgrid" or (otype == "grid" and str(enc.get("type", "Hash")).lower() == "hash"):
        knob, (lo, hi), where = "log2_hashmap_size", LOG2_RANGE, enc
    elif "n_neurons" in cfg.get("network", {}):
        knob, (lo, hi), where = "n_neurons", WIDTH_RANGE, cfg["network"]
    else:
        raise ConfigError("this field has no size to fit to a budget (no hash table, no network width)",
                          "leave the budget empty for this encoder")

    def fits(v: int) -> bool:
        where[knob] = v
        return count_params(build, cfg) <= budget

    best = _largest(lo, hi, fits)
    if best is None:
        where[knob] = lo
        raise ConfigError(f"a budget of {budget:,} parameters is too small: the smallest '{knob}' ({lo}) "
                          f"already gives {count_params(build, cfg):,}", "raise the budget")
    where[knob] = best
    return cfg, count_params(build, cfg)
