"""`fieldstudio.optim.LazyAdam` against PyTorch's Adam and a hand-written lazy step."""

import pytest
import torch

from fieldstudio.fields.radiance_grids import VoxelField
from fieldstudio.optim import LazyAdam, adam, adam_rows_torch

BETAS, EPS = (0.9, 0.99), 1e-8


def _run(opt_cls, grads, p0, **kw):
    p = torch.nn.Parameter(p0.clone())
    opt = opt_cls([p], lr=0.05, betas=BETAS, eps=EPS, **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt


def test_dense_gradients_take_adams_step():
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    grads = [torch.randn(6, 4, generator=gen, dtype=torch.float64) for _ in range(5)]
    ours, _ = _run(LazyAdam, grads, p0)
    ref, _ = _run(torch.optim.Adam, grads, p0, foreach=False)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def _sparse(dense_rows: dict[int, torch.Tensor], shape):
    """A sparse COO gradient of ``shape`` [a, b, C] holding the given flattened rows."""
    rows = torch.tensor(sorted(dense_rows))
    idx = torch.stack([rows // shape[1], rows % shape[1]])
    vals = torch.stack([dense_rows[int(r)] for r in rows])
    return torch.sparse_coo_tensor(idx, vals, shape, check_invariants=True)


@pytest.mark.parametrize("kernel", [True, False])
def test_sparse_gradients_step_only_their_rows(monkeypatch, kernel):
    if not kernel:  # the PyTorch twin of the fused row update
        monkeypatch.setattr("fieldstudio.optim._row_kernels", lambda p: None)
    gen = torch.Generator().manual_seed(1)
    shape = (3, 4, 5)
    p0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    touched = [{0: None, 5: None, 11: None}, {5: None, 7: None}, {0: None, 7: None, 11: None}]
    grads = [_sparse({r: torch.randn(5, generator=gen, dtype=torch.float64) for r in t}, shape) for t in touched]
    ours, opt = _run(LazyAdam, grads, p0)

    # by hand: a row's moments and value change only on the steps whose gradient holds it, and the
    # bias correction counts every step of the optimiser
    p, m, v = p0.reshape(12, 5).clone(), torch.zeros(12, 5, dtype=torch.float64), torch.zeros(12, 5, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        gd = g.to_dense().reshape(12, 5)
        for r in sorted({int(i) for i in (g.coalesce().indices()[0] * 4 + g.coalesce().indices()[1])}):
            m[r] = 0.9 * m[r] + 0.1 * gd[r]
            v[r] = 0.99 * v[r] + 0.01 * gd[r] ** 2
            p[r] -= 0.05 * (m[r] / (1 - 0.9 ** t)) / ((v[r] / (1 - 0.99 ** t)).sqrt() + EPS)
    torch.testing.assert_close(ours.reshape(12, 5), p, rtol=1e-12, atol=1e-12)
    untouched = [r for r in range(12) if r not in (0, 5, 7, 11)]
    assert torch.equal(ours.reshape(12, 5)[untouched], p0.reshape(12, 5)[untouched])
    assert float(opt.state[opt.param_groups[0]["params"][0]]["step"]) == 3


def test_a_sparse_gradient_over_every_row_is_adam():
    gen = torch.Generator().manual_seed(2)
    shape = (2, 3, 4)
    p0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    dense = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(4)]
    ours, _ = _run(LazyAdam, [d.to_sparse(2) for d in dense], p0)
    ref, _ = _run(torch.optim.Adam, dense, p0, foreach=False)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_duplicate_entries_are_summed_before_the_step():
    # two lookups in one step accumulate an uncoalesced gradient: one row twice
    p0 = torch.zeros(4, 2, dtype=torch.float64)
    g = torch.sparse_coo_tensor(torch.tensor([[1, 1]]), torch.tensor([[1.0, 2.0], [3.0, -6.0]], dtype=torch.float64), (4, 2))
    ours, _ = _run(LazyAdam, [g], p0)
    ref, _ = _run(torch.optim.Adam, [g.to_dense()], p0, foreach=False)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_kernel_matches_its_twin(dtype):
    from fieldstudio.kernels import dense_kernels

    k = dense_kernels()
    if k is None:
        pytest.skip("the fused CPU kernels are not built here")
    gen = torch.Generator().manual_seed(3)
    p, m = (torch.randn(40, 9, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.rand(40, 9, generator=gen, dtype=dtype)
    rows, g = torch.tensor([39, 0, 17, 5]), torch.randn(4, 9, generator=gen, dtype=dtype)
    a, b = [t.clone() for t in (p, m, v)], [t.clone() for t in (p, m, v)]
    k.adam_rows(*a, rows, g, 0.1, 0.9, 0.99, 1e-15, 0.5, 0.3)
    adam_rows_torch(*b, rows, g, 0.1, 0.9, 0.99, 1e-15, 0.5, 0.3)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)
    assert torch.equal(a[0][1:5], p[1:5])  # rows not named are left alone


def test_adam_state_loads_into_lazy_adam():
    # a checkpoint written with dense Adam resumes with LazyAdam (same state keys)
    gen = torch.Generator().manual_seed(4)
    p0 = torch.randn(5, 3, dtype=torch.float64, generator=gen)
    grads = [torch.randn(5, 3, dtype=torch.float64, generator=gen) for _ in range(4)]
    ref, _ = _run(torch.optim.Adam, grads, p0, foreach=False)
    half, opt = _run(torch.optim.Adam, grads[:2], p0, foreach=False)
    p = torch.nn.Parameter(half.clone())
    lazy = LazyAdam([p], lr=0.05, betas=BETAS, eps=EPS)
    lazy.load_state_dict(opt.state_dict())
    for g in grads[2:]:
        p.grad = g.clone()
        lazy.step()
    torch.testing.assert_close(p.detach(), ref, rtol=1e-12, atol=1e-12)


def test_adam_picks_lazy_adam_for_sparse_fields_only():
    assert isinstance(adam(VoxelField({"resolution": 4}), 0.1), LazyAdam)
    dense = adam(VoxelField({"resolution": 4, "sparse_gradients": False}), 0.1)
    assert type(dense) is torch.optim.Adam and dense.defaults["fused"]
    assert type(adam(torch.nn.Linear(2, 2), 0.1)) is torch.optim.Adam


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="LazyAdam"):
        LazyAdam([torch.nn.Parameter(torch.zeros(2))], lr=0.1, betas=(1.0, 0.99))
