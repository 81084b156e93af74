"""The fused C++ marching and compositing kernels against the PyTorch code they replace."""

import shutil
import warnings

import pytest
import torch

import fieldstudio.kernels as kernels
import fieldstudio.renderers.volume as vol
from fieldstudio.renderers.occupancy import OccupancyGrid

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="no C++ compiler: the kernels cannot be built here (the fallback is tested)")
pytestmark = needs_compiler

BOX = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]


def twin(monkeypatch):
    """Make the renderer take its PyTorch path for the rest of the test."""
    monkeypatch.setattr(vol, "render_kernels", lambda: None)


def _rays(n, gen):
    """Rays from a shell around the box towards random targets: most hit it, some miss, some start inside."""
    o = (torch.rand(n, 3, generator=gen) * 2 - 1) * 3.0
    o[: n // 8] = (torch.rand(n // 8, 3, generator=gen) * 2 - 1) * 0.9  # inside the box
    target = (torch.rand(n, 3, generator=gen) * 2 - 1) * 1.5
    d = target - o
    d[n // 3: n // 3 + 4] = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [1.0, 1.0, 0.0]])
    return o, d / d.norm(dim=-1, keepdim=True)


def _grid(res, fraction, gen):
    grid = OccupancyGrid(BOX, res)
    if fraction < 1:
        grid.binaries.copy_(torch.rand(grid.binaries.shape, generator=gen) < fraction)
    return grid


def _march(o, d, **kw):
    return vol.march(o, d, render_step_size=kw.pop("step", 0.013), **kw)


def test_kernels_build_here():
    assert kernels.render_kernels() is not None, kernels.render_kernel_status()[1]


@pytest.mark.parametrize("res,fraction", [(16, 1.0), (32, 0.3), (64, 0.05), ((24, 40, 8), 0.5)])
def test_march_matches_twin_exactly(monkeypatch, res, fraction):
    gen = torch.Generator().manual_seed(3)  # this seed put a midpoint on a cell face (x = 15 - 1 ulp) at 32^3
    o, d = _rays(3000, gen)
    grid = _grid(res, fraction, gen)
    t_min = torch.rand(3000, generator=gen) * 0.5
    t_max = 2.0 + torch.rand(3000, generator=gen) * 4
    t_max[:50] = t_min[:50] - 0.1  # empty intervals
    fused = _march(o, d, grid=grid, t_min=t_min, t_max=t_max)
    twin(monkeypatch)
    ref = _march(o, d, grid=grid, t_min=t_min, t_max=t_max)
    assert ref[0].numel() > 1000 or fraction < 0.1
    for a, b in zip(fused, ref):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert not bool(torch.isin(torch.arange(50), fused[0]).any())  # empty intervals give no samples


def test_march_without_grid_and_with_near_far_matches_twin(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    o, d = _rays(2000, gen)
    kw = dict(aabb=BOX, near_plane=0.2, far_plane=4.0, step=0.02)
    fused = _march(o, d, **kw)
    twin(monkeypatch)
    ref = _march(o, d, **kw)
    assert ref[0].numel() > 10000
    for a, b in zip(fused, ref):
        assert torch.equal(a, b)


def test_march_stratified_same_seed_matches_twin(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    o, d = _rays(1500, gen)
    grid = _grid(32, 0.4, gen)
    torch.manual_seed(11)
    fused = _march(o, d, grid=grid, stratified=True)
    twin(monkeypatch)
    torch.manual_seed(11)
    ref = _march(o, d, grid=grid, stratified=True)
    for a, b in zip(fused, ref):
        assert torch.equal(a, b)


def test_march_edge_cases(monkeypatch):
    grid = _grid(16, 1.0, torch.Generator().manual_seed(0))
    # no rays; rays that all miss the box; rays along the box's faces and edges
    for o, d in [(torch.zeros(0, 3), torch.zeros(0, 3)),
                 (torch.tensor([[5.0, 5.0, 5.0]]).repeat(4, 1), torch.tensor([[1.0, 0.0, 0.0]]).repeat(4, 1)),
                 (torch.tensor([[-3.0, -1.0, -1.0], [-3.0, 1.0, 0.0], [-3.0, 0.0, 0.999999]]),
                  torch.tensor([[1.0, 0.0, 0.0]]).repeat(3, 1))]:
        fused = _march(o, d, grid=grid)
        with monkeypatch.context() as m:
            m.setattr(vol, "render_kernels", lambda: None)
            ref = _march(o, d, grid=grid)
        for a, b in zip(fused, ref):
            assert torch.equal(a, b)
    assert _march(torch.tensor([[5.0, 5.0, 5.0]]), torch.tensor([[1.0, 0.0, 0.0]]), grid=grid)[0].numel() == 0


def test_march_with_early_termination_matches_twin(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    o, d = _rays(1000, gen)
    grid = _grid(32, 0.5, gen)

    def sigma_fn(ts, te, ri):
        x = o[ri] + d[ri] * ((ts + te) / 2)[:, None]
        return 40.0 * torch.exp(-4 * (x ** 2).sum(-1))

    fused = _march(o, d, grid=grid, sigma_fn=sigma_fn, early_stop_eps=1e-3, alpha_thre=1e-4)
    twin(monkeypatch)
    ref = _march(o, d, grid=grid, sigma_fn=sigma_fn, early_stop_eps=1e-3, alpha_thre=1e-4)
    assert ref[0].numel() > 1000
    # transmittance is summed in double by both, in a different order: allow a stray sample at the threshold
    assert abs(fused[0].numel() - ref[0].numel()) <= 2
    if fused[0].numel() == ref[0].numel():
        for a, b in zip(fused, ref):
            assert torch.equal(a, b)


def _packed(n_rays, gen, dtype=torch.float32, empty_every=5):
    """Packed samples: ray r has a random count (every `empty_every`-th ray none), contiguous, in t order."""
    counts = torch.randint(1, 40, (n_rays,), generator=gen)
    counts[::empty_every] = 0
    ri = torch.repeat_interleave(torch.arange(n_rays), counts)
    n = ri.numel()
    dt = torch.rand(n, generator=gen, dtype=dtype) * 0.05 + 0.001
    ts = torch.rand(n, generator=gen, dtype=dtype)
    te = ts + dt
    sig = torch.rand(n, generator=gen, dtype=dtype) * 30
    sig[::97] = 0.0
    sig[5] = 1e7  # optical thickness past the clamp
    rgb = torch.rand(n, 3, generator=gen, dtype=dtype)
    return ts, te, ri, sig, rgb


def _render(ts, te, ri, sig, rgb, n_rays, bkgd):
    sig = sig.clone().requires_grad_(True)
    rgb = rgb.clone().requires_grad_(True)
    colors, opacity, depth, extras = vol.rendering(ts, te, ri, n_rays, lambda *a: (rgb, sig), render_bkgd=bkgd)
    w = torch.linspace(0.5, 1.5, extras["weights"].numel(), dtype=sig.dtype)
    loss = ((colors - 0.3) ** 2).sum() + (opacity * 0.7).sum() + (depth ** 2).sum() * 0.1 \
        + (extras["weights"] * w).sum() + (extras["trans"] * w.flip(0)).sum() + extras["alphas"].sum() * 0.2
    gs, gr = torch.autograd.grad(loss, [sig, rgb])
    return [colors, opacity, depth, extras["weights"], extras["trans"], extras["alphas"], gs, gr]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-11)])
def test_rendering_values_and_gradients_match_twin(monkeypatch, dtype, tol):
    gen = torch.Generator().manual_seed(7)
    n_rays = 300
    ts, te, ri, sig, rgb = _packed(n_rays, gen, dtype)
    bkgd = torch.rand(n_rays, 3, generator=gen, dtype=dtype)
    fused = _render(ts, te, ri, sig, rgb, n_rays, bkgd)
    twin(monkeypatch)
    ref = _render(ts, te, ri, sig, rgb, n_rays, bkgd)
    names = ["colors", "opacity", "depth", "weights", "trans", "alphas", "grad sigmas", "grad rgbs"]
    for name, a, b in zip(names, fused, ref):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert torch.allclose(a, b, rtol=tol, atol=tol), (name, (a - b).abs().max())
    assert fused[-2][5] == 0  # no gradient through the clamped optical thickness


def test_rendering_unsorted_rays_and_empty_input_match_twin(monkeypatch):
    gen = torch.Generator().manual_seed(8)
    ts, te, ri, sig, rgb = _packed(50, gen, torch.float64)
    ri = 49 - ri  # runs still contiguous, now in decreasing ray order
    empty = [torch.zeros(0)] * 2 + [torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, 3)]
    cases = [((ts, te, ri, sig, rgb), 50), (tuple(empty), 4)]
    fused = [_render(*c, n, None)[:3] for c, n in cases[:1]] + [vol.rendering(*empty[:3], 4, lambda *a: (empty[4], empty[3]))[:3]]
    twin(monkeypatch)
    ref = [_render(*c, n, None)[:3] for c, n in cases[:1]] + [vol.rendering(*empty[:3], 4, lambda *a: (empty[4], empty[3]))[:3]]
    for fa, rb in zip(fused, ref):
        for a, b in zip(fa, rb):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-11)


def test_fused_composite_gradcheck():
    kern = kernels.render_kernels()
    gen = torch.Generator().manual_seed(9)
    ts, te, ri, sig, rgb = _packed(6, gen, torch.float64, empty_every=4)
    sig = (sig * 0.2).requires_grad_(True)  # stay clear of the clamp
    rgb = rgb.requires_grad_(True)

    def f(s, c):
        out = vol._FusedComposite.apply(s, c, ts, te, ri, 6, kern)
        return tuple(out)

    assert torch.autograd.gradcheck(f, (sig, rgb), eps=1e-6, atol=1e-7)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("FIELDSTUDIO_KERNELS", "torch")
    kernels.reset_for_tests()
    try:
        assert kernels.render_kernels() is None
        active, why = kernels.render_kernel_status()
        assert not active and "FIELDSTUDIO_KERNELS" in why
        gen = torch.Generator().manual_seed(1)
        o, d = _rays(100, gen)
        ri, ts, te = _march(o, d, aabb=BOX)
        assert ri.numel() > 0
    finally:
        kernels.reset_for_tests()


def test_failed_build_falls_back_with_one_warning(monkeypatch):
    from torch.utils import cpp_extension

    def broken(*a, **k):
        raise RuntimeError("Error building extension 'fieldstudio_cpu_render'")

    monkeypatch.setenv("FIELDSTUDIO_KERNELS", "auto")
    monkeypatch.setattr(cpp_extension, "load", broken)
    kernels.reset_for_tests()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert kernels.render_kernels() is None
            assert kernels.render_kernels() is None
            gen = torch.Generator().manual_seed(2)
            o, d = _rays(50, gen)
            assert _march(o, d, aabb=BOX)[0].numel() > 0
        msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(msgs) == 1 and "render" in msgs[0] and "build failed" in msgs[0]
    finally:
        kernels.reset_for_tests()
