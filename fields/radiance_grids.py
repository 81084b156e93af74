"""Radiance fields built on explicit grids, with the same channels as `fields.radiance` (PVD's layout).

* `TensoRFField` -- TensoRF VM: one `TensorfVM` encoding whose first ``density_components`` channels
  per mode are summed into the raw log-density and whose other channels are projected by a bias-free
  linear "basis matrix" to 15 appearance features; ``feature`` is ``[log-density, 15 features]``
  and the colour head is Instant-NGP's (SH degree 4 of the view direction + 15 features -> 2 x 64 MLP).
* `VoxelField` -- Plenoxels-style dense voxel grid, no MLP: every vertex stores a raw log-density and
  ``sh_degree**2`` spherical-harmonic coefficients per colour channel; trilinear interpolation;
  ``rgb = sigmoid(sum_k SH_k(d) c_k)``. It has no volume feature: ``channels`` returns density,
  log_density and rgb only (``has_feature = False``), so distillation skips its feature stage.
  Its gradient is sparse (``sparse_gradients``, default on): a batch reaches a few percent of the
  cells, and `fieldstudio.optim.adam` steps those with `LazyAdam`, so a step's cost does not grow
  with the grid (a dense gradient and Adam pass over every cell).

Inputs and outputs as `fields.radiance`: ``x`` in [0, 1]^3, unit ``d``; ``density = trunc_exp(log_density)``
and the optional ``log_density_clip`` (PVD: [-2, 7]).

Both take an optional ``bounds`` ``[[lo x, y, z], [hi x, y, z]]`` inside [0, 1]^3: the grid then
spans only that box (outside it the raw log-density is `OUTSIDE_LOG_DENSITY`). A grid's detail is
fixed by its samples per axis, so fitting it to where the scene is, as TensoRF's bounding-box
shrinking does, buys resolution at no cost per step; a distilled student takes the box from its
teacher's occupancy grid.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fieldstudio.config import Field, at_least, parse_fields, positive
from fieldstudio.encoders import build_encoding
from fieldstudio.errors import ConfigError
from fieldstudio.kernels import dense_kernel_applies, dense_kernels

from .radiance import (N_FEATURES, NGP_DIRECTION_ENCODING, NGP_RGB_NETWORK, _check_clip, _direction_input,
                       _RadianceField, trunc_exp)

#: raw log-density outside ``bounds``: empty (the log-density clip, when set, raises it to its floor)
OUTSIDE_LOG_DENSITY = -10.0


def _check_bounds(v) -> str | None:
    if v is None:
        return None
    ok = (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(r, (list, tuple)) and len(r) == 3 for r in v)
          and all(isinstance(a, (int, float)) for r in v for a in r))
    if not ok or not all(0.0 <= lo < hi <= 1.0 for lo, hi in zip(v[0], v[1])):
        return "must be [[lo x, y, z], [hi x, y, z]] with 0 <= lo < hi <= 1 per axis, or null"
    return None


class _Bounded:
    """Maps field points into the ``bounds`` box; ``inside`` is None when the grid spans [0, 1]^3."""

    def _init_bounds(self) -> None:
        b = self.cfg["bounds"]
        t = torch.tensor(b if b is not None else [[0.0] * 3, [1.0] * 3], dtype=torch.float32)
        self.register_buffer("_box", t, persistent=False)  # in the config, not the weights

    @torch.no_grad()
    def shrink_to(self, box) -> list[torch.nn.Parameter]:
        """Span ``box`` (field coordinates; its part inside the current bounds, since values outside
        them are not known) from now on, with the same samples per axis: the grid is re-read over it,
        so the field keeps its values inside and is empty outside. This is TensoRF's bounding-box
        shrinking, for a scene whose extent has become known during training. Returns the re-read
        parameters: their optimiser moments belong to the old cells, so a caller drops them."""
        err = _check_bounds(box)
        if err is not None:
            raise ConfigError(f"bounds {box} {err}")
        old_lo, old_hi = self._box.tolist()
        lo = [round(max(float(w), o), 6) for w, o in zip(box[0], old_lo)]  # rounded as the config holds them
        hi = [round(min(float(w), o), 6) for w, o in zip(box[1], old_hi)]
        if any(a >= b for a, b in zip(lo, hi)):
            raise ConfigError(f"bounds {box} do not overlap the current ones {[old_lo, old_hi]}")
        size = [b - a for a, b in zip(old_lo, old_hi)]
        params = self._crop([(v - o) / s for v, o, s in zip(lo, old_lo, size)],
                            [(v - o) / s for v, o, s in zip(hi, old_lo, size)])
        self._box.copy_(torch.tensor([lo, hi]))
        self.cfg["bounds"] = [lo, hi]
        return params

    def _to_box(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.cfg["bounds"] is None:
            return x, None
        lo, hi = self._box[0].to(x.dtype), self._box[1].to(x.dtype)
        u = (x - lo) / (hi - lo)
        inside = ((u >= 0) & (u <= 1)).all(dim=-1)
        return u.clamp(0.0, 1.0), inside


_BOUNDS_FIELD = Field((list, type(None)), None, check=_check_bounds,
                      doc="the box of [0, 1]^3 the grid spans (null: all of it)")

_TENSORF_FIELDS = {
    "encoding": Field(dict, {"otype": "TensorfVM", "n_components": 64, "resolution": 128, "init_std": 0.1},
                      doc="VM planes+lines; n_components = density + appearance components"),
    "density_components": Field(int, 16, check=at_least(1), doc="components per mode summed into the log-density"),
    "direction_encoding": Field(dict, NGP_DIRECTION_ENCODING),
    "rgb_network": Field(dict, NGP_RGB_NETWORK),
    "log_density_clip": Field((list, type(None)), None, check=_check_clip),
    "bounds": _BOUNDS_FIELD,
}


class TensoRFField(_Bounded, _RadianceField):
    """TensoRF VM with PVD's shared head: density rank 16 and appearance rank 48 per mode by default
    (PVD's), on 128-sample planes and lines (PVD: 300) to suit a CPU."""

    def __init__(self, config: Mapping[str, Any] | None = None, backend: str = "auto"):
        super().__init__()
        self.cfg = copy.deepcopy(parse_fields(config or {}, _TENSORF_FIELDS, where="TensoRFField", ignore=("otype",)))
        self.encoding = build_encoding(self.cfg["encoding"], 3, backend=backend)
        self.cfg["encoding"] = self.encoding.config
        n = self.encoding.n_output_dims // 3
        nd = self.cfg["density_components"]
        if self.encoding.n_output_dims % 3 or not 0 < nd < n:
            raise ConfigError(f"TensoRFField: density_components={nd} must be below the encoding's {n} components per mode",
                              "use a TensorfVM encoding with n_components > density_components")
        self.basis = nn.Linear(3 * (n - nd), N_FEATURES - 1, bias=False)
        self._init_head(self.cfg["direction_encoding"], self.cfg["rgb_network"], backend)
        self._init_bounds()

    @property
    def config(self) -> dict[str, Any]:
        return {"otype": "TensoRFField", **copy.deepcopy(self.cfg)}

    def feature(self, x: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """``[..., 16]``: the summed density components, then the projected appearance components.

        ``d`` is part of the field contract (a CAM field's density reads it); this one ignores it.
        """
        u, inside = self._to_box(x)
        f = self.encoding(u)
        f = f.reshape(*f.shape[:-1], 3, -1)
        nd = self.cfg["density_components"]
        sigma = f[..., :nd].sum(dim=(-1, -2))
        if inside is not None:
            sigma = torch.where(inside, sigma, sigma.new_tensor(OUTSIDE_LOG_DENSITY))
        return torch.cat([sigma[..., None], self.basis(f[..., nd:].flatten(-2))], dim=-1)

    def _crop(self, lo, hi) -> list[nn.Parameter]:
        self.encoding.crop(lo, hi)
        return [self.encoding.planes, self.encoding.lines]


_VOXEL_FIELDS = {
    "resolution": Field(int, 96, check=at_least(2), doc="grid vertices per axis (Plenoxels: 512 sparse; PVD: 128 dense)"),
    "sh_degree": Field(int, 3, check=at_least(1), doc="SH bands (tcnn's 'degree'): sh_degree**2 coefficients per colour"),
    "init_std": Field(float, 0.02, check=positive, doc="normal init of every value (PVD)"),
    "log_density_clip": Field((list, type(None)), None, check=_check_clip),
    "bounds": _BOUNDS_FIELD,
    "sparse_gradients": Field(bool, True, doc="the grid's gradient holds only the cells a batch reaches, "
                                              "stepped by `fieldstudio.optim.LazyAdam` (false: dense, any optimiser)"),
}


class VoxelField(_Bounded, nn.Module):
    """Dense grid of (raw log-density, SH colour coefficients), trilinearly interpolated, no network."""

    kind = "radiance"
    channel_names = ("density", "log_density", "rgb")
    has_feature = False

    def __init__(self, config: Mapping[str, Any] | None = None, backend: str = "auto"):
        super().__init__()
        self.cfg = copy.deepcopy(parse_fields(config or {}, _VOXEL_FIELDS, where="VoxelField", ignore=("otype",)))
        r, k = self.cfg["resolution"], self.cfg["sh_degree"] ** 2
        self.direction_encoding = build_encoding({"otype": "SphericalHarmonics", "degree": self.cfg["sh_degree"]}, 3,
                                                 backend="torch")
        # channel-last [z, y, x, C]: one vertex's values are one row, which is what the CPU kernel
        # reads (grid_sample's channel-first layout costs a cache line per channel and corner)
        self.grid = nn.Parameter(torch.randn(r, r, r, 1 + 3 * k) * self.cfg["init_std"])
        self._init_bounds()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the layout change hold the grid as [1, C, z, y, x]
        key = prefix + "grid"
        old = state_dict.get(key)
        if old is not None and old.dim() == 5 and old.shape[0] == 1:
            state_dict[key] = old[0].permute(1, 2, 3, 0).contiguous()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def config(self) -> dict[str, Any]:
        return {"otype": "VoxelField", **copy.deepcopy(self.cfg)}

    @property
    def sparse_gradients(self) -> bool:
        """Whether the grid's gradient is sparse (`fieldstudio.optim.adam` then picks `LazyAdam`)."""
        return self.cfg["sparse_gradients"]

    def _sample(self, x: torch.Tensor) -> torch.Tensor:
        u, inside = self._to_box(x)
        pts = u.reshape(-1, 3).to(self.grid.dtype)
        if self.sparse_gradients and not pts.requires_grad:
            v = _SparseVoxelLookup.apply(pts.contiguous(), self.grid).reshape(*x.shape[:-1], self.grid.shape[-1])
        elif dense_kernel_applies(pts, self.grid):
            v = _VoxelLookup.apply(pts.contiguous(), self.grid).reshape(*x.shape[:-1], self.grid.shape[-1])
        else:
            v = self.sample_torch(u)
        if inside is None:
            return v
        sigma = torch.where(inside, v[..., 0], v.new_tensor(OUTSIDE_LOG_DENSITY))
        return torch.cat([sigma[..., None], v[..., 1:]], dim=-1)

    def _crop(self, lo, hi) -> list[nn.Parameter]:
        r = self.grid.shape[0]
        t = torch.linspace(0.0, 1.0, r, dtype=self.grid.dtype, device=self.grid.device)
        z, y, x = torch.meshgrid(*(float(lo[k]) + t * (float(hi[k]) - float(lo[k])) for k in (2, 1, 0)), indexing="ij")
        self.grid.copy_(self.sample_torch(torch.stack([x, y, z], dim=-1)))  # [z, y, x, C], as stored
        return [self.grid]

    def sample_torch(self, x: torch.Tensor) -> torch.Tensor:
        """The grid_sample twin of the fused kernel (any device, input gradients included)."""
        c = self.grid.shape[-1]
        return _grid_sample_rows(self.grid, x.reshape(-1, 3).to(self.grid.dtype)).reshape(*x.shape[:-1], c)

    def _log_density(self, v: torch.Tensor) -> torch.Tensor:
        clip = self.cfg["log_density_clip"]
        return v[..., 0] if clip is None else v[..., 0].clamp(clip[0], clip[1])

    def _rgb(self, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        sh = self.direction_encoding(_direction_input(d).to(v.dtype))  # [..., k]
        coef = v[..., 1:].reshape(*v.shape[:-1], 3, sh.shape[-1])  # explicit: a batch may hold no point
        return torch.sigmoid((coef * sh[..., None, :]).sum(-1))

    def density(self, x: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """``sigma`` at ``x``; ``d`` is accepted for the field contract and ignored (no view-dependent density)."""
        return trunc_exp(self._log_density(self._sample(x)))

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self._sample(x)
        return self._rgb(v, d), trunc_exp(self._log_density(v))

    def channels(self, x: torch.Tensor, d: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        v = self._sample(x)
        log_density = self._log_density(v)
        out = {"density": trunc_exp(log_density), "log_density": log_density}
        if d is not None:
            out["rgb"] = self._rgb(v, d)
        return out


class _VoxelLookup(torch.autograd.Function):
    """Fused trilinear lookup ``[n, C]`` of a channel-last grid; gradient to the grid only."""

    @staticmethod
    def forward(ctx, pts, grid):
        grid = grid.detach()
        ctx.save_for_backward(pts, grid)
        return dense_kernels().voxel_forward(pts, grid)

    @staticmethod
    def backward(ctx, grad):
        pts, grid = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None
        return None, dense_kernels().voxel_backward(grad.contiguous(), pts, grid)


def _grid_sample_rows(grid: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Trilinear lookup ``[n, C]`` of ``pts`` ``[n, 3]`` in a ``[r, r, r, C]`` grid by grid_sample."""
    # grid_sample's 3D grid is (W, H, D) = (x, y, z) against a volume stored [z, y, x]
    g = pts.reshape(1, -1, 1, 1, 3) * 2.0 - 1.0
    v = F.grid_sample(grid.permute(3, 0, 1, 2)[None], g, mode="bilinear", align_corners=True)  # [1, C, n, 1, 1]
    return v.reshape(grid.shape[-1], -1).t()


def _axis_corners(x: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per point, the two vertices along one axis and their weights, as the fused kernel takes them:
    a vertex beyond the grid carries weight 0 (its index clamped), a point farther out (or NaN) none."""
    pos = x * (r - 1)
    valid = (pos > -1) & (pos < r)
    fl = torch.floor(torch.where(valid, pos, torch.zeros_like(pos)))
    f = pos - fl
    i = fl.long()
    w0 = torch.where(valid & (i >= 0), 1 - f, torch.zeros_like(f))
    w1 = torch.where(valid & (i + 1 <= r - 1), f, torch.zeros_like(f))
    return i.clamp(0, r - 1), (i + 1).clamp(0, r - 1), w0, w1


def voxel_grid_gradient(pts: torch.Tensor, grad: torch.Tensor, shape) -> torch.Tensor:
    """The gradient of the trilinear lookup of ``pts`` ``[n, 3]`` in a ``[r, r, r, C]`` grid indexed
    ``[z, y, x]``, given ``grad`` ``[n, C]`` of the lookup: a coalesced sparse COO tensor of ``shape``
    holding only the vertices the points reach (8 per point at most)."""
    r, c = int(shape[0]), int(shape[3])
    (x0, x1, wx0, wx1), (y0, y1, wy0, wy1), (z0, z1, wz0, wz1) = (_axis_corners(pts[:, k], r) for k in range(3))
    rows, weights = [], []
    for zi, wz in ((z0, wz0), (z1, wz1)):
        for yi, wy in ((y0, wy0), (y1, wy1)):
            for xi, wx in ((x0, wx0), (x1, wx1)):
                rows.append((zi * r + yi) * r + xi)
                weights.append(wz * wy * wx)
    rows = torch.stack(rows, dim=1).reshape(-1)  # [n * 8]
    vals = (torch.stack(weights, dim=1)[..., None] * grad[:, None, :]).reshape(-1, c)
    uniq, inverse = torch.unique(rows, return_inverse=True)
    summed = torch.zeros(uniq.numel(), c, dtype=grad.dtype, device=grad.device).index_add_(0, inverse, vals)
    idx = torch.stack([uniq // (r * r), (uniq // r) % r, uniq % r])
    return torch.sparse_coo_tensor(idx, summed, tuple(shape), is_coalesced=True, check_invariants=False)


class _SparseVoxelLookup(torch.autograd.Function):
    """Trilinear lookup ``[n, C]`` (the fused kernel where it applies, else `VoxelField.sample_torch`'s
    grid_sample) whose gradient to the grid is sparse (`voxel_grid_gradient`); none to the points."""

    @staticmethod
    def forward(ctx, pts, grid):
        grid = grid.detach()
        ctx.save_for_backward(pts)
        ctx.grid_shape = grid.shape
        if dense_kernel_applies(pts, grid):
            return dense_kernels().voxel_forward(pts, grid)
        return _grid_sample_rows(grid, pts).contiguous()

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[1]:
            return None, None
        (pts,) = ctx.saved_tensors
        return None, voxel_grid_gradient(pts, grad.contiguous(), ctx.grid_shape)
