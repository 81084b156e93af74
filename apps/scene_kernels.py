"""NeuRBF for radiance fields: the field config and kernel placement after a warm-up fit.

The official NeRF pipeline first fits a small grid model briefly, then weighs every point of a
dense grid by opacity x feature gradient -- (1 - exp(-sigma * step)) * |grad features| -- so
kernels gather on surfaces with texture, and only then trains the NeuRBF model. `reconstruct
--encoder neurbf` does the same with an Instant-NGP warm-up: `placement_weights` evaluates the
warm model on a grid over the unit cube and `neurbf_radiance_config` sizes the NeuRBF field to
the parameter count of the default Instant-NGP field.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from fieldstudio.fields.radiance import NGPRadianceField, ngp_per_level_scale


def neurbf_radiance_config() -> dict[str, Any]:
    """An NGPRadianceField whose position encoding is NeuRBF, iso-parameter with the default one.

    Following the official NeRF config: full inverse-quadratic kernels, 5 neighbours, 32 channels,
    no normalisation and no sinusoidal composition on the kernels; the grid beside them is a hash
    grid with half the levels of the default (8 x 2 features, same table size and N_max).
    """
    ref = NGPRadianceField({}, backend="torch")
    budget = sum(p.numel() for p in ref.parameters())
    reserved = budget - sum(p.numel() for p in ref.encoding.parameters())
    cfg = copy.deepcopy(ref.config)
    grid = dict(cfg["encoding"])
    grid["n_levels"] = 8
    grid["per_level_scale"] = round(ngp_per_level_scale(2048, grid["base_resolution"], 8), 6)  # same N_max
    # the density MLP's input grows from 32 to 16 + 32 features: reserve its extra weights
    extra = (16 + 32 - ref.encoding.n_output_dims) * cfg["density_network"]["n_neurons"]
    cfg["encoding"] = {"otype": "NeuRBF", "kernel": "ivq", "shape": "full", "n_kernels": "auto",
                       "param_budget": int(budget), "reserved_params": int(reserved + extra),
                       "n_neighbors": 5, "n_features": 32, "frequencies": None, "normalize": False,
                       "weight_init": 1e-6, "alpha": 0.3, "grid": grid}
    return cfg


@torch.no_grad()
def placement_weights(fld, step_size: float, resolution: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Points ``[R^3, 3]`` of a grid over [0, 1]^3 and their weights opacity x feature gradient."""
    r = resolution
    axis = (torch.arange(r, dtype=torch.float32) + 0.5) / r
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    dev = next(fld.parameters()).device
    sig, feats = [], []
    for s in range(0, len(pts), 1 << 16):
        ch = fld.channels(pts[s: s + (1 << 16)].to(dev))
        sig.append(ch["density"].float().cpu())
        feats.append(ch["feature"][..., 1:].float().cpu())
    sigma = torch.cat(sig).numpy().reshape(r, r, r)
    f = torch.cat(feats).numpy().reshape(r, r, r, -1)
    # min-max normalise each feature so no channel dominates the gradient
    lo, hi = f.min(axis=(0, 1, 2)), f.max(axis=(0, 1, 2))
    f = (f - lo) / np.maximum(hi - lo, 1e-8)
    grad = np.zeros((r, r, r))
    for ax in range(3):
        grad += (np.gradient(f, axis=ax) ** 2).sum(-1)
    # opacity of one cell's worth of marching steps
    alpha = 1.0 - np.exp(-sigma * step_size * 1024 / r)
    return pts.numpy().astype(np.float64), (alpha * np.sqrt(grad)).reshape(-1)
