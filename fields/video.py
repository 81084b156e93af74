"""NeRV-style video field: frame index -> whole frame, with PFNR's subnetwork masks and FSO block.

Positional encoding of the frame time t in [0, 1) and of the video id -> MLP stem -> a small
feature map -> blocks of (3x3 conv to 4C channels + PixelShuffle(2)) or one Fourier subneural
operator block (spectral convolution upsampling x2) -> one 1x1 output head per video.

Every stem, conv and spectral tensor is a `MaskedModule` tensor, so the same network serves a
single video (``dense`` mode, then magnitude pruning) and PFNR's continual sessions (``score``
mode while a session trains, ``fixed`` masks afterwards). Heads are per video and never masked.

`modulation` is the per-block hook: when set, it is called as ``modulation(block, features, t)``
after each block's upsampling and before its activation, and returns the modulated features.
With a ``cam`` config the field carries CAM itself (FFNeRV + CAM): each block's features are
instance-normalised over H x W and scaled and shifted per channel by a time grid of its video,
before the hook and the activation.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fieldstudio.config import Field, at_least, between, parse_fields, positive
from fieldstudio.errors import ConfigError

from .subnet import MaskedModule

VIDEO_FIELDS = {
    "height": Field(int, check=positive, doc="frame height in pixels"),
    "width": Field(int, check=positive, doc="frame width in pixels"),
    "blocks": Field(int, 4, check=between(1, 6), doc="upsampling blocks (x2 each)"),
    "channels": Field(int, 32, check=at_least(2), doc="channels of the first block"),
    "min_channels": Field(int, 8, check=at_least(1)),
    "stem_channels": Field(int, 16, check=at_least(1), doc="channels of the stem's feature map"),
    "stem_hidden": Field(int, 32, check=at_least(1)),
    "pe_base": Field(float, 1.25, check=positive),
    "pe_levels": Field(int, 40, check=at_least(1)),
    "fso": Field(bool, False, doc="replace block fso_block by a spectral convolution"),
    "fso_block": Field(int, 1, check=at_least(0)),
    "fso_modes": Field(list, [4, 4]),
    "heads": Field(int, 1, check=at_least(1), doc="output heads, one per video"),
    # CAM (encoders/cam.py) on every block: a time grid with per-channel gamma, beta after an
    # instance normalisation over H x W; one set of grids per video, stored with its head
    "cam": Field((dict, type(None)), None, doc='{"resolution": [T_mod]} (+ optional "lr_factor"), or null'),
}


def positional_encoding(x: torch.Tensor, base: float, levels: int) -> torch.Tensor:
    """NeRV's encoding [sin(b^i pi x), cos(b^i pi x)]_{i<levels} of a [B] tensor -> [B, 2*levels]."""
    freqs = (base ** torch.arange(levels, dtype=x.dtype, device=x.device)) * math.pi
    ang = x[:, None] * freqs
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)


class MaskedLinear(MaskedModule):
    masked_names = ("weight", "bias")

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        ref = nn.Linear(n_in, n_out)
        self.weight, self.bias = ref.weight, ref.bias
        self._init_scores()

    def forward(self, x):
        return F.linear(x, self.masked("weight"), self.masked("bias"))


class MaskedConv2d(MaskedModule):
    masked_names = ("weight", "bias")

    def __init__(self, n_in: int, n_out: int, kernel: int = 3):
        super().__init__()
        ref = nn.Conv2d(n_in, n_out, kernel, padding=kernel // 2)
        self.weight, self.bias = ref.weight, ref.bias
        self.padding = kernel // 2
        self._init_scores()

    def forward(self, x):
        return F.conv2d(x, self.masked("weight"), self.masked("bias"), padding=self.padding)


class SpectralUpsample(MaskedModule):
    """Fourier subneural operator: x2 upsampling by a spectral convolution (real and imaginary masks).

    The lowest ``modes`` frequencies (the top and bottom row blocks of the rfft2 half-plane) are
    mixed across channels by complex weights and placed at the same frequencies of a twice larger
    spectrum, so the inverse transform interpolates. PFNR's code pads the spectrum at the end of
    the first axis instead, which does not re-centre the negative frequencies; here they are
    placed where they belong.
    """

    masked_names = ("weight_re", "weight_im")

    def __init__(self, n_in: int, n_out: int, modes: tuple[int, int]):
        super().__init__()
        m1, m2 = modes
        self.modes = (m1, m2)
        scale = 1.0 / (n_in * n_out) ** 0.5
        self.weight_re = nn.Parameter(scale * torch.randn(n_in, n_out, 2 * m1, m2))
        self.weight_im = nn.Parameter(scale * torch.randn(n_in, n_out, 2 * m1, m2))
        self._init_scores()

    def forward(self, x):
        b, _, h, w = x.shape
        m1, m2 = self.modes
        spec = torch.fft.rfft2(x, norm="forward")
        low = torch.cat([spec[:, :, :m1, :m2], spec[:, :, h - m1:, :m2]], dim=2)
        weight = torch.complex(self.masked("weight_re"), self.masked("weight_im"))
        mixed = torch.einsum("bixy,ioxy->boxy", low, weight)
        out = torch.zeros(b, weight.shape[1], 2 * h, w + 1, dtype=mixed.dtype, device=x.device)
        out[:, :, :m1, :m2] = mixed[:, :, :m1]
        out[:, :, 2 * h - m1:, :m2] = mixed[:, :, m1:]
        return torch.fft.irfft2(out, s=(2 * h, 2 * w), norm="forward")


class ConvUpsample(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = MaskedConv2d(n_in, 4 * n_out, 3)

    def forward(self, x):
        return F.pixel_shuffle(self.conv(x), 2)


def block_channels(cfg: Mapping[str, Any]) -> list[int]:
    """Output channels of each block: halving after the second block, floored at min_channels."""
    c = cfg["channels"]
    return [max(cfg["min_channels"], c >> max(0, i - 1)) for i in range(cfg["blocks"])]


def base_size(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """Stem feature-map size; the decoded frame is cropped from base * 2^blocks."""
    f = 1 << cfg["blocks"]
    return -(-cfg["height"] // f), -(-cfg["width"] // f)


class VideoField(nn.Module):
    def __init__(self, config: Mapping[str, Any], backend: str = "auto"):
        super().__init__()
        cfg = parse_fields(config, VIDEO_FIELDS, "VideoField")
        self.config = {"otype": "VideoField", **cfg}
        h0, w0 = base_size(cfg)
        self.base = (h0, w0)
        chans = block_channels(cfg)
        if cfg["fso"] and not 0 <= cfg["fso_block"] < cfg["blocks"]:
            raise ConfigError(f"VideoField: fso_block {cfg['fso_block']} does not exist ({cfg['blocks']} blocks)",
                              f"use 0..{cfg['blocks'] - 1}")
        n_pe = 2 * cfg["pe_levels"]
        self.stem = nn.ModuleList([MaskedLinear(2 * n_pe, cfg["stem_hidden"]),
                                   MaskedLinear(cfg["stem_hidden"], cfg["stem_channels"] * h0 * w0)])
        blocks, c_in = [], cfg["stem_channels"]
        for i, c_out in enumerate(chans):
            if cfg["fso"] and i == cfg["fso_block"]:
                h, w = h0 << i, w0 << i
                modes = [int(m) for m in cfg["fso_modes"]]
                if len(modes) != 2 or not (1 <= modes[0] <= h // 2 and 1 <= modes[1] <= w // 2 + 1):
                    raise ConfigError(f"VideoField: fso_modes {cfg['fso_modes']} do not fit a {h}x{w} feature map",
                                      f"use [m1, m2] with 1 <= m1 <= {h // 2}, 1 <= m2 <= {w // 2 + 1}")
                blocks.append(SpectralUpsample(c_in, c_out, (modes[0], modes[1])))
            else:
                blocks.append(ConvUpsample(c_in, c_out))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList([nn.Conv2d(c_in, 3, 1) for _ in range(cfg["heads"])])
        self._block_channels = chans
        self.cams = None
        if cfg["cam"] is not None:
            self.config["cam"] = _cam_template(cfg["cam"])
            self.cams = nn.ModuleList([self._new_cams() for _ in range(cfg["heads"])])
        self.modulation: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def _new_cams(self) -> nn.ModuleList:
        from fieldstudio.encoders import build_encoding

        return nn.ModuleList(build_encoding({**self.config["cam"], "n_channels": c}, 1, backend="torch")
                             for c in self._block_channels)

    def session_parameters(self, video: int) -> list[torch.Tensor]:
        """What belongs to one video alone: its head and, with CAM, its modulation grids."""
        params = list(self.heads[video].parameters())
        if self.cams is not None:
            params += list(self.cams[video].parameters())
        return params

    def add_head(self) -> int:
        """A fresh output head for a new video; returns its index."""
        ref = self.heads[0]
        self.heads.append(nn.Conv2d(ref.in_channels, 3, 1).to(ref.weight.device))
        if self.cams is not None:
            self.cams.append(self._new_cams().to(ref.weight.device))
        self.config["heads"] = len(self.heads)
        return len(self.heads) - 1

    def encode_input(self, t: torch.Tensor, video: int) -> torch.Tensor:
        cfg = self.config
        vid = torch.full_like(t, 0.1 * video)  # any fixed map of the id works; 0.1 keeps it in PE's range
        return torch.cat([positional_encoding(t, cfg["pe_base"], cfg["pe_levels"]),
                          positional_encoding(vid, cfg["pe_base"], cfg["pe_levels"])], dim=-1)

    def forward(self, t: torch.Tensor, video: int = 0) -> torch.Tensor:
        """Frames [B, 3, H, W] in [0, 1] at times ``t`` (shape [B], frame index / frame count)."""
        x = self.encode_input(t, video)
        for layer in self.stem:
            x = F.silu(layer(x))
        x = x.view(t.shape[0], self.config["stem_channels"], *self.base)
        cams = self.cams[video] if self.cams is not None else None
        for i, block in enumerate(self.blocks):
            x = block(x)
            if cams is not None:
                gamma, beta = cams[i].gamma_beta(t[:, None])
                x = cams[i].modulate(x, gamma, beta)
            if self.modulation is not None:
                x = self.modulation(i, x, t)
            x = F.silu(x)
        y = self.heads[video](x)[:, :, :self.config["height"], :self.config["width"]]
        return (torch.tanh(y) + 1) / 2

    def shared_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """Weights shared across videos (stem and blocks), without the scores."""
        return [(n, p) for n, p in self.named_parameters()
                if not n.startswith(("heads.", "cams.")) and ".score_" not in n]


def _cam_template(cam: Mapping[str, Any]) -> dict[str, Any]:
    """The per-block CAM config: a time grid, per-channel gamma/beta, instance normalisation.

    The grids train at the network's learning rate by default (``lr_factor`` 1), unlike the 10x of
    the image and radiance-field variants: the paper's released FFNeRV code puts the modulation
    grids in the one Adam group of the whole network, and at the video trainer's rate of 1e-2 a
    10x rate made CAM lose 0.5 dB on carphone where 1x gains 0.8 dB.
    """
    allowed = {"resolution", "lr_factor", "eps"}
    extra = sorted(set(cam) - allowed - {"otype", "n_layers", "n_channels", "norm", "dims", "coordinates", "bounds"})
    if extra:
        raise ConfigError(f"VideoField: unknown cam setting(s) {extra}", f"use {sorted(allowed)}")
    res = cam.get("resolution", [30])
    if not (isinstance(res, list) and len(res) == 1):
        raise ConfigError(f"VideoField: cam resolution {res!r} is not a time grid", "give one size, e.g. [30]")
    return {"otype": "CAM", "resolution": res, "dims": [0], "coordinates": "cartesian", "bounds": [0.0, 1.0],
            "n_layers": 1, "norm": "instance", "lr_factor": float(cam.get("lr_factor", 1.0)),
            "eps": float(cam.get("eps", 1e-5))}


def count_params(config: Mapping[str, Any]) -> int:
    """Weights of one video (shared tensors + one head), without building real tensors."""
    with torch.device("meta"):
        f = VideoField({**config, "heads": 1})
    return sum(p.numel() for _, p in f.shared_parameters()) + sum(p.numel() for p in f.session_parameters(0))


def size_config(height: int, width: int, target_params: int, fso: bool = False, **overrides) -> dict[str, Any]:
    """A VideoField config for a frame size whose parameter count is the largest not above ``target_params``.

    Four x2 blocks for frames of 64 px and more (fewer for smaller ones); the first-block width
    is searched, and the stem's feature map and hidden layer grow with it.
    """
    small = min(height, width)
    blocks = overrides.pop("blocks", 4 if small >= 64 else 3 if small >= 24 else 2)

    def make(c: int) -> dict[str, Any]:
        cfg = {"otype": "VideoField", "height": height, "width": width, "blocks": blocks, "channels": c,
               "min_channels": max(4, c // 4), "stem_channels": max(4, c // 2), "stem_hidden": max(16, c),
               "fso": fso}
        if fso:
            h, w = base_size(cfg)
            i = min(1, blocks - 1)
            cfg["fso_block"] = i
            cfg["fso_modes"] = [min(4, max(1, (h << i) // 2)), min(4, (w << i) // 2 + 1)]
        cfg.update(overrides)
        return cfg

    best = make(4)
    for c in range(4, 513, 2):
        cfg = make(c)
        if count_params(cfg) > target_params:
            break
        best = cfg
    return best
