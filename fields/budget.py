"""Building an encoder and its network together, so an encoder may size itself to a budget.

An encoder whose config asks for ``n_kernels: "auto"`` (NeuRBF) needs the parameter count of the
network behind it, and the network's input width is the encoder's output width. The output width
never depends on the kernel count, so one trial build gives it; the second build reserves the
network's parameters and the encoder takes whatever the budget leaves.
"""

from __future__ import annotations

from typing import Any, Mapping

from fieldstudio.encoders import build_encoding

from .networks import build_network


def build_encoding_and_network(enc_cfg: Mapping[str, Any], net_cfg: Mapping[str, Any], n_input_dims: int,
                               n_output_dims: int, backend: str = "auto"):
    auto = isinstance(enc_cfg.get("n_kernels"), str)
    enc = build_encoding(enc_cfg, n_input_dims, backend=backend)
    net = build_network(net_cfg, enc.n_output_dims, n_output_dims)
    if auto:
        reserved = sum(p.numel() for p in net.parameters())
        enc = build_encoding({**enc_cfg, "reserved_params": reserved}, n_input_dims, backend=backend)
    return enc, net
