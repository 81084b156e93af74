"""Composite encoding: tcnn's input-slicing rules, parameter registration, config round trip."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from fieldstudio.config import Field
from fieldstudio.encoders import Encoding, build_encoding, registry
from fieldstudio.encoders.composite import Composite
from fieldstudio.encoders.frequency import Frequency
from fieldstudio.encoders.identity import Identity
from fieldstudio.errors import ConfigError

FREQ_PLUS_IDENTITY = {
    "otype": "Composite",
    "nested": [
        {"otype": "Frequency", "n_dims_to_encode": 2, "n_frequencies": 3},
        {"otype": "Identity", "scale": 2.0},
    ],
}


class _Learned(Encoding):
    """Test-only encoder with a parameter and a backend switch (registered per test via monkeypatch)."""

    otype: ClassVar[str] = "_Learned"
    fields: ClassVar[dict[str, Field]] = {}

    def __init__(self, n_input_dims: int, config: Any = None):
        super().__init__(n_input_dims, config)
        self.weight = nn.Parameter(torch.ones(n_input_dims))
        self.backends: list[str] = []

    @property
    def n_output_dims(self) -> int:
        return self.n_input_dims

    def set_backend(self, name: str) -> None:
        self.backends.append(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


@pytest.fixture
def learned(monkeypatch: pytest.MonkeyPatch) -> type[_Learned]:
    registry._load_all()
    monkeypatch.setitem(registry._REGISTRY, "_learned", _Learned)
    return _Learned


def test_equals_concatenation_of_parts() -> None:
    enc = build_encoding(FREQ_PLUS_IDENTITY, 5)
    x = torch.rand(4, 7, 5, dtype=torch.float64)
    expected = torch.cat(
        [Frequency(2, {"n_frequencies": 3})(x[..., :2]), Identity(3, {"scale": 2.0})(x[..., 2:])], dim=-1
    )
    assert enc.n_output_dims == 2 * 3 * 2 + 3
    assert torch.equal(enc(x), expected)


def test_config_round_trip_keeps_full_child_configs() -> None:
    enc = build_encoding(FREQ_PLUS_IDENTITY, 5)
    assert enc.config == {
        "otype": "Composite",
        "nested": [
            {"otype": "Frequency", "n_dims_to_encode": 2, "n_frequencies": 3},
            {"otype": "Identity", "n_dims_to_encode": 3, "scale": 2.0, "offset": 0.0},
        ],
        "reduction": "Concatenation",
    }
    again = build_encoding(json.loads(json.dumps(enc.config)), 5)
    assert again.config == enc.config
    x = torch.rand(3, 5)
    assert torch.equal(again(x), enc(x))


def test_written_config_is_not_aliased_to_the_input() -> None:
    config = json.loads(json.dumps(FREQ_PLUS_IDENTITY))
    enc = build_encoding(config, 5)
    config["nested"][0]["n_frequencies"] = 99
    enc.config["nested"][0]["n_frequencies"] = 98
    assert enc.config["nested"][0]["n_frequencies"] == 3


def test_gradcheck() -> None:
    config = json.loads(json.dumps(FREQ_PLUS_IDENTITY))
    config["nested"][0]["n_frequencies"] = 2
    enc = build_encoding(config, 5)
    x = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(enc, (x,))


def test_too_many_dims() -> None:
    config = {"otype": "Composite", "nested": [
        {"otype": "Identity", "n_dims_to_encode": 3}, {"otype": "Identity", "n_dims_to_encode": 3}]}
    with pytest.raises(ConfigError, match=r"request 6 input dims \(3 \+ 3\) but the composite only has 5"):
        build_encoding(config, 5)


def test_only_one_entry_may_take_the_rest() -> None:
    config = {"otype": "Composite", "nested": [{"otype": "Identity"}, {"otype": "Identity"}]}
    with pytest.raises(ConfigError, match="only one entry may take the remaining dims"):
        build_encoding(config, 4)


def test_unsized_entry_takes_the_rest_wherever_it_sits() -> None:
    # tcnn: the single entry without n_dims_to_encode gets n_input_dims - sum(specified).
    config = {"otype": "Composite", "nested": [
        {"otype": "Identity", "scale": 10.0}, {"otype": "Identity", "n_dims_to_encode": 1}]}
    enc = build_encoding(config, 4)
    x = torch.arange(4.0).reshape(1, 4)
    assert enc(x).tolist() == [[0.0, 10.0, 20.0, 3.0]]
    assert [e["n_dims_to_encode"] for e in enc.config["nested"]] == [3, 1]


def test_trailing_dims_are_ignored_and_zero_dim_entries_skipped() -> None:
    # tcnn leaves unrequested trailing dims unencoded and does not build 0-dim entries.
    config = {"otype": "Composite", "nested": [
        {"otype": "Identity", "n_dims_to_encode": 0}, {"otype": "Identity", "n_dims_to_encode": 2}]}
    enc = build_encoding(config, 5)
    assert len(enc.nested) == 1 and enc.n_output_dims == 2
    x = torch.rand(3, 5)
    assert torch.equal(enc(x), x[:, :2])
    assert build_encoding(enc.config, 5).config == enc.config


def test_dims_to_encode_begin() -> None:
    config = {"otype": "Composite", "nested": [
        {"otype": "Identity", "n_dims_to_encode": 2, "dims_to_encode_begin": 1},
        {"otype": "Identity", "n_dims_to_encode": 2, "dims_to_encode_begin": 0}]}
    enc = build_encoding(config, 3)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert enc(x).tolist() == [[2.0, 3.0, 1.0, 2.0]]
    assert build_encoding(enc.config, 3).config == enc.config
    config["nested"][0]["dims_to_encode_begin"] = 2
    with pytest.raises(ConfigError, match="nested\\[0\\] reads input dims 2..3"):
        build_encoding(config, 3)


def test_sum_reduction() -> None:
    config = {"otype": "Composite", "reduction": "sum", "nested": [
        {"otype": "Identity", "n_dims_to_encode": 2}, {"otype": "Identity", "scale": 3.0}]}
    enc = build_encoding(config, 4)
    x = torch.rand(5, 4)
    assert enc.n_output_dims == 2 and enc.config["reduction"] == "Sum"
    torch.testing.assert_close(enc(x), x[:, :2] + 3 * x[:, 2:])
    config["nested"][0]["n_dims_to_encode"] = 1
    with pytest.raises(ConfigError, match="equal output widths"):
        build_encoding(config, 4)


@pytest.mark.parametrize(
    "nested,match",
    [
        ([{"otype": "Identity", "n_dims_to_encode": -1}], "must be >= 0"),
        ([{"otype": "Identity", "n_dims_to_encode": "2"}], "n_dims_to_encode"),
        ([{"otype": "Identity", "scael": 2.0}], r"nested\[0\]: encoding 'Identity': unknown field 'scael'"),
        ([{"n_dims_to_encode": 2}], r"nested\[0\]: encoding config has no 'otype'"),
        (["Identity"], r"nested\[0\] must be a JSON object"),
    ],
)
def test_bad_nested_entries(nested: list, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_encoding({"otype": "Composite", "nested": nested}, 3)


def test_nested_is_required() -> None:
    with pytest.raises(ConfigError, match="'nested' is required"):
        build_encoding({"otype": "Composite"}, 3)


def test_children_parameters_are_registered(learned: type[_Learned]) -> None:
    enc = build_encoding({"otype": "Composite", "nested": [
        {"otype": "_Learned", "n_dims_to_encode": 2}, {"otype": "Identity"}]}, 3)
    assert isinstance(enc.nested, nn.ModuleList)
    assert [name for name, _ in enc.named_parameters()] == ["nested.0.weight"]
    enc(torch.rand(4, 3)).sum().backward()
    assert enc.nested[0].weight.grad is not None


@pytest.mark.parametrize("backend,expected", [("torch", []), ("auto", ["auto"]), ("tcnn", ["tcnn"])])
def test_set_backend_is_forwarded(learned: type[_Learned], backend: str, expected: list[str]) -> None:
    config = {"otype": "Composite", "nested": [{"otype": "_Learned", "n_dims_to_encode": 2}, {"otype": "Identity"}]}
    enc = build_encoding(config, 3, backend=backend)
    assert enc.nested[0].backends == expected
    assert isinstance(enc, Composite)
