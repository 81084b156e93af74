"""Networks (and, later, fields) built from tiny-cuda-nn style configs."""

from .activations import ACTIVATION_NAMES, Activation, activation_fn
from .networks import MLP, Network, NetworkWithInputEncoding, Siren, build_network, list_networks

__all__ = [
    "ACTIVATION_NAMES",
    "Activation",
    "activation_fn",
    "MLP",
    "Network",
    "NetworkWithInputEncoding",
    "Siren",
    "build_network",
    "list_networks",
]
