"""Volume rendering with a functional API in the style of nerfacc (0.5.x): march, then render.

The renderer never sees a field. It asks the caller through two closures over the *packed* samples:

* ``sigma_fn(t_starts [N], t_ends [N], ray_indices [N]) -> sigmas [N]`` (density, post-activation),
* ``rgb_sigma_fn(t_starts, t_ends, ray_indices) -> (rgbs [N, 3], sigmas [N])``.

Conventions (all nerfacc's):

* Rays are ``rays_o [n_rays, 3]`` and *unit* directions ``rays_d [n_rays, 3]``; ``t`` is the distance
  along the ray in world units (the units of the aabb), so ``sigma`` is density per world unit and a
  sample's optical thickness is ``sigma * (t_end - t_start)``.
* Samples are packed: sample ``i`` belongs to ray ``ray_indices[i]`` (int64) and covers
  ``[t_starts[i], t_ends[i]]``. The samples of one ray are contiguous and in increasing ``t``
  (`march` returns them so; `render_weight_from_density` relies on contiguity).
* The point of a sample is its midpoint: ``rays_o + rays_d * (t_starts + t_ends) / 2``.
* Marching with step ``dt`` places samples on the lattice ``t_k = near + k * dt`` (``near`` jittered by
  ``U(0, dt)`` per ray when ``stratified``) and keeps sample ``[t_k, t_k + dt]`` when its midpoint is
  inside the aabb, between the near and far planes, and in an occupied cell of the grid. With
  ``cone_angle > 0`` the step is ``max(dt, t * cone_angle)`` (instant-ngp's growing step).
* ``rendering`` returns ``rgb [n_rays, 3]``, ``opacity [n_rays, 1] = sum_i w_i``, and
  ``depth [n_rays, 1] = sum_i w_i t_mid_i / max(opacity, eps)``: the expected termination distance
  *given that the ray terminates* (normalised by opacity, as nerfacc; 0 for rays that hit nothing).
  The background is composited as ``rgb + bkgd * (1 - opacity)``.

Backends: the PyTorch code here is the default and the reference. When nerfacc is installed, the
tensors are on CUDA and nerfacc's CUDA extension loads (tried once per process, the result cached;
a failure is logged once and PyTorch is used), `march` and `rendering` call
``nerfacc.OccGridEstimator.sampling`` and ``nerfacc.rendering`` instead. ``backend="torch"``
forces PyTorch; ``backend="nerfacc"`` requires nerfacc.

On the CPU, fused C++ kernels (`fieldstudio.kernels.render_kernels`) take over the march of a
single-level grid (or a plain box) without cone stepping -- returning the very samples of the
PyTorch march -- and the packed compositing (`rendering`, `render_weight_from_density`, the
early-termination pass), with a hand-written backward; the PyTorch code stays their twin and
fallback.

How the PyTorch march stays fast on a CPU: per ray, the first and last lattice steps inside
``[t_enter, t_exit)`` come in closed form; all candidate steps of a batch of rays are generated
at once as one packed tensor (``repeat_interleave`` of per-ray counts), looked up in the occupancy
grid with one gather, and compacted with one boolean mask. Nothing loops over rays or steps in
Python; rays are processed in chunks of at most ``max_candidates`` candidate steps to bound memory.
Transmittance along packed rays is a single ``cumsum`` over all samples minus the sum at each
segment's start, done in float64 so that the subtraction loses nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from typing import Callable, Optional

import torch
from torch import Tensor

from fieldstudio.errors import ConfigError
from fieldstudio.kernels import render_kernels

from .occupancy import OccupancyGrid, as_aabb
from .rays import ray_aabb_intersect

logger = logging.getLogger(__name__)

SigmaFn = Callable[[Tensor, Tensor, Tensor], Tensor]
RgbSigmaFn = Callable[[Tensor, Tensor, Tensor], "tuple[Tensor, Tensor]"]

#: candidate steps generated at once by the PyTorch march (memory ~ 60 bytes each)
MAX_CANDIDATES = 1 << 22

# ------------------------------------------------------------------------------------------------
# Optional nerfacc backend
# ------------------------------------------------------------------------------------------------

_NERFACC: dict = {}


def nerfacc_status() -> tuple[bool, str]:
    """``(usable, why)``: nerfacc is installed, CUDA is there and nerfacc's CUDA extension loads.

    The first call imports nerfacc's extension, which nerfacc compiles on first use when it was not
    installed prebuilt (minutes); the answer is cached for the process.
    """
    if "ok" not in _NERFACC:
        ok, why = False, ""
        if importlib.util.find_spec("nerfacc") is None:
            why = "nerfacc is not installed"
        elif not torch.cuda.is_available():
            why = "no CUDA device"
        else:
            try:
                from nerfacc.cuda._backend import _C  # noqa: the import builds/loads the extension

                ok, why = _C is not None, "" if _C is not None else "nerfacc found no CUDA toolkit"
            except Exception as exc:  # a failed build must not break rendering
                why = f"nerfacc's CUDA extension failed to load: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        _NERFACC.update(ok=ok, why=why)
        if not ok and importlib.util.find_spec("nerfacc") is not None:
            logger.warning("fieldstudio: rendering with PyTorch, not nerfacc (%s)", why)
    return _NERFACC["ok"], _NERFACC["why"]


def _use_nerfacc(t: Tensor, backend: str) -> bool:
    if backend not in ("auto", "torch", "nerfacc"):
        raise ConfigError(f"unknown renderer backend '{backend}'", "use auto, torch or nerfacc")
    if backend == "torch":
        return False
    if not t.is_cuda:
        if backend == "nerfacc":
            raise ConfigError("backend 'nerfacc' needs CUDA tensors", "move the rays to CUDA or use backend 'auto'")
        return False
    ok, why = nerfacc_status()
    if backend == "nerfacc" and not ok:
        raise ConfigError(f"backend 'nerfacc' is not usable: {why}", "install nerfacc with a CUDA toolkit, or use backend 'auto'")
    return ok


def _render_kernels(t: Tensor):
    """The fused CPU rendering kernels for tensors like ``t``, or None (CUDA, or not built)."""
    if t.device.type != "cpu":
        return None
    return render_kernels()


# ------------------------------------------------------------------------------------------------
# Ray-box intersection
# ------------------------------------------------------------------------------------------------

def _intersect(rays_o: Tensor, rays_d: Tensor, aabb: Tensor, near_plane: float = 0.0,
               far_plane: float = math.inf) -> tuple[Tensor, Tensor, Tensor]:
    """``(t_min, t_max, hit)`` of the rays with the box ``[6]``, clipped to ``[near_plane, far_plane]``;
    ``t`` is 0 on rays that miss. The slab test itself is `fieldstudio.renderers.rays.ray_aabb_intersect`
    (which clamps at 0: a ``near_plane`` below 0 acts as 0)."""
    t0, t1, _ = ray_aabb_intersect(rays_o, rays_d, aabb.reshape(2, 3))
    t0 = t0.clamp_min(near_plane)
    t1 = t1.clamp_max(far_plane)
    hit = t1 > t0
    zero = torch.zeros_like(t0)
    return torch.where(hit, t0, zero), torch.where(hit, t1, zero), hit


# ------------------------------------------------------------------------------------------------
# Marching
# ------------------------------------------------------------------------------------------------

class _Lattice:
    """The per-ray step lattice ``t_0 = base``, ``t_{k+1} = t_k + max(dt, cone * t_k)`` (float64)."""

    def __init__(self, base: Tensor, dt: float, cone: float):
        self.base, self.dt, self.cone = base, float(dt), float(cone)
        if self.cone > 0:
            t_star = self.dt / self.cone  # from here on the step grows with t
            self.k0 = torch.where(base < t_star, torch.ceil((t_star - base) / self.dt), torch.zeros_like(base))
            self.t_k0 = base + self.k0 * self.dt
            self.log_g = math.log1p(self.cone)

    def start(self, k: Tensor, rays: Optional[Tensor] = None) -> Tensor:
        """``t_k`` for (float64) step numbers ``k`` of rays ``rays`` (all rays when None)."""
        pick = (lambda v: v) if rays is None else (lambda v: v[rays])
        lin = pick(self.base) + k * self.dt
        if self.cone <= 0:
            return lin
        k0, t_k0 = pick(self.k0), pick(self.t_k0)
        return torch.where(k < k0, lin, t_k0 * torch.exp((k - k0).clamp_min(0) * self.log_g))

    def mid(self, k: Tensor) -> Tensor:
        if self.cone <= 0:
            return self.base + (k + 0.5) * self.dt
        return 0.5 * (self.start(k) + self.start(k + 1))

    def first_at_or_after(self, t: Tensor) -> Tensor:
        """Per ray, the smallest ``k >= 0`` whose midpoint is ``>= t`` (float64, integral values)."""
        k = torch.ceil((t - self.base) / self.dt - 0.5)
        if self.cone > 0:
            ratio = (t / (self.t_k0 * (1 + 0.5 * self.cone))).clamp_min(1e-30)
            k_geo = self.k0 + torch.ceil(torch.log(ratio) / self.log_g).clamp_min(0)
            k = torch.where(k < self.k0, k, k_geo)
        k = k.clamp_min(0)
        # the closed forms can be one off where t sits on a midpoint: settle it exactly
        k = torch.where((k > 0) & (self.mid(k - 1) >= t), k - 1, k)
        k = torch.where(self.mid(k) < t, k + 1, k)
        return k


def _march_torch(rays_o, rays_d, region, grid, dt, near_plane, far_plane, t_min, t_max, stratified, cone_angle,
                 max_candidates):
    max_candidates = min(int(max_candidates), 1 << 23)  # float32 step numbers stay exact
    n_rays, device = rays_o.shape[0], rays_o.device
    o64, d64 = rays_o.double(), rays_d.double()
    tb_min, tb_max, hit = _intersect(o64, d64, region.to(o64), near_plane, far_plane)
    base = torch.full((n_rays,), float(near_plane), dtype=torch.float64, device=device)
    if t_min is not None:
        base = torch.maximum(base, t_min.double())
        tb_min = torch.maximum(tb_min, t_min.double())
    if t_max is not None:
        tb_max = torch.minimum(tb_max, t_max.double())
    if stratified:
        base = base + torch.rand(n_rays, dtype=torch.float64, device=device) * dt
    lattice = _Lattice(base, dt, cone_angle)
    k_first = lattice.first_at_or_after(tb_min)
    k_end = lattice.first_at_or_after(tb_max)  # first k whose midpoint is past the exit: exclusive
    counts = torch.where(hit & (tb_max > tb_min), (k_end - k_first).clamp_min(0), torch.zeros_like(k_end)).long()

    # chunks of whole rays with at most `max_candidates` candidate steps each (one host sync)
    csum = torch.cumsum(counts, 0)
    total = int(csum[-1]) if n_rays else 0
    bounds = [0]
    if total > max_candidates:
        cuts = torch.arange(max_candidates, total, max_candidates, device=device)
        bounds += sorted(set(torch.searchsorted(csum, cuts, right=True).tolist()) - {0, n_rays})
    bounds.append(n_rays)

    base32 = base.float()
    # step numbers as float32 while exact (< 2^24), else float64
    kdtype = torch.float32 if total == 0 or float((k_first + counts).max()) + max_candidates < (1 << 24) else torch.float64
    fast = grid is not None and grid.levels == 1 and cone_angle <= 0 and grid.cells_per_level < (1 << 24)
    macro = None
    if fast:
        # the midpoint of step k of ray r in cell coordinates is P_r + k * Q_r: one [N, 6] gather per candidate
        p0 = grid.cell_coords(o64 + d64 * (base + 0.5 * dt).unsqueeze(-1))
        q = grid.cell_coords(d64 * dt) - grid.cell_coords(torch.zeros_like(d64))
        pq = torch.cat([p0, q], dim=-1).float()
    if fast:
        # coarse pass: runs of m steps, which span at most `block` cells per axis, are dropped at
        # once when the dilated block of their first midpoint is empty (about 8 steps per run)
        box = grid.aabbs[0]
        cells_per_step = max(dt * r / float(box[3 + i] - box[i]) for i, r in enumerate(grid._res))
        block = next((bk for bk in (2, 4, 8, 16) if bk / cells_per_step >= 8), 16)
        m = int(block / cells_per_step) + 1
        if m >= 4 and min(grid._res) >= 2 * block:
            macro = grid.macro_occupancy(block)
    kern = _render_kernels(rays_o) if cone_angle <= 0 and kdtype == torch.float32 and (grid is None or fast) else None
    if kern is not None:
        # the same lattice, coarse pass and cell arithmetic as below, one pass over the rays in C++
        no_macro = torch.empty(0, 0, 0, dtype=torch.bool)
        if fast:
            return tuple(kern.march_cells(k_first.long(), counts, base32, pq, grid.binaries.view(-1), *grid._res, dt,
                                          no_macro if macro is None else macro, block, m if macro is not None else 0))
        no_grid = torch.empty(0, dtype=torch.bool)
        return tuple(kern.march_cells(k_first.long(), counts, base32, torch.empty(0, 6), no_grid, 1, 1, 1, dt,
                                      no_macro, 1, 0))
    out_r, out_s, out_e = [], [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        c = counts[a:b]
        if b == a or int(csum[b - 1] - (csum[a - 1] if a > 0 else 0)) == 0:
            continue
        if cone_angle > 0:
            rays, k = _steps(c, a, b, k_first, torch.float64)
            t_s64, t_e64 = lattice.start(k, rays), lattice.start(k + 1, rays)
            t_s, t_e = t_s64.float(), t_e64.float()
            if grid is not None:
                mid = (0.5 * (t_s64 + t_e64)).to(rays_o.dtype)
                keep = grid.query(torch.addcmul(rays_o.index_select(0, rays), rays_d.index_select(0, rays), mid.unsqueeze(-1)))
                rays, t_s, t_e = rays[keep], t_s[keep], t_e[keep]
        else:
            if macro is not None:
                rays, k = _coarse_skip(c, a, b, k_first, m, block, pq, macro, kdtype)
            else:
                rays, k = _steps(c, a, b, k_first, kdtype)
            if fast:
                g = pq.index_select(0, rays)
                keep = grid.lookup_cells(torch.addcmul(g[:, :3], g[:, 3:], k.to(g.dtype).unsqueeze(-1)))
                rays, k = rays[keep], k[keep]
            elif grid is not None:
                mid = (base32.index_select(0, rays) + (k + 0.5) * dt).to(rays_o.dtype)
                keep = grid.query(torch.addcmul(rays_o.index_select(0, rays), rays_d.index_select(0, rays), mid.unsqueeze(-1)))
                rays, k = rays[keep], k[keep]
            t_s = (base32.index_select(0, rays) + k * dt).float()
            t_e = t_s + dt
        out_r.append(rays)
        out_s.append(t_s)
        out_e.append(t_e)
    if not out_r:
        empty = torch.empty(0, device=device)
        return torch.empty(0, dtype=torch.long, device=device), empty, empty.clone()
    return torch.cat(out_r), torch.cat(out_s), torch.cat(out_e)


def _steps(c, a, b, k_first, dtype):
    """Every candidate ``(ray, k)`` of rays ``a..b``: ``c`` lattice steps each, from ``k_first``."""
    n = int(c.sum())
    rays = torch.repeat_interleave(torch.arange(a, b, device=c.device), c, output_size=n)
    # step number = position in the chunk - the ray's offset in the chunk + the ray's first step
    shift = (k_first[a:b] - (torch.cumsum(c, 0) - c)).to(dtype)
    return rays, torch.arange(n, device=c.device, dtype=dtype) + shift.index_select(0, rays - a)


def _coarse_skip(c, a, b, k_first, m, block, pq, macro, dtype):
    """Like `_steps`, but only in runs of ``m`` steps whose first midpoint falls in a marked block
    (``block^3`` cells, see `OccupancyGrid.macro_occupancy`) of ``macro``."""
    device = c.device
    runs = (c + m - 1) // m
    n_runs = int(runs.sum())
    rr = torch.repeat_interleave(torch.arange(a, b, device=device), runs, output_size=n_runs)
    j = torch.arange(n_runs, device=device) - (torch.cumsum(runs, 0) - runs).index_select(0, rr - a)
    k0 = k_first.index_select(0, rr) + (j * m).double()
    g = pq.index_select(0, rr)
    blk = torch.addcmul(g[:, :3], g[:, 3:], k0.to(g.dtype).unsqueeze(-1)).div_(block).floor_()
    mres = blk.new_tensor(macro.shape)
    blk = torch.clamp(blk, min=torch.zeros_like(mres), max=mres - 1)
    strides = blk.new_tensor([macro.shape[1] * macro.shape[2], macro.shape[2], 1])
    keep = macro.view(-1)[(blk @ strides).long()]
    rr, j, k0 = rr[keep], j[keep], k0[keep]
    seglen = torch.minimum(torch.full_like(j, m), c.index_select(0, rr - a) - j * m)
    n_f = int(seglen.sum())
    seg = torch.repeat_interleave(torch.arange(rr.numel(), device=device), seglen, output_size=n_f)
    kseg = (k0 - (torch.cumsum(seglen, 0) - seglen).double()).to(dtype)
    return rr.index_select(0, seg), torch.arange(n_f, device=device, dtype=dtype) + kseg.index_select(0, seg)


_NERFACC_DUMMY: dict = {}


def _nerfacc_estimator(grid: Optional[OccupancyGrid], region: Tensor, device):
    """A nerfacc OccGridEstimator reading this grid's buffers (or one all-occupied cell over ``region``)."""
    import nerfacc

    if grid is None:
        key = (tuple(region.tolist()), str(device))
        est = _NERFACC_DUMMY.get(key)
        if est is None:
            est = nerfacc.OccGridEstimator(roi_aabb=region.cpu(), resolution=1, levels=1).to(device)
            est.binaries.fill_(True)
            est.occs.fill_(1.0)  # so that sampling's min(alpha_thre, mean(occs)) keeps alpha_thre
            _NERFACC_DUMMY[key] = est
        return est
    est = grid.__dict__.get("_nerfacc_estimator")
    if est is None or est.binaries.device != grid.binaries.device:
        est = nerfacc.OccGridEstimator(roi_aabb=grid.aabbs[0].cpu(), resolution=list(grid._res),
                                       levels=grid.levels).to(grid.binaries.device)
        grid.__dict__["_nerfacc_estimator"] = est  # not a submodule: stays out of state dicts
    est.binaries, est.occs, est.aabbs = grid.binaries, grid.occs, grid.aabbs  # share, never copy
    return est


@torch.no_grad()
def march(rays_o: Tensor, rays_d: Tensor, *, aabb=None, grid: Optional[OccupancyGrid] = None,
          render_step_size: float, near_plane: float = 0.0, far_plane: float = 1e10,
          t_min: Optional[Tensor] = None, t_max: Optional[Tensor] = None, sigma_fn: Optional[SigmaFn] = None,
          early_stop_eps: float = 1e-4, alpha_thre: float = 0.0, stratified: bool = False, cone_angle: float = 0.0,
          backend: str = "auto", max_candidates: int = MAX_CANDIDATES) -> tuple[Tensor, Tensor, Tensor]:
    """Packed samples ``(ray_indices [N] int64, t_starts [N], t_ends [N])`` along the rays.

    The region marched is ``aabb`` (``[6]`` or ``[2, 3]``) when given, else the grid's outer box;
    with a ``grid`` only samples whose midpoint lies in an occupied cell are kept, without one the
    whole region is sampled densely. ``t_min`` / ``t_max`` (``[n_rays]``) narrow each ray further
    (``t_min`` also moves the start of its lattice, as in nerfacc).

    With ``sigma_fn``, the samples left are evaluated once and those behind transmittance
    ``early_stop_eps`` (early termination), or -- when ``alpha_thre > 0`` -- with alpha below
    ``min(alpha_thre, mean(grid.occs))``, are dropped (nerfacc's ``OccGridEstimator.sampling``).
    Not differentiable (samples are positions, not functions of the field).
    """
    if rays_o.ndim != 2 or rays_o.shape[-1] != 3 or rays_d.shape != rays_o.shape:
        raise ValueError(f"march: rays_o and rays_d must both be [n_rays, 3], got {tuple(rays_o.shape)} and {tuple(rays_d.shape)}")
    if render_step_size <= 0:
        raise ConfigError(f"render_step_size={render_step_size} must be > 0", "e.g. sqrt(3) / 1024 of the box diagonal")
    if aabb is None and grid is None:
        raise ConfigError("march needs an aabb or an occupancy grid", "pass aabb=[[x0, y0, z0], [x1, y1, z1]] or grid=...")
    region = as_aabb(aabb).to(rays_o.device) if aabb is not None else grid.outer_aabb
    if aabb is not None and grid is not None:  # clip to the aabb; the grid stays the marching region
        ta, tb, hit = _intersect(rays_o, rays_d, region)
        tb = torch.where(hit, tb, torch.full_like(tb, -1.0))  # empty interval for rays that miss
        t_min = ta if t_min is None else torch.maximum(t_min, ta)
        t_max = tb if t_max is None else torch.minimum(t_max, tb)
        region = grid.outer_aabb
    if alpha_thre > 0 and grid is not None:
        alpha_thre = min(alpha_thre, float(grid.occs.mean()))

    if _use_nerfacc(rays_o, backend):
        est = _nerfacc_estimator(grid, region, rays_o.device)
        ray_indices, t_starts, t_ends = est.sampling(
            rays_o.contiguous().float(), rays_d.contiguous().float(), sigma_fn=sigma_fn, near_plane=near_plane,
            far_plane=far_plane, t_min=t_min, t_max=t_max, render_step_size=render_step_size,
            early_stop_eps=early_stop_eps, alpha_thre=alpha_thre, stratified=stratified, cone_angle=cone_angle)
        return ray_indices.long(), t_starts, t_ends

    ray_indices, t_starts, t_ends = _march_torch(rays_o, rays_d, region, grid, float(render_step_size), near_plane,
                                                 far_plane, t_min, t_max, stratified, float(cone_angle), max_candidates)
    if sigma_fn is not None and (early_stop_eps > 0 or alpha_thre > 0) and ray_indices.numel():
        sigmas = sigma_fn(t_starts, t_ends, ray_indices)
        if sigmas.shape != t_starts.shape:
            raise ValueError(f"sigma_fn must return [N] densities, got {tuple(sigmas.shape)} for {t_starts.shape[0]} samples")
        keep = render_visibility_from_density(t_starts, t_ends, sigmas, ray_indices, rays_o.shape[0],
                                              early_stop_eps=early_stop_eps, alpha_thre=alpha_thre)
        ray_indices, t_starts, t_ends = ray_indices[keep], t_starts[keep], t_ends[keep]
    return ray_indices, t_starts, t_ends


# ------------------------------------------------------------------------------------------------
# Compositing
# ------------------------------------------------------------------------------------------------

def _segments(ray_indices: Tensor) -> tuple[Tensor, Tensor]:
    """For packed samples: the index of the first and of the last sample of each sample's ray."""
    n = ray_indices.shape[0]
    pos = torch.arange(n, device=ray_indices.device)
    starts = torch.ones(n, dtype=torch.bool, device=ray_indices.device)
    starts[1:] = ray_indices[1:] != ray_indices[:-1]
    ends = torch.ones_like(starts)
    ends[:-1] = starts[1:]
    first = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), 0).values
    last = torch.cummin(torch.where(ends, pos, torch.full_like(pos, n - 1)).flip(0), 0).values.flip(0)
    return first, last


class _PackedExclusiveSum(torch.autograd.Function):
    """Exclusive cumulative sum within each ray's contiguous run of samples, in float64.

    forward: ``out_i = sum_{j in ray(i), j < i} x_j = E_i - E_first(i)`` with ``E`` the global
    exclusive cumsum; backward: ``grad_i = sum_{j in ray(i), j > i} g_j = C_last(i) - C_i`` with ``C``
    the global inclusive cumsum of the incoming gradient.
    """

    @staticmethod
    def forward(ctx, x, first, last):
        xd = x.double()
        e = torch.cumsum(xd, 0) - xd
        ctx.save_for_backward(last)
        return (e - e[first]).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (last,) = ctx.saved_tensors
        c = torch.cumsum(g.double(), 0)
        return (c[last] - c).to(g.dtype), None, None


def exclusive_sum(values: Tensor, ray_indices: Optional[Tensor] = None) -> Tensor:
    """Per-ray exclusive cumulative sum: packed ``[N]`` with ``ray_indices``, or batched ``[..., S]``."""
    if ray_indices is None:
        return torch.cumsum(values, dim=-1) - values
    if values.shape[0] == 0:
        return values.clone()
    first, last = _segments(ray_indices)
    return _PackedExclusiveSum.apply(values, first, last)


class _FusedComposite(torch.autograd.Function):
    """Packed compositing in one C++ pass per ray: ``(weights, trans, alphas, colors [n_rays, 3],
    opacity [n_rays, 1], depth_sum [n_rays, 1])`` (``depth_sum = sum w t_mid``, not yet divided by
    the opacity), differentiable w.r.t. ``sigmas`` and ``rgbs``. The twin is
    `render_weight_from_density` + `accumulate_along_rays`."""

    @staticmethod
    def forward(ctx, sigmas, rgbs, t_starts, t_ends, ray_indices, n_rays, kern):
        ctx.set_materialize_grads(False)
        out = kern.composite_forward(sigmas, rgbs, t_starts, t_ends, ray_indices, n_rays)
        ctx.save_for_backward(sigmas, rgbs, t_starts, t_ends, ray_indices, *out[:3])
        ctx.kern = kern
        ctx.mark_non_differentiable(*([] if rgbs.numel() else [out[3]]))
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        sigmas, rgbs, t_starts, t_ends, ray_indices, weights, trans, alphas = ctx.saved_tensors
        empty = sigmas.new_empty(0)
        grads = [empty if g is None else g for g in grads]
        g_sigmas, g_rgbs = ctx.kern.composite_backward(*grads, sigmas, rgbs, t_starts, t_ends, ray_indices,
                                                        weights, trans, alphas)
        return (g_sigmas if ctx.needs_input_grad[0] else None, g_rgbs if ctx.needs_input_grad[1] else None,
                None, None, None, None, None)


def _fused_composite_kernels(t_starts: Tensor, sigmas: Tensor, rgbs: Optional[Tensor], ray_indices, n_rays):
    """The kernel module when the fused compositing applies to these tensors, else None."""
    if ray_indices is None or n_rays is None or sigmas.ndim != 1 or sigmas.dtype not in (torch.float32, torch.float64):
        return None
    if rgbs is not None and (rgbs.dtype != sigmas.dtype or rgbs.ndim != 2 or rgbs.shape[-1] != 3):
        return None
    if ray_indices.dtype != torch.int64 or t_starts.requires_grad:
        return None
    return _render_kernels(sigmas)


def render_transmittance_from_density(t_starts: Tensor, t_ends: Tensor, sigmas: Tensor,
                                      ray_indices: Optional[Tensor] = None, n_rays: Optional[int] = None
                                      ) -> tuple[Tensor, Tensor]:
    """``(trans, alphas)``: ``T_i = exp(-sum_{j<i} sigma_j delta_j)``, ``alpha_i = 1 - exp(-sigma_i delta_i)``."""
    kern = _fused_composite_kernels(t_starts, sigmas, None, ray_indices, n_rays)
    if kern is not None:
        _, trans, alphas, _, _, _ = _FusedComposite.apply(sigmas, sigmas.new_empty(0), t_starts, t_ends,
                                                          ray_indices, int(n_rays), kern)
        return trans, alphas
    # optical thickness past ~1e4 is opaque either way; capping it keeps inf density from making
    # inf - inf = nan in the packed sum (the gradient there is exp(-1e4) = 0 anyway)
    sdt = (sigmas * (t_ends - t_starts)).clamp_max(1e4)
    alphas = -torch.expm1(-sdt)
    trans = torch.exp(-exclusive_sum(sdt, ray_indices))
    return trans, alphas


def render_weight_from_density(t_starts: Tensor, t_ends: Tensor, sigmas: Tensor,
                               ray_indices: Optional[Tensor] = None, n_rays: Optional[int] = None
                               ) -> tuple[Tensor, Tensor, Tensor]:
    """``(weights, trans, alphas)`` with ``w_i = T_i * alpha_i``; packed (with ``ray_indices``) or
    batched ``[n_rays, n_samples]``. Differentiable w.r.t. ``sigmas``."""
    kern = _fused_composite_kernels(t_starts, sigmas, None, ray_indices, n_rays)
    if kern is not None:
        weights, trans, alphas, _, _, _ = _FusedComposite.apply(sigmas, sigmas.new_empty(0), t_starts, t_ends,
                                                                ray_indices, int(n_rays), kern)
        return weights, trans, alphas
    trans, alphas = render_transmittance_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays)
    return trans * alphas, trans, alphas


@torch.no_grad()
def render_visibility_from_density(t_starts: Tensor, t_ends: Tensor, sigmas: Tensor,
                                   ray_indices: Optional[Tensor] = None, n_rays: Optional[int] = None, *,
                                   early_stop_eps: float = 1e-4, alpha_thre: float = 0.0) -> Tensor:
    """Samples worth shading: ``T_i >= early_stop_eps`` (and ``alpha_i >= alpha_thre`` when > 0)."""
    trans, alphas = render_transmittance_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays)
    vis = trans >= early_stop_eps
    if alpha_thre > 0:
        vis = vis & (alphas >= alpha_thre)
    return vis


def accumulate_along_rays(weights: Tensor, values: Optional[Tensor] = None, ray_indices: Optional[Tensor] = None,
                          n_rays: Optional[int] = None) -> Tensor:
    """``sum_i w_i * v_i`` per ray -> ``[n_rays, D]`` (``D = 1`` when ``values`` is None).

    Packed: ``weights [N]``, ``values [N, D]``, ``ray_indices [N]`` and ``n_rays``. Batched:
    ``weights [n_rays, S]``, ``values [n_rays, S, D]``.
    """
    src = weights.unsqueeze(-1) if values is None else weights.unsqueeze(-1) * values
    if ray_indices is None:
        return src.sum(dim=-2)
    if n_rays is None:
        raise ValueError("accumulate_along_rays: n_rays is required with ray_indices")
    out = torch.zeros((n_rays, src.shape[-1]), dtype=src.dtype, device=src.device)
    return out.index_add_(0, ray_indices, src)


def rendering(t_starts: Tensor, t_ends: Tensor, ray_indices: Optional[Tensor], n_rays: Optional[int],
              rgb_sigma_fn: RgbSigmaFn, render_bkgd: Optional[Tensor] = None, *,
              backend: str = "auto") -> tuple[Tensor, Tensor, Tensor, dict]:
    """Shade the samples and composite them: ``(rgb [n_rays, 3], opacity [n_rays, 1],
    depth [n_rays, 1], extras)`` with ``extras`` = weights, trans, alphas, sigmas, rgbs (per sample).

    Differentiable w.r.t. what ``rgb_sigma_fn`` returns (not w.r.t. the ``t``). ``depth`` is
    ``sum w t_mid / max(opacity, eps)``; ``render_bkgd`` (``[3]`` or ``[n_rays, 3]``) fills
    ``1 - opacity``. Batched ``[n_rays, S]`` samples work with ``ray_indices=None``.
    """
    if _use_nerfacc(t_starts, backend) and ray_indices is not None:
        import nerfacc

        return nerfacc.rendering(t_starts, t_ends, ray_indices=ray_indices, n_rays=n_rays,
                                 rgb_sigma_fn=rgb_sigma_fn, render_bkgd=render_bkgd)
    if ray_indices is not None and not (t_starts.shape == t_ends.shape == ray_indices.shape):
        raise ValueError("rendering: t_starts, t_ends and ray_indices must all be [N]")
    if t_starts.shape[0] != 0:
        rgbs, sigmas = rgb_sigma_fn(t_starts, t_ends, ray_indices)
    else:
        rgbs = torch.empty((0, 3), device=t_starts.device)
        sigmas = torch.empty((0,), device=t_starts.device)
    if rgbs.shape[-1] != 3 or sigmas.shape != t_starts.shape:
        raise ValueError(f"rgb_sigma_fn must return rgbs [N, 3] and sigmas [N]; got {tuple(rgbs.shape)} and "
                         f"{tuple(sigmas.shape)} for {tuple(t_starts.shape)} samples")
    kern = _fused_composite_kernels(t_starts, sigmas, rgbs, ray_indices, n_rays)
    if kern is not None:
        weights, trans, alphas, colors, opacities, depths = _FusedComposite.apply(
            sigmas, rgbs, t_starts, t_ends, ray_indices, int(n_rays), kern)
    else:
        weights, trans, alphas = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays)
        colors = accumulate_along_rays(weights, rgbs, ray_indices, n_rays)
        opacities = accumulate_along_rays(weights, None, ray_indices, n_rays)
        t_mid = ((t_starts + t_ends) * 0.5).unsqueeze(-1)
        depths = accumulate_along_rays(weights, t_mid, ray_indices, n_rays)
    depths = depths / opacities.clamp_min(torch.finfo(depths.dtype).eps)
    if render_bkgd is not None:
        colors = colors + render_bkgd * (1.0 - opacities)
    extras = {"weights": weights, "trans": trans, "alphas": alphas, "sigmas": sigmas, "rgbs": rgbs}
    return colors, opacities, depths, extras
