"""CAM in the video field: identity (plus instance norm) at init, gradients, parameter accounting."""

import pytest
import torch

from fieldstudio.encoders.cam import normalize
from fieldstudio.errors import ConfigError
from fieldstudio.fields.video import VideoField, count_params, size_config


def _pair():
    torch.manual_seed(0)
    cfg = size_config(32, 32, 5000)
    cam = VideoField({**cfg, "cam": {"resolution": [6]}})
    plain = VideoField(cfg)
    plain.load_state_dict({k: v for k, v in cam.state_dict().items() if not k.startswith("cams.")})
    return cam, plain


def test_at_init_cam_is_the_field_with_instance_norm_on_every_block():
    cam, plain = _pair()
    t = torch.tensor([0.0, 0.3, 0.9])
    plain.modulation = lambda i, x, tt: normalize(x, "instance")
    torch.testing.assert_close(cam(t), plain(t), rtol=1e-5, atol=1e-6)
    plain.modulation = None
    assert not torch.allclose(cam(t), plain(t))  # the normalisation itself is not the identity


def test_every_blocks_gamma_and_beta_get_gradients():
    cam, _ = _pair()
    t = torch.tensor([0.1, 0.55])
    ((cam(t) - torch.rand(2, 3, 32, 32)) ** 2).mean().backward()
    for block in cam.cams[0]:
        g = block.grid.grad
        assert g.shape[2] > 1  # per-channel gamma and beta
        assert g[0, 0].abs().sum() > 0 and g[0, 1].abs().sum() > 0


def test_grids_are_per_video_and_counted_in_the_size():
    cam, plain = _pair()
    grids = sum(p.numel() for p in cam.cams.parameters())
    assert grids == 2 * 6 * sum(b.grid.shape[2] for b in cam.cams[0])
    assert count_params(cam.config) == count_params(plain.config) + grids
    assert not any(n.startswith("cams.") for n, _ in cam.shared_parameters())
    assert set(map(id, cam.session_parameters(0))) >= set(map(id, cam.cams[0].parameters()))
    cam.add_head()
    assert len(cam.cams) == 2 and torch.equal(cam.cams[1][0].grid[0, 0], torch.ones_like(cam.cams[1][0].grid[0, 0]))
    # sized for the same budget, with and without CAM, the counts match within 2%
    a = count_params(size_config(144, 176, 20000))
    b = count_params(size_config(144, 176, 20000, cam={"resolution": [6]}))
    assert abs(b / a - 1) < 0.02


def test_bad_cam_settings():
    cfg = size_config(32, 32, 5000)
    with pytest.raises(ConfigError, match="time grid"):
        VideoField({**cfg, "cam": {"resolution": [4, 4]}})
    with pytest.raises(ConfigError, match="unknown cam"):
        VideoField({**cfg, "cam": {"resolutoin": [4]}})
