"""The tcnn ``Composite`` encoding: different encoders for different slices of the input.

Typical use is NeRF-style inputs, e.g. ``[x, y, z, dx, dy, dz]`` with a hash grid on the
position and spherical harmonics on the direction. Input dims are handed out by the tcnn rules,
so a tcnn config means the same thing here:

* each nested entry takes ``n_dims_to_encode`` consecutive dims, in order;
* at most one entry may leave it out; that entry takes whatever the others leave over
  (wherever it sits in the list);
* asking for more dims than the composite has is an error; asking for fewer leaves the trailing
  dims unencoded (tcnn silently ignores them);
* an entry with ``n_dims_to_encode: 0`` is skipped;
* ``dims_to_encode_begin`` (newer tcnn) pins an entry's first dim explicitly; then every entry
  must give ``n_dims_to_encode``;
* ``reduction`` combines the nested outputs: ``Concatenation`` (default), ``Sum`` or ``Product``
  (the latter two need equal output widths).

Unlike tcnn, the written-back config keeps ``n_dims_to_encode`` (resolved to a number) in every
nested entry, so JSON -> module -> JSON round trips even when the input split was implicit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from fieldstudio.config import Field, at_least, parse_fields
from fieldstudio.errors import ConfigError

from .base import Encoding
from .registry import build_encoding, register

#: keys that belong to the composite's bookkeeping, not to the nested encoder's own config
_SLICE_KEYS = ("n_dims_to_encode", "dims_to_encode_begin")
_WHERE = "encoding 'Composite'"


@dataclass
class _Slot:
    """One entry of ``nested``: which input dims it reads, and what to write back for it."""

    begin: int
    n_dims: int
    begin_given: bool
    child: int | None  # index into Composite.nested; None for a skipped (0-dim) entry
    raw: dict[str, Any] = field(default_factory=dict)  # the entry as given, for skipped ones


def _slice_key(entry: Mapping[str, Any], key: str, index: int) -> int | None:
    """Read a non-negative integer bookkeeping key, with the usual config type checks."""
    if key not in entry:
        return None
    spec = {key: Field(int, check=at_least(0))}
    return parse_fields({key: entry[key]}, spec, where=f"{_WHERE}, nested[{index}]")[key]


def _plan_slices(nested: list[Any], n_input_dims: int) -> list[tuple[int, int, bool]]:
    """Assign input dims to the nested entries by tcnn's rules: ``(begin, n_dims, begin_given)``."""
    counts: list[int | None] = []
    begins: list[int | None] = []
    for i, entry in enumerate(nested):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{_WHERE}: nested[{i}] must be a JSON object, got {entry!r}",
                              'write each nested entry as {"otype": ..., "n_dims_to_encode": ...}')
        counts.append(_slice_key(entry, "n_dims_to_encode", i))
        begins.append(_slice_key(entry, "dims_to_encode_begin", i))

    unspecified = [i for i, n in enumerate(counts) if n is None]
    explicit_begin = any(b is not None for b in begins)
    if len(unspecified) > 1:
        raise ConfigError(
            f"{_WHERE}: nested entries {unspecified} all leave 'n_dims_to_encode' out, "
            "but only one entry may take the remaining dims",
            "give 'n_dims_to_encode' to all but one nested entry",
        )
    if unspecified and explicit_begin:
        raise ConfigError(
            f"{_WHERE}: nested[{unspecified[0]}] has no 'n_dims_to_encode' while another entry "
            "uses 'dims_to_encode_begin'",
            "with 'dims_to_encode_begin', give every nested entry an explicit 'n_dims_to_encode'",
        )
    requested = sum(n for n in counts if n is not None)
    # With explicit begins the slices may overlap, so only the per-slice bound below applies.
    if not explicit_begin and requested > n_input_dims:
        sizes = [str(n) for n in counts if n is not None]
        parts = f" ({' + '.join(sizes)})" if len(sizes) > 1 else ""
        raise ConfigError(
            f"{_WHERE}: nested encodings request {requested} input dims{parts} "
            f"but the composite only has {n_input_dims}",
            "lower 'n_dims_to_encode' of the nested entries, or leave it out of one entry "
            "so that entry takes the remaining dims",
        )

    remaining = n_input_dims - requested
    plan: list[tuple[int, int, bool]] = []
    offset = 0
    for i, (n, begin) in enumerate(zip(counts, begins)):
        if n is None:
            n = remaining
        elif begin is not None:
            offset = begin
        if offset + n > n_input_dims:
            raise ConfigError(
                f"{_WHERE}: nested[{i}] reads input dims {offset}..{offset + n - 1} "
                f"but the composite only has {n_input_dims}",
                "fix 'dims_to_encode_begin' / 'n_dims_to_encode' of that entry",
            )
        plan.append((offset, n, begin is not None))
        offset += n
    return plan


@register
class Composite(Encoding):
    """Apply nested encoders to consecutive slices of the input and combine their outputs.

    Config (tcnn names): ``nested`` (list of encoder configs, each optionally with
    ``n_dims_to_encode`` / ``dims_to_encode_begin``), ``reduction`` (``Concatenation``).
    The nested encoders live in ``self.nested`` (an ``nn.ModuleList``) so their parameters are
    part of this module's parameters and state_dict.
    """

    otype: ClassVar[str] = "Composite"
    fields: ClassVar[dict[str, Field]] = {
        "nested": Field(list, doc="nested encoder configs, applied to consecutive input slices"),
        "reduction": Field(str, "Concatenation", choices=("Concatenation", "Sum", "Product"),
                           doc="how nested outputs are combined"),
    }

    def __init__(self, n_input_dims: int, config: Mapping[str, Any] | None = None):
        super().__init__(n_input_dims, config)
        # Own copy: later edits to the caller's dicts must not change what `config` reports.
        self.cfg["nested"] = copy.deepcopy(self.cfg["nested"])
        self.nested = nn.ModuleList()
        self._slots: list[_Slot] = []
        for i, (entry, (begin, n, begin_given)) in enumerate(
            zip(self.cfg["nested"], _plan_slices(self.cfg["nested"], self.n_input_dims))
        ):
            if n == 0:
                # tcnn does not build 0-dim entries; keep them verbatim so the config round trips.
                self._slots.append(_Slot(begin, 0, begin_given, None, dict(entry)))
                continue
            child_cfg = {k: v for k, v in entry.items() if k not in _SLICE_KEYS}
            try:
                # "torch" here only means "don't pick a backend yet": a backend chosen for the
                # composite reaches the children through `set_backend`.
                child = build_encoding(child_cfg, n, backend="torch")
            except ConfigError as e:
                raise ConfigError(f"{_WHERE}, nested[{i}]: {e.problem}", e.fix) from e
            self._slots.append(_Slot(begin, n, begin_given, len(self.nested)))
            self.nested.append(child)

        if self.cfg["reduction"] != "Concatenation":
            widths = [child.n_output_dims for child in self.nested]
            if len(set(widths)) > 1:
                raise ConfigError(
                    f"{_WHERE}: reduction '{self.cfg['reduction']}' needs nested encoders with equal "
                    f"output widths, got {widths}",
                    "use \"reduction\": \"Concatenation\" or make the nested outputs the same width",
                )

    @property
    def n_output_dims(self) -> int:
        widths = [child.n_output_dims for child in self.nested]
        if self.cfg["reduction"] == "Concatenation":
            return sum(widths)
        return widths[0] if widths else 0

    @property
    def config(self) -> dict[str, Any]:
        """The full config: each nested entry is its encoder's full config plus its input slice."""
        nested: list[dict[str, Any]] = []
        for slot in self._slots:
            if slot.child is None:
                nested.append(copy.deepcopy(slot.raw))
                continue
            child_cfg = self.nested[slot.child].config
            entry: dict[str, Any] = {"otype": child_cfg["otype"], "n_dims_to_encode": slot.n_dims}
            if slot.begin_given:
                entry["dims_to_encode_begin"] = slot.begin
            entry.update((k, v) for k, v in child_cfg.items() if k != "otype")
            nested.append(entry)
        return {"otype": self.otype, "nested": nested, "reduction": self.cfg["reduction"]}

    def set_backend(self, name: str) -> None:
        """Forward a backend choice (``auto``/``torch``/``tcnn``) to the nested encoders that have one."""
        for child in self.nested:
            if hasattr(child, "set_backend"):
                child.set_backend(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        outs = [
            self.nested[slot.child](x[..., slot.begin:slot.begin + slot.n_dims])
            for slot in self._slots
            if slot.child is not None
        ]
        if not outs:
            return x.new_zeros((*x.shape[:-1], 0))
        reduction = self.cfg["reduction"]
        if reduction == "Concatenation":
            return torch.cat(outs, dim=-1)
        stacked = torch.stack(outs)
        return stacked.sum(0) if reduction == "Sum" else stacked.prod(0)
