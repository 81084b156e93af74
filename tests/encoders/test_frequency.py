"""Frequency encoding: values, layout and config behaviour exactly as tiny-cuda-nn."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fieldstudio.encoders import build_encoding
from fieldstudio.encoders.frequency import Frequency
from fieldstudio.errors import ConfigError


def brute_force(x: torch.Tensor, n_frequencies: int) -> torch.Tensor:
    """Element by element from tcnn's index formula (frequency.h), independent of the module."""
    n_points, n_dims = x.shape
    width = n_dims * n_frequencies * 2
    out = torch.empty(n_points, width, dtype=torch.float64)
    for p in range(n_points):
        for j in range(width):
            dim = j // (2 * n_frequencies)
            octave = (j // 2) % n_frequencies
            phase = (j % 2) * math.pi / 2
            out[p, j] = math.sin(2.0**octave * math.pi * float(x[p, dim]) + phase)
    return out


@pytest.mark.parametrize("n_dims,n_frequencies", [(1, 1), (3, 4), (2, 12)])
def test_matches_index_formula(n_dims: int, n_frequencies: int) -> None:
    torch.manual_seed(0)
    x = torch.rand(6, n_dims, dtype=torch.float64)
    enc = Frequency(n_dims, {"n_frequencies": n_frequencies})
    assert enc.n_output_dims == n_dims * n_frequencies * 2
    torch.testing.assert_close(enc(x), brute_force(x, n_frequencies), rtol=0, atol=1e-12)


def test_layout_is_sin_cos_pairs_per_dim_then_frequency() -> None:
    x = torch.tensor([[0.1, 0.3]], dtype=torch.float64)
    out = Frequency(2, {"n_frequencies": 3})(x)[0]
    # dim 1, frequency 2 -> entries 2*3 + 2*2 = 10 (sin) and 11 (cos)
    arg = 4 * math.pi * 0.3
    assert out[10].item() == pytest.approx(math.sin(arg), abs=1e-14)
    assert out[11].item() == pytest.approx(math.cos(arg), abs=1e-14)


def test_default_config_batch_dims_and_dtype() -> None:
    enc = build_encoding({"otype": "Frequency"}, 3)
    assert enc.config == {"otype": "Frequency", "n_frequencies": 12}
    x = torch.rand(2, 5, 3)
    out = enc(x)
    assert out.shape == (2, 5, 72) and out.dtype == torch.float32
    torch.testing.assert_close(out, enc(x.double()).float(), rtol=0, atol=5e-3)  # float32 at 2^11*pi


def test_gradcheck() -> None:
    x = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(Frequency(2, {"n_frequencies": 4}), (x,))


def test_round_trip() -> None:
    enc = build_encoding({"otype": "frequency", "n_frequencies": 6}, 3)
    again = build_encoding(json.loads(json.dumps(enc.config)), 3)
    assert again.config == enc.config == {"otype": "Frequency", "n_frequencies": 6}
    x = torch.rand(4, 3)
    assert torch.equal(again(x), enc(x))


@pytest.mark.parametrize(
    "config,match",
    [
        ({"otype": "Frequency", "n_frequency": 6}, "unknown field 'n_frequency'"),
        ({"otype": "Frequency", "n_frequencies": "6"}, r"must be an? integer"),
        ({"otype": "Frequency", "n_frequencies": 2.5}, r"must be an? integer"),
        ({"otype": "Frequency", "n_frequencies": 0}, "must be >= 1"),
    ],
)
def test_bad_config(config: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_encoding(config, 3)


def test_half_precision_input_is_computed_in_float32() -> None:
    x = torch.tensor([[0.123, 0.77]], dtype=torch.float64)
    enc = Frequency(2, {"n_frequencies": 12})
    out = enc(x.half())
    assert out.dtype == torch.float16
    # the reference sees the same (half-rounded) input; only the output rounding may differ
    torch.testing.assert_close(out.double(), enc(x.half().double()), rtol=0, atol=2e-3)
