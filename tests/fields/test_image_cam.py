"""The FFN preset and CAM on image fields: parameter parity, identity at init, the Fourier features."""

import math

import torch

from fieldstudio.encoders import build_encoding
from fieldstudio.fields.image import ImageField, image_field_preset


def _n(m):
    return sum(p.numel() for p in m.parameters())


def test_ffn_and_ffn_cam_have_the_same_parameter_count_within_2_percent():
    ffn = ImageField(image_field_preset("ffn", 3, (64, 64)), backend="torch")
    cam = ImageField(image_field_preset("ffn", 3, (64, 64), cam=True), backend="torch")
    assert _n(ffn) == 512 * 256 + 256 + 2 * (256 * 256 + 256) + 256 * 3 + 3  # the paper's 263K FFN
    assert cam.modulation.grid.numel() == 3 * 2 * 32 * 32
    assert abs(_n(cam) / _n(ffn) - 1) < 0.02


def _pair(norm):
    cfg = image_field_preset("ffn", 3, (64, 64), cam=True)
    cfg["modulation"]["norm"] = norm
    cam = ImageField(cfg, backend="torch")
    plain_cfg = dict(cfg)
    plain_cfg.pop("modulation")
    plain = ImageField(plain_cfg, backend="torch")
    plain.load_state_dict({k: v for k, v in cam.state_dict().items() if not k.startswith("modulation.")})
    return cam, plain


def test_at_init_cam_without_normalisation_is_the_unmodulated_network():
    cam, plain = _pair("none")
    uv = torch.rand(500, 2)
    # equal up to float rounding: interpolating gamma = 1 gives w * 1 + (1 - w) * 1, not always exactly 1
    torch.testing.assert_close(cam(uv), plain(uv), rtol=1e-6, atol=1e-6)


def test_at_init_cam_is_the_network_with_per_sample_normalisation_inserted():
    cam, plain = _pair("sample")
    uv = torch.rand(500, 2)
    x = plain.encoding(uv)
    net = plain.network
    for layer in net.layers[:-1]:
        h = layer(x)
        h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
        x = torch.relu(h)
    want = torch.sigmoid(net.layers[-1](x))
    torch.testing.assert_close(cam(uv), want, rtol=1e-5, atol=1e-5)


def test_training_moves_gamma_and_beta_of_the_image_grid():
    cam, _ = _pair("sample")
    uv = torch.rand(256, 2)
    loss = ((cam(uv) - torch.rand(256, 3)) ** 2).mean()
    loss.backward()
    g = cam.modulation.grid.grad
    for layer in range(3):
        assert g[layer, 0].abs().sum() > 0 and g[layer, 1].abs().sum() > 0


def test_random_fourier_features_formula_and_saved_matrix():
    enc = build_encoding({"otype": "RandomFourierFeatures", "n_frequencies": 8, "sigma": 10.0, "seed": 3}, 2)
    assert enc.n_output_dims == 16
    assert 3.0 < float(enc.B.std()) < 20.0  # sigma 10 (8 x 2 samples)
    x = torch.rand(5, 2)
    arg = 2 * math.pi * x @ enc.B.t()
    torch.testing.assert_close(enc(x), torch.cat([torch.sin(arg), torch.cos(arg)], -1))
    other = build_encoding({"otype": "RandomFourierFeatures", "n_frequencies": 8, "seed": 4}, 2)
    assert not torch.equal(other.B, enc.B)
    other.load_state_dict(enc.state_dict())  # the matrix is part of the weights
    torch.testing.assert_close(other(x), enc(x))
