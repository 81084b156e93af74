"""Frame quality: PSNR on 8-bit frames, SSIM and MS-SSIM (Gaussian window 11, sigma 1.5) in PyTorch.

SSIM averages the valid part of the map (no padding), like scikit-image with
``gaussian_weights=True, use_sample_covariance=False``. MS-SSIM uses Wang et al.'s five scale
weights, but only as many scales as the frame allows (the coarsest scale must still hold one
11 x 11 window: 4 scales for 144 px frames); the weights of the scales used are renormalised to
sum to one; scales combine per colour channel, then channels are averaged
(as pytorch-msssim does). The codec comparisons in this project all use these same functions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WIN, SIGMA = 11, 1.5


def _window(channels: int, dtype, device) -> torch.Tensor:
    x = torch.arange(WIN, dtype=dtype, device=device) - WIN // 2
    g = torch.exp(-(x ** 2) / (2 * SIGMA ** 2))
    return (g / g.sum()).expand(channels, 1, 1, WIN).contiguous()


def _ssim_parts(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, per_channel: bool = False):
    c = x.shape[1]
    w = _window(c, x.dtype, x.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    # the Gaussian is separable: two 1-D passes are ~10x faster than one 11 x 11 pass
    blur = lambda z: F.conv2d(F.conv2d(z, w, groups=c), w.transpose(2, 3), groups=c)  # noqa: E731
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs
    dims = (2, 3) if per_channel else (1, 2, 3)
    return ssim_map.mean(dim=dims), cs.mean(dim=dims)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM per image of two [B, C, H, W] batches (differentiable; H, W >= 11)."""
    return _ssim_parts(x, y, data_range)[0]


def ms_ssim_scales(height: int, width: int) -> int:
    return max(1, min(len(MS_WEIGHTS), 1 + int(math.floor(math.log2(min(height, width) / WIN)))))


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """MS-SSIM per image of two [B, C, H, W] batches."""
    levels = ms_ssim_scales(x.shape[-2], x.shape[-1])
    weights = torch.tensor(MS_WEIGHTS[:levels], dtype=x.dtype, device=x.device)
    weights = weights / weights.sum()
    values = []
    for i in range(levels):
        s, cs = _ssim_parts(x, y, data_range, per_channel=True)
        values.append(torch.relu(s if i == levels - 1 else cs))
        if i < levels - 1:
            pad = [d % 2 for d in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    stack = torch.stack(values, dim=0)  # [levels, B, C]: combined per channel, then averaged over channels
    return torch.prod(stack ** weights[:, None, None], dim=0).mean(dim=1)


def video_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """NeRV / PFNR training loss: 0.7 * L1 + 0.3 * (1 - SSIM)."""
    return 0.7 * (pred - target).abs().mean() + 0.3 * (1 - ssim(pred, target).mean())


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[T, 3, H, W] floats in [0, 1] -> [T, H, W, 3] uint8, as a decoder writes them."""
    return (frames.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def frame_metrics(decoded: np.ndarray, reference: np.ndarray) -> dict[str, list[float]]:
    """PSNR (dB, 8-bit, over all channels) and MS-SSIM per frame of two [T, H, W, 3] uint8 videos."""
    if decoded.shape != reference.shape:
        raise ValueError(f"shapes differ: {decoded.shape} vs {reference.shape}")
    d = decoded.astype(np.float64)
    r = reference.astype(np.float64)
    mse = ((d - r) ** 2).reshape(len(d), -1).mean(axis=1)
    psnr = [float("inf") if m == 0 else 10 * math.log10(255.0 ** 2 / m) for m in mse]
    ms = []
    for i in range(0, len(d), 16):
        a = torch.from_numpy(d[i:i + 16] / 255.0).float().permute(0, 3, 1, 2)
        b = torch.from_numpy(r[i:i + 16] / 255.0).float().permute(0, 3, 1, 2)
        ms += [float(v) for v in ms_ssim(a, b)]
    return {"psnr": psnr, "ms_ssim": ms}


def summarize(per_frame: dict[str, list[float]]) -> dict[str, float]:
    """Averages; PSNR averaged over frames (as NeRV reports it), inf frames clipped at 100 dB."""
    return {"psnr": float(np.mean([min(p, 100.0) for p in per_frame["psnr"]])),
            "ms_ssim": float(np.mean(per_frame["ms_ssim"]))}
