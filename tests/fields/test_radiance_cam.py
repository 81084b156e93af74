"""CAM on the Instant-NGP field: view-dependent density, identity at init, the direction-free bound."""

import pytest
import torch

from fieldstudio.errors import ConfigError
from fieldstudio.fields.radiance import NGP_CAM, NGPRadianceField

SMALL = {"encoding": {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
                      "base_resolution": 4, "per_level_scale": 1.5}}


def _dirs(n, gen):
    d = torch.randn(n, 3, generator=gen)
    return d / d.norm(dim=-1, keepdim=True)


def _pair(norm="sample"):
    torch.manual_seed(0)
    cam = NGPRadianceField({**SMALL, "cam": {**NGP_CAM, "norm": norm}}, backend="torch")
    plain = NGPRadianceField(SMALL, backend="torch")
    plain.load_state_dict({k: v for k, v in cam.state_dict().items() if not k.startswith("cam.")})
    return cam, plain


def test_at_init_cam_is_the_field_with_per_sample_normalisation():
    g = torch.Generator().manual_seed(0)
    x, d = torch.rand(200, 3, generator=g), _dirs(200, g)
    cam, plain = _pair("none")
    rgb_c, s_c = cam(x, d)
    rgb_p, s_p = plain(x, d)
    torch.testing.assert_close(rgb_c, rgb_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s_c, s_p, rtol=1e-5, atol=1e-6)
    cam, plain = _pair("sample")
    h = plain.density_network.layers[0](plain.encoding(x))
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
    want = plain.density_network.layers[1](torch.relu(h))
    torch.testing.assert_close(cam.feature(x, d), want, rtol=1e-5, atol=1e-5)


def test_gamma_and_beta_get_gradients_through_the_density():
    g = torch.Generator().manual_seed(1)
    cam, _ = _pair()
    x, d = torch.rand(300, 3, generator=g), _dirs(300, g)
    rgb, sigma = cam(x, d)
    (rgb.sum() + sigma.log().sum()).backward()
    grad = cam.cam.grid.grad
    assert grad[0, 0].abs().sum() > 0 and grad[0, 1].abs().sum() > 0


def test_direction_free_density_bounds_every_direction():
    g = torch.Generator().manual_seed(2)
    cam, _ = _pair()
    with torch.no_grad():  # a trained-looking grid: gamma and beta vary with the direction
        cam.cam.grid[0, 0] = 1 + 0.5 * torch.randn(1, 10, 3, generator=g)
        cam.cam.grid[0, 1] = 0.7 * torch.randn(1, 10, 3, generator=g)
    x = torch.rand(300, 3, generator=g)
    bound = cam.density(x)
    worst = torch.stack([cam.density(x, _dirs(1, g).expand(300, 3)) for _ in range(100)]).amax(0)
    assert torch.all(bound >= worst * (1 - 1e-5))
    # the bound is attained where the modulation is the same in every direction
    with torch.no_grad():
        cam.cam.grid[0, 0] = 1.3
        cam.cam.grid[0, 1] = -0.2
    torch.testing.assert_close(cam.density(x), cam.density(x, _dirs(300, g)), rtol=1e-5, atol=1e-6)
    ch = cam.channels(x)
    assert set(ch) == {"density", "log_density", "feature"}
    assert set(cam.channels(x, _dirs(300, g))) == {"density", "log_density", "feature", "rgb"}


def test_cam_config_is_checked():
    with pytest.raises(ConfigError, match="view direction"):
        NGPRadianceField({**SMALL, "cam": {"otype": "CAM", "resolution": [4, 4, 4]}}, backend="torch")
    with pytest.raises(ConfigError, match="one hidden layer"):
        NGPRadianceField({**SMALL, "cam": NGP_CAM, "density_network": {"otype": "FullyFusedMLP", "n_hidden_layers": 2,
                                                                       "n_neurons": 64}}, backend="torch")


def test_occupancy_of_a_cam_field_samples_one_direction_per_cell():
    # the occupancy update sees a CAM field's density at one random direction per point: never above
    # the bound over all directions, and different directions give different values once the grid
    # has left the identity
    from fieldstudio.apps.reconstruct import SceneModel, occupancy_eval_fn
    from fieldstudio.renderers.occupancy import OccupancyGrid

    cam, plain = _pair("sample")
    with torch.no_grad():
        for p in cam.cam.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    grid = OccupancyGrid(aabb, resolution=8)
    x = torch.rand(300, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1
    for fld in (cam, plain):
        model = SceneModel(fld, grid, aabb, render_step_size=0.01)
        fn = occupancy_eval_fn(model, 0.01)
        torch.manual_seed(3)
        a = fn(x)
        torch.manual_seed(4)
        b = fn(x)
        bound = fld.density(model.to_unit(x)) * 0.01
        if fld is plain:
            torch.testing.assert_close(a, bound)
            torch.testing.assert_close(b, bound)
        else:
            assert (a <= bound * (1 + 1e-5) + 1e-7).all() and (b <= bound * (1 + 1e-5) + 1e-7).all()
            assert not torch.allclose(a, b)
            assert (a < bound * 0.999).float().mean() > 0.5
