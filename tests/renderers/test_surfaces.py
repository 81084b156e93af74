"""Mesh extraction (dense and narrow band) and sphere tracing on analytic SDFs."""

import math

import numpy as np
import pytest
import torch

from fieldstudio.renderers.surfaces import (Camera, default_camera, evaluate_grid, extract_mesh, render_sdf,
                                            sample_volume, sphere_trace)

R = 0.3


def sphere_sdf(p: torch.Tensor) -> torch.Tensor:
    return (p - 0.5).norm(dim=-1) - R


def torus_sdf(p: torch.Tensor) -> torch.Tensor:
    q = p - 0.5
    ring = torch.sqrt(q[:, 0] ** 2 + q[:, 2] ** 2) - 0.3
    return torch.sqrt(ring ** 2 + q[:, 1] ** 2) - 0.1


@pytest.mark.parametrize("narrow_band", [False, True])
def test_marching_cubes_of_a_sphere_has_the_right_area_and_volume(narrow_band):
    mesh = extract_mesh(sphere_sdf, 96, narrow_band=narrow_band).to_trimesh()
    assert mesh.is_watertight
    assert mesh.area == pytest.approx(4 * math.pi * R ** 2, rel=0.01)
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * R ** 3, rel=0.01)  # positive: faces wind outwards
    r = np.linalg.norm(mesh.vertices - 0.5, axis=1)
    assert np.abs(r - R).max() < 1e-3


def test_narrow_band_gives_the_dense_mesh_with_few_evaluations():
    calls = {"n": 0}

    def counted(p):
        calls["n"] += len(p)
        return torus_sdf(p)

    dense = extract_mesh(torus_sdf, 160, narrow_band=False)
    band = extract_mesh(counted, 160, narrow_band=True, max_slab_samples=40 * 160 * 160)  # several slabs
    assert calls["n"] == band.stats["evaluated"] < 0.2 * 160 ** 3
    assert len(band.faces) == len(dense.faces)
    a = dense.vertices[np.lexsort(dense.vertices.T)]
    b = band.vertices[np.lexsort(band.vertices.T)]
    np.testing.assert_allclose(a, b, atol=1e-12)
    mesh = band.to_trimesh()
    assert mesh.is_watertight and mesh.euler_number == 0  # slabs welded into one closed torus
    assert mesh.volume == pytest.approx(2 * math.pi ** 2 * 0.3 * 0.1 ** 2, rel=0.01)


def test_sample_volume_band_keeps_the_sign_everywhere():
    exact = evaluate_grid(torus_sdf, 64)
    vol, stats = sample_volume(torus_sdf, 64, narrow_band=True)
    assert np.array_equal(vol < 0, exact < 0)
    near = np.abs(exact) < 0.01
    np.testing.assert_allclose(vol[near], exact[near], atol=1e-6)
    assert stats["evaluated_fraction"] < 0.6


def test_extraction_in_other_bounds_and_empty_fields():
    bounds = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
    mesh = extract_mesh(lambda p: p.norm(dim=-1) - 0.5, 96, bounds=bounds).to_trimesh()
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * 0.125, rel=0.01)
    empty = extract_mesh(lambda p: torch.ones(len(p)), 64)
    assert len(empty.faces) == 0 and len(empty.vertices) == 0


def test_sphere_tracing_finds_the_analytic_intersection():
    cam = Camera(eye=(0.5, 0.5, 2.5), target=(0.5, 0.5, 0.5), fov=30.0)
    origins, dirs = cam.rays(33, 33)
    t, hit = sphere_trace(sphere_sdf, origins, dirs)
    # analytic ray-sphere intersection
    oc = origins - 0.5
    b = (oc * dirs).sum(1)
    disc = b ** 2 - ((oc ** 2).sum(1) - R ** 2)
    assert np.array_equal(hit, disc > 1e-4) or np.mean(hit != (disc > 0)) < 0.01
    t_exact = -b[hit] - np.sqrt(disc[hit])
    pts = origins[hit] + dirs[hit] * t[hit, None]
    assert np.abs(np.linalg.norm(pts - 0.5, axis=1) - R).max() < 2.5e-4  # on the surface (tracing tolerance)
    np.testing.assert_allclose(t[hit], t_exact, atol=3e-3)  # the first intersection, also at grazing angles
    assert t[16 * 33 + 16] == pytest.approx(2.0 - R, abs=5e-4)  # the centre pixel


def test_render_sdf_shades_the_shape():
    img, info = render_sdf(torus_sdf, width=64, height=48)
    assert img.shape == (48, 64, 3) and img.min() >= 0 and img.max() <= 1
    hit = info["hit"]
    assert 0.05 < hit.mean() < 0.8
    assert np.all(img[~hit] == 1.0)  # white background
    assert img[hit].mean() < 0.95  # shaded surface
    cam = default_camera()
    assert np.linalg.norm(np.asarray(cam.eye) - 0.5) > 0.87  # outside the unit cube


def _peak_numpy_mb(fn):
    import tracemalloc

    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] / 2 ** 20
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_512_cubed_extraction_fits_in_little_memory():
    """A dense 512^3 float32 volume alone is 512 MB (its sample coordinates 3 GB); the narrow band
    evaluates ~4.5% of the samples and holds the coarse grid plus one slab."""
    mesh, peak = _peak_numpy_mb(lambda: extract_mesh(sphere_sdf, 512))
    assert mesh.stats["evaluated_fraction"] < 0.06 and peak < 300, (mesh.stats, peak)
    assert mesh.to_trimesh().volume == pytest.approx(4 / 3 * math.pi * R ** 3, rel=1e-3)


def test_192_cubed_extraction_in_slabs_ci_twin():
    mesh, peak = _peak_numpy_mb(lambda: extract_mesh(sphere_sdf, 192, max_slab_samples=1 << 20))
    assert mesh.stats["evaluated_fraction"] < 0.1 and peak < 27, (mesh.stats, peak)  # < one dense 192^3 volume
    assert mesh.to_trimesh().is_watertight
