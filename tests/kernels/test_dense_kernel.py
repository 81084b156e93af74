"""The fused dense-grid kernels (TensoRF VM product, voxel grid) against their grid_sample twins."""

import shutil

import pytest
import torch

import fieldstudio.kernels as kernels
from fieldstudio.apps.info import collect_info, format_info
from fieldstudio.encoders import build_encoding
from fieldstudio.fields.radiance_grids import VoxelField, _VoxelLookup

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="no C++ compiler: the kernels cannot be built here (the twins are tested)")


def test_dense_kernels_build_here():
    assert kernels.dense_kernels() is not None, kernels.dense_kernel_status()[1]


def _points(n, gen, dtype=torch.float32):
    x = torch.rand(n, 3, generator=gen, dtype=dtype)
    # cube faces and corners, points just inside and outside them (zero padding beyond the box)
    x[:4] = 0.0
    x[4:8] = 1.0
    x[8:24] = torch.rand(16, 3, generator=gen, dtype=dtype) * 1.4 - 0.2
    x[24:28] = 1.0 - 1e-6
    x[28:32] = torch.tensor([-1.0, 2.0, 0.5], dtype=dtype)  # wholly outside: zero features
    return x


def _vm(dtype=torch.float32, c=5, r=7):
    torch.manual_seed(0)
    return build_encoding({"otype": "TensorfVM", "n_components": c, "resolution": r, "init_std": 1.0}, 3).to(dtype)


def _grads(fn, params, out_grad):
    for p in params:
        p.grad = None
    (fn() * out_grad).sum().backward()
    return [p.grad.clone() for p in params]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_vm_kernel_matches_twin(dtype, tol):
    gen = torch.Generator().manual_seed(1)
    enc = _vm(dtype)
    x = _points(300, gen, dtype)
    assert kernels.dense_kernel_applies(x, enc.planes)
    out = enc(x)
    ref = enc.forward_torch(x)
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    assert torch.all(out[28:32] == 0)
    g = torch.randn(out.shape, generator=gen, dtype=dtype)
    params = [enc.planes, enc.lines]
    for a, b in zip(_grads(lambda: enc(x), params, g), _grads(lambda: enc.forward_torch(x), params, g)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_vm_kernel_gradcheck_and_one_sided_grads():
    gen = torch.Generator().manual_seed(2)
    enc = _vm(torch.float64, c=2, r=4)
    x = _points(32, gen, torch.float64)

    def of_params(planes, lines, pts=x):
        return torch.func.functional_call(enc, {"planes": planes, "lines": lines}, (pts,))

    planes = enc.planes.detach().clone().requires_grad_()
    lines = enc.lines.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(of_params, (planes, lines))
    # the planes frozen: the kernel skips their scatter and the lines' gradient is unchanged
    frozen = enc.planes.detach().clone()
    (gl,) = torch.autograd.grad(of_params(frozen, lines).sum(), lines)
    # points that need a gradient take the twin
    (gl_twin,) = torch.autograd.grad(of_params(frozen, lines, x.clone().requires_grad_()).sum(), lines)
    torch.testing.assert_close(gl, gl_twin)


def test_vm_input_gradients_use_the_twin():
    enc = _vm(torch.float64, c=2, r=4)
    x = (torch.rand(5, 3, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    assert not kernels.dense_kernel_applies(x, enc.planes)
    assert torch.autograd.gradcheck(enc, (x,))


def _voxels(dtype=torch.float32, r=6, sparse=False):
    # dense gradients: these tests are about the fused lookup and its dense backward
    torch.manual_seed(3)
    return VoxelField({"resolution": r, "sh_degree": 2, "init_std": 1.0, "sparse_gradients": sparse}).to(dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_voxel_kernel_matches_twin(dtype, tol):
    gen = torch.Generator().manual_seed(4)
    fld = _voxels(dtype)
    x = _points(300, gen, dtype)
    out = fld._sample(x)
    ref = fld.sample_torch(x)
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    assert torch.all(out[28:32] == 0)
    g = torch.randn(out.shape, generator=gen, dtype=dtype)
    (a,) = _grads(lambda: fld._sample(x), [fld.grid], g)
    (b,) = _grads(lambda: fld.sample_torch(x), [fld.grid], g)
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_voxel_kernel_gradcheck():
    gen = torch.Generator().manual_seed(5)
    fld = _voxels(torch.float64, r=3)
    x = _points(32, gen, torch.float64)
    grid = fld.grid.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda g: _VoxelLookup.apply(x, g), (grid,))
    torch.testing.assert_close(_VoxelLookup.apply(x, grid), fld.sample_torch(x))


def test_results_do_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(6)
    enc = _vm(c=9, r=16)
    fld = _voxels(r=12)
    x = torch.rand(5000, 3, generator=gen)
    g_vm = torch.randn(5000, enc.n_output_dims, generator=gen)
    g_vox = torch.randn(5000, fld.grid.shape[-1], generator=gen)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(_grads(lambda: enc(x), [enc.planes, enc.lines], g_vm)
                           + _grads(lambda: fld._sample(x), [fld.grid], g_vox))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_voxel_checkpoint_with_the_old_layout_loads():
    fld = _voxels(r=5)
    x = torch.rand(40, 3)
    expected = fld.channels(x)["log_density"]
    old = {"grid": fld.grid.detach().permute(3, 0, 1, 2)[None].clone()}  # [1, C, z, y, x]
    fresh = VoxelField({"resolution": 5, "sh_degree": 2})
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.channels(x)["log_density"], expected)


def test_info_reports_the_dense_path():
    assert "dense path  CPU: fused C++ kernels" in format_info(collect_info())


def test_disabled_kernels_leave_the_twins(monkeypatch):
    monkeypatch.setenv("FIELDSTUDIO_KERNELS", "torch")
    kernels.reset_for_tests()
    try:
        enc = _vm()
        x = torch.rand(10, 3)
        assert not kernels.dense_kernel_applies(x, enc.planes)
        torch.testing.assert_close(enc(x), enc.forward_torch(x))
        assert "dense path  CPU: PyTorch twins" in format_info(collect_info())
    finally:
        kernels.reset_for_tests()
