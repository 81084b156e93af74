"""CAM: coordinate-aware modulation (Lee et al., "Coordinate-Aware Modulation for Neural Fields", ICLR 2024).

A tiny grid sampled at (a subset of) the input coordinates gives a scale gamma and a shift beta per
modulated layer; the layer's pre-activation becomes

    h <- act(gamma(x) * Norm(W h + b) + beta(x))

The grid starts at gamma = 1, beta = 0, so at initialisation a modulated network is the same function
as the network with only the normalisation inserted (and, with ``norm: "none"``, the unmodulated one).
The grid trains with ``lr_factor`` (10) times the network's learning rate: `lr_factor` is the tag
`fieldstudio.apps.training.encoder_param_groups` reads.

As an encoder, ``forward(x)`` returns the sampled grid ``[..., n_layers * 2 * n_channels]`` (gamma
then beta for each layer); a network applies it through `modulate`. The paper's per-domain
choices are parameters:

* images: ``resolution [32, 32]``, ``n_channels 1`` (one gamma, beta shared by all channels),
  ``norm "sample"`` (each sample's feature vector normalised over its channels);
* radiance fields: ``coordinates "direction"`` (unit vector -> azimuth, elevation), ``resolution
  [10, 3]``, ``norm "ray"`` (statistics over all samples of a ray and all channels, GroupNorm(1));
* video: a time grid (``resolution [T_mod]``) with per-channel gamma, beta and ``norm "instance"``
  (each channel normalised over H x W).

The paper's released NerfAcc variant builds beta as the product of three zero-initialised planes, so
its gradient is always zero and beta never leaves 0. Here beta is one additive grid initialised to 0,
as the paper describes, and it does learn (a test checks that it receives gradients).
"""

from __future__ import annotations

import itertools
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fieldstudio.config import Field, at_least, positive
from fieldstudio.errors import ConfigError

from .base import Encoding
from .registry import register

NORMS = ("sample", "ray", "instance", "none")


def _check_resolution(v) -> str | None:
    if not isinstance(v, list) or not 1 <= len(v) <= 3 or not all(isinstance(r, int) and r >= 1 for r in v):
        return "must be a list of 1 to 3 positive integers, e.g. [32, 32]"
    return None


def _check_bounds(v) -> str | None:
    if not isinstance(v, list) or len(v) != 2 or not all(isinstance(a, (int, float)) for a in v) or not v[0] < v[1]:
        return "must be [low, high] with low < high"
    return None


def _check_dims(v) -> str | None:
    if v is None:
        return None
    if not isinstance(v, list) or not v or not all(isinstance(i, int) and i >= 0 for i in v):
        return "must be a list of input axes, e.g. [0, 1], or null for all"
    return None


def normalize(h: torch.Tensor, norm: str, ray_indices: torch.Tensor | None = None, n_rays: int | None = None,
              eps: float = 1e-5) -> torch.Tensor:
    """The normalisations CAM places before its modulation (none of them has an affine part).

    * ``"sample"``: ``h [..., C]``, each sample over its C channels (LayerNorm without affine; the
      official image code's ``instance_norm`` on a [1, N, C] tensor computes exactly this);
    * ``"ray"``: GroupNorm with one group over all samples of a ray and all channels. ``h [R, S, C]``
      (batched rays), or packed ``h [N, C]`` with ``ray_indices [N]`` naming each sample's ray;
    * ``"instance"``: ``h [B, C, H, W]``, each channel of each frame over H x W;
    * ``"none"``: unchanged.

    Variances are biased (divide by the count), as PyTorch's normalisation layers.
    """
    if norm == "none":
        return h
    # PyTorch's fused normalisations (one kernel each way, no affine) rather than a chain of
    # elementwise ops: on a CPU the chain costs more than the layer's matrix product
    if norm == "sample":
        return F.layer_norm(h, h.shape[-1:], eps=eps)
    if norm == "instance":
        if h.dim() != 4:
            raise ValueError(f"instance normalisation needs [B, C, H, W] features, got shape {tuple(h.shape)}")
        return F.instance_norm(h, eps=eps)
    if norm == "ray":
        if ray_indices is not None:
            return _packed_ray_norm(h, ray_indices, n_rays, eps)
        if h.dim() < 2:
            raise ValueError(f"per-ray normalisation needs [rays, samples, C] features or ray_indices, got {tuple(h.shape)}")
        return F.layer_norm(h, h.shape[-2:], eps=eps)
    raise ValueError(f"unknown normalisation '{norm}'; use one of {', '.join(NORMS)}")


def _packed_ray_norm(h: torch.Tensor, ray_indices: torch.Tensor, n_rays: int | None, eps: float) -> torch.Tensor:
    if h.dim() != 2 or ray_indices.shape != h.shape[:1]:
        raise ValueError(f"packed per-ray normalisation needs h [N, C] and ray_indices [N], got {tuple(h.shape)} "
                         f"and {tuple(ray_indices.shape)}")
    n_rays = int(ray_indices.max()) + 1 if n_rays is None else n_rays
    if h.shape[0] == 0:
        return h
    c = h.shape[1]
    idx = ray_indices.long()
    count = torch.zeros(n_rays, dtype=h.dtype, device=h.device).index_add_(
        0, idx, torch.ones_like(idx, dtype=h.dtype)) * c
    mean = torch.zeros(n_rays, dtype=h.dtype, device=h.device).index_add_(0, idx, h.sum(-1)) / count.clamp_min(1)
    centred = h - mean[idx, None]
    var = torch.zeros(n_rays, dtype=h.dtype, device=h.device).index_add_(
        0, idx, centred.pow(2).sum(-1)) / count.clamp_min(1)
    return centred * torch.rsqrt(var[idx, None] + eps)


def _cart2sph(d: torch.Tensor) -> torch.Tensor:
    """Unit directions ``[..., 3]`` -> (azimuth, elevation) mapped to [0, 1]^2."""
    x, y, z = d.unbind(-1)
    azimuth = torch.atan2(y, x)  # (-pi, pi]
    elevation = torch.asin(z.clamp(-1.0, 1.0))  # [-pi/2, pi/2]
    return torch.stack([(azimuth + math.pi) / (2 * math.pi), elevation / math.pi + 0.5], dim=-1)


def sample_grid(grid: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Multilinear interpolation of ``grid [F, R_0, ..., R_{D-1}]`` at ``u [..., D]`` in [0, 1]^D.

    The grid's first and last nodes sit at 0 and 1 (align_corners=True) and coordinates outside are
    clamped (border padding), as the paper's ``grid_sample`` / ``map_coordinates(mode='nearest')``.
    Returns ``[..., F]``.
    """
    f, *res = grid.shape
    d = len(res)
    lead = u.shape[:-1]
    u = u.reshape(-1, d).to(grid.dtype)
    flat = grid.reshape(f, -1)
    idx0, frac = [], []
    for a, r in enumerate(res):
        pos = u[:, a].clamp(0.0, 1.0) * (r - 1)
        i0 = pos.detach().floor().clamp(0, max(r - 2, 0)).long()
        idx0.append(i0)
        frac.append(pos - i0.to(pos.dtype) if r > 1 else torch.zeros_like(pos))
    strides = [math.prod(res[a + 1:]) for a in range(d)]
    out = None
    for corner in itertools.product((0, 1), repeat=d):
        index = torch.zeros_like(idx0[0])
        weight = torch.ones_like(frac[0])
        for a, bit in enumerate(corner):
            index = index + (idx0[a] + bit).clamp(max=res[a] - 1) * strides[a]
            weight = weight * (frac[a] if bit else 1.0 - frac[a])
        term = flat[:, index].t() * weight[:, None]
        out = term if out is None else out + term
    return out.reshape(*lead, f)


@register
class CAM(Encoding):
    """Coordinate-aware modulation grid: coordinates -> gamma, beta for ``n_layers`` layers.

    Config: ``resolution`` (grid nodes per axis, [32, 32]), ``dims`` (input axes that address the
    grid, null = all), ``coordinates`` ("cartesian", or "direction": unit vectors -> azimuth,
    elevation), ``bounds`` (the input range mapped onto the grid's ends, [0, 1]), ``n_layers`` (1),
    ``n_channels`` (1 = one gamma, beta shared by every channel of a layer; else one per channel),
    ``norm`` (sample / ray / instance / none), ``lr_factor`` (10), ``eps`` (1e-5).
    Output dims: ``n_layers * 2 * n_channels`` (per layer: gamma then beta).
    """

    otype: ClassVar[str] = "CAM"
    aliases: ClassVar[tuple[str, ...]] = ("CoordinateAwareModulation",)
    fields: ClassVar[dict[str, Field]] = {
        "resolution": Field(list, [32, 32], check=_check_resolution, doc="grid nodes per axis"),
        "dims": Field((list, type(None)), None, check=_check_dims, doc="input axes addressing the grid (null: all)"),
        "coordinates": Field(str, "cartesian", choices=("cartesian", "direction"),
                             doc="direction: unit vectors -> (azimuth, elevation)"),
        "bounds": Field(list, [0.0, 1.0], check=_check_bounds, doc="input range mapped onto the grid's ends"),
        "n_layers": Field(int, 1, check=at_least(1), doc="modulated layers"),
        "n_channels": Field(int, 1, check=at_least(1), doc="1: gamma, beta shared by all channels; else per channel"),
        "norm": Field(str, "sample", choices=NORMS, doc="normalisation before the modulation"),
        "lr_factor": Field(float, 10.0, check=positive, doc="learning rate of the grid / the network's"),
        "eps": Field(float, 1e-5, check=positive),
    }

    def __init__(self, n_input_dims: int, config=None):
        super().__init__(n_input_dims, config)
        c = self.cfg
        if c["coordinates"] == "direction":
            if self.n_input_dims != 3 or c["dims"] not in (None, [0, 1, 2]):
                raise ConfigError("CAM: coordinates 'direction' needs 3-d unit vectors as input",
                                  "leave 'dims' out (null) and feed view directions")
            if len(c["resolution"]) != 2:
                raise ConfigError("CAM: a direction grid has 2 axes (azimuth, elevation)", "e.g. resolution [10, 3]")
            self._grid_dims = 2
        else:
            dims = c["dims"] if c["dims"] is not None else list(range(self.n_input_dims))
            if any(i >= self.n_input_dims for i in dims):
                raise ConfigError(f"CAM: dims {dims} name axes beyond the {self.n_input_dims} input dims",
                                  f"use axes 0..{self.n_input_dims - 1}")
            if len(dims) != len(c["resolution"]):
                raise ConfigError(f"CAM: {len(dims)} input axes {dims} but a {len(c['resolution'])}-d resolution "
                                  f"{c['resolution']}", "give one resolution per grid axis")
            self._grid_dims = len(dims)
            self.register_buffer("_dims", torch.tensor(dims, dtype=torch.long), persistent=False)
        # [layer, (gamma, beta), channel, *resolution]: gamma = 1, beta = 0 is the identity modulation
        init = torch.zeros(c["n_layers"], 2, c["n_channels"], *c["resolution"])
        init[:, 0] = 1.0
        self.grid = nn.Parameter(init)

    @property
    def n_output_dims(self) -> int:
        return self.cfg["n_layers"] * 2 * self.cfg["n_channels"]

    @property
    def lr_factor(self) -> float:
        return self.cfg["lr_factor"]

    @property
    def norm(self) -> str:
        return self.cfg["norm"]

    def grid_coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs ``[..., n_input_dims]`` -> grid coordinates ``[..., D]`` in [0, 1] (before clamping)."""
        self._check_input(x)
        if self.cfg["coordinates"] == "direction":
            return _cart2sph(x)
        lo, hi = self.cfg["bounds"]
        u = x.index_select(-1, self._dims.to(x.device))
        return (u - lo) / (hi - lo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sample_grid(self.grid.flatten(0, 2), self.grid_coordinates(x))

    def gamma_beta(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gamma, beta)``, each ``[..., n_layers, n_channels]``, at inputs ``x [..., n_input_dims]``."""
        s = self(x).unflatten(-1, (self.cfg["n_layers"], 2, self.cfg["n_channels"]))
        return s[..., 0, :], s[..., 1, :]

    def modulate(self, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, layer: int = 0,
                 ray_indices: torch.Tensor | None = None, n_rays: int | None = None) -> torch.Tensor:
        """``gamma * Norm(h) + beta`` for modulated layer ``layer`` (apply the activation after it).

        ``gamma``/``beta`` come from `gamma_beta`; their leading shape is the samples' (``h [..., C]``)
        or, for ``[B, C, H, W]`` feature maps, ``[B]`` (broadcast over H x W).
        """
        n = normalize(h, self.cfg["norm"], ray_indices=ray_indices, n_rays=n_rays, eps=self.cfg["eps"])
        g, b = gamma[..., layer, :], beta[..., layer, :]
        if h.dim() == 4 and g.dim() == 2:  # feature maps: per frame, per channel
            g, b = g[:, :, None, None], b[:, :, None, None]
        return torch.addcmul(b.to(n.dtype), g.to(n.dtype), n)

    @torch.no_grad()
    def modulation_range(self, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(gamma_min, gamma_max, beta_min, beta_max)`` over the whole grid, each ``[n_channels]``.

        Interpolated values lie between the nodes' values, so these bound gamma and beta at any input.
        """
        g = self.grid[layer, 0].flatten(1)
        b = self.grid[layer, 1].flatten(1)
        return g.min(1).values, g.max(1).values, b.min(1).values, b.max(1).values
