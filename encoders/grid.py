"""Multiresolution grids (Instant-NGP): ``Grid``, ``HashGrid``, ``DenseGrid``, ``TiledGrid``.

Same config fields, defaults and arithmetic as tiny-cuda-nn's GridEncoding:

- level scale ``s_l = N_min * b^l - 1`` and resolution ``R_l = ceil(s_l) + 1`` (float32),
- position ``p = s_l * x + 0.5`` (the half-cell offset staggers the levels), corner ``floor(p)``,
- a dense row-major index while ``R_l^d`` fits the level's table, tcnn's coherent prime hash
  (XOR of ``i_k * pi_k``, ``pi_0 = 1``) otherwise, always taken modulo the table size,
- table sizes rounded up to multiples of 8, entries initialised U(-1e-4, 1e-4),
- ``Linear``, ``Nearest`` (the floor corner, as tcnn) and ``Smoothstep`` interpolation.

Parameters live in one flat buffer laid out exactly like tcnn's (level after level, features
innermost), so the tcnn backend can use it in place. Checkpoints store one tensor per level
(``levels.<l>``), which is what makes them independent of the backend.

Speed on the CPU comes from doing the whole lookup with a few large vectorised ops per level
and a hand-written backward (`_GridLookup`) that scatters into the flat table once per level;
`grid_reference.py` holds the plain gather twin used as the test oracle.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import torch

from fieldstudio.config import Field, at_least, between
from fieldstudio.errors import ConfigError
from fieldstudio.kernels import cpu_kernels

from .base import Encoding
from .grid_layout import COHERENT_PRIMES, Level, grid_levels
from .registry import register


def _grid_fields(default_type: str) -> dict[str, Field]:
    return {
        "type": Field(str, default_type, choices=("Hash", "Dense", "Tiled"), doc="backing storage of the levels"),
        "n_levels": Field((int, type(None)), None, doc="number of resolutions (default 16)"),
        "n_features": Field((int, type(None)), None, doc="alternative to n_levels: n_levels * n_features_per_level"),
        "n_features_per_level": Field(int, 2, check=lambda v: None if v in (1, 2, 4, 8) else "must be 1, 2, 4 or 8"),
        "log2_hashmap_size": Field(int, 19, check=between(1, 30)),
        "base_resolution": Field(int, 16, check=at_least(1)),
        "per_level_scale": Field(float, 2.0, check=lambda v: None if v >= 1.0 else "must be >= 1"),
        "interpolation": Field(str, "Linear", choices=("Nearest", "Linear", "Smoothstep")),
        "hash": Field(str, "CoherentPrime", choices=("CoherentPrime",), doc="tcnn's default hash"),
        "stochastic_interpolation": Field(bool, False),
    }


class _GridBase(Encoding):
    fields = _grid_fields("Hash")

    def __init__(self, n_input_dims: int, config: Mapping[str, Any] | None = None):
        super().__init__(n_input_dims, config)
        cfg = self.cfg
        where = f"encoding '{self.otype}'"
        if cfg["n_features"] is not None and cfg["n_levels"] is not None:
            raise ConfigError(f"{where}: both 'n_features' and 'n_levels' are given", "give only one (n_features = n_levels * n_features_per_level)")
        feats = cfg["n_features_per_level"]
        if cfg["n_features"] is not None:
            if cfg["n_features"] % feats:
                raise ConfigError(f"{where}: n_features={cfg['n_features']} is not a multiple of n_features_per_level={feats}", "make it a multiple")
            n_levels = cfg["n_features"] // feats
        else:
            n_levels = 16 if cfg["n_levels"] is None else cfg["n_levels"]
        if not 1 <= n_levels <= 32:
            raise ConfigError(f"{where}: n_levels={n_levels} is out of range", "use 1 to 32 levels")
        # Canonical form written back: n_levels always, n_features never (they determine each other).
        cfg["n_levels"], cfg["n_features"] = n_levels, None
        if cfg["stochastic_interpolation"]:
            raise ConfigError(f"{where}: stochastic_interpolation is not implemented here", "set it to false")
        if not 1 <= n_input_dims <= len(COHERENT_PRIMES):
            raise ConfigError(f"{where}: {n_input_dims}-D inputs are not supported", f"use 1 to {len(COHERENT_PRIMES)} input dims")

        self.n_levels = n_levels
        self.n_features_per_level = feats
        self.interpolation = cfg["interpolation"]
        self.levels: list[Level] = grid_levels(n_input_dims, n_levels, cfg["base_resolution"], cfg["per_level_scale"],
                                               cfg["log2_hashmap_size"], cfg["type"])
        total = self.levels[-1].offset + self.levels[-1].size
        # One flat buffer, laid out like tcnn's: level after level, F features per entry.
        self.params = torch.nn.Parameter(torch.empty(total * feats).uniform_(-1e-4, 1e-4))
        self._backend = "torch"
        self._tcnn = None
        self._corners = None
        self._table_on_huge_pages = False

    @property
    def config(self) -> dict[str, Any]:
        cfg = {k: v for k, v in self.cfg.items() if k != "n_features"}
        return {"otype": self.otype, **cfg}

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features_per_level

    @property
    def table(self) -> torch.Tensor:
        """The flat parameter viewed as ``[entries, n_features_per_level]``."""
        return self.params.view(-1, self.n_features_per_level)

    def level_table(self, level: int) -> torch.Tensor:
        lv = self.levels[level]
        return self.table[lv.offset: lv.offset + lv.size]

    # --- backend-neutral checkpoints: one tensor per level -------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for i in range(self.n_levels):
            t = self.level_table(i)
            destination[f"{prefix}levels.{i}"] = t if keep_vars else t.detach().clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        with torch.no_grad():
            for i in range(self.n_levels):
                key = f"{prefix}levels.{i}"
                if key not in state_dict:
                    missing_keys.append(key)
                    continue
                src = state_dict[key]
                dst = self.level_table(i)
                if src.shape != dst.shape:
                    error_msgs.append(f"{key}: checkpoint has shape {tuple(src.shape)}, this grid has {tuple(dst.shape)}")
                    continue
                dst.copy_(src)
        if strict:
            for key in state_dict:
                if key.startswith(prefix) and key[len(prefix):].split(".")[0] not in ("levels",) and "." not in key[len(prefix):]:
                    unexpected_keys.append(key)

    # --- backends --------------------------------------------------------------------------------
    def set_backend(self, backend: str) -> None:
        """"torch", "tcnn" (tiny-cuda-nn required) or "auto" (tcnn for CUDA inputs when installed)."""
        if backend == "tcnn":
            from .backends.tcnn import require_tcnn

            require_tcnn()
        self._backend = backend

    def active_backend(self, x: torch.Tensor) -> str:
        if self._backend == "torch" or not x.is_cuda:
            return "torch"
        from .backends.tcnn import tcnn_available, tcnn_supports

        if tcnn_available() and tcnn_supports(self):
            return "tcnn"
        if self._backend == "tcnn":
            raise ConfigError(f"{self.otype}: tiny-cuda-nn cannot run this grid", "use backend='auto' or 'torch'")
        return "torch"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        lead = x.shape[:-1]
        x = x.reshape(-1, self.n_input_dims)
        if self.active_backend(x) == "tcnn":
            from .backends.tcnn import grid_forward_tcnn

            out = grid_forward_tcnn(self, x)
        else:
            self._move_table_to_huge_pages(x)
            out = grid_encode(x, self.params, self.levels, self.n_features_per_level, self.interpolation)
        return out.reshape(*lead, self.n_output_dims)

    def _move_table_to_huge_pages(self, x: torch.Tensor) -> None:
        # Once, at the first CPU lookup: the kernels read the table at random, and with 4 KB pages
        # nearly every read of a multi-MB level misses the TLB; a huge-page copy (same values, same
        # Parameter object, so optimisers and state dicts are unaffected) makes the lookup ~20%
        # faster. Done lazily so that building a field never compiles the kernels.
        if getattr(self, "_table_on_huge_pages", True) or x.device.type != "cpu" or self.params.device.type != "cpu":
            return
        self._table_on_huge_pages = True
        kernels = cpu_kernels()
        if kernels is not None:
            with torch.no_grad():
                self.params.data = kernels.huge_copy(self.params.data)


# ------------------------------------------------------------------------------------------------
# The PyTorch path
# ------------------------------------------------------------------------------------------------

def _wrap_int32(v: int) -> int:
    """``v`` modulo 2^32 as a signed 32-bit value (what a uint32 multiply by ``v`` wraps to)."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


_PRIMES_I32 = tuple(_wrap_int32(p) for p in COHERENT_PRIMES)


def _level_corners(x: torch.Tensor, lv: Level, interpolation: str):
    """Corner indices ``[N, 2^d]`` (int32, level offset included) and the fractional position.

    ``frac`` is ``[N, d]`` (smoothstepped when asked; ``None`` for Nearest, whose ``idx`` is
    ``[N, 1]``: the floor corner, as tcnn). Indices are built per axis and combined by
    broadcasting, so each of the 2^d corners costs one add or xor. The hash is computed in
    wrapping int32 arithmetic: the low bits of a product depend only on the low bits of its
    factors, so masking to the (power-of-two) table size gives tcnn's uint32 result exactly.
    """
    n, d = x.shape
    with torch.no_grad():
        pos = x.detach() * lv.scale + 0.5
        base = torch.floor(pos)
        i0 = base.to(torch.int32)
        nearest = interpolation == "Nearest"
        parts = []  # per axis: [N, 2] contributions of the lower and upper corner
        for k in range(d):
            lo = i0[:, k]
            pair = lo[:, None] if nearest else torch.stack((lo, lo + 1), dim=1)
            if lv.hashed:
                parts.append(pair * _PRIMES_I32[k] if k else pair)
            elif k < lv.dense_dims:
                parts.append(pair * (lv.resolution ** k) if k else pair)
            else:
                parts.append(torch.zeros_like(pair))
        idx = parts[0]
        for k in range(1, d):
            # axes so far are flattened in the last dim; axis k becomes the fastest one
            a, b = idx[:, :, None], parts[k][:, None, :]
            idx = ((a ^ b) if lv.hashed else (a + b)).reshape(n, -1)
        if lv.hashed:
            idx = (idx & (lv.size - 1)) + lv.offset  # hashed tables have 2^k entries
        else:
            idx = torch.remainder(idx, lv.size) + lv.offset
    frac = None
    if not nearest:
        frac = (x * lv.scale + 0.5) - base  # differentiable in x; base carries no gradient
        if interpolation == "Smoothstep":
            frac = frac * frac * (3.0 - 2.0 * frac)
    return idx, frac


def _corner_weights(frac: torch.Tensor) -> torch.Tensor:
    """Products of (1-w) / w over axes, ``[N, 2^d]``, in the same corner order as the indices."""
    n, d = frac.shape
    w = torch.stack((1.0 - frac, frac), dim=2)  # [N, d, 2]
    out = w[:, 0]
    for k in range(1, d):
        out = (out[:, :, None] * w[:, k][:, None, :]).reshape(n, -1)
    return out


class _GridLookup(torch.autograd.Function):
    """Gather + weighted sum over corners, for inputs that need no gradient.

    The backward pass accumulates each feature channel into its own contiguous row with
    ``index_add_`` and transposes once at the end: on the CPU that is about twice as fast as
    autograd's scatter into the interleaved ``[entries, F]`` table.
    """

    @staticmethod
    def forward(ctx, params, idx_all, weights_all, n_feats):
        table = params.view(-1, n_feats)
        outs = []
        for idx, w in zip(idx_all, weights_all):
            feat = table.index_select(0, idx.reshape(-1)).view(idx.shape[0], idx.shape[1], n_feats)
            outs.append(torch.bmm(w[:, None, :], feat)[:, 0] if w is not None else feat[:, 0])
        ctx.save_for_backward(*idx_all, *[w for w in weights_all if w is not None])
        ctx.has_w = [w is not None for w in weights_all]
        ctx.n_feats = n_feats
        ctx.numel = params.numel()
        return torch.cat(outs, dim=1)

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        n_lv = len(ctx.has_w)
        idx_all, ws = saved[:n_lv], list(saved[n_lv:])
        f = ctx.n_feats
        # feature-major accumulator: each channel's scatter hits a contiguous row
        acc = torch.zeros(f, ctx.numel // f, dtype=grad_out.dtype, device=grad_out.device)
        for lvl, idx in enumerate(idx_all):
            g = grad_out[:, lvl * f:(lvl + 1) * f].t()  # [F, N]
            w = ws.pop(0) if ctx.has_w[lvl] else None
            src = g[:, :, None] * w[None] if w is not None else g[:, :, None]  # [F, N, corners], one pass
            flat_idx = idx.reshape(-1)
            for j in range(f):
                acc[j].index_add_(0, flat_idx, src[j].reshape(-1))
        return acc.t().reshape(-1), None, None, None


_INTERP = {"Nearest": 0, "Linear": 1, "Smoothstep": 2}


@functools.lru_cache(maxsize=64)
def _level_tensors(levels: tuple[Level, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The level layout as the C++ kernel reads it: float32 scales and int64 [L, 5] integers
    (cached: a grid's layout never changes, and this runs on every lookup)."""
    scales = torch.tensor([lv.scale for lv in levels], dtype=torch.float32)
    ints = torch.tensor([[lv.resolution, lv.size, lv.offset, int(lv.hashed), lv.dense_dims] for lv in levels],
                        dtype=torch.int64)
    return scales, ints


class _GridKernel(torch.autograd.Function):
    """The fused C++ lookup (`fieldstudio.kernels`): gradients to the table and to the inputs,
    and the backward of the input gradient (eikonal losses), all from the kernels."""

    @staticmethod
    def forward(ctx, params, x, level_tensors, n_feats, interp, kernels):
        scales, ints = level_tensors
        params = params.contiguous()
        # the inputs themselves are saved (not detached copies): under create_graph the backward
        # below must stay connected to the table and x. The table is only needed for dL/dx.
        ctx.save_for_backward(params if ctx.needs_input_grad[1] else None, x)
        ctx.meta = (scales, ints, n_feats, interp, kernels)
        ctx.numel = params.numel()
        return kernels.grid_forward(x, params, scales, ints, n_feats, interp)

    @staticmethod
    def backward(ctx, grad_out):
        params, x = ctx.saved_tensors
        need_p, need_x = ctx.needs_input_grad[:2]
        if not (need_p or need_x):
            return None, None, None, None, None, None
        if params is None:  # x needs no gradient: the table only sizes the gradient buffer
            params = x.new_empty(ctx.numel)
        gp, gx = _GridKernelBackward.apply(params, x, grad_out.contiguous(), ctx.meta, need_p, need_x)
        return (gp if need_p else None), (gx if need_x else None), None, None, None, None


class _GridKernelBackward(torch.autograd.Function):
    """``(dL/dtable, dL/dx)`` of the lookup as a function of (table, x, dL/dout), so that
    ``create_graph=True`` (the eikonal loss's gradient of a gradient) has a backward too."""

    @staticmethod
    def forward(ctx, params, x, grad_out, meta, need_p, need_x):
        scales, ints, n_feats, interp, kernels = meta
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(params, x, grad_out)
        ctx.meta = meta
        gp, gx = kernels.grid_backward(x, params, grad_out, scales, ints, n_feats, interp, need_p, need_x)
        return gp, gx

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, v_p, v_x):
        params, x, grad_out = ctx.saved_tensors
        scales, ints, n_feats, interp, kernels = ctx.meta
        need_table, need_x_in, need_g = ctx.needs_input_grad[:3]
        d_table = d_x = d_g = None
        if v_x is not None and v_x.numel():
            # upstream on dL/dx: the second-order kernel
            t, g, xx = kernels.grid_double_backward(x, params, grad_out, v_x.contiguous(), scales, ints, n_feats,
                                                    interp, need_table, need_g, need_x_in)
            d_table, d_g, d_x = (t if need_table else None), (g if need_g else None), (xx if need_x_in else None)
        if v_p is not None and v_p.numel():
            # dL/dtable is linear in dL/dout with the lookup's weights: its backward is a lookup
            # of the upstream table-shaped v_p, and its x-derivative an input gradient of it
            v_p = v_p.contiguous()
            if need_g:
                g = kernels.grid_forward(x, v_p, scales, ints, n_feats, interp)
                d_g = g if d_g is None else d_g + g
            if need_x_in:
                _, xx = kernels.grid_backward(x, v_p, grad_out, scales, ints, n_feats, interp, False, True)
                d_x = xx if d_x is None else d_x + xx
        return d_table, d_x, d_g, None, None, None


def grid_encode(x: torch.Tensor, params: torch.Tensor, levels: list[Level], n_feats: int,
                interpolation: str) -> torch.Tensor:
    """Encode ``x`` ``[N, d]`` in [0, 1]^d with the flat table ``params``; returns ``[N, L*F]``.

    On the CPU the fused kernels do the lookup and every derivative (table, inputs, and the
    second order an eikonal loss needs). Elsewhere, or without the kernels: when ``x`` needs
    gradients the lookup is built from plain differentiable ops so that first and second
    derivatives come from autograd; otherwise the faster hand-written backward is used.
    """
    if x.device.type == "cpu" and x.shape[1] <= 4 and x.dtype in (torch.float32, torch.float64) \
            and params.dtype in (torch.float32, torch.float64):
        kernels = cpu_kernels()
        if kernels is not None:
            return _GridKernel.apply(params, x.contiguous().to(params.dtype), _level_tensors(tuple(levels)), n_feats,
                                     _INTERP[interpolation], kernels)
    return grid_encode_torch(x, params, levels, n_feats, interpolation)


def grid_encode_torch(x: torch.Tensor, params: torch.Tensor, levels: list[Level], n_feats: int,
                      interpolation: str) -> torch.Tensor:
    """The PyTorch path of `grid_encode` (the kernels' twin and fallback)."""
    corners = [_level_corners(x, lv, interpolation) for lv in levels]
    if x.requires_grad and interpolation != "Nearest":
        table = params.view(-1, n_feats)
        outs = []
        for idx, frac in corners:
            # int64 indices: autograd's index_add_ backward is slow with int32 ones
            feat = table.index_select(0, idx.reshape(-1).long()).view(idx.shape[0], idx.shape[1], n_feats)
            w = _corner_weights(frac).to(feat.dtype)
            outs.append((w[:, :, None] * feat).sum(1))
        return torch.cat(outs, dim=1)
    idx_all = [idx for idx, _ in corners]
    weights = [None if frac is None else _corner_weights(frac.detach()).to(params.dtype) for _, frac in corners]
    return _GridLookup.apply(params, idx_all, weights, n_feats)


@register
class Grid(_GridBase):
    """tcnn "Grid": the storage is chosen by the "type" field (default Hash)."""

    otype = "Grid"


@register
class HashGrid(_GridBase):
    otype = "HashGrid"


@register
class DenseGrid(_GridBase):
    otype = "DenseGrid"
    fields = _grid_fields("Dense")


@register
class TiledGrid(_GridBase):
    otype = "TiledGrid"
    aliases = ("Tiled",)
    fields = _grid_fields("Tiled")
