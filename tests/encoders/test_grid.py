"""The grid encoders against a brute-force, one-point-at-a-time reimplementation of tcnn's rules.

The brute force below uses Python integers and numpy float32 scalars only; it shares no code
with the encoder, so a wrong hash, stride, offset or weight shows up as a mismatch.
"""

import json
import math

import numpy as np
import pytest
import torch

from fieldstudio.encoders import build_encoding
from fieldstudio.encoders.grid import _corner_weights, _level_corners, grid_encode
from fieldstudio.encoders.grid_reference import grid_encode_reference
from fieldstudio.errors import ConfigError

PRIMES = [1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737]


def brute_layout(d, n_levels, base, b, log2_t, gtype):
    """(scale, resolution, size, offset) per level, written straight from tcnn's grid.h."""
    out, offset = [], 0
    for lvl in range(n_levels):
        scale = float(np.float32(np.exp2(np.float32(lvl) * np.float32(math.log2(b)))) * np.float32(base) - np.float32(1))
        res = int(math.ceil(scale)) + 1
        size = -(-(res ** d) // 8) * 8
        if gtype == "Hash":
            size = min(size, 2 ** log2_t)
        elif gtype == "Tiled":
            size = min(size, base ** d)
        out.append((scale, res, size, offset))
        offset += size
    return out


def brute_index(corner, res, size, gtype):
    stride, index = 1, 0
    for k in range(len(corner)):
        if stride > size:
            break
        index += corner[k] * stride
        stride *= res
    if gtype == "Hash" and size < stride:
        index = 0
        for k, c in enumerate(corner):
            index ^= (c * PRIMES[k]) & 0xFFFFFFFF
    return index % size


def brute_point(x, table, layout, interp, gtype):
    """Encoding of one point: list over levels of (corner indices, weights, value)."""
    d = len(x)
    levels = []
    for scale, res, size, offset in layout:
        pos = [np.float32(x[k]) * np.float32(scale) + np.float32(0.5) for k in range(d)]
        base = [math.floor(p) for p in pos]
        frac = [float(p) - b for p, b in zip(pos, base)]
        if interp == "Smoothstep":
            frac = [f * f * (3 - 2 * f) for f in frac]
        if interp == "Nearest":
            idx = brute_index(base, res, size, gtype)
            levels.append(([offset + idx], [1.0], table[offset + idx]))
            continue
        idxs, ws, val = [], [], 0.0
        for c in range(2 ** d):
            corner = [base[k] + ((c >> k) & 1) for k in range(d)]
            w = 1.0
            for k in range(d):
                w *= frac[k] if (c >> k) & 1 else 1 - frac[k]
            i = offset + brute_index(corner, res, size, gtype)
            idxs.append(i)
            ws.append(w)
            val = val + w * table[i]
        levels.append((idxs, ws, val))
    return levels


CASES = [
    # (dims, otype, extra config) - small tables so that both dense and hashed levels occur
    (2, "HashGrid", {"log2_hashmap_size": 10, "base_resolution": 4, "per_level_scale": 1.7}),
    (3, "HashGrid", {"log2_hashmap_size": 11, "base_resolution": 4, "per_level_scale": 1.9}),
    (4, "HashGrid", {"log2_hashmap_size": 12, "base_resolution": 3, "per_level_scale": 1.6}),
    (2, "DenseGrid", {"base_resolution": 4, "per_level_scale": 1.5}),
    (3, "DenseGrid", {"base_resolution": 3, "per_level_scale": 1.4}),
    (3, "TiledGrid", {"base_resolution": 4, "per_level_scale": 1.8}),
    (2, "Grid", {"type": "Tiled", "base_resolution": 5, "per_level_scale": 1.5}),
]


@pytest.mark.parametrize("interp", ["Linear", "Nearest", "Smoothstep"])
@pytest.mark.parametrize("d,otype,extra", CASES)
def test_matches_brute_force(d, otype, extra, interp):
    torch.manual_seed(d)
    cfg = {"otype": otype, "n_levels": 6, "n_features_per_level": 2, "interpolation": interp, **extra}
    enc = build_encoding(cfg, d, backend="torch")
    gtype = enc.cfg["type"]
    layout = brute_layout(d, 6, cfg["base_resolution"], cfg["per_level_scale"], cfg.get("log2_hashmap_size", 19), gtype)
    assert [(lv.resolution, lv.size, lv.offset) for lv in enc.levels] == [(r, s, o) for _, r, s, o in layout]
    if otype == "HashGrid":
        assert any(lv.hashed for lv in enc.levels) and not all(lv.hashed for lv in enc.levels)
    with torch.no_grad():
        enc.params.uniform_(-1, 1)
    # include the cube's corners and faces: the +0.5 offset makes them index R_l, which wraps
    x = torch.cat([torch.rand(40, d), torch.tensor([[0.0] * d, [1.0] * d]), torch.rand(6, d).round()])
    out = enc(x)
    table = enc.table.detach().double().numpy()
    for n in range(x.shape[0]):
        ref = brute_point(x[n].tolist(), table, layout, interp, gtype)
        for lvl, (idxs, ws, val) in enumerate(ref):
            idx, frac = _level_corners(x[n:n + 1], enc.levels[lvl], interp)
            assert sorted(idx[0].tolist()) == sorted(idxs), (n, lvl)
            if frac is not None:
                w = _corner_weights(frac)[0].double()
                got = dict(zip(idx[0].tolist(), [0.0] * len(idxs)))
                exp = dict(got)
                for i, wi in zip(idx[0].tolist(), w.tolist()):
                    got[i] += wi
                for i, wi in zip(idxs, ws):
                    exp[i] += wi
                for i in got:
                    assert got[i] == pytest.approx(exp[i], abs=1e-6)
            np.testing.assert_allclose(out[n, 2 * lvl:2 * lvl + 2].detach().numpy(), val, atol=2e-6)


@pytest.mark.parametrize("d", [2, 3])
def test_plain_twin_agrees_values_and_gradients(d):
    torch.manual_seed(0)
    enc = build_encoding({"otype": "HashGrid", "n_levels": 8, "log2_hashmap_size": 12, "base_resolution": 8,
                          "per_level_scale": 1.6}, d)
    with torch.no_grad():
        enc.params.normal_()
    x = torch.rand(500, d)
    y = enc(x)
    tables = [enc.level_table(i) for i in range(enc.n_levels)]
    y_ref = grid_encode_reference(x, tables, enc.levels)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    (grad_fast,) = torch.autograd.grad(y, enc.params, g)
    (grad_ref,) = torch.autograd.grad(grid_encode_reference(x, [enc.level_table(i) for i in range(enc.n_levels)], enc.levels), enc.params, g)
    torch.testing.assert_close(grad_fast, grad_ref, rtol=1e-4, atol=1e-5)


def test_fast_backward_equals_autograd_path():
    """The hand-written table backward (x needs no grad) equals autograd through plain ops."""
    torch.manual_seed(1)
    enc = build_encoding({"otype": "HashGrid", "n_levels": 5, "log2_hashmap_size": 9, "base_resolution": 4}, 3)
    x = torch.rand(300, 3)
    g = torch.randn(300, enc.n_output_dims)
    (a,) = torch.autograd.grad(enc(x), enc.params, g)
    (b,) = torch.autograd.grad(enc(x.clone().requires_grad_(True)), enc.params, g)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def _small_grid(d, interp, dtype=torch.float64):
    enc = build_encoding({"otype": "HashGrid", "n_levels": 3, "n_features_per_level": 2, "log2_hashmap_size": 6,
                          "base_resolution": 3, "per_level_scale": 2.0, "interpolation": interp}, d)
    with torch.no_grad():
        enc.params.uniform_(-1, 1)
    return enc.to(dtype)


def _interior_points(n, d, enc):
    """Points at least 1e-3 away from any cell boundary, so finite differences stay in one cell."""
    pts = []
    gen = torch.Generator().manual_seed(3)
    while len(pts) < n:
        x = torch.rand(d, generator=gen, dtype=torch.float64)
        ok = True
        for lv in enc.levels:
            f = (x * lv.scale + 0.5) % 1.0
            ok &= bool(((f > 1e-3) & (f < 1 - 1e-3)).all())
        if ok:
            pts.append(x)
    return torch.stack(pts)


@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("interp", ["Linear", "Smoothstep", "Nearest"])
def test_gradcheck_table(d, interp):
    enc = _small_grid(d, interp)
    x = _interior_points(6, d, enc)

    def f(params):
        return grid_encode(x, params, enc.levels, 2, interp)

    assert torch.autograd.gradcheck(f, (enc.params.detach().clone().requires_grad_(True),))


@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("interp", ["Linear", "Smoothstep"])
def test_gradcheck_inputs(d, interp):
    enc = _small_grid(d, interp)
    x = _interior_points(5, d, enc).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: enc(p), (x,))


@pytest.mark.parametrize("d", [2, 3])
def test_smoothstep_second_order(d):
    enc = _small_grid(d, "Smoothstep")
    x = _interior_points(4, d, enc).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda p: enc(p), (x,))
    # and the eikonal use case: the Hessian of a scalar readout is not identically zero
    y = enc(x).sum()
    (g,) = torch.autograd.grad(y, x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    assert h.abs().max() > 0


def test_linear_pure_second_derivative_is_zero_inside_cells():
    # d-linear interpolation is linear along each axis: d2/dx_k^2 vanishes (tcnn issue #185),
    # which is why eikonal losses need Smoothstep; mixed derivatives are not zero.
    enc = _small_grid(2, "Linear")
    x = _interior_points(4, 2, enc).requires_grad_(True)
    (g,) = torch.autograd.grad(enc(x).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g[:, 0].sum(), x)
    assert torch.count_nonzero(h[:, 0]) == 0 and torch.count_nonzero(h[:, 1]) > 0


def test_init_range_and_sizes_aligned():
    enc = build_encoding({"otype": "HashGrid"}, 3)
    assert enc.params.abs().max() <= 1e-4 and enc.params.abs().max() > 5e-5
    assert all(lv.size % 8 == 0 for lv in enc.levels)
    assert enc.n_output_dims == 32
    assert enc.levels[-1].size == 2 ** 19 and enc.levels[-1].hashed
    assert not enc.levels[0].hashed and enc.levels[0].resolution == 16


def test_tcnn_resolution_formula_for_doc_config():
    # tcnn's documented HashGrid: base 16, scale 2.0 -> s_l = 16*2^l - 1, R_l = 16*2^l
    enc = build_encoding({"otype": "HashGrid", "n_levels": 4}, 2)
    assert [lv.resolution for lv in enc.levels] == [16, 32, 64, 128]
    assert [lv.scale for lv in enc.levels] == [15.0, 31.0, 63.0, 127.0]


def test_config_round_trip_and_state_dict_per_level():
    cfg = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 4, "log2_hashmap_size": 10,
           "base_resolution": 8, "per_level_scale": 1.5, "interpolation": "Smoothstep"}
    enc = build_encoding(cfg, 3)
    again = build_encoding(json.loads(json.dumps(enc.config)), 3)
    assert again.config == enc.config
    sd = enc.state_dict()
    assert sorted(sd) == [f"levels.{i}" for i in range(4)]
    assert [tuple(sd[f"levels.{i}"].shape) for i in range(4)] == [(lv.size, 4) for lv in enc.levels]
    again.load_state_dict(sd)
    x = torch.rand(100, 3)
    torch.testing.assert_close(again(x), enc(x), rtol=0, atol=0)


def test_n_features_alternative_and_conflicts():
    enc = build_encoding({"otype": "Grid", "n_features": 8, "n_features_per_level": 2}, 2)
    assert enc.n_levels == 4 and enc.config["n_levels"] == 4 and "n_features" not in enc.config
    with pytest.raises(ConfigError, match="both"):
        build_encoding({"otype": "Grid", "n_features": 8, "n_levels": 4}, 2)
    with pytest.raises(ConfigError, match="n_features_per_level"):
        build_encoding({"otype": "HashGrid", "n_features_per_level": 3}, 2)
    with pytest.raises(ConfigError, match="unknown field 'n_level'"):
        build_encoding({"otype": "HashGrid", "n_level": 8}, 2)
    with pytest.raises(ConfigError, match="interpolation"):
        build_encoding({"otype": "HashGrid", "interpolation": "Cubic"}, 2)
    with pytest.raises(ConfigError, match="must be an integer"):
        build_encoding({"otype": "HashGrid", "n_levels": "16"}, 2)


def test_tcnn_documentation_config_loads_unchanged():
    # The encoding block of tiny-cuda-nn's data/config_hash.json, verbatim.
    cfg = json.loads("""{
        "otype": "HashGrid",
        "n_levels": 16,
        "n_features_per_level": 2,
        "log2_hashmap_size": 15,
        "base_resolution": 16,
        "per_level_scale": 1.5
    }""")
    enc = build_encoding(cfg, 2)
    assert enc.n_output_dims == 32
    assert enc(torch.rand(7, 2)).shape == (7, 32)


def test_batch_shape_and_dtype_preserved():
    enc = build_encoding({"otype": "DenseGrid", "n_levels": 2, "base_resolution": 4}, 2)
    y = enc(torch.rand(3, 5, 2))
    assert y.shape == (3, 5, 4)
    with pytest.raises(ValueError, match="expected inputs with 2 dims"):
        enc(torch.rand(4, 3))
