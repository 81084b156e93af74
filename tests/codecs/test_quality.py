"""SSIM against scikit-image, MS-SSIM against pytorch-msssim, PSNR on 8-bit frames."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from fieldstudio.codecs.quality import frame_metrics, ms_ssim, ms_ssim_scales, ssim


def _pair(h=48, w=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 3, h, w, generator=g, dtype=torch.float64)
    b = (a + 0.15 * torch.randn(2, 3, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    return a, b


def test_ssim_matches_scikit_image():
    a, b = _pair()
    ours = ssim(a, b)
    for i in range(2):
        ref = structural_similarity(a[i].permute(1, 2, 0).numpy(), b[i].permute(1, 2, 0).numpy(), data_range=1.0,
                                    channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert abs(float(ours[i]) - ref) < 1e-9


def test_ms_ssim_matches_pytorch_msssim_with_five_scales():
    pm = pytest.importorskip("pytorch_msssim")
    a, b = _pair(192, 200)
    assert ms_ssim_scales(192, 200) == 5
    ref = pm.ms_ssim(a.float(), b.float(), data_range=1.0, size_average=False)
    assert torch.allclose(ms_ssim(a.float(), b.float()), ref, atol=1e-5)


def test_ms_ssim_uses_fewer_scales_on_small_frames():
    assert ms_ssim_scales(144, 176) == 4 and ms_ssim_scales(32, 32) == 2
    a, b = _pair(144, 176)
    v = ms_ssim(a, b)
    assert ((v > 0) & (v < 1)).all()
    assert torch.allclose(ms_ssim(a, a), torch.ones(2, dtype=torch.float64))


def test_frame_psnr_is_8bit_mse_over_all_channels():
    ref = np.full((2, 20, 20, 3), 100, np.uint8)
    dec = ref.copy()
    dec[0, 0, 0, 0] = 110  # one value off by 10: mse = 100 / 1200
    m = frame_metrics(dec, ref)
    assert abs(m["psnr"][0] - 10 * math.log10(255 ** 2 * 1200 / 100)) < 1e-9
    assert m["psnr"][1] == float("inf")
