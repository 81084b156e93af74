"""The occupancy grid of Instant-NGP: which cells of the scene may hold density, for skipping space.

`OccupancyGrid` follows nerfacc's ``OccGridEstimator`` (0.5.x) and instant-ngp's density grid:

* ``levels`` cascades of ``resolution`` cells each; level ``l`` covers the base ``aabb`` scaled by
  ``2**l`` about its centre (level 0 is the scene box; instant-ngp uses up to 8 for unbounded scenes).
* ``occs`` keeps one float per cell: an exponential moving *maximum* of what ``occ_eval_fn`` said
  at a random point inside the cell, ``occ = max(occ * ema_decay, new)`` (instant-ngp and nerfacc;
  ``occ_eval_fn`` is usually ``density * render_step_size``, an optical thickness). A negative value
  marks a cell that is never evaluated (nerfacc's convention for cells no camera sees).
* ``binaries`` is the occupancy itself, ``occs > min(mean(occs), occ_thre)``.
* `update` runs every ``n`` steps: during the first ``warmup_steps`` steps it evaluates every cell,
  afterwards ``cells / 4`` uniformly drawn cells plus up to as many currently occupied ones; each
  cell is evaluated at a jittered point inside it.

Storage: ``binaries`` is a ``bool`` tensor ``[levels, rx, ry, rz]`` (one byte per cell, 2 MiB at
128^3), not instant-ngp's packed bitfield: a bool gather is the fastest lookup PyTorch has on the
CPU, and it is exactly the tensor nerfacc's CUDA traversal reads, so the same buffers drive both
backends. The buffer names and layouts (``resolution``, ``aabbs``, ``occs``, ``binaries``) are
nerfacc's, so a state dict loads into ``nerfacc.OccGridEstimator`` and back.

A fresh grid is all occupied (`mark_all`), unlike nerfacc's, which starts empty and renders nothing
until its first update. All coordinates are world coordinates: the units of the ``aabb``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from fieldstudio.errors import ConfigError

#: cells evaluated per call of ``occ_eval_fn`` during an update (bounds the memory of one call)
UPDATE_CHUNK = 1 << 18


def as_aabb(aabb) -> torch.Tensor:
    """``[6]`` float32 ``(xmin, ymin, zmin, xmax, ymax, zmax)`` from ``[6]``, ``[2, 3]`` or a list."""
    if isinstance(aabb, torch.Tensor):
        t = aabb.detach().to(torch.float32).reshape(-1)
    else:
        t = torch.tensor(aabb, dtype=torch.float32).reshape(-1)
    if t.numel() != 6:
        raise ConfigError(f"an aabb needs 6 numbers (min xyz, max xyz), got {t.numel()}",
                          "pass [[xmin, ymin, zmin], [xmax, ymax, zmax]] or a flat list of 6")
    if not bool((t[3:] > t[:3]).all()):
        raise ConfigError(f"aabb {t.tolist()} is empty: each max must exceed its min", "swap or fix the corners")
    return t


class OccupancyGrid(nn.Module):
    """Occupancy grid over ``aabb`` with ``resolution`` cells per axis and ``levels`` cascades.

    ``aabb``: ``[2, 3]`` (min row, max row) or ``[6]``; ``resolution``: int or 3 ints.
    """

    def __init__(self, aabb, resolution: int | Sequence[int] = 128, levels: int = 1):
        super().__init__()
        base = as_aabb(aabb).cpu()
        res = [int(resolution)] * 3 if isinstance(resolution, (int, float)) else [int(r) for r in resolution]
        if len(res) != 3 or min(res) < 1:
            raise ConfigError(f"occupancy grid resolution {resolution!r} is invalid", "use a positive int or 3 of them")
        if not 1 <= int(levels) <= 8:
            raise ConfigError(f"occupancy grid levels={levels} is out of range", "use 1 to 8 levels (nerfacc's limit)")
        self.levels = int(levels)
        self.cells_per_level = res[0] * res[1] * res[2]
        centre, half = (base[:3] + base[3:]) / 2, (base[3:] - base[:3]) / 2
        aabbs = torch.stack([torch.cat([centre - half * 2 ** i, centre + half * 2 ** i]) for i in range(self.levels)])
        self.register_buffer("resolution", torch.tensor(res, dtype=torch.int32))
        self.register_buffer("aabbs", aabbs)
        self.register_buffer("occs", torch.zeros(self.levels * self.cells_per_level))
        self.register_buffer("binaries", torch.ones([self.levels, *res], dtype=torch.bool))
        self._res = tuple(res)  # plain ints: no device syncs in the hot paths

    # --- description ------------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """``{"aabb": [6], "resolution": [3], "levels": n}``: rebuilds an empty grid of this shape."""
        return {"aabb": self.aabbs[0].tolist(), "resolution": list(self._res), "levels": self.levels}

    @property
    def aabb(self) -> torch.Tensor:
        """The base (level 0) box, ``[6]``."""
        return self.aabbs[0]

    @property
    def outer_aabb(self) -> torch.Tensor:
        """The box of the coarsest level, which contains all others, ``[6]``."""
        return self.aabbs[-1]

    def occupied_fraction(self) -> float:
        return float(self.binaries.float().mean())

    @torch.no_grad()
    def occupied_box(self, margin_cells: int = 1, min_component: float = 0.01) -> torch.Tensor | None:
        """``[2, 3]`` (min row, max row): the box around level 0's occupied cells in that level's
        [0, 1]^3, grown by ``margin_cells`` cells on every side and kept inside [0, 1]; None when no
        cell is occupied.

        Groups of touching cells (26-neighbours) holding under ``min_component`` of the occupied
        cells are left out: a trained grid keeps a few lone cells near the box's faces (floaters,
        on lego 36 of 11,590 cells in 35 groups), which would otherwise stretch the box to the faces.
        """
        import numpy as np
        from scipy import ndimage

        occupied = self.binaries[0].cpu().numpy()
        if not occupied.any():
            return None
        labels, _ = ndimage.label(occupied, structure=np.ones((3, 3, 3), dtype=bool))
        keep = np.bincount(labels.ravel()) >= max(1.0, min_component * occupied.sum())
        keep[0] = False  # label 0 is the empty space
        occ = keep[labels]
        if not occ.any():  # only scattered cells: keep them all
            occ = occupied
        res = torch.tensor(self._res, dtype=torch.float32)
        lo, hi = [], []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            idx = np.flatnonzero(occ.any(axis=other))
            lo.append(float(idx.min()))
            hi.append(float(idx.max() + 1))  # the far face of the last occupied cell
        lo = ((torch.tensor(lo) - margin_cells) / res).clamp(0.0, 1.0)
        hi = ((torch.tensor(hi) + margin_cells) / res).clamp(0.0, 1.0)
        return torch.stack([lo, hi])

    def extra_repr(self) -> str:
        return f"resolution={self._res}, levels={self.levels}, aabb={[round(v, 4) for v in self.aabbs[0].tolist()]}"

    # --- state --------------------------------------------------------------------------------------
    @torch.no_grad()
    def mark_all(self) -> None:
        """Every cell occupied (nothing is skipped until the next `update`)."""
        self.binaries.fill_(True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._res = tuple(int(r) for r in self.resolution.tolist())

    # --- lookups ------------------------------------------------------------------------------------
    def _level_and_unit(self, points: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Per point: level (None with one level), position in that level's [0, 1]^3, inside-mask."""
        base = self.aabbs[0]
        lo, hi = base[:3], base[3:]
        u = (points - lo) / (hi - lo)
        if self.levels == 1:
            inside = ((u >= 0) & (u < 1)).all(dim=-1)
            return None, u, inside
        # the finest level whose box holds the point (nerfacc's `_query`): level 0 spans
        # |u - 0.5| < 0.5, level l spans |u - 0.5| < 0.5 * 2**l
        r = (u - 0.5).abs().amax(dim=-1).clamp_min(0.1)
        level = (torch.frexp(r)[1].long() + 1).clamp_min(0)
        inside = level < self.levels
        level = level.clamp_max(self.levels - 1)
        u = (u - 0.5) / (2.0 ** level).unsqueeze(-1).to(u.dtype) + 0.5
        inside = inside & ((u >= 0) & (u < 1)).all(dim=-1)
        return level, u, inside

    def cell_index(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(flat cell id into occs / binaries.view(-1), inside-mask)`` of world points ``[N, 3]``."""
        level, u, inside = self._level_and_unit(points)
        rx, ry, rz = self._res
        ijk = (u * u.new_tensor(self._res)).long()
        ijk = torch.minimum(ijk.clamp_min(0), ijk.new_tensor([rx - 1, ry - 1, rz - 1]))
        flat = (ijk[..., 0] * ry + ijk[..., 1]) * rz + ijk[..., 2]
        if level is not None:
            flat = flat + level * self.cells_per_level
        return flat, inside

    def query(self, points: torch.Tensor) -> torch.Tensor:
        """Occupancy ``[...]`` (bool) of world points ``[..., 3]``; points outside every level are False."""
        lead = points.shape[:-1]
        flat, inside = self.cell_index(points.reshape(-1, 3))
        return (self.binaries.view(-1)[flat] & inside).reshape(lead)

    def cell_coords(self, points: torch.Tensor) -> torch.Tensor:
        """Continuous level-0 cell coordinates ``(points - lo) / cell_size`` of world points ``[..., 3]``."""
        lo, hi = self.aabbs[0, :3], self.aabbs[0, 3:]
        return (points - lo) * (points.new_tensor(self._res) / (hi - lo))

    def lookup_cells(self, u: torch.Tensor) -> torch.Tensor:
        """Level-0 occupancy ``[N]`` at continuous cell coordinates ``u [N, 3]`` (see `cell_coords`),
        clamped to the grid: only for points known to lie in the box (the marcher's candidates).
        The flat index is formed in float32 (exact below 2^24 cells) to keep it to a few ops."""
        res = self._res
        strides = u.new_tensor([res[1] * res[2], res[2], 1])
        f = u.floor()
        f = torch.clamp(f, min=torch.zeros_like(strides), max=u.new_tensor(res) - 1)
        return self.binaries.view(-1)[(f @ strides).long()]

    def macro_occupancy(self, block: int) -> torch.Tensor:
        """Level-0 occupancy pooled over ``block^3`` cells and dilated by one block: ``[Rx/b, Ry/b, Rz/b]``
        bool (rounded up). Any point within ``block`` cells (per axis) of an occupied cell lies in a
        block marked here, so a segment that short is empty when its start's block is not marked.
        Cached until the occupancy changes."""
        key = (block, self.binaries.data_ptr(), self.binaries._version)
        cached = self.__dict__.get("_macro")
        if cached is not None and cached[0] == key:
            return cached[1]
        occ = self.binaries[0].to(torch.float32)[None, None]
        pooled = torch.nn.functional.max_pool3d(occ, block, block, ceil_mode=True)
        macro = torch.nn.functional.max_pool3d(pooled, 3, 1, padding=1)[0, 0] > 0
        self.__dict__["_macro"] = (key, macro)
        return macro

    # --- updates ------------------------------------------------------------------------------------
    def _cell_points(self, level: int, cells: torch.Tensor, jitter: bool = True) -> torch.Tensor:
        """World points inside the cells ``cells`` (ids within one level): jittered, or the centres."""
        rx, ry, rz = self._res
        ijk = torch.stack([cells // (ry * rz), (cells // rz) % ry, cells % rz], dim=-1).to(torch.float32)
        off = torch.rand_like(ijk) if jitter else torch.full_like(ijk, 0.5)
        box = self.aabbs[level]
        return box[:3] + (ijk + off) / ijk.new_tensor(self._res) * (box[3:] - box[:3])

    @torch.no_grad()
    def refresh(self, occ_eval_fn: Callable[[torch.Tensor], torch.Tensor], *, all_cells: bool = True,
                occ_thre: float = 0.01, ema_decay: float = 0.95, chunk: int = UPDATE_CHUNK) -> None:
        """One update now: evaluate ``occ_eval_fn`` (world points ``[N, 3]`` -> ``[N]`` or ``[N, 1]``)
        on all cells or on the sampled subset, fold it into the EMA, re-threshold."""
        device = self.occs.device
        for level in range(self.levels):
            base = level * self.cells_per_level
            occs_l = self.occs[base: base + self.cells_per_level]
            if all_cells:
                cells = torch.arange(self.cells_per_level, device=device)
            else:
                n = self.cells_per_level // 4
                uniform = torch.randint(self.cells_per_level, (n,), device=device)
                occupied = torch.nonzero(self.binaries[level].reshape(-1))[:, 0]
                if occupied.numel() > n:
                    occupied = occupied[torch.randint(occupied.numel(), (n,), device=device)]
                cells = torch.cat([uniform, occupied])
            cells = cells[occs_l[cells] >= 0]  # cells marked invisible (< 0) are never evaluated
            for s in range(0, cells.numel(), chunk):
                c = cells[s: s + chunk]
                occ = occ_eval_fn(self._cell_points(level, c)).reshape(-1).to(self.occs.dtype)
                occs_l[c] = torch.maximum(occs_l[c] * ema_decay, occ)
        valid = self.occs >= 0
        thre = self.occs[valid].mean().clamp(max=occ_thre) if bool(valid.any()) else self.occs.new_tensor(occ_thre)
        self.binaries.copy_((self.occs > thre).view(self.binaries.shape))

    @torch.no_grad()
    def update(self, step: int, occ_eval_fn: Callable[[torch.Tensor], torch.Tensor], occ_thre: float = 0.01,
               ema_decay: float = 0.95, warmup_steps: int = 256, n: int = 16) -> bool:
        """nerfacc's ``update_every_n_steps``: every ``n`` steps, all cells while ``step < warmup_steps``
        and a random quarter plus occupied cells after. Returns whether this step updated."""
        if step % n != 0:
            return False
        self.refresh(occ_eval_fn, all_cells=step < warmup_steps, occ_thre=occ_thre, ema_decay=ema_decay)
        return True
