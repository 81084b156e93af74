"""Radial basis kernels of NeuRBF (Chen et al., ICCV 2023) and the plain encode step.

Every kernel i has a centre c_i and a shape; a query x sees its k nearest kernels only.
Shapes come in three variants: "isotropic" (one value per kernel), "diagonal" (one per axis)
and "full" (a symmetric d x d matrix stored as its d(d+1)/2 upper-triangular entries, so the
parameter count is the one the paper budgets). For the quadratic kernels the shape is the
inverse covariance S and r^2 = (x - c)^T S (x - c):

* ``ivq`` inverse quadratic  1 / (1 + r^2)       (image and radiance-field default, full shape)
* ``gauss`` Gaussian          exp(-r^2 / 2)
* ``nlin`` N-linear tent      prod_j max(0, 1 - |x_j - c_j| * s_j)   (SDF default, isotropic);
  on a regular lattice with s = 1 / spacing this is exactly d-linear grid interpolation.

`rbf_encode` runs the fused C++ kernel (`fieldstudio.kernels`, forward and backward in one pass
each) on the CPU when it is available, and `rbf_encode_torch` otherwise: the whole forward pass in
plain PyTorch (autograd gives the backward), which is also the twin the kernel is tested against.
Inputs that need gradients keep the PyTorch path: SDF losses differentiate the gradient to x
again, and the kernel has no second-order pass.
"""

from __future__ import annotations

import torch

from fieldstudio.kernels import cpu_kernels

KERNELS = ("ivq", "gauss", "nlin")
SHAPES = ("isotropic", "diagonal", "full")


def shape_size(shape: str, d: int) -> int:
    """Parameters per kernel for its shape."""
    return {"isotropic": 1, "diagonal": d, "full": d * (d + 1) // 2}[shape]


def triu_index(d: int) -> torch.Tensor:
    """``[d, d]`` map from matrix entry to its slot in the packed upper triangle (symmetric)."""
    idx = torch.empty(d, d, dtype=torch.long)
    n = 0
    for i in range(d):
        for j in range(i, d):
            idx[i, j] = idx[j, i] = n
            n += 1
    return idx


def pack_symmetric(m: torch.Tensor) -> torch.Tensor:
    """``[..., d, d]`` -> ``[..., d(d+1)/2]`` (upper triangle, row by row)."""
    d = m.shape[-1]
    rows, cols = torch.triu_indices(d, d)
    return m[..., rows, cols]


def unpack_symmetric(p: torch.Tensor, d: int) -> torch.Tensor:
    """Inverse of `pack_symmetric`."""
    return p[..., triu_index(d).to(p.device).reshape(-1)].reshape(*p.shape[:-1], d, d)


def squared_radius(diff: torch.Tensor, shape_params: torch.Tensor, shape: str) -> torch.Tensor:
    """``r^2`` for offsets ``diff`` ``[..., d]`` and per-kernel shape parameters ``[..., P]``."""
    if shape == "isotropic":
        return (diff * diff).sum(-1) * shape_params[..., 0]
    if shape == "diagonal":
        return (diff * diff * shape_params).sum(-1)
    d = diff.shape[-1]
    s = unpack_symmetric(shape_params, d)
    return torch.einsum("...i,...ij,...j->...", diff, s, diff)


def kernel_value(diff: torch.Tensor, shape_params: torch.Tensor, kernel: str, shape: str) -> torch.Tensor:
    """phi(x) for offsets ``x - c`` ``[..., d]``; see the module docstring for the formulas."""
    if kernel == "nlin":
        if shape == "full":
            raise ValueError("the N-linear kernel has no full-matrix shape; use isotropic or diagonal")
        s = shape_params if shape == "diagonal" else shape_params[..., :1]
        return torch.clamp(1.0 - diff.abs() * s, min=0.0).prod(-1)
    r2 = squared_radius(diff, shape_params, shape)
    if kernel == "ivq":
        return 1.0 / (1.0 + r2)
    if kernel == "gauss":
        return torch.exp(-0.5 * r2)
    raise ValueError(f"unknown kernel {kernel!r}")


_KERNEL_IDS = {"ivq": 0, "gauss": 1, "nlin": 2}
_SHAPE_IDS = {"isotropic": 0, "diagonal": 1, "full": 2}


class _RBFKernel(torch.autograd.Function):
    """The fused C++ evaluation; gradients to x, centres, shapes and weights as autograd gives
    the twin (detached normalising sum included)."""

    @staticmethod
    def forward(ctx, x, centres, shapes, weights, idx, freqs, kernel, shape, normalize, mod):
        ctx.save_for_backward(x, centres, shapes, weights, idx, freqs)
        ctx.meta = (kernel, shape, normalize, mod)
        return mod.rbf_forward(x, idx, centres, shapes, weights, freqs, kernel, shape, normalize)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, centres, shapes, weights, idx, freqs = ctx.saved_tensors
        kernel, shape, normalize, mod = ctx.meta
        need = ctx.needs_input_grad
        gx, gc, gs, gw = mod.rbf_backward(grad_out.contiguous(), x, idx, centres, shapes, weights, freqs, kernel, shape,
                                          normalize, need[0], need[1], need[2], need[3])
        return ((gx if need[0] else None), (gc if need[1] else None), (gs if need[2] else None),
                (gw if need[3] else None), None, None, None, None, None, None)


def rbf_encode(x: torch.Tensor, idx: torch.Tensor, centres: torch.Tensor, shapes: torch.Tensor,
               weights: torch.Tensor, freqs: torch.Tensor | None, kernel: str, shape: str,
               normalize: bool = True) -> torch.Tensor:
    """Kernel features ``[N, C]``; see `rbf_encode_torch` for the definition. Uses the fused CPU
    kernel when it applies (CPU tensors of one float dtype, d <= 4, k <= 64, x without gradients)."""
    tensors = (x, centres, shapes, weights) + ((freqs,) if freqs is not None else ())
    fits = (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and all(t.device.type == "cpu" and t.dtype == x.dtype for t in tensors)
            and not x.requires_grad and (freqs is None or not freqs.requires_grad)
            and x.dim() == 2 and 1 <= x.shape[1] <= 4 and 1 <= idx.shape[1] <= 64 and idx.device.type == "cpu"
            and not (kernel == "nlin" and shape == "full"))
    mod = cpu_kernels() if fits else None
    if mod is None:
        return rbf_encode_torch(x, idx, centres, shapes, weights, freqs, kernel, shape, normalize)
    f = freqs.contiguous() if freqs is not None else x.new_empty(0)
    return _RBFKernel.apply(x.contiguous(), centres.contiguous(), shapes.contiguous(), weights.contiguous(),
                            idx.to(torch.int64).contiguous(), f, _KERNEL_IDS[kernel], _SHAPE_IDS[shape], normalize, mod)


def rbf_encode_torch(x: torch.Tensor, idx: torch.Tensor, centres: torch.Tensor, shapes: torch.Tensor,
               weights: torch.Tensor, freqs: torch.Tensor | None, kernel: str, shape: str,
               normalize: bool = True) -> torch.Tensor:
    """Kernel features ``[N, C]`` of queries ``x`` ``[N, d]`` from their kernels ``idx`` ``[N, k]``.

    ``feature = sum_i w_i * psi(phi~_i(x))`` over the k kernels, where phi~ is phi divided by the
    sum over the k neighbours with the sum *detached* (the paper's normalisation: the gradient
    sees each kernel's own value only), and psi expands the scalar channel-wise, sin(phi~ * m_c)
    with the C frequencies ``freqs`` (multi-frequency sinusoidal composition) or phi~ itself
    when ``freqs`` is None.
    """
    diff = x[:, None, :] - centres[idx]  # [N, k, d]
    phi = kernel_value(diff, shapes[idx], kernel, shape)  # [N, k]
    if normalize:
        phi = phi / (phi.detach().sum(-1, keepdim=True) + 1e-8)
    psi = phi[..., None]
    if freqs is not None:
        psi = torch.sin(psi * freqs)
    return (weights[idx] * psi).sum(1)
