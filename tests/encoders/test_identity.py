"""Identity encoding: tcnn's ``x * scale + offset``."""

from __future__ import annotations

import json

import pytest
import torch

from fieldstudio.encoders import build_encoding
from fieldstudio.encoders.identity import Identity
from fieldstudio.errors import ConfigError


def test_defaults_pass_through() -> None:
    enc = build_encoding({"otype": "Identity"}, 4)
    x = torch.rand(7, 4)
    assert enc.n_output_dims == 4
    assert enc.config == {"otype": "Identity", "scale": 1.0, "offset": 0.0}
    out = enc(x)
    assert torch.equal(out, x)
    assert out.data_ptr() != x.data_ptr()  # a fresh tensor, never the input itself


def test_scale_offset_and_batch_dims() -> None:
    enc = Identity(3, {"scale": 2, "offset": -0.5})  # ints are accepted as numbers
    x = torch.rand(2, 5, 3, dtype=torch.float64)
    out = enc(x)
    assert out.shape == (2, 5, 3) and out.dtype == torch.float64
    torch.testing.assert_close(out, 2 * x - 0.5)


def test_round_trip_and_case_insensitive_otype() -> None:
    enc = build_encoding({"otype": "identity", "scale": 0.25}, 2)
    again = build_encoding(json.loads(json.dumps(enc.config)), 2)
    assert again.config == enc.config == {"otype": "Identity", "scale": 0.25, "offset": 0.0}


def test_gradcheck() -> None:
    enc = Identity(2, {"scale": 3.0, "offset": 1.0})
    x = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(enc, (x,))


@pytest.mark.parametrize("config", [{"otype": "Identity", "scael": 2.0}, {"otype": "Identity", "scale": "2"}])
def test_bad_config(config: dict) -> None:
    with pytest.raises(ConfigError):
        build_encoding(config, 3)


def test_wrong_input_width() -> None:
    with pytest.raises(ValueError, match="expected inputs with 3 dims"):
        Identity(3)(torch.rand(4, 2))
