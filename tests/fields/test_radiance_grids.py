"""TensoRF VM encoding and the grid radiance fields: math against brute force, channels and the clamp."""

import math

import pytest
import torch

from fieldstudio.encoders import build_encoding
from fieldstudio.fields.radiance import NGPRadianceField, VanillaNeRF
from fieldstudio.fields.radiance_grids import TensoRFField, VoxelField
from fieldstudio.fields.registry import build_field

CLIP = [-2.0, 7.0]


def _lerp1(line, t):
    """Linear interpolation of ``line [C, R]`` at ``t`` in [0, 1] (end samples on the ends)."""
    r = line.shape[1]
    p = t * (r - 1)
    i0 = int(math.floor(p))
    i0 = min(max(i0, 0), r - 2)
    w = p - i0
    return line[:, i0] * (1 - w) + line[:, i0 + 1] * w


def _bilerp(plane, a, b):
    """Bilinear interpolation of ``plane [C, R_b, R_a]`` at (a, b) in [0, 1]^2."""
    rows = torch.stack([_lerp1(plane[:, j, :], a) for j in range(plane.shape[1])], dim=1)  # [C, R_b]
    return _lerp1(rows, b)


def test_tensorf_vm_matches_brute_force():
    torch.manual_seed(0)
    enc = build_encoding({"otype": "TensorfVM", "n_components": 3, "resolution": 5}, 3)
    x = torch.rand(7, 3)
    out = enc(x)
    assert out.shape == (7, 9) and enc.n_output_dims == 9
    for n in range(7):
        ref = []
        for m, (a, b, k) in enumerate(((0, 1, 2), (0, 2, 1), (1, 2, 0))):
            p = _bilerp(enc.planes[m], float(x[n, a]), float(x[n, b]))
            ln = _lerp1(enc.lines[m, :, :, 0], float(x[n, k]))
            ref.append(p * ln)
        torch.testing.assert_close(out[n], torch.cat(ref), rtol=1e-5, atol=1e-6)


def test_tensorf_vm_gradcheck():
    torch.manual_seed(1)
    enc = build_encoding({"otype": "TensorfVM", "n_components": 2, "resolution": 4}, 3).double()
    x = torch.rand(5, 3, dtype=torch.float64) * 0.9 + 0.05
    assert torch.autograd.gradcheck(enc, (x.clone().requires_grad_(),))

    def of_params(planes, lines):
        return torch.func.functional_call(enc, {"planes": planes, "lines": lines}, (x,))

    assert torch.autograd.gradcheck(of_params, (enc.planes.detach().clone().requires_grad_(),
                                                enc.lines.detach().clone().requires_grad_()))


def test_voxel_field_is_trilinear_with_sh_colour():
    torch.manual_seed(2)
    fld = VoxelField({"resolution": 4, "sh_degree": 2, "init_std": 1.0})
    x = torch.rand(6, 3)
    d = torch.nn.functional.normalize(torch.randn(6, 3), dim=-1)
    ch = fld.channels(x, d)
    g = fld.grid.permute(3, 0, 1, 2)  # [C, z, y, x]
    r = g.shape[-1]
    for n in range(6):
        p = x[n] * (r - 1)
        i0 = p.floor().long().clamp(0, r - 2)
        w = p - i0
        v = torch.zeros(g.shape[0])
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    wt = (w[0] if dx else 1 - w[0]) * (w[1] if dy else 1 - w[1]) * (w[2] if dz else 1 - w[2])
                    v = v + wt * g[:, i0[2] + dz, i0[1] + dy, i0[0] + dx]
        torch.testing.assert_close(ch["log_density"][n], v[0], rtol=1e-5, atol=1e-5)
        # degree 2: band 0 constant, band 1 (-y, z, -x) * 0.4886
        vx, vy, vz = d[n].tolist()
        sh = torch.tensor([0.28209479177387814, -0.4886025119 * vy, 0.4886025119 * vz, -0.4886025119 * vx])
        rgb = torch.sigmoid(v[1:].reshape(3, 4) @ sh)
        torch.testing.assert_close(ch["rgb"][n], rgb, rtol=1e-5, atol=1e-5)


def _fields():
    from fieldstudio.apps.scene_kernels import neurbf_radiance_config

    nb = neurbf_radiance_config()
    nb["encoding"]["n_kernels"] = 64
    nb["encoding"].pop("param_budget", None)
    nb["encoding"].pop("reserved_params", None)
    small_hash = {"otype": "HashGrid", "n_levels": 4, "log2_hashmap_size": 12}
    return {
        "mlp": VanillaNeRF({"n_neurons": 32, "n_hidden_layers": 2, "skips": [0], "log_density_clip": CLIP}),
        "hashgrid": NGPRadianceField({"encoding": small_hash, "log_density_clip": CLIP}, backend="torch"),
        "tensorf": TensoRFField({"encoding": {"otype": "TensorfVM", "n_components": 8, "resolution": 16},
                                 "density_components": 2, "log_density_clip": CLIP}),
        "voxels": VoxelField({"resolution": 8, "log_density_clip": CLIP}),
        "neurbf": NGPRadianceField({**nb, "log_density_clip": CLIP}, backend="torch"),
    }


@pytest.mark.parametrize("name", ["mlp", "hashgrid", "tensorf", "voxels", "neurbf"])
def test_channels_shapes_ranges_and_clamp(name):
    torch.manual_seed(3)
    fld = _fields()[name]
    x = torch.rand(4, 5, 3)
    d = torch.nn.functional.normalize(torch.randn(4, 5, 3), dim=-1)
    ch = fld.channels(x, d)
    assert ch["log_density"].shape == ch["density"].shape == (4, 5)
    assert ch["rgb"].shape == (4, 5, 3)
    assert ((ch["rgb"] >= 0) & (ch["rgb"] <= 1)).all()
    assert (ch["log_density"] >= -2).all() and (ch["log_density"] <= 7).all()
    torch.testing.assert_close(ch["density"], torch.exp(ch["log_density"]))
    if name == "voxels":
        assert "feature" not in ch and fld.has_feature is False
    else:
        assert ch["feature"].shape == (4, 5, 16)
        torch.testing.assert_close(ch["log_density"], ch["feature"][..., 0].clamp(-2, 7))
    assert "rgb" not in fld.channels(x)
    # push the raw log-density far out of range both ways: the clamp must hold
    with torch.no_grad():
        for sign, bound in ((1, 7.0), (-1, -2.0)):
            if name == "voxels":
                fld.grid[..., 0] = sign * 100.0
                raw = fld._sample(x)[..., 0]
            else:
                feat = fld.feature
                fld.feature = lambda xx, d=None, feat=feat: torch.cat([sign * 100 + feat(xx)[..., :1], feat(xx)[..., 1:]], -1)
                raw = fld.feature(x)[..., 0]
            assert (raw.abs() > 50).all()
            torch.testing.assert_close(fld.channels(x)["log_density"], torch.full((4, 5), bound))
            if name != "voxels":
                del fld.feature


def test_grid_fields_round_trip_through_the_registry():
    for fld in (TensoRFField({"log_density_clip": CLIP}), VoxelField({"resolution": 8})):
        again = build_field(fld.config)
        again.load_state_dict(fld.state_dict())
        x = torch.rand(3, 3)
        d = torch.nn.functional.normalize(torch.randn(3, 3), dim=-1)
        torch.testing.assert_close(again.channels(x, d)["rgb"], fld.channels(x, d)["rgb"])


@pytest.mark.parametrize("kind", ["tensorf", "voxels"])
@pytest.mark.parametrize("needs_grad", [False, True])  # the fused CPU kernel, and grid_sample (input gradients)
def test_bounds_map_the_box_onto_the_whole_grid(kind, needs_grad):
    """A grid with ``bounds`` B at x is the same grid without bounds at (x - lo) / (hi - lo);
    outside B the raw log-density is the empty value, which the clip lifts to its floor."""
    from fieldstudio.fields.radiance_grids import OUTSIDE_LOG_DENSITY

    torch.manual_seed(5)
    lo, hi = torch.tensor([0.2, 0.1, 0.35]), torch.tensor([0.7, 0.95, 0.8])
    box = [lo.tolist(), hi.tolist()]
    if kind == "tensorf":
        enc = {"otype": "TensorfVM", "n_components": 8, "resolution": 12, "init_std": 0.3}
        full, boxed = (TensoRFField({"encoding": enc, "density_components": 3, "bounds": b}) for b in (None, box))
    else:
        full, boxed = (VoxelField({"resolution": 10, "sh_degree": 2, "init_std": 0.3, "bounds": b}) for b in (None, box))
    boxed.load_state_dict(full.state_dict())
    inner = lo + (hi - lo) * torch.rand(64, 3)
    outer = torch.rand(4000, 3)
    outer = outer[((outer < lo) | (outer > hi)).any(-1)][:64]
    d = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    x = inner.clone().requires_grad_(needs_grad)
    got = boxed.channels(x, d)
    want = full.channels((inner - lo) / (hi - lo), d)
    torch.testing.assert_close(got["log_density"], want["log_density"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["rgb"], want["rgb"], rtol=1e-5, atol=1e-5)
    out = boxed.channels(outer.clone().requires_grad_(needs_grad))
    torch.testing.assert_close(out["log_density"], torch.full((len(outer),), OUTSIDE_LOG_DENSITY))
    clipped = type(boxed)({**boxed.cfg, "log_density_clip": CLIP})
    torch.testing.assert_close(clipped.channels(outer)["log_density"], torch.full((len(outer),), CLIP[0]))
    # the box is part of the config: a run reopens with it
    again = build_field(boxed.config)
    again.load_state_dict(boxed.state_dict())
    torch.testing.assert_close(again.channels(inner, d)["rgb"], boxed.channels(inner, d)["rgb"])


@pytest.mark.parametrize("bad", [[[0, 0, 0], [1, 1]], [[0.5, 0, 0], [0.4, 1, 1]], [[-0.1, 0, 0], [1, 1, 1]], [0, 1]])
def test_bad_bounds_are_refused(bad):
    from fieldstudio.errors import ConfigError

    with pytest.raises(ConfigError, match="bounds"):
        VoxelField({"resolution": 4, "bounds": bad})
    with pytest.raises(ConfigError, match="bounds"):
        TensoRFField({"bounds": bad})


def _grid_pair(kind, bounds=None):
    torch.manual_seed(6)
    if kind == "tensorf":
        enc = {"otype": "TensorfVM", "n_components": 8, "resolution": 9, "init_std": 0.3}
        return TensoRFField({"encoding": enc, "density_components": 3, "bounds": bounds})
    return VoxelField({"resolution": 9, "sh_degree": 2, "init_std": 0.3, "bounds": bounds})


@pytest.mark.parametrize("kind", ["tensorf", "voxels"])
@pytest.mark.parametrize("start", [None, [[0.1, 0.0, 0.2], [0.9, 0.8, 1.0]]])  # a whole grid, one already bounded
def test_shrink_to_rereads_the_grid_over_the_box(kind, start):
    """After ``shrink_to(B)`` the field at B's sample points (its resolution per axis) equals the
    field before at the same points, where interpolation is exact; outside B it is empty."""
    import copy

    from fieldstudio.fields.radiance_grids import OUTSIDE_LOG_DENSITY

    before = _grid_pair(kind, start)
    after = copy.deepcopy(before)
    box = [[0.25, 0.1, 0.3], [0.7, 0.65, 0.95]]
    moved = after.shrink_to(box)
    assert {id(p) for p in moved} == {id(p) for n, p in after.named_parameters() if n.startswith(("encoding", "grid"))}
    lo, hi = torch.tensor(after.config["bounds"])
    if start is not None:  # the part of B inside the old bounds
        assert after.config["bounds"] == [[0.25, 0.1, 0.3], [0.7, 0.65, 0.95]]
    t = torch.linspace(0, 1, 9)
    nodes = torch.stack(torch.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3)
    x = lo + (hi - lo) * nodes
    d = torch.nn.functional.normalize(torch.randn(len(x), 3), dim=-1)
    got, want = after.channels(x, d), before.channels(x, d)
    torch.testing.assert_close(got["log_density"], want["log_density"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["rgb"], want["rgb"], rtol=1e-5, atol=1e-5)
    # between the samples the new grid interpolates the old one's values: close on a smooth-ish grid
    mid = lo + (hi - lo) * torch.rand(256, 3)
    assert (after.channels(mid)["log_density"] - before.channels(mid)["log_density"]).abs().max() < 0.5
    outside = torch.tensor([[0.2, 0.3, 0.5], [0.5, 0.7, 0.5], [0.5, 0.3, 0.97]])
    torch.testing.assert_close(after.channels(outside)["log_density"], torch.full((3,), OUTSIDE_LOG_DENSITY))
    # the shrunk field reopens from its config and weights
    again = build_field(after.config)
    again.load_state_dict(after.state_dict())
    torch.testing.assert_close(again.channels(x, d)["rgb"], got["rgb"])


def test_shrink_to_clips_to_the_current_bounds_and_refuses_a_disjoint_box():
    from fieldstudio.errors import ConfigError

    fld = _grid_pair("voxels", [[0.2, 0.2, 0.2], [0.6, 0.6, 0.6]])
    fld.shrink_to([[0.0, 0.3, 0.1], [0.5, 0.9, 0.4]])
    assert fld.config["bounds"] == [[0.2, 0.3, 0.2], [0.5, 0.6, 0.4]]
    with pytest.raises(ConfigError, match="overlap"):
        fld.shrink_to([[0.7, 0.7, 0.7], [0.9, 0.9, 0.9]])


def _sparse_and_dense(r=7, seed=0):
    torch.manual_seed(seed)
    sparse = VoxelField({"resolution": r, "sh_degree": 2, "init_std": 1.0})
    dense = VoxelField({"resolution": r, "sh_degree": 2, "init_std": 1.0, "sparse_gradients": False})
    dense.load_state_dict(sparse.state_dict())
    return sparse, dense


def _edge_points(n, gen):
    x = torch.rand(n, 3, generator=gen)
    x[:4], x[4:8] = 0.0, 1.0  # the faces: clamped corners carry no weight
    x[8:24] = torch.rand(16, 3, generator=gen) * 1.4 - 0.2  # partly outside: zero padding
    x[24:26] = torch.tensor([-1.0, 2.0, 0.5])  # wholly outside
    return x


@pytest.mark.parametrize("fused", [True, False])
def test_sparse_voxel_gradient_equals_the_dense_one(monkeypatch, fused):
    if not fused:  # the grid_sample forward, as on a GPU
        monkeypatch.setattr("fieldstudio.fields.radiance_grids.dense_kernel_applies", lambda *a: False)
    gen = torch.Generator().manual_seed(1)
    sparse, dense = _sparse_and_dense()
    x = _edge_points(400, gen)
    d = torch.nn.functional.normalize(torch.randn(400, 3, generator=gen), dim=-1)
    grads = []
    for fld in (sparse, dense):
        c = fld.channels(x, d)
        ((c["rgb"] ** 2).sum() + (c["log_density"] * torch.linspace(-1, 1, 400)).sum()).backward()
        grads.append(fld.grid.grad)
    assert grads[0].is_sparse and not grads[1].is_sparse
    torch.testing.assert_close(grads[0].to_dense(), grads[1], rtol=1e-5, atol=1e-6)
    # only the vertices the points reach are held: 8 per point at most
    held = grads[0].coalesce().indices().shape[1]
    assert held <= 8 * 400 and held < sparse.grid[..., 0].numel()


def test_sparse_voxel_gradient_does_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(2)
    sparse, _ = _sparse_and_dense(r=12)
    x = torch.rand(5000, 3, generator=gen)
    g = torch.randn(5000, sparse.grid.shape[-1], generator=gen)
    threads, out = torch.get_num_threads(), []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            sparse.grid.grad = None
            (sparse._sample(x) * g).sum().backward()
            out.append(sparse.grid.grad.coalesce())
    finally:
        torch.set_num_threads(threads)
    for other in out[1:]:
        assert torch.equal(other.indices(), out[0].indices()) and torch.equal(other.values(), out[0].values())


def test_points_that_need_a_gradient_take_the_dense_path():
    sparse, dense = _sparse_and_dense(r=5)
    x = torch.rand(20, 3, dtype=torch.float32).requires_grad_()
    (sparse.channels(x)["log_density"].sum()).backward()
    assert x.grad is not None and not sparse.grid.grad.is_sparse
    torch.testing.assert_close(sparse.channels(x)["log_density"], dense.channels(x)["log_density"])
