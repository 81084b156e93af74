"""CUDA checks: the same encoders and fitting on a GPU give what the CPU path gives.

Skipped where PyTorch sees no CUDA device (CI has none); run on a GPU machine with
``python -m pytest -m gpu``.
"""

import pytest
import torch

from fieldstudio.encoders import build_encoding
from fieldstudio.fields import build_network

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("interp", ["Linear", "Smoothstep"])
def test_grid_cuda_matches_cpu(d, interp):
    torch.manual_seed(0)
    cfg = {"otype": "HashGrid", "n_levels": 8, "log2_hashmap_size": 14, "base_resolution": 8, "per_level_scale": 1.7,
           "interpolation": interp}
    cpu = build_encoding(cfg, d, backend="torch")
    with torch.no_grad():
        cpu.params.normal_()
    gpu = build_encoding(cfg, d, backend="torch").cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.rand(4096, d)
    g = torch.randn(4096, cpu.n_output_dims)
    y_cpu = cpu(x)
    y_gpu = gpu(x.cuda())
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-5, atol=1e-5)
    (a,) = torch.autograd.grad(y_cpu, cpu.params, g)
    (b,) = torch.autograd.grad(y_gpu, gpu.params, g.cuda())
    torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-5)
    xg = x.cuda().requires_grad_(True)
    (gx,) = torch.autograd.grad(gpu(xg), xg, g.cuda())
    xc = x.clone().requires_grad_(True)
    (cx,) = torch.autograd.grad(cpu(xc), xc, g)
    torch.testing.assert_close(gx.cpu(), cx, rtol=1e-3, atol=1e-4)


def test_other_encoders_and_networks_on_cuda():
    x = torch.rand(1000, 3, device="cuda")
    for cfg in ({"otype": "Frequency"}, {"otype": "SphericalHarmonics", "degree": 8}, {"otype": "Identity"},
                {"otype": "DenseGrid", "n_levels": 4}):
        enc = build_encoding(cfg, 3).cuda()
        assert enc(x).is_cuda and torch.isfinite(enc(x)).all()
    for cfg in ({"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 2}, {"otype": "SIREN"}):
        net = build_network(cfg, 3, 4).cuda()
        assert net(x).shape == (1000, 4)


def test_fit_image_on_cuda(tmp_path):
    from fieldstudio.apps.fit_image import fit_image
    from fieldstudio.runs import load_run

    m = fit_image(None, encoder="hashgrid", crop=256, steps=150, out=tmp_path / "r", device="cuda", progress=False)
    assert m["psnr"] >= 30.0 and m["device"].startswith("cuda")
    run = load_run(tmp_path / "r", device="cpu")  # a GPU run opens on the CPU
    assert next(run.field.parameters()).device.type == "cpu"


def test_voxel_sparse_updates_on_cuda_match_cpu():
    from fieldstudio.fields.radiance_grids import VoxelField
    from fieldstudio.optim import LazyAdam, adam

    torch.manual_seed(0)
    cpu = VoxelField({"resolution": 16, "sh_degree": 2, "init_std": 0.3})
    gpu = VoxelField({"resolution": 16, "sh_degree": 2, "init_std": 0.3}).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x, d = torch.rand(3000, 3), torch.nn.functional.normalize(torch.randn(3000, 3), dim=-1)
    opts = [adam(f, 0.05) for f in (cpu, gpu)]
    assert all(isinstance(o, LazyAdam) for o in opts)
    for _ in range(3):
        for f, o, dev in ((cpu, opts[0], "cpu"), (gpu, opts[1], "cuda")):
            c = f.channels(x.to(dev), d.to(dev))
            loss = (c["rgb"] ** 2).mean() + (c["log_density"] ** 2).mean()
            o.zero_grad(set_to_none=True)
            loss.backward()
            assert f.grid.grad.is_sparse
            o.step()
    torch.testing.assert_close(gpu.grid.detach().cpu(), cpu.grid.detach(), rtol=1e-4, atol=1e-5)
