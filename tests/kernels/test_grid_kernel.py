"""The fused C++ grid kernel against the PyTorch path it replaces (its twin and fallback)."""

import shutil
import warnings

import pytest
import torch

import fieldstudio.encoders.grid as grid_mod
import fieldstudio.kernels as kernels
from fieldstudio.encoders import build_encoding

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="no C++ compiler: the kernels cannot be built here (the fallback is tested)")


@pytest.fixture
def torch_path(monkeypatch):
    """A context in which the grid takes its PyTorch path."""
    def use():
        monkeypatch.setattr(grid_mod, "cpu_kernels", lambda: None)
    return use


@needs_compiler
def test_kernels_build_here():
    assert kernels.cpu_kernels() is not None, kernels.kernel_status()[1]


def _points(n, d, gen):
    x = torch.rand(n, d, generator=gen)
    # the faces and corners of the unit cube, and points just outside it (corners wrap like the twin)
    x[:8] = 0.0
    x[8:16] = 1.0
    x[16:24] = torch.rand(8, d, generator=gen) * 1.2 - 0.1
    x[24:32] = 1.0 - 1e-7
    return x


@needs_compiler
@pytest.mark.parametrize("d", [1, 2, 3, 4])
@pytest.mark.parametrize("gtype", ["Hash", "Dense", "Tiled"])
@pytest.mark.parametrize("interp", ["Linear", "Smoothstep", "Nearest"])
@pytest.mark.parametrize("feats", [1, 2, 4])
def test_kernel_matches_torch_path(d, gtype, interp, feats, torch_path):
    gen = torch.Generator().manual_seed(d * 100 + feats)
    # levels both dense (coarse) and hashed (fine) in the same grid; dense grids stay small
    enc = build_encoding({"otype": "Grid", "type": gtype, "n_levels": 6 if gtype != "Dense" else 9 - d, "n_features_per_level": feats,
                          "log2_hashmap_size": 10, "base_resolution": 3, "per_level_scale": 2.2 if gtype != "Dense" else 1.5,
                          "interpolation": interp}, d)
    if gtype == "Hash" and d > 1:
        assert any(lv.hashed for lv in enc.levels) and not all(lv.hashed for lv in enc.levels)
    with torch.no_grad():
        enc.params.uniform_(-1, 1, generator=gen)
    x = _points(700, d, gen)
    g = torch.randn(700, enc.n_output_dims, generator=gen)
    y_k = enc(x)
    (gt_k,) = torch.autograd.grad(y_k, enc.params, g)
    torch_path()
    y_t = enc(x)
    (gt_t,) = torch.autograd.grad(y_t, enc.params, g)
    torch.testing.assert_close(y_k, y_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gt_k, gt_t, rtol=1e-5, atol=1e-5)


@needs_compiler
def test_kernel_float64_gradcheck():
    enc = build_encoding({"otype": "HashGrid", "n_levels": 3, "log2_hashmap_size": 6, "base_resolution": 3,
                          "per_level_scale": 2.0}, 3).double()
    x = torch.rand(20, 3, dtype=torch.float64)
    assert kernels.cpu_kernels() is not None
    params = enc.params.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: grid_mod.grid_encode(x, p, enc.levels, 2, "Linear"), (params,))


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("FIELDSTUDIO_KERNELS", "torch")
    kernels.reset_for_tests()
    try:
        assert kernels.cpu_kernels() is None
        active, why = kernels.kernel_status()
        assert not active and "FIELDSTUDIO_KERNELS" in why
        enc = build_encoding({"otype": "HashGrid", "n_levels": 2, "log2_hashmap_size": 8}, 2)
        assert enc(torch.rand(5, 2)).shape == (5, 4)
    finally:
        kernels.reset_for_tests()


def test_failed_build_falls_back_with_one_warning(monkeypatch):
    from torch.utils import cpp_extension

    def broken(*a, **k):
        raise RuntimeError("Error building extension 'fieldstudio_cpu_kernels'")

    monkeypatch.setenv("FIELDSTUDIO_KERNELS", "auto")
    monkeypatch.setattr(cpp_extension, "load", broken)
    monkeypatch.setattr(kernels.shutil, "which", lambda name: "/usr/bin/g++")
    kernels.reset_for_tests()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert kernels.cpu_kernels() is None
            assert kernels.cpu_kernels() is None  # decided once: no second build, no second warning
        msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(msgs) == 1 and "PyTorch paths" in msgs[0] and "build failed" in msgs[0]
        enc = build_encoding({"otype": "HashGrid", "n_levels": 2, "log2_hashmap_size": 8}, 3)
        assert torch.isfinite(enc(torch.rand(5, 3))).all()
    finally:
        kernels.reset_for_tests()


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_level_major_passes_split_points_when_threads_outnumber_levels(threads, torch_path):
    # 2 levels and up to 5 workers: the forward splits each level's points into slices, the
    # backward keeps one worker per level (and per-worker partial input gradients)
    gen = torch.Generator().manual_seed(threads)
    enc = build_encoding({"otype": "HashGrid", "n_levels": 2, "log2_hashmap_size": 12, "base_resolution": 5,
                          "per_level_scale": 7.0}, 3)
    with torch.no_grad():
        enc.params.uniform_(-1, 1, generator=gen)
    x0 = _points(9001, 3, gen)  # not a multiple of the slice or prefetch sizes
    g = torch.randn(9001, enc.n_output_dims, generator=gen)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = x0.clone().requires_grad_(True)
        y_k = enc(x)
        gt_k, gx_k = torch.autograd.grad(y_k, (enc.params, x), g)
    finally:
        torch.set_num_threads(old)
    torch_path()
    x = x0.clone().requires_grad_(True)
    y_t = enc(x)
    gt_t, gx_t = torch.autograd.grad(y_t, (enc.params, x), g)
    torch.testing.assert_close(y_k, y_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gt_k, gt_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_k, gx_t, rtol=1e-4, atol=1e-4)


@needs_compiler
def test_recycled_huge_page_buffers_start_clean(torch_path):
    # tables of 2 MB and more live on recycled huge-page buffers, handed out uninitialised: a second
    # backward must not see the first one's gradient, and the table keeps its values and identity
    gen = torch.Generator().manual_seed(7)
    enc = build_encoding({"otype": "HashGrid", "n_levels": 4, "log2_hashmap_size": 18, "base_resolution": 16,
                          "per_level_scale": 2.0}, 3)
    assert enc.params.numel() * 4 >= 2 << 20
    with torch.no_grad():
        enc.params.uniform_(-1, 1, generator=gen)
    param, before = enc.params, enc.params.detach().clone()
    x = torch.rand(5000, 3, generator=gen)
    grads = []
    for _ in range(3):
        g = torch.randn(5000, enc.n_output_dims, generator=gen)
        (gt,) = torch.autograd.grad(enc(x), enc.params, g)
        grads.append((g, gt.clone()))
        del gt
    assert enc.params is param and torch.equal(enc.params.detach(), before)
    assert enc._table_on_huge_pages
    torch_path()
    for g, gt_k in grads:
        (gt_t,) = torch.autograd.grad(enc(x), enc.params, g)
        torch.testing.assert_close(gt_k, gt_t, rtol=1e-5, atol=1e-5)
