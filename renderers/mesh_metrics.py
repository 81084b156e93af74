"""Geometric metrics between a reconstructed surface and its ground truth.

Why here: these compare what the renderers produce (meshes, occupancy closures) with a reference;
like the rest of `fieldstudio.renderers` they take meshes and closures and never import fields.
Distance queries go through `fieldstudio.datasets.sdf_samples.MeshSDF` (open3d, or the scipy
fallback), the layer below.

Protocol (all lengths in the units of the meshes given; in fieldstudio runs, the unit cube):

* **volumetric IoU**: occupancy of both shapes at the centres of a ``resolution``^3 grid (128^3 by
  default) over ``bounds``; |A and B| / |A or B|.
* **Chamfer-L1**: ``n_samples`` points sampled uniformly by area on each surface; the distance of
  every sample to the *other surface* (exact point-to-triangle distance, not to the other sample
  set, so a mesh against itself scores exactly 0 and sampling adds no floor);
  ``chamfer_l1 = (accuracy + completeness) / 2`` with accuracy = mean distance predicted -> truth
  and completeness = mean distance truth -> predicted.
* **normal consistency**: mean ``|n . n'|`` between each sample's face normal and the normal of the
  closest triangle on the other surface, averaged over both directions.
* **F-score at tau**: precision = fraction of predicted samples within tau of the truth, recall =
  fraction of true samples within tau of the prediction, F = 2PR / (P + R).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from fieldstudio.datasets.sdf_samples import MeshSDF, sample_surface

from .surfaces import UNIT_BOUNDS

InsideFn = Callable[[np.ndarray], np.ndarray]

#: F-score thresholds reported by default (unit-cube units: 0.5% and 1% of the cube's side)
DEFAULT_TAUS = (0.005, 0.01)


def grid_cell_centers(resolution: int, bounds=UNIT_BOUNDS) -> np.ndarray:
    lo, hi = np.asarray(bounds[0], np.float64), np.asarray(bounds[1], np.float64)
    axes = [lo[a] + (hi[a] - lo[a]) * (np.arange(resolution) + 0.5) / resolution for a in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def volumetric_iou(inside_a: InsideFn, inside_b: InsideFn, *, resolution: int = 128, bounds=UNIT_BOUNDS,
                   chunk: int = 1 << 20) -> float:
    """IoU of two occupancy functions ``inside(points [N, 3]) -> bool [N]`` on a grid of cell centres."""
    pts = grid_cell_centers(resolution, bounds)
    inter = union = 0
    for start in range(0, len(pts), chunk):
        p = pts[start:start + chunk]
        a = np.asarray(inside_a(p), bool)
        b = np.asarray(inside_b(p), bool)
        inter += int(np.count_nonzero(a & b))
        union += int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else inter / union


def occupancy_iou(inside_a: np.ndarray, inside_b: np.ndarray) -> float:
    """IoU of two boolean occupancy arrays over the same points."""
    a, b = np.asarray(inside_a, bool), np.asarray(inside_b, bool)
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def _directed(samples: np.ndarray, normals: np.ndarray, target: MeshSDF) -> tuple[np.ndarray, np.ndarray]:
    _, face_ids, dist = target.closest(samples)
    nc = np.abs((normals * target.face_normals_at(face_ids)).sum(1))
    return dist, nc


def compare_meshes(pred, truth, *, n_samples: int = 200_000, taus: Sequence[float] = DEFAULT_TAUS, seed: int = 0,
                   pred_sdf: MeshSDF | None = None, truth_sdf: MeshSDF | None = None) -> dict[str, Any]:
    """Chamfer-L1, accuracy, completeness, normal consistency and F-scores of ``pred`` against ``truth``.

    ``pred`` and ``truth`` are trimesh meshes in the same coordinates (see the module docstring).
    An empty prediction scores Chamfer = inf and F = 0.
    """
    if pred is None or len(pred.faces) == 0:
        out: dict[str, Any] = {"chamfer_l1": float("inf"), "accuracy": float("inf"), "completeness": float("inf"),
                               "normal_consistency": 0.0}
        for tau in taus:
            out[f"precision@{tau:g}"] = out[f"recall@{tau:g}"] = out[f"f_score@{tau:g}"] = 0.0
        out["n_samples"] = n_samples
        return out
    rng = np.random.default_rng(seed)
    pred_sdf = pred_sdf or MeshSDF(pred)
    truth_sdf = truth_sdf or MeshSDF(truth)
    p_pts, p_nrm = sample_surface(pred, n_samples, rng)
    t_pts, t_nrm = sample_surface(truth, n_samples, rng)
    d_pt, nc_pt = _directed(p_pts, p_nrm, truth_sdf)  # prediction -> truth (accuracy / precision)
    d_tp, nc_tp = _directed(t_pts, t_nrm, pred_sdf)  # truth -> prediction (completeness / recall)
    acc, comp = float(d_pt.mean()), float(d_tp.mean())
    out = {"chamfer_l1": (acc + comp) / 2, "accuracy": acc, "completeness": comp,
           "normal_consistency": float((nc_pt.mean() + nc_tp.mean()) / 2)}
    for tau in taus:
        p = float((d_pt < tau).mean())
        r = float((d_tp < tau).mean())
        out[f"precision@{tau:g}"] = p
        out[f"recall@{tau:g}"] = r
        out[f"f_score@{tau:g}"] = 0.0 if p + r == 0 else 2 * p * r / (p + r)
    out["n_samples"] = n_samples
    return out
