"""NeuRBF (Chen et al., ICCV 2023): adaptive radial basis functions, hybrid with a grid.

``{"otype": "NeuRBF", ...}`` maps x to ``[grid(x), sum_i w_i * sin(phi~_i(x) * m)] + b``:
the k nearest kernels of x (exact lookup through `KernelIndex`), each with a centre, a shape and
a C-vector of weights, normalised over the k neighbours (detached denominator) and expanded by
C log-spaced frequencies m (multi-frequency sinusoidal composition; ``"frequencies": null``
switches it off), concatenated with an optional nested grid encoding and a learnable bias. The
paper's companion change on the network side, ``h + sin(m' * h)`` after the first layer, is the
``first_layer_frequencies`` option of the MLP (fields/networks.py).

Centres and shapes start on a regular lattice; `initialize(points, weights)` places them where
the signal has detail (weighted k-means, see rbf_init.py). Like the released configs they then
stay fixed unless ``trainable_kernels`` is true; they are parameters either way, so checkpoints
carry them and parameter counts include them, as the paper counts them.

``n_kernels: "auto"`` with ``param_budget`` (and ``reserved_params``, the parameters outside the
encoder, which fields fill in) gives the kernels whatever the budget leaves after the grid, the
bias and the network; the resolved number is written back to the config.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from fieldstudio.config import Field, at_least, positive
from fieldstudio.errors import ConfigError

from .base import Encoding
from .knn_grid import KernelIndex
from .rbf_kernels import KERNELS, SHAPES, pack_symmetric, rbf_encode, shape_size
from .registry import register


def _pair(v) -> str | None:
    if v is None:
        return None
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(a, (int, float)) and a > 0 for a in v)):
        return "must be [m_min, m_max] with two positive numbers, or null"
    return None


def _bounds(v) -> str | None:
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(a, (int, float)) for a in v) and v[0] < v[1]):
        return "must be [lo, hi] with lo < hi"
    return None


def log_frequencies(pair: list[float], n: int) -> torch.Tensor:
    """``n`` frequencies log-spaced from ``pair[0]`` to ``pair[1]`` (both included)."""
    return torch.exp2(torch.linspace(math.log2(pair[0]), math.log2(pair[1]), n, dtype=torch.float64))


@register
class NeuRBF(Encoding):
    otype = "NeuRBF"
    fields = {
        "kernel": Field(str, "ivq", choices=KERNELS, doc="ivq (inverse quadratic), gauss or nlin (N-linear tent)"),
        "shape": Field(str, "full", choices=SHAPES, doc="isotropic, diagonal or full (anisotropic) shapes"),
        "n_kernels": Field((int, str), "auto", doc='number of kernels, or "auto" to fill param_budget'),
        "param_budget": Field((int, type(None)), None, doc="total parameters of the field, for n_kernels auto"),
        "reserved_params": Field(int, 0, check=at_least(0), doc="parameters outside this encoder (the network)"),
        "n_neighbors": Field(int, 4, check=positive, doc="kernels seen by each query (k)"),
        "n_features": Field(int, 32, check=positive, doc="channels of each kernel's weight (C)"),
        "frequencies": Field((list, type(None)), [0.125, 4096.0], check=_pair,
                             doc="[m_min, m_max] of the sinusoidal composition; null: plain kernel values"),
        "normalize": Field(bool, True, doc="divide by the (detached) sum over the k neighbours"),
        "grid": Field((dict, type(None)), None, doc="nested grid encoding whose features are concatenated"),
        "bounds": Field(list, [0.0, 1.0], check=_bounds, doc="domain of every input dim"),
        "trainable_kernels": Field(bool, False, doc="train centres and shapes too (fixed after init by default)"),
        "alpha": Field(float, 0.5, check=positive, doc="shape = cluster covariance / alpha at init"),
        "weight_init": Field(float, 1e-4, check=at_least(0), doc="kernel weights and bias start U(-v, v)"),
        "bias": Field(bool, True, doc="learnable bias on the concatenated features"),
        # the official configs train kernel weights, grid and bias at half the network's rate
        "lr_factor": Field(float, 0.5, check=positive, doc="learning rate of this encoder / the network's"),
    }

    def __init__(self, n_input_dims: int, config: Mapping[str, Any] | None = None):
        super().__init__(n_input_dims, config)
        cfg = self.cfg
        where = f"encoding '{self.otype}'"
        d = self.n_input_dims
        if cfg["kernel"] == "nlin" and cfg["shape"] == "full":
            raise ConfigError(f"{where}: the nlin kernel has no full shape", 'use "shape": "isotropic" or "diagonal"')
        self.grid = None
        if cfg["grid"] is not None:
            from .registry import build_encoding

            self.grid = build_encoding(cfg["grid"], d, backend="torch")
            cfg["grid"] = self.grid.config
        n_bias = self.n_output_dims if cfg["bias"] else 0
        per_kernel = self.params_per_kernel
        if isinstance(cfg["n_kernels"], str):
            if cfg["n_kernels"].lower() != "auto":
                raise ConfigError(f"{where}: n_kernels is {cfg['n_kernels']!r}", 'give a number or "auto"')
            if cfg["param_budget"] is None:
                raise ConfigError(f"{where}: n_kernels is auto but no param_budget is given",
                                  "add \"param_budget\": the total parameter count to match")
            grid_params = sum(p.numel() for p in self.grid.parameters()) if self.grid is not None else 0
            left = cfg["param_budget"] - cfg["reserved_params"] - grid_params - n_bias
            cfg["n_kernels"] = left // per_kernel
        if cfg["n_kernels"] < cfg["n_neighbors"]:
            raise ConfigError(f"{where}: {cfg['n_kernels']} kernels are fewer than n_neighbors={cfg['n_neighbors']}",
                              "raise param_budget / n_kernels or lower n_neighbors")
        k = cfg["n_kernels"]
        lo, hi = cfg["bounds"]
        self.register_buffer("lo", torch.full((d,), float(lo)), persistent=False)
        self.register_buffer("hi", torch.full((d,), float(hi)), persistent=False)
        centres, shapes = self._lattice(k)
        trainable = cfg["trainable_kernels"]
        self.centres = torch.nn.Parameter(centres, requires_grad=trainable)
        self.shapes = torch.nn.Parameter(shapes, requires_grad=trainable)
        v = cfg["weight_init"]
        self.weights = torch.nn.Parameter(torch.empty(k, cfg["n_features"]).uniform_(-v, v))
        self.bias = torch.nn.Parameter(torch.empty(self.n_output_dims).uniform_(-v, v)) if cfg["bias"] else None
        self._index: KernelIndex | None = None
        self._index_version = None

    # --- sizes -----------------------------------------------------------------------------------
    @property
    def params_per_kernel(self) -> int:
        d = self.n_input_dims
        return d + shape_size(self.cfg["shape"], d) + self.cfg["n_features"]

    @property
    def lr_factor(self) -> float:
        return self.cfg["lr_factor"]

    @property
    def n_kernels(self) -> int:
        return self.cfg["n_kernels"]

    @property
    def n_output_dims(self) -> int:
        return self.cfg["n_features"] + (self.grid.n_output_dims if self.grid is not None else 0)

    # --- placement -------------------------------------------------------------------------------
    def _lattice(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A regular lattice (the first k of ceil(k^(1/d))^d nodes) with shapes from its spacing."""
        d = self.n_input_dims
        lo, hi = self.cfg["bounds"]
        per = max(2, math.ceil(k ** (1.0 / d)))
        axis = torch.linspace(lo, hi, per, dtype=torch.float64)
        nodes = torch.stack(torch.meshgrid(*[axis] * d, indexing="ij"), -1).reshape(-1, d)[:k]
        spacing = (hi - lo) / (per - 1)
        half = spacing / 2
        # sd = half the spacing: ivq gets S = 1 / (spacing/2)^2, the tent a half-width of one spacing
        cov = np.repeat((np.eye(d) * half ** 2)[None], k, 0)
        from .rbf_init import shape_parameters

        shapes = shape_parameters(cov, self.cfg["kernel"], self.cfg["shape"])
        return nodes.float(), torch.from_numpy(np.ascontiguousarray(shapes)).float()

    @torch.no_grad()
    def initialize(self, points, weights, *, min_width: float | None = None, max_width: float | None = None,
                   iters: int = 10, max_points: int | None = None, seed: int = 0) -> dict[str, float]:
        """Place centres and shapes on weighted sample points ``[N, d]`` (see rbf_init.py).

        Widths are clipped to [min_width, max_width] per axis (defaults: 1/200 of the domain
        over ~1000 samples per axis, and 1/10 of the domain). Returns timing and sizes.
        """
        import time

        from .rbf_init import init_kernels

        t0 = time.perf_counter()
        pts = points.detach().cpu().double().numpy() if torch.is_tensor(points) else np.asarray(points, np.float64)
        w = weights.detach().cpu().double().numpy() if torch.is_tensor(weights) else np.asarray(weights, np.float64)
        lo, hi = self.cfg["bounds"]
        extent = hi - lo
        min_width = extent / 1000 / 200 if min_width is None else min_width
        max_width = extent / 10 if max_width is None else max_width
        centres, shapes = init_kernels(pts, w, self.n_kernels, self.cfg["kernel"], self.cfg["shape"],
                                       alpha=self.cfg["alpha"], min_width=min_width, max_width=max_width,
                                       iters=iters, max_points=max_points, seed=seed)
        self.centres.copy_(torch.from_numpy(centres))
        self.shapes.copy_(torch.from_numpy(np.ascontiguousarray(shapes)))
        self._index = None
        t1 = time.perf_counter()
        index = self.kernel_index()
        return {"seconds_kmeans": round(t1 - t0, 3), "seconds_index": round(time.perf_counter() - t1, 3),
                "index_cells": index.res ** self.n_input_dims, "index_candidates": index.n_candidates,
                "index_mean_candidates": round(index.mean_candidates, 2),
                "index_tree_cells": round(index.overflow_fraction, 4)}

    def kernel_index(self) -> KernelIndex:
        """The lookup table, (re)built when the centres changed since it was made."""
        version = (self.centres._version, self.centres.data_ptr())
        if self._index is None or self._index_version != version:
            self._index = KernelIndex(self.centres.detach(), self.cfg["n_neighbors"], self.lo, self.hi)
            self._index_version = version
        return self._index

    def nearest_kernels(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, k]`` indices of the k nearest kernel centres of ``x`` ``[N, d]``."""
        return self.kernel_index().query(x.detach().to(self.centres.dtype), self.centres.detach())

    # --- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        lead = x.shape[:-1]
        x = x.reshape(-1, self.n_input_dims)
        idx = self.nearest_kernels(x)
        pair = self.cfg["frequencies"]
        freqs = log_frequencies(pair, self.cfg["n_features"]).to(x.device, x.dtype) if pair is not None else None
        feat = rbf_encode(x, idx, self.centres.to(x.dtype), self.shapes.to(x.dtype), self.weights.to(x.dtype),
                          freqs, self.cfg["kernel"], self.cfg["shape"], self.cfg["normalize"])
        if self.grid is not None:
            # grids take the unit cube
            unit = (x - self.lo.to(x.dtype)) / (self.hi - self.lo).to(x.dtype)
            feat = torch.cat([self.grid(unit).to(feat.dtype), feat], -1)
        if self.bias is not None:
            feat = feat + self.bias.to(feat.dtype)
        return feat.reshape(*lead, self.n_output_dims)


__all__ = ["NeuRBF", "log_frequencies"]
