"""NeuRBF: kernels against their formulas, exact kNN, gradients, initialisation, parameter budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fieldstudio.encoders import build_encoding
from fieldstudio.encoders.knn_grid import KernelIndex, knn_brute_force
from fieldstudio.encoders.rbf_init import init_kernels, sobel_weights
from fieldstudio.encoders.rbf_kernels import kernel_value, pack_symmetric, rbf_encode, unpack_symmetric
from fieldstudio.errors import ConfigError


def _spd(n, d, gen):
    a = torch.randn(n, d, d, generator=gen, dtype=torch.float64)
    return a @ a.transpose(1, 2) + 0.5 * torch.eye(d, dtype=torch.float64)


# --- kernels ------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [2, 3])
def test_quadratic_kernels_match_their_formulas(d):
    gen = torch.Generator().manual_seed(d)
    n = 50
    diff = torch.randn(n, d, generator=gen, dtype=torch.float64)
    full = _spd(n, d, gen)
    diag = torch.rand(n, d, generator=gen, dtype=torch.float64) + 0.1
    iso = torch.rand(n, 1, generator=gen, dtype=torch.float64) + 0.1
    for i in range(n):
        x, S = diff[i].numpy(), full[i].numpy()
        r2_full = x @ S @ x
        r2_diag = np.sum(x * x * diag[i].numpy())
        r2_iso = np.sum(x * x) * float(iso[i])
        got = {
            ("ivq", "full"): 1 / (1 + r2_full), ("gauss", "full"): np.exp(-r2_full / 2),
            ("ivq", "diagonal"): 1 / (1 + r2_diag), ("gauss", "diagonal"): np.exp(-r2_diag / 2),
            ("ivq", "isotropic"): 1 / (1 + r2_iso), ("gauss", "isotropic"): np.exp(-r2_iso / 2),
        }
        for (kernel, shape), want in got.items():
            params = {"full": pack_symmetric(full[i]), "diagonal": diag[i], "isotropic": iso[i]}[shape]
            val = kernel_value(diff[i][None], params[None], kernel, shape)[0].item()
            assert val == pytest.approx(want, rel=1e-12), (kernel, shape)


def test_nlin_kernel_is_a_product_of_tents_and_grid_interpolation_on_a_lattice():
    gen = torch.Generator().manual_seed(0)
    diff = torch.randn(200, 3, generator=gen, dtype=torch.float64) * 0.5
    s = torch.rand(200, 3, generator=gen, dtype=torch.float64) + 0.5
    want = np.prod(np.clip(1 - np.abs(diff.numpy()) * s.numpy(), 0, None), axis=1)
    assert torch.allclose(kernel_value(diff, s, "nlin", "diagonal"), torch.from_numpy(want))
    want_iso = np.prod(np.clip(1 - np.abs(diff.numpy()) * s[:, :1].numpy(), 0, None), axis=1)
    assert torch.allclose(kernel_value(diff, s[:, :1], "nlin", "isotropic"), torch.from_numpy(want_iso))
    # on a unit lattice with s = 1, the 4 surrounding nodes' tents are the bilinear weights
    x = torch.tensor([[0.3, 0.8]], dtype=torch.float64)
    nodes = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=torch.float64)
    w = kernel_value(x - nodes, torch.ones(4, 1, dtype=torch.float64), "nlin", "isotropic")
    assert torch.allclose(w, torch.tensor([0.7 * 0.2, 0.3 * 0.2, 0.7 * 0.8, 0.3 * 0.8], dtype=torch.float64))


def test_symmetric_packing_round_trips():
    m = _spd(5, 3, torch.Generator().manual_seed(1))
    assert pack_symmetric(m).shape == (5, 6)
    assert torch.equal(unpack_symmetric(pack_symmetric(m), 3), m)


def test_encode_is_the_normalised_sinusoidal_sum():
    gen = torch.Generator().manual_seed(2)
    n, k, kk, d, c = 30, 4, 20, 2, 8
    x = torch.rand(n, d, generator=gen, dtype=torch.float64)
    centres = torch.rand(kk, d, generator=gen, dtype=torch.float64)
    shapes = pack_symmetric(_spd(kk, d, gen) * 50)
    weights = torch.randn(kk, c, generator=gen, dtype=torch.float64)
    freqs = torch.exp2(torch.linspace(-3, 12, c, dtype=torch.float64))
    idx = knn_brute_force(x, centres, k)
    got = rbf_encode(x, idx, centres, shapes, weights, freqs, "ivq", "full", normalize=True)
    for i in range(n):
        phis = []
        for j in idx[i].tolist():
            v = x[i] - centres[j]
            phis.append(1 / (1 + v @ unpack_symmetric(shapes[j], d) @ v))
        total = sum(phis) + 1e-8  # the official epsilon
        want = sum(weights[j] * torch.sin(p / total * freqs) for j, p in zip(idx[i].tolist(), phis))
        assert torch.allclose(got[i], want, atol=1e-10)


# --- nearest kernels --------------------------------------------------------------------------

@pytest.mark.parametrize("d,k,clustered", [(2, 4, False), (2, 4, True), (3, 8, False), (3, 5, True)])
def test_grid_lookup_equals_brute_force(d, k, clustered):
    gen = torch.Generator().manual_seed(10 * d + k)
    n = 3000 if d == 2 else 1000
    if clustered:  # most kernels crowd into a small blob, as adaptive init makes them
        centres = torch.cat([torch.rand(n // 3, d, generator=gen),
                             0.4 + 0.15 * torch.rand(n - n // 3, d, generator=gen)]).double()
    else:
        centres = torch.rand(n, d, generator=gen, dtype=torch.float64)
    index = KernelIndex(centres, k, torch.zeros(d), torch.ones(d))
    x = torch.rand(5000, d, generator=gen, dtype=torch.float64)
    x[:50] = torch.where(torch.rand(50, d, generator=gen) < 0.5, 0.0, 1.0).double()  # domain corners/edges
    got = index.query(x, centres)
    want = knn_brute_force(x, centres, k)
    # compare distances (ties between equidistant centres may pick either index)
    dg = (centres[got] - x[:, None]).norm(dim=-1).sort(1).values
    dw = (centres[want] - x[:, None]).norm(dim=-1).sort(1).values
    assert torch.allclose(dg, dw, rtol=0, atol=1e-12)
    assert all(len(set(r)) == k for r in got.tolist())
    assert index.n_candidates < n  # not a scan over all kernels


def test_lookup_stays_exact_when_kernels_hug_a_surface():
    """Kernels packed on a sphere in 3D: cells overflow and the k-d tree answers, still exactly."""
    gen = torch.Generator().manual_seed(5)
    d = torch.randn(4000, 3, generator=gen, dtype=torch.float64)
    centres = 0.5 + 0.3 * d / d.norm(dim=1, keepdim=True)
    index = KernelIndex(centres, 8, torch.zeros(3), torch.ones(3), max_cells=1 << 12, max_candidates=16)
    assert index.overflow_fraction > 0 or index.tree_only
    x = torch.rand(3000, 3, generator=gen, dtype=torch.float64)
    got, want = index.query(x, centres), knn_brute_force(x, centres, 8)
    dg = (centres[got] - x[:, None]).norm(dim=-1).sort(1).values
    dw = (centres[want] - x[:, None]).norm(dim=-1).sort(1).values
    assert torch.allclose(dg, dw, rtol=0, atol=1e-12)


def test_lookup_is_rebuilt_when_centres_move():
    enc = build_encoding({"otype": "NeuRBF", "n_kernels": 64, "trainable_kernels": True, "frequencies": None}, 2)
    x = torch.rand(500, 2)
    first = enc.nearest_kernels(x)
    with torch.no_grad():
        enc.centres.copy_(torch.rand(64, 2))
    moved = enc.nearest_kernels(x)
    want = knn_brute_force(x, enc.centres.detach(), 4)
    assert not torch.equal(first, moved)
    assert torch.equal(moved.sort(1).values, want.sort(1).values)


# --- gradients --------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel,shape", [("ivq", "full"), ("gauss", "diagonal"), ("nlin", "isotropic")])
def test_gradcheck_through_the_encoder(kernel, shape):
    torch.manual_seed(0)
    cfg = {"otype": "NeuRBF", "kernel": kernel, "shape": shape, "n_kernels": 40, "n_features": 4,
           "frequencies": [0.5, 8.0], "normalize": False, "trainable_kernels": True, "weight_init": 0.5,
           "grid": {"otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2, "log2_hashmap_size": 8}}
    enc = build_encoding(cfg, 2).double()
    x = torch.rand(12, 2, dtype=torch.float64).mul(0.8).add(0.1).requires_grad_(True)
    idx = enc.nearest_kernels(x)
    params = (enc.centres, enc.shapes, enc.weights)
    assert all(p.requires_grad for p in params)

    def f(x, c, s, w):
        return rbf_encode(x, idx, c, s, w, torch.tensor([0.5, 1.5, 4.0, 8.0], dtype=torch.float64),
                          kernel, shape, normalize=False)

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)
    # the whole module against the weights and the bias, normalisation on (it does not involve them)
    enc.cfg["normalize"] = True
    w = enc.weights.detach().clone().requires_grad_(True)
    b = enc.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w, b: _swap(enc, w, b, x.detach()), (w, b), eps=1e-6, atol=1e-6)


def _swap(enc, w, b, x):
    """enc(x) as a function of new weight and bias tensors (for gradcheck)."""
    saved_w, saved_b = enc.weights, enc.bias
    try:
        del enc.weights, enc.bias
        enc.weights, enc.bias = w, b
        return enc(x)
    finally:
        del enc.weights, enc.bias
        enc.weights, enc.bias = saved_w, saved_b


def test_normalisation_denominator_is_detached():
    """The gradient of phi_i / sum_j phi_j treats the sum as a constant (the paper's choice)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(5, 2, generator=gen, dtype=torch.float64)
    centres = torch.rand(10, 2, generator=gen, dtype=torch.float64).requires_grad_(True)
    shapes = torch.full((10, 1), 30.0, dtype=torch.float64)
    weights = torch.randn(10, 1, generator=gen, dtype=torch.float64)
    idx = knn_brute_force(x, centres.detach(), 4)
    out = rbf_encode(x, idx, centres, shapes, weights, None, "ivq", "isotropic", normalize=True)
    out.sum().backward()
    with torch.no_grad():
        diff = x[:, None] - centres[idx]
        phi = 1 / (1 + 30 * (diff ** 2).sum(-1))
        denom = phi.sum(-1, keepdim=True)
    c2 = centres.detach().clone().requires_grad_(True)
    phi2 = 1 / (1 + 30 * ((x[:, None] - c2[idx]) ** 2).sum(-1))
    ((phi2 / denom)[..., None] * weights[idx]).sum().backward()
    assert torch.allclose(centres.grad, c2.grad)


# --- initialisation ---------------------------------------------------------------------------

def test_kmeans_puts_more_kernels_where_the_image_has_texture():
    rng = np.random.default_rng(0)
    img = np.full((96, 96, 3), 0.5, dtype=np.float32)
    img[:48, 48:] = rng.random((48, 48, 3))  # top-right quadrant textured, the rest flat
    enc = build_encoding({"otype": "NeuRBF", "n_kernels": 200}, 2)
    ys, xs = np.meshgrid((np.arange(96) + 0.5) / 96, (np.arange(96) + 0.5) / 96, indexing="ij")
    uv = np.stack([xs.ravel(), ys.ravel()], 1)
    enc.initialize(uv, sobel_weights(img).reshape(-1), min_width=1 / 96 / 200)
    c = enc.centres.detach().numpy()
    in_quadrant = (c[:, 0] > 0.5 - 1 / 96) & (c[:, 1] < 0.5 + 1 / 96)
    assert in_quadrant.mean() > 0.9
    # and the lattice it started from would have put a quarter there
    assert in_quadrant.mean() > 3 * 0.25


def test_shapes_are_inverse_cluster_covariances_over_alpha():
    rng = np.random.default_rng(1)
    covs = [np.array([[4e-4, 1e-4], [1e-4, 1e-4]]), np.array([[1e-4, -5e-5], [-5e-5, 3e-4]])]
    means = [np.array([0.25, 0.25]), np.array([0.75, 0.7])]
    pts = np.concatenate([rng.multivariate_normal(m, c, 20000) for m, c in zip(means, covs)])
    centres, shapes = init_kernels(pts, np.ones(len(pts)), 2, "ivq", "full", alpha=0.5,
                                   min_width=1e-5, max_width=0.5)
    order = np.argsort(centres[:, 0])
    for j, i in enumerate(order):
        assert np.allclose(centres[i], means[j], atol=3e-3)
        S = unpack_symmetric(torch.from_numpy(shapes[i]), 2).numpy()
        assert np.allclose(S, np.linalg.inv(covs[j] / 0.5), rtol=0.05, atol=0.05 * np.abs(S).max())


def _rss_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _init_bounded(n_points, n_kernels, seconds):
    import time

    enc = build_encoding({"otype": "NeuRBF", "n_kernels": n_kernels}, 2)
    rng = np.random.default_rng(2)
    pts = rng.random((n_points, 2))
    w = rng.random(len(pts)) ** 4
    try:  # reset the peak RSS so the bound is on this placement, not on earlier tests in the process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _rss_kb("VmRSS")
    except OSError:
        before = None
    t = time.perf_counter()
    info = enc.initialize(pts, w, iters=10)
    assert time.perf_counter() - t < seconds
    assert info["index_candidates"] < 200
    if before is not None:
        assert _rss_kb("VmHWM") - before < 2 * 1024 * 1024  # KiB: under 2 GB over the start


def test_init_time_and_memory_are_bounded_short():
    _init_bounded(100_000, 2000, 15)


@pytest.mark.slow
def test_init_time_and_memory_are_bounded_for_a_kodak_sized_image():
    _init_bounded(768 * 512, 15000, 30)


# --- configs and the parameter budget ----------------------------------------------------------

def test_parameter_budget_is_met_exactly():
    from fieldstudio.fields.image import ImageField, image_field_preset, neurbf_image_preset

    for size in [(64, 96), (512, 768)]:
        ref = sum(p.numel() for p in ImageField(image_field_preset("hashgrid", 3, size)).parameters())
        for sine in (True, False):
            fld = ImageField(neurbf_image_preset(3, size, sine=sine))
            total = sum(p.numel() for p in fld.parameters())
            per_kernel = fld.encoding.params_per_kernel
            assert per_kernel == 2 + 3 + 32
            # every parameter counted: the kernels take all but less than one kernel's worth
            assert ref - per_kernel < total <= ref
            fixed = total - fld.encoding.n_kernels * per_kernel
            assert fld.encoding.n_kernels == (ref - fixed) // per_kernel


def test_config_round_trip_and_checkpoint():
    from fieldstudio.fields.image import ImageField, neurbf_image_preset

    fld = ImageField(neurbf_image_preset(3, (32, 32)))
    enc = fld.encoding
    enc.initialize(torch.rand(2000, 2), torch.rand(2000))
    again = ImageField(fld.config)
    assert again.config == fld.config and isinstance(fld.config["encoding"]["n_kernels"], int)
    again.load_state_dict(fld.state_dict())
    x = torch.rand(100, 2)
    assert torch.equal(again(x), fld(x))


def test_bad_configs_say_what_to_fix():
    with pytest.raises(ConfigError, match="nlin"):
        build_encoding({"otype": "NeuRBF", "kernel": "nlin", "shape": "full", "n_kernels": 10}, 2)
    with pytest.raises(ConfigError, match="param_budget"):
        build_encoding({"otype": "NeuRBF"}, 2)
    with pytest.raises(ConfigError, match="fewer than"):
        build_encoding({"otype": "NeuRBF", "n_kernels": 2}, 2)
    with pytest.raises(ConfigError, match="frequencies"):
        build_encoding({"otype": "NeuRBF", "n_kernels": 10, "frequencies": [1]}, 2)


def test_first_layer_sinusoidal_composition():
    from fieldstudio.fields.networks import build_network

    net = build_network({"otype": "MLP", "n_neurons": 8, "n_hidden_layers": 2, "bias": True,
                         "first_layer_frequencies": [10.0, 100.0]}, 5, 3).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    m = torch.exp2(torch.linspace(np.log2(10), np.log2(100), 8, dtype=torch.float64))
    h = net.layers[0](x)
    h = h + torch.sin(m * h)
    h = torch.relu(net.layers[1](h))
    assert torch.allclose(net(x), net.layers[2](h))
