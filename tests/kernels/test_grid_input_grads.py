"""The grid kernel's input gradients and second-order pass against the PyTorch path (its twin).

SDF fields differentiate the encoding with respect to x (normals) and train on a loss of that
gradient (eikonal), which needs the gradient of dL/dx with respect to the table, the upstream
gradient and x again. Every one of those comes from the C++ kernels; the twin is the autograd
graph of the PyTorch lookup.
"""

import shutil

import pytest
import torch

import fieldstudio.encoders.grid as grid_mod
import fieldstudio.kernels as kernels
from fieldstudio.encoders import build_encoding

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="no C++ compiler: the kernels cannot be built here (the fallback is tested)")


def _grid(d, gtype, interp, feats=2, dtype=torch.float32, seed=0, log2_size=9, n_levels=None):
    n_levels = n_levels or (5 if gtype != "Dense" else 4)
    enc = build_encoding({"otype": "Grid", "type": gtype, "n_levels": n_levels,
                          "n_features_per_level": feats, "log2_hashmap_size": log2_size, "base_resolution": 3,
                          "per_level_scale": 2.1 if gtype != "Dense" else 1.5, "interpolation": interp}, d).to(dtype)
    with torch.no_grad():
        enc.params.uniform_(-1, 1, generator=torch.Generator().manual_seed(seed))
    return enc


def _points(n, d, gen, dtype=torch.float32):
    x = torch.rand(n, d, generator=gen, dtype=dtype)
    x[:4] = 0.0  # a corner of the cube
    x[4:8] = 1.0  # the opposite corner
    x[8:16, 0] = 0.0  # faces
    x[16:24, -1] = 1.0
    x[24:32] = torch.rand(8, d, generator=gen, dtype=dtype) * 1.2 - 0.1  # outside: wraps like the twin
    return x


def _both(fn, use_torch_path, monkeypatch):
    """``fn()`` on the kernel path, then on the PyTorch path."""
    assert kernels.cpu_kernels() is not None
    a = fn()
    with monkeypatch.context() as m:
        m.setattr(grid_mod, "cpu_kernels", lambda: None)
        b = fn()
    return a, b


@pytest.mark.parametrize("d", [1, 2, 3, 4])
@pytest.mark.parametrize("gtype", ["Hash", "Dense"])
@pytest.mark.parametrize("interp", ["Linear", "Smoothstep"])
def test_first_and_second_order_match_twin(d, gtype, interp, monkeypatch):
    enc = _grid(d, gtype, interp, seed=d)
    if gtype == "Hash" and d > 1:
        assert any(lv.hashed for lv in enc.levels) and not all(lv.hashed for lv in enc.levels)
    gen = torch.Generator().manual_seed(10 + d)
    x0 = _points(300, d, gen)
    c = torch.randn(300, enc.n_output_dims, generator=gen)
    r = torch.randn(300, d, generator=gen)

    def run():
        x = x0.clone().requires_grad_(True)
        y = enc(x)
        # the upstream gradient depends on y (table and x), as an MLP on top would make it
        loss = (c * y + 0.5 * y * y).sum()
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        loss2 = (gx * gx).sum() + (gx * r).sum()
        gp2, gx2 = torch.autograd.grad(loss2, (enc.params, x))
        return y.detach(), gx.detach(), gp2, gx2

    (yk, gxk, gpk, gx2k), (yt, gxt, gpt, gx2t) = _both(run, True, monkeypatch)
    torch.testing.assert_close(yk, yt, rtol=1e-5, atol=1e-5)
    scale = gxt.abs().max()
    torch.testing.assert_close(gxk / scale, gxt / scale, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpk / gpt.abs().max(), gpt / gpt.abs().max(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx2k / gx2t.abs().max(), gx2t / gx2t.abs().max(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("interp", ["Linear", "Nearest"])
def test_table_and_input_gradients_together(interp, monkeypatch):
    """One backward filling both the table's and the inputs' gradients, as SDF training does."""
    enc = _grid(3, "Hash", interp)
    gen = torch.Generator().manual_seed(3)
    x0 = _points(500, 3, gen)
    g = torch.randn(500, enc.n_output_dims, generator=gen)

    def run():
        x = x0.clone().requires_grad_(True)
        enc.params.grad = None
        enc(x).backward(g)
        return enc.params.grad.clone(), (x.grad if x.grad is not None else torch.zeros_like(x))

    (gpk, gxk), (gpt, gxt) = _both(run, True, monkeypatch)
    torch.testing.assert_close(gpk, gpt, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gxk, gxt, rtol=1e-4, atol=1e-3)
    if interp == "Nearest":
        assert not gxk.any()  # piecewise constant in x


@pytest.mark.parametrize("d,gtype,interp", [(2, "Hash", "Linear"), (3, "Hash", "Smoothstep"), (2, "Dense", "Linear"),
                                            (2, "Tiled", "Smoothstep")])
def test_gradgradcheck_float64(d, gtype, interp):
    # small tables: gradgradcheck perturbs every entry one at a time
    enc = _grid(d, gtype, interp, dtype=torch.float64, seed=5, log2_size=5, n_levels=3)
    if gtype == "Hash":
        assert any(lv.hashed for lv in enc.levels) and not all(lv.hashed for lv in enc.levels)
    gen = torch.Generator().manual_seed(7)
    # interior points away from cell boundaries: finite differences must not cross a cell face
    x = (torch.rand(8, d, generator=gen, dtype=torch.float64) * 0.9 + 0.05).requires_grad_(True)
    params = enc.params.detach()[: enc.params.numel()].clone().requires_grad_(True)

    def f(p, xx):
        return grid_mod.grid_encode(xx, p, enc.levels, enc.n_features_per_level, interp)

    assert kernels.cpu_kernels() is not None
    assert torch.autograd.gradcheck(f, (params, x), eps=1e-7, atol=1e-5)
    assert torch.autograd.gradgradcheck(f, (params, x), eps=1e-7, atol=1e-5)


def test_kernel_used_for_inputs_with_gradients(monkeypatch):
    calls = []
    real = grid_mod._GridKernel.apply
    monkeypatch.setattr(grid_mod._GridKernel, "apply", lambda *a: calls.append(1) or real(*a))
    enc = build_encoding({"otype": "HashGrid", "n_levels": 2, "log2_hashmap_size": 8}, 3)
    x = torch.rand(10, 3, requires_grad=True)
    (gx,) = torch.autograd.grad(enc(x).sum(), x)
    assert calls == [1] and gx.shape == x.shape and gx.abs().sum() > 0
