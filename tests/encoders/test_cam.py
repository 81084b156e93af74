"""CAM: the grid sampler, each normalisation against its definition, identity at init, gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from fieldstudio.encoders import build_encoding
from fieldstudio.encoders.cam import normalize, sample_grid
from fieldstudio.errors import ConfigError


def test_sample_norm_on_a_hand_built_tensor():
    h = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 6.0, -6.0]])
    # row 0: mean 2.5, biased variance 1.25; row 1: mean 0, variance 18
    want = torch.tensor([[-1.5, -0.5, 0.5, 1.5], [0.0, 0.0, 6.0, -6.0]])
    want[0] /= math.sqrt(1.25 + 1e-5)
    want[1] /= math.sqrt(18 + 1e-5)
    assert torch.allclose(normalize(h, "sample"), want, atol=1e-6)


def test_ray_norm_uses_every_sample_and_channel_of_a_ray():
    h = torch.arange(12, dtype=torch.float64).reshape(2, 3, 2) ** 2  # 2 rays x 3 samples x 2 channels
    out = normalize(h, "ray")
    for r in range(2):
        v = h[r].flatten()
        mean, var = v.mean(), ((v - v.mean()) ** 2).mean()
        assert torch.allclose(out[r], (h[r] - mean) / torch.sqrt(var + 1e-5))
    # packed samples with ray_indices: the same statistics, also for rays of different lengths
    packed = normalize(h.reshape(6, 2), "ray", ray_indices=torch.tensor([0, 0, 0, 1, 1, 1]))
    assert torch.allclose(packed, out.reshape(6, 2))
    ri = torch.tensor([0, 0, 2, 2, 2, 2])  # ray 1 has no samples
    flat = h.reshape(6, 2)
    got = normalize(flat, "ray", ray_indices=ri, n_rays=3)
    for r in (0, 2):
        v = flat[ri == r]
        mean, var = v.mean(), ((v - v.mean()) ** 2).mean()
        assert torch.allclose(got[ri == r], (v - mean) / torch.sqrt(var + 1e-5))


def test_instance_norm_normalises_each_channel_over_the_frame():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) * 3 + 1
    out = normalize(h, "instance")
    for b in range(2):
        for c in range(3):
            v = h[b, c]
            mean, var = v.mean(), ((v - v.mean()) ** 2).mean()
            assert torch.allclose(out[b, c], (v - mean) / torch.sqrt(var + 1e-5))
    assert normalize(h, "none") is h
    with pytest.raises(ValueError):
        normalize(h[0, 0], "instance")


def _bilinear_reference(grid, u):
    """Plain loop: multilinear weights of the surrounding nodes, coordinates clamped to the grid."""
    f, *res = grid.shape
    out = torch.zeros(u.shape[0], f, dtype=grid.dtype)
    for n in range(u.shape[0]):
        pos = [min(max(float(u[n, a]), 0.0), 1.0) * (r - 1) for a, r in enumerate(res)]
        for corner in range(2 ** len(res)):
            idx, w = [], 1.0
            for a, r in enumerate(res):
                i0 = min(int(math.floor(pos[a])), max(r - 2, 0))
                bit = (corner >> a) & 1
                frac = pos[a] - i0
                idx.append(min(i0 + bit, r - 1))
                w *= frac if bit else 1 - frac
            out[n] += w * grid[(slice(None), *idx)]
    return out


@pytest.mark.parametrize("res", [[7], [5, 4], [3, 4, 2], [1, 6]])
def test_grid_sampling_matches_a_plain_reference(res):
    g = torch.Generator().manual_seed(1)
    grid = torch.randn(3, *res, generator=g, dtype=torch.float64)
    u = torch.rand(50, len(res), generator=g, dtype=torch.float64) * 1.4 - 0.2  # some outside: clamped
    u[0] = 0.0
    u[1] = 1.0
    assert torch.allclose(sample_grid(grid, u), _bilinear_reference(grid, u), atol=1e-12)


def test_2d_sampling_matches_grid_sample_align_corners_border():
    g = torch.Generator().manual_seed(2)
    grid = torch.randn(2, 32, 32, generator=g, dtype=torch.float64)  # [F, y, x] in grid_sample's layout
    uv = torch.rand(40, 2, generator=g, dtype=torch.float64)  # (x, y)
    ref = F.grid_sample(grid[None], (uv * 2 - 1).view(1, -1, 1, 2), align_corners=True,
                        padding_mode="border").view(2, -1).t()
    # sample_grid's axis 0 is the first coordinate: index the grid as [F, x, y]
    assert torch.allclose(sample_grid(grid.transpose(1, 2), uv), ref, atol=1e-12)


def test_at_initialisation_the_modulation_is_the_normalisation_alone():
    cam = build_encoding({"otype": "CAM", "resolution": [32, 32], "n_layers": 3, "n_channels": 1}, 2)
    assert cam.n_output_dims == 6 and cam.lr_factor == 10.0
    x = torch.rand(20, 2)
    gamma, beta = cam.gamma_beta(x)
    # bilinear weights sum to 1 only up to float32 rounding, so gamma is 1 to within an ulp or two
    torch.testing.assert_close(gamma, torch.ones(20, 3, 1), rtol=0, atol=1e-6)
    assert torch.equal(beta, torch.zeros(20, 3, 1))
    h = torch.randn(20, 16)
    assert torch.allclose(cam.modulate(h, gamma, beta, 1), normalize(h, "sample"), atol=1e-6)
    none = build_encoding({"otype": "CAM", "resolution": [4], "dims": [1], "norm": "none"}, 2)
    assert torch.equal(none.modulate(h, *none.gamma_beta(x)), h)


def test_gamma_and_beta_both_receive_gradients_and_gradcheck():
    cam = build_encoding({"otype": "CAM", "resolution": [4, 3], "n_layers": 2, "n_channels": 5}, 2).double()
    x = torch.rand(30, 2, dtype=torch.float64)
    h = torch.randn(30, 5, dtype=torch.float64)
    gamma, beta = cam.gamma_beta(x)
    (cam.modulate(h, gamma, beta, 1) ** 3).sum().backward()
    grad = cam.grid.grad
    assert grad[1, 0].abs().sum() > 0 and grad[1, 1].abs().sum() > 0  # gamma and beta of layer 1
    assert grad[0].abs().sum() == 0  # layer 0 was not used

    def fn(grid, hh):
        s = sample_grid(grid.flatten(0, 2), x[:6]).unflatten(-1, (2, 2, 5))
        return s[:, 1, 0] * normalize(hh, "sample") + s[:, 1, 1]

    grid = (cam.grid.detach() + 0.1 * torch.randn_like(cam.grid)).requires_grad_()
    assert torch.autograd.gradcheck(fn, (grid, h[:6].clone().requires_grad_()))


def test_per_channel_modulation_of_feature_maps():
    cam = build_encoding({"otype": "CAM", "resolution": [6], "n_channels": 4, "norm": "instance"}, 1)
    with torch.no_grad():
        cam.grid[0, 0] = torch.arange(24.0).view(4, 6)
        cam.grid[0, 1] = 1.0
    t = torch.tensor([0.0, 1.0])
    gamma, beta = cam.gamma_beta(t[:, None])
    h = torch.randn(2, 4, 3, 3)
    out = cam.modulate(h, gamma, beta)
    n = normalize(h, "instance")
    assert torch.allclose(out[1, 2], 17.0 * n[1, 2] + 1.0, atol=1e-5)  # t = 1: last node of channel 2
    assert torch.allclose(out[0, 3], 18.0 * n[0, 3] + 1.0, atol=1e-5)


def test_direction_coordinates_are_azimuth_and_elevation():
    cam = build_encoding({"otype": "CAM", "coordinates": "direction", "resolution": [10, 3], "norm": "ray"}, 3)
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, -1e-9, 0.0]])
    u = cam.grid_coordinates(d)
    assert torch.allclose(u, torch.tensor([[0.5, 0.5], [0.75, 0.5], [0.5, 1.0], [0.0, 0.5]]), atol=1e-6)


def test_bad_configs_say_what_to_fix():
    with pytest.raises(ConfigError, match="resolution"):
        build_encoding({"otype": "CAM", "resolution": [32, 32], "dims": [0]}, 2)
    with pytest.raises(ConfigError, match="dims"):
        build_encoding({"otype": "CAM", "resolution": [4], "dims": [3]}, 2)
    with pytest.raises(ConfigError, match="2 axes"):
        build_encoding({"otype": "CAM", "coordinates": "direction", "resolution": [4]}, 3)
    with pytest.raises(ConfigError, match="norm"):
        build_encoding({"otype": "CAM", "norm": "batch"}, 2)
