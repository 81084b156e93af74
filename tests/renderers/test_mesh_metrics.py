"""IoU, Chamfer-L1, normal consistency and F-score against hand-computed values."""

import math

import numpy as np
import pytest
import trimesh

from fieldstudio.datasets.sdf_samples import MeshSDF
from fieldstudio.renderers.mesh_metrics import compare_meshes, grid_cell_centers, occupancy_iou, volumetric_iou

R = 0.3


def _sphere(radius=R, shift=(0.0, 0.0, 0.0), subdivisions=5):
    m = trimesh.creation.icosphere(subdivisions, radius=radius)
    m.vertices += 0.5 + np.asarray(shift)
    return m


def _box(lo, hi):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    b = trimesh.creation.box(extents=hi - lo)
    b.vertices += (lo + hi) / 2
    return b


def test_a_mesh_against_itself_is_perfect():
    m = _sphere(subdivisions=4)
    got = compare_meshes(m, m.copy(), n_samples=20_000)
    assert got["chamfer_l1"] < 1e-6 and got["accuracy"] < 1e-6 and got["completeness"] < 1e-6
    assert got["normal_consistency"] > 0.99999
    assert got["f_score@0.005"] == 1.0 and got["f_score@0.01"] == 1.0
    o = MeshSDF(m)
    assert volumetric_iou(o.inside, MeshSDF(m.copy()).inside, resolution=64) == 1.0


def test_shifted_sphere_matches_the_closed_forms():
    s = 0.05
    a, b = _sphere(), _sphere(shift=(s, 0, 0))
    got = compare_meshes(b, a, n_samples=30_000)
    # a point on one sphere at angle theta to the shift lies |sqrt(r^2 + s^2 - 2 r s cos theta) - r| from
    # the other; cos theta is uniform on [-1, 1] for area-uniform samples, so with t = that root:
    # E = 1 / (2 r s) * integral_{r-s}^{r+s} |t - r| t dt
    r = R
    below = (r ** 3 / 2 - r ** 3 / 3) - (r * (r - s) ** 2 / 2 - (r - s) ** 3 / 3)
    above = ((r + s) ** 3 / 3 - r * (r + s) ** 2 / 2) - (r ** 3 / 3 - r ** 3 / 2)
    expected = (below + above) / (2 * r * s)
    assert expected == pytest.approx(s / 2, rel=1e-9)  # the integral simplifies to r s^2 / (2 r s) for s < r
    assert got["accuracy"] == pytest.approx(expected, rel=0.02)  # 40k samples: ~0.5% sampling noise
    assert got["completeness"] == pytest.approx(expected, rel=0.02)
    assert got["chamfer_l1"] == pytest.approx(expected, rel=0.01)
    # F-score at tau: the share of points within tau is the share of cos theta with |t - r| < tau
    tau = 0.01
    u_lo = (r ** 2 + s ** 2 - (r + tau) ** 2) / (2 * r * s)  # t = r + tau
    u_hi = (r ** 2 + s ** 2 - (r - tau) ** 2) / (2 * r * s)  # t = r - tau
    share = (min(u_hi, 1) - max(u_lo, -1)) / 2
    assert got["precision@0.01"] == pytest.approx(share, abs=0.01)
    assert got["f_score@0.01"] == pytest.approx(share, abs=0.01)
    # IoU: the lens of two spheres, V = pi (4r + s)(2r - s)^2 / 12
    lens = math.pi * (4 * r + s) * (2 * r - s) ** 2 / 12
    iou = volumetric_iou(MeshSDF(a).inside, MeshSDF(b).inside, resolution=96)
    assert iou == pytest.approx(lens / (2 * 4 / 3 * math.pi * r ** 3 - lens), rel=0.01)


def test_grid_aligned_boxes_give_the_exact_iou():
    # 64^3 cell centres: [0.25, 0.75] holds exactly 32 per axis; a shift of 0.125 is 8 cells: IoU 24/40
    a, b = _box([0.25] * 3, [0.75] * 3), _box([0.375, 0.25, 0.25], [0.875, 0.75, 0.75])
    assert volumetric_iou(MeshSDF(a).inside, MeshSDF(b).inside, resolution=64) == pytest.approx(24 / 40, abs=1e-12)
    # Chamfer of the boxes, face by face (samples of b, distances to a's surface; a and b swap by symmetry):
    # - b's far end face (x = 0.875, area 1/4): 0.125 from a's end face
    # - b's near end face (x = 0.375, area 1/4), inside a: min(0.125, distance to the edge of the
    #   0.5 x 0.5 square) = integral_0^0.125 (1 - 4a)^2 da = (1 - 0.5^3) / 12
    # - b's four side faces (area 1): on a's faces for x <= 0.75 (3/4 of them), else x - 0.75 (mean 0.0625)
    expected = (0.25 * 0.125 + 0.25 * (1 - 0.5 ** 3) / 12 + 1.0 * 0.25 * 0.0625) / 1.5
    got = compare_meshes(b, a, n_samples=40_000)
    assert got["accuracy"] == pytest.approx(expected, rel=0.02)  # 40k samples: ~0.5% sampling noise
    assert got["completeness"] == pytest.approx(expected, rel=0.02)


def test_concentric_spheres_and_empty_predictions():
    d = 0.008
    got = compare_meshes(_sphere(R + d, subdivisions=6), _sphere(R, subdivisions=6), n_samples=20_000)
    assert got["chamfer_l1"] == pytest.approx(d, rel=0.02)
    assert got["normal_consistency"] > 0.9999
    assert got["f_score@0.005"] == 0.0 and got["f_score@0.01"] == 1.0
    empty = compare_meshes(trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), int)), _sphere())
    assert empty["chamfer_l1"] == float("inf") and empty["f_score@0.01"] == 0.0


def test_occupancy_iou_and_cell_centres():
    pts = grid_cell_centers(4)
    assert pts.shape == (64, 3) and pts.min() == 0.125 and pts.max() == 0.875
    assert occupancy_iou(np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 0], bool)) == pytest.approx(1 / 3)
    assert occupancy_iou(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
