"""Signal-driven placement of NeuRBF kernels: weighted k-means for centres, covariances for shapes.

Points carry a weight that says where detail is (an image's gradient magnitude, closeness to an
SDF's surface, ...). Centres start as points drawn with probability proportional to the weight
(without replacement, by Gumbel top-k), then ``iters`` weighted Lloyd iterations move them; each
kernel's shape is the weighted covariance of the points assigned to it divided by ``alpha``,
clipped to a sane width range and turned into the kernel's parameter (inverse covariance for the
quadratic kernels, 1 / half-width for the N-linear tent), as the official code does.

Memory and time stay bounded: at most ``max_points`` points take part (default 16 per kernel,
at least 2^18; a uniform subsample keeps the weighted objective unbiased), assignments are k-d tree queries (never a points x kernels matrix),
and the per-cluster sums are ``bincount``s.
"""

from __future__ import annotations

import numpy as np
import torch

from .rbf_kernels import pack_symmetric


def sobel_weights(image: np.ndarray) -> np.ndarray:
    """Per-pixel gradient magnitude ``[H, W]`` of an ``[H, W, C]`` image in [0, 1] (Sobel)."""
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[..., None]
    g2 = np.zeros(img.shape[:2], dtype=np.float32)
    for c in range(img.shape[2]):
        gx = ndimage.sobel(img[..., c], axis=1, mode="nearest") / 8.0
        gy = ndimage.sobel(img[..., c], axis=0, mode="nearest") / 8.0
        g2 += gx * gx + gy * gy
    return np.sqrt(g2)


def surface_weights(sdf: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """``1 / (|sdf| + eps)``: SDF samples near the surface pull kernels towards it."""
    return 1.0 / (np.abs(np.asarray(sdf, dtype=np.float64)) + eps)


def _assign(tree_points: np.ndarray, x: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    return cKDTree(tree_points).query(x, k=1, workers=-1)[1]


def weighted_kmeans(x: np.ndarray, w: np.ndarray, k: int, iters: int = 10,
                    rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``[k, d]`` and the final assignment of every point (weighted Lloyd)."""
    rng = rng or np.random.default_rng(0)
    n, d = x.shape
    pos = np.flatnonzero(w > 0)
    if len(pos) >= k:
        # Gumbel top-k: k distinct draws with probability proportional to w
        keys = np.log(w[pos]) + rng.gumbel(size=len(pos))
        start = pos[np.argpartition(-keys, k - 1)[:k]]
    else:  # fewer weighted points than kernels: take them all, the rest uniformly
        rest = rng.choice(np.setdiff1d(np.arange(n), pos), size=k - len(pos), replace=False)
        start = np.concatenate([pos, rest])
    centres = x[start].astype(np.float64)
    wsum_all = w.astype(np.float64)
    for _ in range(iters):
        lab = _assign(centres, x)
        mass = np.bincount(lab, weights=wsum_all, minlength=k)
        keep = mass > 0
        for j in range(d):
            s = np.bincount(lab, weights=wsum_all * x[:, j], minlength=k)
            centres[keep, j] = s[keep] / mass[keep]
    return centres, _assign(centres, x)


def cluster_covariances(x: np.ndarray, w: np.ndarray, centres: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Weighted covariance ``[k, d, d]`` of each cluster about its centre (1e-10 * I if empty)."""
    k, d = centres.shape
    mass = np.bincount(lab, weights=w, minlength=k)
    diff = x - centres[lab]
    cov = np.zeros((k, d, d))
    for i in range(d):
        for j in range(i, d):
            s = np.bincount(lab, weights=w * diff[:, i] * diff[:, j], minlength=k)
            cov[:, i, j] = cov[:, j, i] = np.where(mass > 0, s / np.maximum(mass, 1e-300), 0.0)
    empty = mass <= 0
    cov[empty] = np.eye(d) * 1e-10
    return cov


def clip_covariances(cov: np.ndarray, min_width: float, max_width: float) -> np.ndarray:
    """Per-axis widths sqrt(cov_ii) into [min_width, max_width]; correlations into +-0.999."""
    d = cov.shape[-1]
    var = np.clip(np.diagonal(cov, axis1=1, axis2=2), min_width ** 2, max_width ** 2)
    sd = np.sqrt(var)
    corr = cov / np.maximum(np.sqrt(np.diagonal(cov, axis1=1, axis2=2))[:, :, None]
                            * np.sqrt(np.diagonal(cov, axis1=1, axis2=2))[:, None, :], 1e-300)
    corr = np.clip(corr, -0.999, 0.999)
    out = corr * sd[:, :, None] * sd[:, None, :]
    out[:, np.arange(d), np.arange(d)] = var
    return out


def shape_parameters(cov: np.ndarray, kernel: str, shape: str) -> np.ndarray:
    """Kernel shape parameters ``[k, P]`` from (clipped) covariances ``[k, d, d]``."""
    d = cov.shape[-1]
    var = np.diagonal(cov, axis1=1, axis2=2)
    if kernel == "nlin":
        # the tent's half-width is twice the standard deviation (official normalisation x4 on kw^2)
        width = 2.0 * np.sqrt(var)
        if shape == "isotropic":
            return 1.0 / np.sqrt(np.mean(width ** 2, axis=1, keepdims=True))
        return 1.0 / width
    if shape == "isotropic":
        return 1.0 / np.mean(var, axis=1, keepdims=True)
    if shape == "diagonal":
        return 1.0 / var
    inv = np.linalg.inv(cov)
    inv = 0.5 * (inv + np.swapaxes(inv, 1, 2))
    return pack_symmetric(torch.from_numpy(inv)).numpy()


def init_kernels(points: np.ndarray, weights: np.ndarray, n_kernels: int, kernel: str, shape: str, *,
                 alpha: float, min_width: float, max_width: float, iters: int = 10,
                 max_points: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``[n_kernels, d]`` and shape parameters ``[n_kernels, P]`` fitted to weighted points."""
    rng = np.random.default_rng(seed)
    x = np.asarray(points, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or len(x) != len(w):
        raise ValueError(f"points [N, d] and weights [N] disagree: {x.shape} vs {w.shape}")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise ValueError("weights must be finite and non-negative")
    if len(x) < n_kernels:
        raise ValueError(f"{len(x)} points cannot place {n_kernels} kernels; give more points")
    # 16 points per kernel (at least 2^18) pin a cluster's mean and covariance well enough
    max_points = max(1 << 18, 16 * n_kernels) if max_points is None else max_points
    if len(x) > max_points:
        sel = rng.choice(len(x), size=max_points, replace=False)
        x, w = x[sel], w[sel]
    if w.sum() <= 0:
        w = np.ones_like(w)
    w = w / w.mean()
    centres, lab = weighted_kmeans(x, w, n_kernels, iters=iters, rng=rng)
    cov = cluster_covariances(x, w, centres, lab) / alpha
    cov = clip_covariances(cov, min_width, max_width)
    return centres, shape_parameters(cov, kernel, shape)
