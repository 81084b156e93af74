"""The fused NeuRBF kernel against `rbf_encode_torch`, the PyTorch twin it replaces."""

import shutil

import pytest
import torch

import fieldstudio.encoders.rbf_kernels as rk
import fieldstudio.kernels as kernels
from fieldstudio.encoders import build_encoding
from fieldstudio.encoders.knn_grid import knn_brute_force

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="no C++ compiler: the kernels cannot be built here (the fallback is tested)")

COMBOS = [("ivq", "full"), ("ivq", "diagonal"), ("ivq", "isotropic"), ("gauss", "full"), ("gauss", "diagonal"),
          ("gauss", "isotropic"), ("nlin", "diagonal"), ("nlin", "isotropic")]


def _problem(d, kernel, shape, n=200, n_kernels=40, k=4, channels=6, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(n_kernels, d, generator=gen, dtype=dtype)
    x = torch.rand(n, d, generator=gen, dtype=dtype)
    x[:3] = 0.0  # the domain's corners and faces
    x[3:6] = 1.0
    x[6:9, 0] = 0.0
    width = 0.4 + 0.2 * torch.rand(n_kernels, 1, generator=gen, dtype=dtype)
    if shape == "full":
        a = torch.randn(n_kernels, d, d, generator=gen, dtype=dtype) * 0.3
        s = a @ a.transpose(1, 2) / width[..., None] + torch.eye(d, dtype=dtype) * 8
        shapes = rk.pack_symmetric(s)
    elif shape == "diagonal":
        shapes = (1.0 / width) * (1 + torch.rand(n_kernels, d, generator=gen, dtype=dtype))
    else:
        shapes = 1.0 / width
    if kernel != "nlin":
        shapes = shapes * 10
    weights = torch.randn(n_kernels, channels, generator=gen, dtype=dtype)
    idx = knn_brute_force(x, centres, k)
    return x, idx, centres, shapes.contiguous(), weights


@pytest.mark.parametrize("kernel,shape", COMBOS)
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("freqs,normalize", [(True, True), (False, True), (True, False)])
def test_values_and_gradients_match_twin(kernel, shape, d, freqs, normalize):
    x, idx, c, s, w = _problem(d, kernel, shape, seed=d)
    m = torch.tensor([0.5, 1.0, 3.0, 8.0, 30.0, 100.0], dtype=torch.float64) if freqs else None
    g = torch.randn(x.shape[0], w.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mod = kernels.cpu_kernels()
    assert mod is not None

    def run(fn):
        xx, cc, ss, ww = (t.clone().requires_grad_(True) for t in (x, c, s, w))
        out = fn(xx, cc, ss, ww)
        grads = torch.autograd.grad(out, (xx, cc, ss, ww), g)
        return (out.detach(),) + grads

    fused = run(lambda xx, cc, ss, ww: rk._RBFKernel.apply(
        xx, cc, ss, ww, idx, m if m is not None else x.new_empty(0), rk._KERNEL_IDS[kernel], rk._SHAPE_IDS[shape],
        normalize, mod))
    twin = run(lambda xx, cc, ss, ww: rk.rbf_encode_torch(xx, idx, cc, ss, ww, m, kernel, shape, normalize))
    for name, a, b in zip(("out", "x", "centres", "shapes", "weights"), fused, twin):
        assert b.abs().max() > 0, name  # a vanishing reference would make the comparison empty
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * float(b.abs().max()), msg=name)


@pytest.mark.parametrize("kernel,shape", [("ivq", "full"), ("gauss", "diagonal"), ("nlin", "isotropic")])
def test_gradcheck_float64(kernel, shape):
    x, idx, c, s, w = _problem(3, kernel, shape, n=12, n_kernels=8, k=3, channels=3, seed=4)
    x = (x * 0.8 + 0.1)  # away from the tents' kinks at the domain corners
    m = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    mod = kernels.cpu_kernels()
    args = [t.clone().requires_grad_(True) for t in (x, c, s, w)]

    def f(xx, cc, ss, ww):
        # without normalisation: its detached denominator makes the gradient differ from the
        # finite differences on purpose (the twin's too); the normalised case is held to the twin above
        return rk._RBFKernel.apply(xx, cc, ss, ww, idx, m, rk._KERNEL_IDS[kernel], rk._SHAPE_IDS[shape], False, mod)

    assert torch.autograd.gradcheck(f, args, eps=1e-7, atol=1e-6)


def test_encoder_float32_uses_kernel_and_matches_twin(monkeypatch):
    enc = build_encoding({"otype": "NeuRBF", "n_kernels": 300, "n_features": 16, "kernel": "ivq", "shape": "full",
                          "trainable_kernels": True}, 2)
    with torch.no_grad():
        enc.weights.normal_()
    x = torch.rand(2000, 2)
    calls = []
    real = rk._RBFKernel.apply
    monkeypatch.setattr(rk._RBFKernel, "apply", lambda *a: calls.append(1) or real(*a))

    def run():
        enc.zero_grad()
        y = enc(x)
        y.square().sum().backward()
        return y.detach(), enc.weights.grad.clone(), enc.centres.grad.clone(), enc.shapes.grad.clone()

    fused = run()
    assert calls == [1]
    monkeypatch.setattr(rk, "cpu_kernels", lambda: None)
    twin = run()
    assert calls == [1]
    # sin(phi * 4096) turns one float32 rounding of phi into ~1e-3: compare with that in mind
    torch.testing.assert_close(fused[0], twin[0], rtol=0, atol=5e-3)
    for a, b in zip(fused[1:], twin[1:]):
        assert float((a - b).norm() / b.norm()) < 1e-2


def test_inputs_with_gradients_keep_the_twin(monkeypatch):
    """SDF losses take the gradient of the gradient to x: the kernel has no second order."""
    enc = build_encoding({"otype": "NeuRBF", "n_kernels": 64, "n_features": 4, "kernel": "nlin", "shape": "isotropic"}, 3)
    calls = []
    monkeypatch.setattr(rk._RBFKernel, "apply", lambda *a: calls.append(1))
    x = torch.rand(50, 3, requires_grad=True)
    (gx,) = torch.autograd.grad(enc(x).sum(), x, create_graph=True)
    assert calls == [] and gx.requires_grad


def test_info_reports_each_kernel_family(monkeypatch):
    from fieldstudio.apps.info import collect_info, format_info

    text = format_info(collect_info())
    assert "grid path   CPU: fused C++ kernels" in text and "NeuRBF path CPU: fused C++ kernels" in text
    monkeypatch.setenv("FIELDSTUDIO_KERNELS", "torch")
    kernels.reset_for_tests()
    try:
        text = format_info(collect_info())
        assert "grid path   CPU: PyTorch twins" in text and "NeuRBF path CPU: PyTorch twins" in text
    finally:
        kernels.reset_for_tests()
