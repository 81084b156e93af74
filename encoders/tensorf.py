"""TensoRF's vector-matrix (VM) decomposition as an encoding (Chen et al., ECCV 2022).

A 3D feature volume is stored as three low-rank terms, one per axis pair: a plane over two axes
times a line along the third, ``f_c(x) = P^xy_c(x, y) L^z_c(z)`` (and the same for xz / y and
yz / x). The output concatenates the three modes, each with ``n_components`` channels:
``[..., 3 * n_components]`` in mode-major order (xy*z, xz*y, yz*x), so a field can reshape it to
``[..., 3, n_components]`` and sum or project the components as TensoRF does.

Config: ``n_components`` (rank per mode, 16), ``resolution`` (plane and line samples per axis,
128), ``init_std`` (0.1, TensoRF's ``init_scale``). Inputs in [0, 1]^3; bilinear / linear
interpolation with the end samples on the box faces (``align_corners=True``).
TensoRF grows the resolution during training; a fixed resolution is used here.

On the CPU (float32/64, inputs without gradients) the product runs in the fused kernel of
``kernels/csrc/dense.cpp``; the ``grid_sample`` code below is its twin, the test oracle and the
fallback. grid_sample stores a plane's channels r^2 apart, so every bilinear corner costs one
cache line per channel; the kernel reads channel-last copies where a corner is one row.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fieldstudio.config import Field, at_least, positive
from fieldstudio.kernels import dense_kernel_applies, dense_kernels

from .base import Encoding
from .registry import register

# (plane axes, line axis) per mode
_MODES = ((0, 1, 2), (0, 2, 1), (1, 2, 0))


@register
class TensorfVM(Encoding):
    """Plane x line products over the three axis pairs: ``3 * n_components`` features."""

    otype: ClassVar[str] = "TensorfVM"
    aliases: ClassVar[tuple[str, ...]] = ("TensoRF", "VM")
    fields: ClassVar[dict[str, Field]] = {
        "n_components": Field(int, 16, check=at_least(1), doc="rank per mode"),
        "resolution": Field(int, 128, check=at_least(2), doc="samples per axis of every plane and line"),
        "init_std": Field(float, 0.1, check=positive, doc="normal init scale of planes and lines"),
    }

    def __init__(self, n_input_dims: int = 3, config=None):
        super().__init__(n_input_dims, config)
        if self.n_input_dims != 3:
            raise ValueError(f"TensorfVM encodes 3D points, got n_input_dims={self.n_input_dims}")
        c, r, s = self.cfg["n_components"], self.cfg["resolution"], self.cfg["init_std"]
        self.planes = nn.Parameter(torch.randn(3, c, r, r) * s)
        self.lines = nn.Parameter(torch.randn(3, c, r, 1) * s)

    @property
    def n_output_dims(self) -> int:
        return 3 * self.cfg["n_components"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        lead = x.shape[:-1]
        pts = x.reshape(-1, 3).to(self.planes.dtype)
        if dense_kernel_applies(pts, self.planes):
            out = _VMProduct.apply(pts.contiguous(), self.planes, self.lines)
            return out.reshape(*lead, self.n_output_dims).to(x.dtype)
        return self.forward_torch(x)

    @torch.no_grad()
    def crop(self, lo, hi) -> None:
        """Re-read the planes and lines over the box ``[lo, hi]`` of [0, 1]^3 at the same resolution:
        afterwards the encoding at ``u`` is the old one at ``lo + u (hi - lo)`` (exactly at the samples,
        interpolated between them). TensoRF's bounding-box shrinking: the same samples, on less space."""
        r = self.cfg["resolution"]
        t = torch.linspace(0.0, 1.0, r, dtype=self.planes.dtype, device=self.planes.device)
        axis = [(float(lo[k]) + t * (float(hi[k]) - float(lo[k]))) * 2.0 - 1.0 for k in range(3)]  # grid_sample's [-1, 1]
        planes, lines = [], []
        for m, (a, b, k) in enumerate(_MODES):
            rows, cols = torch.meshgrid(axis[b], axis[a], indexing="ij")  # a plane over (a, b) is indexed [b, a]
            g = torch.stack([cols, rows], dim=-1)[None]
            planes.append(F.grid_sample(self.planes[m : m + 1], g, mode="bilinear", align_corners=True)[0])
            g = torch.stack([torch.zeros_like(axis[k]), axis[k]], dim=-1)[None, :, None]
            lines.append(F.grid_sample(self.lines[m : m + 1], g, mode="bilinear", align_corners=True)[0])
        self.planes.copy_(torch.stack(planes))
        self.lines.copy_(torch.stack(lines))

    def forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        """The grid_sample twin of the fused kernel (any device, input gradients included)."""
        lead = x.shape[:-1]
        u = x.reshape(-1, 3).to(self.planes.dtype) * 2.0 - 1.0
        # grid_sample reads (column, row): a plane over axes (a, b) is indexed [b, a]
        plane_xy = torch.stack([u[:, [a, b]] for a, b, _ in _MODES])  # [3, n, 2]
        line_z = torch.stack([torch.stack([torch.zeros_like(u[:, k]), u[:, k]], -1) for _, _, k in _MODES])
        p = F.grid_sample(self.planes, plane_xy[:, :, None], mode="bilinear", align_corners=True)  # [3, c, n, 1]
        ln = F.grid_sample(self.lines, line_z[:, :, None], mode="bilinear", align_corners=True)
        out = (p * ln)[..., 0].permute(2, 0, 1)  # [n, 3, c]
        return out.reshape(*lead, self.n_output_dims).to(x.dtype)


class _VMProduct(torch.autograd.Function):
    """Fused VM features ``[n, 3 * c]`` from points ``[n, 3]``; gradients to planes and lines."""

    @staticmethod
    def forward(ctx, pts, planes, lines):
        k = dense_kernels()
        # parameters keep the channel-first layout of the twin (and of saved checkpoints)
        planes_cl = planes.detach().permute(0, 2, 3, 1).contiguous()  # [3, r, r, c]
        lines_cl = lines.detach()[..., 0].transpose(1, 2).contiguous()  # [3, r, c]
        ctx.save_for_backward(pts, planes_cl, lines_cl)
        return k.vm_forward(pts, planes_cl, lines_cl).reshape(pts.shape[0], -1)

    @staticmethod
    def backward(ctx, grad):
        pts, planes_cl, lines_cl = ctx.saved_tensors
        need_p, need_l = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        gp, gl = dense_kernels().vm_backward(grad.contiguous(), pts, planes_cl, lines_cl, need_p, need_l)
        gp = gp.permute(0, 3, 1, 2).contiguous() if need_p else None
        gl = gl.transpose(1, 2)[..., None].contiguous() if need_l else None
        return None, gp, gl
