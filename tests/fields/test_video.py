"""NeRV video field, WSN masks (top-k, straight-through), the FSO spectral block and the modulation hook."""

import math

import pytest
import torch

from fieldstudio.errors import ConfigError
from fieldstudio.fields.registry import build_field
from fieldstudio.fields.subnet import masked_tensors, set_mode, ste_mask, topk_mask
from fieldstudio.fields.video import SpectralUpsample, VideoField, count_params, size_config


@pytest.mark.parametrize("capacity", [0.1, 0.3, 0.5, 0.77, 1.0])
def test_topk_mask_keeps_exactly_the_stated_fraction_per_layer(capacity):
    torch.manual_seed(0)
    field = VideoField(size_config(32, 32, 6000))
    set_mode(field, "score", capacity)
    tensors = masked_tensors(field)
    assert len(tensors) >= 8
    for name, layer, attr in tensors:
        n = getattr(layer, attr).numel()
        m = layer.current_mask(attr)
        assert int(m.sum()) == min(n, max(1, round(capacity * n))), name
        # the kept entries are those of largest |score|
        s = getattr(layer, f"score_{attr}").detach().abs()
        if 0 < m.sum() < n:
            assert s[m].min() >= s[~m].max()


def test_topk_mask_exact_with_tied_scores():
    score = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.5, 0.5]])
    assert int(topk_mask(score, 0.5).sum()) == 4
    assert int(topk_mask(score, 0.25).sum()) == 2


def test_straight_through_estimator_passes_the_mask_gradient_to_the_scores():
    torch.manual_seed(0)
    w = torch.randn(6, 5)
    score = torch.randn(6, 5, requires_grad=True)
    upstream = torch.randn(6, 5)
    (w * ste_mask(score, 0.4) * upstream).sum().backward()
    assert torch.allclose(score.grad, upstream * w)
    # forward value is the hard mask
    assert torch.equal(ste_mask(score, 0.4).detach(), topk_mask(score, 0.4).float())


def test_spectral_upsample_interpolates_band_limited_input():
    h, w, c = 8, 10, 2
    layer = SpectralUpsample(c, c, (h // 2, w // 2 + 1)).double()
    with torch.no_grad():
        eye = torch.eye(c, dtype=torch.float64)[:, :, None, None]
        layer.weight_re.copy_(eye.expand_as(layer.weight_re))
        layer.weight_im.zero_()
    a, b = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    x = torch.stack([torch.cos(2 * math.pi * (2 * a / h + b / w)) + 0.3,
                     torch.sin(2 * math.pi * (-a / h + 3 * b / w))])[None]
    y = layer(x)
    assert y.shape == (1, c, 2 * h, 2 * w)
    assert torch.allclose(y[:, :, ::2, ::2], x, atol=1e-10)
    # and in between, the same band-limited signal on the finer grid
    a2, b2 = torch.meshgrid(torch.arange(2 * h, dtype=torch.float64) / 2, torch.arange(2 * w, dtype=torch.float64) / 2,
                            indexing="ij")
    assert torch.allclose(y[0, 0], torch.cos(2 * math.pi * (2 * a2 / h + b2 / w)) + 0.3, atol=1e-10)


def test_spectral_upsample_gradcheck_float64():
    torch.manual_seed(0)
    layer = SpectralUpsample(2, 3, (2, 3)).double()
    set_mode(layer, "fixed")
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    re = layer.weight_re.detach().clone().requires_grad_()
    im = layer.weight_im.detach().clone().requires_grad_()
    fn = lambda inp, r, i: torch.func.functional_call(layer, {"weight_re": r, "weight_im": i}, (inp,))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, re, im))


def test_video_field_shapes_fso_and_registry():
    torch.manual_seed(0)
    cfg = size_config(36, 44, 8000, fso=True)
    field = build_field(cfg)
    assert isinstance(field, VideoField) and isinstance(field.blocks[1], SpectralUpsample)
    y = field(torch.tensor([0.0, 0.5]), 0)
    assert y.shape == (2, 3, 36, 44) and y.min() >= 0 and y.max() <= 1
    assert count_params(cfg) <= 8000
    with pytest.raises(ConfigError, match="fso_modes"):
        VideoField({**cfg, "fso_modes": [50, 50]})


def test_modulation_hook_sees_every_block_before_activation():
    torch.manual_seed(0)
    field = VideoField(size_config(32, 32, 5000))
    seen = []

    def hook(i, x, t):
        seen.append((i, x.shape))
        return torch.zeros_like(x)  # silences every block: output is the head's bias alone

    field.modulation = hook
    y = field(torch.tensor([0.25]), 0)
    assert [i for i, _ in seen] == list(range(len(field.blocks)))
    expected = (torch.tanh(field.heads[0].bias) + 1) / 2
    assert torch.allclose(y[0, :, 0, 0], expected.detach())
