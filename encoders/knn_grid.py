"""k nearest kernel centres for many queries, without scanning every kernel per query.

`KernelIndex` lays a uniform grid of cells over the domain and stores, per cell, every centre
that can be among the k nearest of *any* point of that cell. For a cell with centre q and
half-diagonal r, any x in it has its k-th nearest distance d_k(x) <= d_k(q) + r, and a centre c
can only be that close to x if |c - q| <= d_k(q) + 2r. So the candidate list of the cell is the
ball of that radius around q, which makes the lookup exact for queries inside the domain (queries
outside are clamped to the border cell and get k nearby, not necessarily nearest, centres).

A query then costs one cell lookup and a distance check against the cell's padded candidate
list, on whatever device the table lives on. Lists are capped (``max_candidates``): the few cells
whose list would be longer -- far from all kernels, where the k-th neighbour is far -- send their
queries to the k-d tree on the CPU instead, so memory stays cells x cap and the answer stays
exact. The table is built once after the centres are initialised (scipy's cKDTree answers the
cell queries) and rebuilt when centres move. `knn_brute_force` is the plain twin used as the
test oracle.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def knn_brute_force(x: torch.Tensor, centres: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Indices ``[N, k]`` of the k nearest centres of every query, nearest first (reference)."""
    out = []
    for s in range(0, x.shape[0], chunk):
        d = torch.cdist(x[s: s + chunk].double(), centres.double())
        out.append(torch.topk(d, k, dim=1, largest=False).indices)
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long, device=x.device)


class KernelIndex:
    """Exact k-nearest-centre lookup through a uniform grid of candidate lists."""

    def __init__(self, centres: torch.Tensor, k: int, lo: torch.Tensor, hi: torch.Tensor,
                 cells_per_kernel: float = 1.0, max_cells: int = 1 << 18, max_candidates: int = 64):
        from scipy.spatial import cKDTree

        c = centres.detach().double().cpu().numpy()
        n, d = c.shape
        self.k = min(int(k), n)
        self.dim = d
        lo_np = lo.detach().double().cpu().numpy()
        hi_np = hi.detach().double().cpu().numpy()
        self.tree = cKDTree(c)
        # Start at about one cell per kernel and refine while many cells have long lists: adaptive
        # kernels crowd together, and finer cells shorten the lists in crowded regions. Whether a
        # list fits the cap is read off the distance of the (cap+1)-th nearest centre, which
        # bounds the work per cell however many centres the ball would hold.
        cap = max(int(max_candidates), self.k)
        rng = np.random.default_rng(0)

        def fitting(q, radius):
            if n <= cap:
                return np.ones(len(q), dtype=bool)
            far, _ = self.tree.query(q, k=cap + 1, workers=-1)
            return far[:, -1] > radius

        res = max(1, int(round((n * cells_per_kernel) ** (1.0 / d))))
        res = min(res, max(1, int(max_cells ** (1.0 / d))))
        while True:  # choose the resolution on a sample of cells
            sample = rng.integers(0, res ** d, size=min(res ** d, 2048))
            share = fitting(*self._cells(lo_np, hi_np, res, sample)).mean()
            finer = int(res * 1.5)
            if share >= 0.99 or finer ** d > max_cells:
                break
            res = finer
        self.res = res
        # Cells whose list would be longer than the cap (far from every kernel, where the k-th
        # neighbour is far away, or inside crowds finer than the cells) are answered by the k-d
        # tree instead: still exact, and the table stays cells x cap. When most cells would
        # overflow (kernels packed on a surface in 3D), the table is not worth building at all.
        self.tree_only = bool(share < 0.5)
        if self.tree_only:
            q, radius, fits = np.zeros((1, d)), np.zeros(1), np.zeros(1, dtype=bool)
        else:
            q, radius = self._cells(lo_np, hi_np, res)
            fits = fitting(q, radius)
        self.overflow = torch.from_numpy(~fits)
        ok = np.flatnonzero(fits)
        lists = []
        for s0 in range(0, len(ok), 8192):
            rows = ok[s0: s0 + 8192]
            lists.extend(self.tree.query_ball_point(q[rows], radius[rows], return_sorted=False))
        lengths = np.fromiter((len(v) for v in lists), dtype=np.int64, count=len(lists))
        width = int(lengths.max()) if len(lists) else self.k
        table = np.zeros((len(q), width), dtype=np.int64)
        for r, v in zip(ok, lists):
            table[r, :len(v)] = v
            # pad with the first candidate; `query` masks the repeats out
            table[r, len(v):] = v[0]
        del lists
        self.lo = lo.detach().double().cpu()
        self.hi = hi.detach().double().cpu()
        self.table = torch.from_numpy(table)
        self.n_candidates = width
        self.mean_candidates = float(lengths.mean()) if len(lengths) else 0.0
        self.overflow_fraction = float(self.overflow.float().mean())

    def _cells(self, lo: np.ndarray, hi: np.ndarray, res: int, which: np.ndarray | None = None):
        """Centres of cells ``which`` (default all; flat index, first axis fastest, as `cell_of`)
        and their candidate radii."""
        d = self.dim
        size = (hi - lo) / res
        flat = np.arange(res ** d) if which is None else np.asarray(which)
        ijk = np.stack([(flat // res ** i) % res for i in range(d)], 1)
        q = lo + (ijk + 0.5) * size
        half_diag = 0.5 * float(np.linalg.norm(size))
        dk, _ = self.tree.query(q, k=self.k)
        dk = dk if dk.ndim == 1 else dk[:, -1]
        # a hair of slack so rounding never drops a true neighbour on the boundary
        return q, dk + 2.0 * half_diag + 1e-9 * (1.0 + float(np.abs(hi - lo).max()))

    def cell_of(self, x: torch.Tensor) -> torch.Tensor:
        lo = self.lo.to(device=x.device, dtype=x.dtype)
        hi = self.hi.to(device=x.device, dtype=x.dtype)
        cell = ((x - lo) / (hi - lo) * self.res).floor().long().clamp_(0, self.res - 1)
        flat = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        stride = 1
        for i in range(self.dim):
            flat += cell[:, i] * stride
            stride *= self.res
        return flat

    @torch.no_grad()
    def query(self, x: torch.Tensor, centres: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
        """``[N, k]`` indices of the k nearest centres of ``x`` ``[N, d]``."""
        if self.table.device != x.device:
            self.table = self.table.to(x.device)
            self.overflow = self.overflow.to(x.device)
        if self.tree_only:
            return self._tree_query(x)
        out = []
        for s in range(0, x.shape[0], chunk):
            xs = x[s: s + chunk]
            cells = self.cell_of(xs)
            cand = self.table[cells]  # [n, M]
            d2 = ((centres[cand] - xs[:, None, :]) ** 2).sum(-1)
            dup = torch.zeros_like(cand, dtype=torch.bool)
            dup[:, 1:] = cand[:, 1:] == cand[:, :1]
            d2 = d2.masked_fill(dup, math.inf)
            sel = torch.topk(d2, self.k, dim=1, largest=False).indices
            idx = torch.gather(cand, 1, sel)
            far = self.overflow[cells]
            if bool(far.any()):
                idx[far] = self._tree_query(xs[far])
            out.append(idx)
        return torch.cat(out) if out else torch.zeros(0, self.k, dtype=torch.long, device=x.device)

    def _tree_query(self, x: torch.Tensor) -> torch.Tensor:
        _, t = self.tree.query(x.detach().double().cpu().numpy(), k=self.k, workers=-1)
        return torch.from_numpy(np.asarray(t, dtype=np.int64).reshape(-1, self.k)).to(x.device)
