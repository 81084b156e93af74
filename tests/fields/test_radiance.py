"""Radiance fields: the shared channels, the instant-ngp layout, trunc_exp, config round trips."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fieldstudio.errors import ConfigError
from fieldstudio.fields.radiance import NGPRadianceField, VanillaNeRF, ngp_per_level_scale, trunc_exp
from fieldstudio.fields.registry import build_field

SMALL_NGP = {"encoding": {"otype": "HashGrid", "n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 4,
                          "per_level_scale": 2.0}}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _inputs(shape=(2, 5)):
    x = torch.rand(*shape, 3)
    d = torch.nn.functional.normalize(torch.randn(*shape, 3), dim=-1)
    return x, d


@pytest.mark.parametrize("make", [lambda: NGPRadianceField(SMALL_NGP), lambda: VanillaNeRF()], ids=["ngp", "nerf"])
def test_channels_shapes_and_consistency(make):
    field = make()
    x, d = _inputs()
    ch = field.channels(x, d)
    assert set(ch) == {"density", "log_density", "feature", "rgb"} == set(field.channel_names)
    assert ch["density"].shape == (2, 5) and ch["log_density"].shape == (2, 5)
    assert ch["feature"].shape == (2, 5, 16) and ch["rgb"].shape == (2, 5, 3)
    assert "rgb" not in field.channels(x)  # no direction, no colour
    torch.testing.assert_close(ch["log_density"], ch["feature"][..., 0])  # no clip by default
    torch.testing.assert_close(ch["density"], torch.exp(ch["log_density"]))
    rgb, sigma = field(x, d)
    torch.testing.assert_close(rgb, ch["rgb"])
    torch.testing.assert_close(sigma, field.density(x))
    assert (rgb >= 0).all() and (rgb <= 1).all() and (sigma > 0).all()
    # colour depends on the view direction, density does not
    assert not torch.allclose(field(x, -d)[0], rgb)


def test_ngp_layout_follows_instant_ngp():
    field = NGPRadianceField()
    cfg = field.config
    assert cfg["encoding"]["n_levels"] == 16 and cfg["encoding"]["n_features_per_level"] == 2
    assert cfg["encoding"]["log2_hashmap_size"] == 19 and cfg["encoding"]["base_resolution"] == 16
    assert cfg["encoding"]["per_level_scale"] == pytest.approx(ngp_per_level_scale(2048, 16, 16)) == pytest.approx(1.381913, abs=1e-6)
    assert [tuple(layer.weight.shape) for layer in field.density_network.layers] == [(64, 32), (16, 64)]
    assert [tuple(layer.weight.shape) for layer in field.rgb_network.layers] == [(64, 31), (64, 64), (3, 64)]
    assert field.direction_encoding.n_output_dims == 16  # SH degree 4
    assert all(layer.bias is None for layer in field.density_network.layers)  # tcnn: no biases


def test_vanilla_nerf_layout():
    field = VanillaNeRF()
    # 3 + 3 * 10 * 2 position inputs; skip after layer 2 re-injects them
    assert [tuple(layer.weight.shape) for layer in field.trunk] == [(128, 63), (128, 128), (128, 128), (128, 191)]
    assert tuple(field.feature_layer.weight.shape) == (16, 128)
    assert field.rgb_network.layers[0].in_features == 15 + 3 + 3 * 4 * 2
    paper = VanillaNeRF({"n_neurons": 256, "n_hidden_layers": 8, "skips": [4]})
    assert len(paper.trunk) == 8 and paper.trunk[5].in_features == 256 + 63
    with pytest.raises(ConfigError, match="skips"):
        VanillaNeRF({"n_hidden_layers": 4, "skips": [3]})


def test_trunc_exp_gradient_is_clamped():
    x = torch.tensor([-20.0, 0.0, 3.0, 20.0], requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y, torch.exp(x.detach()))
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, torch.exp(torch.tensor([-15.0, 0.0, 3.0, 15.0])))


def test_log_density_clip():
    field = NGPRadianceField({**SMALL_NGP, "log_density_clip": [-2, 7]})
    with torch.no_grad():
        field.encoding.params.normal_()
        field.density_network.layers[-1].weight.mul_(100)  # push the raw values far out of range
    ch = field.channels(torch.rand(500, 3))
    assert ch["log_density"].min() >= -2 and ch["log_density"].max() <= 7
    assert ch["feature"][:, 0].abs().max() > 7  # the feature keeps the raw value (PVD)
    with pytest.raises(ConfigError):
        NGPRadianceField({"log_density_clip": [3, 1]})
    with pytest.raises(ConfigError, match="did you mean"):
        NGPRadianceField({"encodng": {}})


@pytest.mark.parametrize("cls,cfg", [(NGPRadianceField, SMALL_NGP), (VanillaNeRF, {"n_neurons": 32})])
def test_config_round_trip_and_run_folder(tmp_path, cls, cfg):
    from fieldstudio.runs import CONFIG, WEIGHTS, atomic_write_json, load_run, save_weights

    field = cls(cfg)
    text = json.dumps(field.config)
    rebuilt = build_field(json.loads(text))
    assert type(rebuilt) is cls and rebuilt.config == field.config
    atomic_write_json(tmp_path / CONFIG, {"kind": "radiance", "field": field.config})
    save_weights(tmp_path / WEIGHTS, field)
    run = load_run(tmp_path)
    x, d = _inputs((64,))
    for a, b in zip(run.field(x, d), field(x, d)):
        torch.testing.assert_close(a, b)


def test_distillation_targets_line_up():
    """A student can be fitted to a teacher's channels at the same points (what PVD needs)."""
    teacher, student = NGPRadianceField(SMALL_NGP), VanillaNeRF({"n_neurons": 32, "n_hidden_layers": 2, "skips": []})
    x, d = _inputs((256,))
    t, s = teacher.channels(x, d), student.channels(x, d)
    assert all(t[k].shape == s[k].shape for k in t)
    loss = sum(torch.nn.functional.mse_loss(s[k], t[k].detach()) for k in ("feature", "rgb"))
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert math.isfinite(float(loss.detach()))
