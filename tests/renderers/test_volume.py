"""The volume renderer: compositing against closed forms, occupancy-grid marching against dense
sampling, early termination, the occupancy grid's updates, and nerfacc parity on a GPU."""

import copy
import functools
import math

import pytest
import torch

from fieldstudio.renderers.occupancy import OccupancyGrid
from fieldstudio.renderers.volume import (
    accumulate_along_rays,
    exclusive_sum,
    march,
    nerfacc_status,
    render_weight_from_density,
    rendering,
)

UNIT = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def _points(rays_o, rays_d, t_starts, t_ends, ray_indices):
    return rays_o[ray_indices] + rays_d[ray_indices] * ((t_starts + t_ends) * 0.5).unsqueeze(-1)


def _z_rays(n=16, z0=-1.0):
    """Rays along +z through the unit box, starting at z = z0 (so t = z - z0)."""
    xy = torch.rand(n, 2) * 0.8 + 0.1
    o = torch.cat([xy, torch.full((n, 1), z0)], dim=-1)
    d = torch.tensor([0.0, 0.0, 1.0]).expand(n, 3).contiguous()
    return o, d


# --- closed forms -------------------------------------------------------------------------------

def test_constant_density_slab_matches_closed_form():
    torch.manual_seed(0)
    sigma, a, b, dt = 3.0, 0.2, 0.7, 1e-3
    color, bkgd = torch.tensor([0.9, 0.4, 0.1]), torch.tensor([0.1, 0.2, 1.0])
    o, d = _z_rays(32)

    def rgb_sigma_fn(ts, te, ri):
        z = _points(o, d, ts, te, ri)[:, 2]
        s = torch.where((z >= a) & (z <= b), torch.full_like(z, sigma), torch.zeros_like(z))
        return color.expand(len(z), 3), s

    ri, ts, te = march(o, d, aabb=UNIT, render_step_size=dt, early_stop_eps=0.0)
    rgb, opacity, depth, extras = rendering(ts, te, ri, o.shape[0], rgb_sigma_fn, render_bkgd=bkgd)
    expected = 1.0 - math.exp(-sigma * (b - a))
    assert rgb.shape == (32, 3) and opacity.shape == (32, 1) and depth.shape == (32, 1)
    # the slab is resolved to within one step at each face
    assert torch.allclose(opacity, torch.full_like(opacity, expected), atol=2 * sigma * dt)
    torch.testing.assert_close(rgb, color * opacity + bkgd * (1 - opacity))
    # expected depth of the slab (t = z + 1): a + 1 + 1/sigma - (b - a) e^{-sigma (b - a)} / (1 - e^{-sigma (b - a)})
    e = math.exp(-sigma * (b - a))
    z_mean = a + 1 / sigma - (b - a) * e / (1 - e)
    assert torch.allclose(depth, torch.full_like(depth, z_mean + 1.0), atol=2 * dt)
    # weights sum to the opacity, transmittance starts at 1 on every ray
    torch.testing.assert_close(accumulate_along_rays(extras["weights"], None, ri, 32), opacity)
    first = torch.ones_like(ri, dtype=torch.bool)
    first[1:] = ri[1:] != ri[:-1]
    assert torch.all(extras["trans"][first] == 1)


def test_thin_opaque_wall_depth_and_early_termination():
    z0, dt = 0.4, 2e-3
    o, d = _z_rays(8)

    def sigma_at(ts, te, ri):
        z = _points(o, d, ts, te, ri)[:, 2]
        return torch.where((z >= z0) & (z <= z0 + 0.02), torch.full_like(z, 1e4), torch.zeros_like(z))

    def rgb_sigma_fn(ts, te, ri):
        return torch.ones(len(ts), 3), sigma_at(ts, te, ri)

    ri, ts, te = march(o, d, aabb=UNIT, render_step_size=dt, early_stop_eps=0.0)
    rgb, opacity, depth, _ = rendering(ts, te, ri, 8, rgb_sigma_fn, render_bkgd=torch.zeros(3))
    assert torch.allclose(opacity, torch.ones_like(opacity), atol=1e-6)
    assert torch.allclose(depth, torch.full_like(depth, z0 + 1.0), atol=1.5 * dt)

    # with sigma_fn the march drops everything behind the wall
    ri2, ts2, te2 = march(o, d, aabb=UNIT, render_step_size=dt, sigma_fn=sigma_at, early_stop_eps=1e-4)
    assert ts.max() > z0 + 1.5 and ts2.max() <= z0 + 1.0 + 2 * dt
    assert ri2.numel() < ri.numel() / 2
    rgb2, opacity2, depth2, _ = rendering(ts2, te2, ri2, 8, rgb_sigma_fn, render_bkgd=torch.zeros(3))
    torch.testing.assert_close(rgb2, rgb)
    torch.testing.assert_close(depth2, depth)


def test_weights_match_a_per_ray_loop_and_gradients():
    torch.manual_seed(1)
    counts = [3, 0, 5, 1, 7]
    ri = torch.repeat_interleave(torch.arange(5), torch.tensor(counts))
    ts = torch.rand(ri.numel())
    te = ts + torch.rand(ri.numel()) * 0.1
    sig = (torch.rand(ri.numel()) * 5).requires_grad_(True)
    w, trans, alphas = render_weight_from_density(ts, te, sig, ri, 5)
    sig2 = sig.detach().clone().requires_grad_(True)
    ref, pos = [], 0
    for c in counts:  # the oracle: one ray at a time, batched formula
        s = sig2[pos: pos + c] * (te - ts)[pos: pos + c]
        t = torch.exp(-(torch.cumsum(s, 0) - s))
        ref.append(t * (1 - torch.exp(-s)))
        pos += c
    ref = torch.cat(ref)
    torch.testing.assert_close(w, ref)
    g = torch.randn_like(ref)
    (ga,) = torch.autograd.grad(w, sig, g)
    (gb,) = torch.autograd.grad(ref, sig2, g)
    torch.testing.assert_close(ga, gb)
    # batched layout gives the same as packed
    x = torch.rand(4, 6)
    packed = exclusive_sum(x.reshape(-1), torch.arange(4).repeat_interleave(6)).reshape(4, 6)
    torch.testing.assert_close(packed, exclusive_sum(x))


# --- an analytic scene: three blobs of density with compact support ------------------------------

CENTRES = torch.tensor([[0.35, 0.4, 0.5], [0.65, 0.55, 0.45], [0.5, 0.7, 0.7]])
RADII = torch.tensor([0.18, 0.15, 0.1])
COLOURS = torch.tensor([[1.0, 0.2, 0.1], [0.1, 1.0, 0.2], [0.2, 0.3, 1.0]])


def blob_densities(x):
    """``[N, 3]`` per-blob densities: 60 inside, ramping to 0 over 0.01 at each blob's surface."""
    return ((RADII - (x.unsqueeze(1) - CENTRES).norm(dim=-1)) / 0.01).clamp(0, 1) * 60.0


def camera_rays(res=24):
    u = (torch.arange(res) + 0.5) / res
    gy, gx = torch.meshgrid(u, u, indexing="ij")
    target = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.ones(res * res)], dim=-1)
    o = torch.tensor([0.5, 0.5, -1.0]).expand(res * res, 3).contiguous()
    return o, torch.nn.functional.normalize(target - o, dim=-1)


def blob_closures(o, d):
    def sigma_fn(ts, te, ri):
        return blob_densities(_points(o, d, ts, te, ri)).sum(-1)

    def rgb_sigma_fn(ts, te, ri):
        w = blob_densities(_points(o, d, ts, te, ri))
        s = w.sum(-1)
        return (w @ COLOURS) / s.clamp_min(1e-6).unsqueeze(-1), s

    return sigma_fn, rgb_sigma_fn


def warm_grid(resolution=32, dt=math.sqrt(3) / 512):
    """The grid after the 16 warm-up updates of a training run (built once, copied per use)."""
    return copy.deepcopy(_warm_grid(resolution, dt))


@functools.lru_cache(maxsize=None)
def _warm_grid(resolution, dt):
    torch.manual_seed(0)
    grid = OccupancyGrid(UNIT, resolution)
    for step in range(0, 256, 16):
        assert grid.update(step, lambda x: blob_densities(x).sum(-1) * dt)
    return grid


def test_grid_marching_matches_dense_sampling():
    torch.manual_seed(0)
    o, d = camera_rays(20)
    n = o.shape[0]
    sigma_fn, rgb_sigma_fn = blob_closures(o, d)
    bkgd = torch.tensor([1.0, 1.0, 1.0])
    ri, ts, te = march(o, d, aabb=UNIT, render_step_size=1e-3, early_stop_eps=0.0)  # dense, fine: the reference
    ref, ref_opacity, _, _ = rendering(ts, te, ri, n, rgb_sigma_fn, render_bkgd=bkgd)
    assert 0.2 < ref_opacity.mean() < 0.9  # the scene covers part of the image, partly see-through

    dt = math.sqrt(3) / 512
    grid = warm_grid(32, dt)
    assert 0.02 < grid.occupied_fraction() < 0.3
    dense = march(o, d, aabb=UNIT, render_step_size=dt, early_stop_eps=0.0)
    skipped = march(o, d, grid=grid, render_step_size=dt, early_stop_eps=0.0)
    early = march(o, d, grid=grid, render_step_size=dt, sigma_fn=sigma_fn)
    assert skipped[0].numel() < 0.3 * dense[0].numel()  # empty space really is skipped
    assert early[0].numel() < skipped[0].numel()
    # every sample the grid kept is one of the dense ones (same lattice)
    key = lambda s: set(zip(s[0].tolist(), torch.round(s[1] / dt).long().tolist()))  # noqa: E731
    assert key(skipped) <= key(dense)
    img, opacity, _, _ = rendering(early[1], early[2], early[0], n, rgb_sigma_fn, render_bkgd=bkgd)
    err = (img - ref).abs().amax(dim=-1)
    # The grid is a sampled approximation (instant-ngp's): a cell the blob only grazes can miss every
    # jittered probe, and a ray through that corner loses a little density. So: tight on average
    # and on 99% of pixels, loose on the few grazing ones.
    assert err.mean() < 1e-3 and torch.quantile(err, 0.99) < 0.01 and err.max() < 0.1, (err.mean(), err.max())


def test_march_options_are_consistent():
    torch.manual_seed(0)
    o, d = camera_rays(16)
    grid = warm_grid(32)
    dt = math.sqrt(3) / 512
    base = march(o, d, grid=grid, render_step_size=dt, early_stop_eps=0.0)
    # chunking over rays changes nothing
    chunked = march(o, d, grid=grid, render_step_size=dt, early_stop_eps=0.0, max_candidates=1000)
    for x, y in zip(base, chunked):
        torch.testing.assert_close(x, y)
    # packed layout: contiguous rays, increasing t, intervals of one step
    ri, ts, te = base
    assert torch.all(ri[1:] >= ri[:-1])
    same = ri[1:] == ri[:-1]
    assert torch.all(ts[1:][same] > ts[:-1][same])
    torch.testing.assert_close(te - ts, torch.full_like(ts, dt))
    # the coarse pass of the fast path drops nothing: the generic per-point lookup agrees
    two_level = OccupancyGrid(UNIT, 32, levels=2)
    two_level.binaries[0] = grid.binaries[0]
    two_level.binaries[1] = False  # the outer level is never reached from inside the unit box
    generic = march(o, d, grid=two_level, render_step_size=dt, early_stop_eps=0.0)
    for x, y in zip(base, generic):
        torch.testing.assert_close(x, y)
    # stratified: one jitter per ray, still within the box and on a regular lattice
    ri, ts, te = march(o, d, grid=grid, render_step_size=dt, early_stop_eps=0.0, stratified=True)
    assert ts.min() >= 0.0 and abs(ri.numel() - base[0].numel()) < 0.1 * base[0].numel()
    # cone angle: steps grow with t, intervals are contiguous within a ray
    ri, ts, te = march(o, d, aabb=UNIT, render_step_size=1e-3, early_stop_eps=0.0, cone_angle=1 / 256)
    same = ri[1:] == ri[:-1]
    torch.testing.assert_close(te[:-1][same], ts[1:][same])
    steps = te - ts
    torch.testing.assert_close(steps, torch.maximum(torch.full_like(ts, 1e-3), ts / 256), rtol=1e-4, atol=1e-7)


def _reference_march(o, d, grid, dt, near, far, cone):
    """nerfacc's traversal, one ray and one step at a time in float64 (the oracle, tiny inputs only)."""
    out = []
    lo, hi = grid.aabbs[0, :3].tolist(), grid.aabbs[0, 3:].tolist()
    for r in range(o.shape[0]):
        t0, t1 = near, far
        for a in range(3):  # slab test
            oa, da = float(o[r, a]), float(d[r, a])
            if da == 0.0:
                if not lo[a] <= oa <= hi[a]:
                    t0, t1 = 1.0, 0.0
                continue
            ta, tb = sorted(((lo[a] - oa) / da, (hi[a] - oa) / da))
            t0, t1 = max(t0, ta), min(t1, tb)
        if t1 <= t0:
            continue
        t = near
        while True:
            step = max(dt, t * cone)
            mid = t + step / 2
            if mid >= t1:
                break
            if mid >= t0 and grid.query((o[r].double() + mid * d[r].double()).float()[None])[0]:
                out.append((r, t, t + step))
            t += step
    return out


@pytest.mark.parametrize("cone", [0.0, 0.05])
def test_march_matches_a_step_by_step_oracle(cone):
    torch.manual_seed(3)
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], 8)
    grid.binaries.copy_(torch.rand(grid.binaries.shape) < 0.3)
    o = torch.randn(12, 3) * 2
    d = torch.nn.functional.normalize(torch.randn(12, 3) * 0.3 - o, dim=-1)  # roughly towards the box
    ri, ts, te = march(o, d, grid=grid, render_step_size=0.05, near_plane=0.1, far_plane=50.0, cone_angle=cone,
                       early_stop_eps=0.0)
    ref = _reference_march(o, d, grid, 0.05, 0.1, 50.0, cone)
    assert len(ref) > 50
    assert ri.tolist() == [r for r, _, _ in ref]
    torch.testing.assert_close(ts, torch.tensor([a for _, a, _ in ref], dtype=torch.float32), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(te, torch.tensor([b for _, _, b in ref], dtype=torch.float32), atol=1e-5, rtol=1e-5)


# --- the occupancy grid -------------------------------------------------------------------------

def test_occupancy_update_marks_the_blob_and_clears_empty_space():
    torch.manual_seed(0)
    grid = OccupancyGrid(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), 16)
    assert grid.binaries.all()  # a fresh grid skips nothing
    centre, radius = torch.tensor([0.5, 0.5, 0.5]), 0.2
    calls = []

    def occ_eval_fn(x):
        calls.append(x.shape[0])
        return ((radius - (x - centre).norm(dim=-1)) > 0).float() * 10.0

    assert not grid.update(3, occ_eval_fn)  # not a multiple of n
    assert grid.update(0, occ_eval_fn)  # warm-up: every cell
    assert sum(calls) == 16 ** 3
    cells = (torch.stack(torch.meshgrid(*[torch.arange(16)] * 3, indexing="ij"), dim=-1).float() + 0.5) / 16
    dist = (cells - centre).norm(dim=-1)
    occ = grid.binaries[0]
    assert occ[dist < radius - 0.06].all()  # whole cells inside the ball (the half diagonal is 0.054)
    assert not occ[dist > radius + 0.06].any()  # cells that cannot touch it
    assert grid.query(centre[None]).item() and not grid.query(torch.tensor([[0.05, 0.05, 0.05], [2.0, 0.5, 0.5]])).any()
    # after warm-up: a random quarter of the cells plus (up to as many) occupied ones
    calls.clear()
    n_occupied = int(occ.sum())
    assert grid.update(256, occ_eval_fn)
    assert sum(calls) == 16 ** 3 // 4 + n_occupied
    # state round trip, also into a grid that has never been updated
    other = OccupancyGrid(**grid.config)
    other.load_state_dict(grid.state_dict())
    assert torch.equal(other.binaries, grid.binaries) and torch.equal(other.occs, grid.occs)
    assert set(grid.state_dict()) == {"resolution", "aabbs", "occs", "binaries"}  # nerfacc's names
    grid.mark_all()
    assert grid.binaries.all()


def test_occupied_box_holds_every_group_of_cells_but_lone_floaters():
    res = torch.tensor([16.0, 12.0, 20.0])
    grid = OccupancyGrid(UNIT, res.int().tolist())
    grid.binaries.zero_()
    assert grid.occupied_box() is None
    grid.binaries[0, 3:10, 2:8, 5:16] = True  # the object: 462 cells
    grid.binaries[0, 12:14, 9:11, 1:3] = True  # a second, small one: 8 cells (over 1 %)
    grid.binaries[0, 15, 0, 0] = True  # a floater in a corner
    want = torch.stack([(torch.tensor([3.0, 2, 1]) - 1) / res, ((torch.tensor([14.0, 11, 16]) + 1) / res).clamp(max=1)])
    torch.testing.assert_close(grid.occupied_box(margin_cells=1), want)
    torch.testing.assert_close(grid.occupied_box(margin_cells=0)[0], torch.tensor([3.0, 2, 1]) / res)
    # counting every cell, the floater stretches the box to two faces
    torch.testing.assert_close(grid.occupied_box(margin_cells=1, min_component=0.0),
                               torch.stack([torch.tensor([2 / 16, 0, 0]), torch.tensor([1.0, 1, 17 / 20])]))
    grid.binaries.zero_()
    grid.binaries[0, 1::2, ::2, ::2] = True  # nothing but 480 lone cells (none over 1 %): all of them count
    torch.testing.assert_close(grid.occupied_box(margin_cells=0),
                               torch.stack([torch.tensor([1 / 16, 0, 0]), torch.tensor([1.0, 11 / 12, 19 / 20])]))


def test_occupancy_levels_cover_a_growing_box():
    grid = OccupancyGrid(UNIT, 8, levels=3)
    torch.testing.assert_close(grid.outer_aabb, torch.tensor([-1.5, -1.5, -1.5, 2.5, 2.5, 2.5]))
    grid.binaries.fill_(False)
    grid.binaries[2, 0, 0, 0] = True  # a corner cell of the coarsest level
    assert grid.query(torch.tensor([[-1.4, -1.4, -1.4], [0.5, 0.5, 0.5], [3.0, 0.0, 0.0]])).tolist() == [True, False, False]


def test_gradient_flows_from_rendered_rgb_to_an_ngp_field():
    from fieldstudio.fields.radiance import NGPRadianceField

    torch.manual_seed(0)
    field = NGPRadianceField({"encoding": {"otype": "HashGrid", "n_levels": 4, "log2_hashmap_size": 12,
                                           "base_resolution": 4, "per_level_scale": 2.0}})
    o, d = camera_rays(8)

    def rgb_sigma_fn(ts, te, ri):
        return field(_points(o, d, ts, te, ri), d[ri])

    ri, ts, te = march(o, d, aabb=UNIT, render_step_size=1 / 64, early_stop_eps=0.0)
    rgb, opacity, depth, _ = rendering(ts, te, ri, o.shape[0], rgb_sigma_fn, render_bkgd=torch.zeros(3))
    (rgb.sum() + opacity.sum()).backward()
    grads = {name: p.grad for name, p in field.named_parameters()}
    assert grads["encoding.params"] is not None and grads["encoding.params"].abs().sum() > 0
    for part in ("density_network", "rgb_network"):
        layers = [g for name, g in grads.items() if name.startswith(part)]
        assert layers and all(g is not None and g.abs().sum() > 0 for g in layers), part


def test_empty_inputs():
    o, d = torch.tensor([[5.0, 5.0, 5.0]]), torch.tensor([[0.0, 0.0, 1.0]])  # misses the box
    ri, ts, te = march(o, d, aabb=UNIT, render_step_size=0.01)
    assert ri.numel() == 0 and ri.dtype == torch.long
    rgb, opacity, depth, _ = rendering(ts, te, ri, 1, lambda *a: None, render_bkgd=torch.ones(3))
    assert rgb.tolist() == [[1.0, 1.0, 1.0]] and opacity.item() == 0 and depth.item() == 0


# --- nerfacc parity (GPU only) ------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nerfacc_and_pytorch_give_the_same_images():
    ok, why = nerfacc_status()
    if not ok:
        pytest.skip(f"nerfacc's CUDA path is not usable here: {why}")
    global CENTRES, RADII, COLOURS
    dt = math.sqrt(3) / 512
    grid = warm_grid(32, dt).cuda()  # built on the CPU, then moved: the same occupancy for both
    saved = CENTRES, RADII, COLOURS
    CENTRES, RADII, COLOURS = (t.cuda() for t in saved)
    try:
        torch.manual_seed(0)
        o, d = (t.cuda() for t in camera_rays(64))
        n = o.shape[0]
        sigma_fn, rgb_sigma_fn = blob_closures(o, d)
        bkgd = torch.tensor([1.0, 1.0, 1.0], device="cuda")
        images = {}
        for backend in ("torch", "nerfacc"):
            ri, ts, te = march(o, d, grid=grid, render_step_size=dt, sigma_fn=sigma_fn, backend=backend)
            rgb, opacity, depth, _ = rendering(ts, te, ri, n, rgb_sigma_fn, render_bkgd=bkgd, backend=backend)
            images[backend] = (ri.numel(), rgb, opacity, depth)
        (n_t, rgb_t, op_t, dep_t), (n_n, rgb_n, op_n, dep_n) = images["torch"], images["nerfacc"]
        assert abs(n_t - n_n) <= 0.01 * n_n + 10, (n_t, n_n)
        err = (rgb_t - rgb_n).abs()
        assert err.mean() < 1e-3 and err.max() < 0.05, (err.mean(), err.max())
        assert (op_t - op_n).abs().mean() < 1e-3
        # and the compositing alone, on identical samples, agrees to float precision
        ri, ts, te = march(o, d, grid=grid, render_step_size=dt, sigma_fn=sigma_fn, backend="nerfacc")
        a = rendering(ts, te, ri, n, rgb_sigma_fn, render_bkgd=bkgd, backend="torch")
        b = rendering(ts, te, ri, n, rgb_sigma_fn, render_bkgd=bkgd, backend="nerfacc")
        for x, y in zip(a[:3], b[:3]):
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
    finally:
        CENTRES, RADII, COLOURS = saved
