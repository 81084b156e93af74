"""k nearest kernel centres for many queries, without scanning every kernel per query.

`KernelIndex` lays a uniform grid of cells over the domain and stores, per cell, every centre
that can be among the k nearest of *any* point of that cell. For a cell with centre q and
half-diagonal r, any x in it has its k-th nearest distance d_k(x) <= d_k(q) + r, and a centre c
can only be that close to x if |c - q| <= d_k(q) + 2r. So the candidate list of the cell is the
ball of that radius around q, which makes the lookup exact for queries inside the domain (queries
outside are clamped to the border cell and get k nearby, not necessarily nearest, centres).

A query then costs one cell lookup and a distance check against the cell's padded candidate
list (the longest list sets the padding), on whatever device the table lives on. The table is
built once after the centres are initialised (scipy's cKDTree answers the cell queries) and
rebuilt when centres move. `knn_brute_force` is the plain twin used as the test oracle.
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
                 cells_per_kernel: float = 1.0, max_cells: int = 1 << 18, max_candidates: int = 96):
        from scipy.spatial import cKDTree

        c = centres.detach().double().cpu().numpy()
        n, d = c.shape
        self.k = min(int(k), n)
        self.dim = d
        lo_np = lo.detach().double().cpu().numpy()
        hi_np = hi.detach().double().cpu().numpy()
        tree = cKDTree(c)
        # Start at about one cell per kernel and refine while the longest candidate list is long:
        # adaptive kernels crowd together, and finer cells shorten the lists in crowded regions.
        res = max(1, int(round((n * cells_per_kernel) ** (1.0 / d))))
        while True:
            table, lengths = self._build(tree, lo_np, hi_np, res)
            finer = int(res * 1.5)
            if lengths.max() <= max_candidates or finer ** d > max_cells:
                break
            res = finer
        self.res = res
        self.lo = lo.detach().double().cpu()
        self.hi = hi.detach().double().cpu()
        self.table = torch.from_numpy(table)
        self.n_candidates = table.shape[1]
        self.mean_candidates = float(lengths.mean())

    def _build(self, tree, lo: np.ndarray, hi: np.ndarray, res: int) -> tuple[np.ndarray, np.ndarray]:
        d = self.dim
        size = (hi - lo) / res
        axes = [lo[i] + (np.arange(res) + 0.5) * size[i] for i in range(d)]
        # first axis fastest, matching `cell_of`
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
        q = grid.transpose(*reversed(range(d)), d).reshape(-1, d)
        half_diag = 0.5 * float(np.linalg.norm(size))
        dk, _ = tree.query(q, k=self.k)
        dk = dk if dk.ndim == 1 else dk[:, -1]
        # a hair of slack so rounding never drops a true neighbour on the boundary
        radius = dk + 2.0 * half_diag + 1e-9 * (1.0 + float(np.abs(hi - lo).max()))
        lists = tree.query_ball_point(q, radius, return_sorted=False)
        lengths = np.fromiter((len(v) for v in lists), dtype=np.int64, count=len(lists))
        width = int(lengths.max())
        table = np.empty((len(lists), width), dtype=np.int64)
        for i, v in enumerate(lists):
            m = len(v)
            table[i, :m] = v
            # pad with the cell's first candidate: a duplicate never changes the k nearest set
            # as long as duplicates are dropped by the caller's top-k over distinct entries
            table[i, m:] = v[0]
        return table, lengths

    def to(self, device) -> "KernelIndex":
        self.table = self.table.to(device)
        return self

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
        """``[N, k]`` indices of the k nearest centres of ``x`` ``[N, d]``, nearest first."""
        if self.table.device != x.device:
            self.table = self.table.to(x.device)
        out = []
        for s in range(0, x.shape[0], chunk):
            xs = x[s: s + chunk]
            cand = self.table[self.cell_of(xs)]  # [n, M]
            d2 = ((centres[cand] - xs[:, None, :]) ** 2).sum(-1)
            # padded duplicates sit at the end of a row; push them out of the top-k
            dup = torch.zeros_like(cand, dtype=torch.bool)
            dup[:, 1:] = cand[:, 1:] == cand[:, :1]
            d2 = d2.masked_fill(dup, math.inf)
            sel = torch.topk(d2, self.k, dim=1, largest=False).indices
            out.append(torch.gather(cand, 1, sel))
        return torch.cat(out) if out else torch.zeros(0, self.k, dtype=torch.long, device=x.device)
