"""SDF fields: presets, the registry round trip, losses, and second-order gradients through the grid."""

import pytest
import torch

from fieldstudio.encoders import build_encoding
from fieldstudio.fields.registry import build_field
from fieldstudio.fields.sdf import (SDF_PRESETS, SDFField, eikonal_loss, l1_loss, mape_loss, normal_loss,
                                    sdf_field_preset)


def _small_grid(interpolation):
    return {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
            "base_resolution": 4, "per_level_scale": 2.0, "interpolation": interpolation}


@pytest.mark.parametrize("name", SDF_PRESETS)
def test_presets_build_and_rebuild_from_their_config(name):
    torch.manual_seed(0)
    fld = SDFField(sdf_field_preset(name))
    x = torch.rand(100, 3)
    assert fld(x).shape == (100, 1) and fld.sdf(x).shape == (100,)
    assert set(fld.channels(x)) == {"sdf"}
    again = build_field(fld.config)
    again.load_state_dict(fld.state_dict())
    torch.testing.assert_close(again(x), fld(x), rtol=0, atol=0)
    assert fld.config["otype"] == "SDFField"


def test_hashgrid_preset_switches_to_smoothstep_for_second_order_losses():
    assert sdf_field_preset("hashgrid")["encoding"]["interpolation"] == "Linear"
    assert sdf_field_preset("hashgrid", second_order=True)["encoding"]["interpolation"] == "Smoothstep"


def test_second_order_gradients_flow_through_the_smoothstep_grid():
    """Eikonal loss -> d/dparams of |d f / d x|: double backward through grid + MLP."""
    torch.manual_seed(0)
    fld = SDFField({"encoding": _small_grid("Smoothstep"),
                    "network": {"otype": "MLP", "n_neurons": 16, "n_hidden_layers": 1, "activation": "Softplus"}})
    with torch.no_grad():
        fld.encoding.params.uniform_(-1, 1)
    x = torch.rand(256, 3)
    f, g = fld.sdf_and_gradient(x, create_graph=True)
    assert g.shape == (256, 3) and g.requires_grad
    eikonal_loss(g).backward()
    for name, p in fld.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # finite-difference check of the gradient of the eikonal loss along a random direction of the grid
    params = fld.encoding.params
    d = torch.randn_like(params)
    analytic = (params.grad * d).sum()

    def loss_at(t):
        with torch.no_grad():
            old = params.clone()
            params.add_(t * d)
        _, gg = fld.sdf_and_gradient(x, create_graph=False)
        val = eikonal_loss(gg).item()
        with torch.no_grad():
            params.copy_(old)
        return val

    eps = 1e-3
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert numeric == pytest.approx(analytic.item(), rel=0.05, abs=1e-4)


@pytest.mark.parametrize("interpolation,nonzero", [("Linear", False), ("Smoothstep", True)])
def test_grid_second_derivative_in_x_is_zero_only_for_linear(interpolation, nonzero):
    torch.manual_seed(0)
    enc = build_encoding(_small_grid(interpolation), 3)
    with torch.no_grad():
        enc.params.uniform_(-1, 1)
    x = (torch.rand(64, 3) * 0.9 + 0.05).requires_grad_(True)
    y = enc(x).sum()
    (g,) = torch.autograd.grad(y, x, create_graph=True)
    (h,) = torch.autograd.grad(g[:, 0].sum(), x)  # d2 y / dx0 dx (row of the Hessian)
    assert (h[:, 0].abs().max() > 1e-3) == nonzero  # d2/dx0^2: zero for a multilinear interpolant


def test_losses_closed_forms():
    pred, target = torch.tensor([0.0, 0.02, -0.5]), torch.tensor([0.01, 0.0, -0.49])
    assert mape_loss(pred, target).item() == pytest.approx((0.01 / 0.02 + 0.02 / 0.01 + 0.01 / 0.5) / 3)
    assert l1_loss(pred, target).item() == pytest.approx(0.04 / 3)
    g = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    assert eikonal_loss(g).item() == pytest.approx(2.0)
    assert normal_loss(g, torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.0, -1.0]])).item() == pytest.approx(1.0)
