"""SphericalHarmonics encoding: tcnn's real SH basis, signs and layout, for every degree 1..8."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fieldstudio.encoders import build_encoding
from fieldstudio.encoders.spherical_harmonics import SphericalHarmonics
from fieldstudio.errors import ConfigError

try:
    from scipy.special import sph_harm_y

    def complex_sh(l: int, m: int, polar: np.ndarray, azimuth: np.ndarray) -> np.ndarray:
        return sph_harm_y(l, m, polar, azimuth)

except ImportError:  # scipy < 1.15 only has the old name, with (m, l, azimuth, polar)
    from scipy.special import sph_harm

    def complex_sh(l: int, m: int, polar: np.ndarray, azimuth: np.ndarray) -> np.ndarray:
        return sph_harm(m, l, azimuth, polar)


def tcnn_real_sh_reference(l: int, m: int, polar: np.ndarray, azimuth: np.ndarray) -> np.ndarray:
    """tcnn's real SH Y_lm from scipy's complex ones -- the sign convention, fixed in one place.

    scipy's complex Y_l^m already carries the Condon-Shortley phase (-1)^m. tcnn's basis is then
        m > 0:  sqrt(2) * Re Y_l^m
        m = 0:  Y_l^0 (real)
        m < 0:  sqrt(2) * Im Y_l^|m|
    with no further per-(l, m) sign. (Against complex SH *without* the CS phase this reads
    sqrt(2) * (-1)^m * Re/Im.) Derived from tcnn's l = 1, 2 constants: scipy gives
    Y_1^1 = -sqrt(3/(8 pi)) sin(theta) e^{i phi}, so sqrt(2) Re = -0.4886 x and sqrt(2) Im = -0.4886 y,
    matching tcnn's out[3] = -0.4886 x and out[1] = -0.4886 y; Y_2^2 ~ +sin^2(theta) e^{2 i phi}
    gives +0.5463 (x^2 - y^2) and +1.0925 xy, matching out[8] and out[4]. The test below checks
    the full basis for l <= 7 against this, and test_tcnn_constants_* pin l <= 4 independently.
    """
    y = complex_sh(l, abs(m), polar, azimuth)
    if m > 0:
        return math.sqrt(2.0) * y.real
    if m < 0:
        return math.sqrt(2.0) * y.imag
    return y.real


def random_unit_vectors(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True)


def encode(v: torch.Tensor, degree: int) -> torch.Tensor:
    """Unit vectors -> the module's output, through tcnn's [0, 1]^3 input convention."""
    return SphericalHarmonics(3, {"degree": degree})((v + 1) / 2)


@pytest.mark.parametrize("degree", range(1, 9))
def test_full_basis_against_scipy(degree: int) -> None:
    v = random_unit_vectors(64)
    # include the poles and the equator, where sin(theta) or cos(theta) vanish
    v = torch.cat([v, torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]],
                                   dtype=torch.float64)])
    polar = np.arccos(np.clip(v[:, 2].numpy(), -1, 1))
    azimuth = np.arctan2(v[:, 1].numpy(), v[:, 0].numpy())
    expected = np.stack(
        [tcnn_real_sh_reference(l, m, polar, azimuth) for l in range(degree) for m in range(-l, l + 1)], axis=-1
    )
    out = encode(v, degree)
    assert out.shape == (v.shape[0], degree**2)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)


def tcnn_l_le_4(v: torch.Tensor) -> torch.Tensor:
    """The 25 tcnn polynomials for l <= 4 (methods.md 3a / tcnn spherical_harmonics.h), typed out."""
    x, y, z = v.unbind(-1)
    x2, y2, z2 = x * x, y * y, z * z
    cols = [
        0.28209479177387814 * torch.ones_like(x),
        -0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x,
        1.0925484305920792 * x * y, -1.0925484305920792 * y * z, 0.94617469575755997 * z2 - 0.31539156525251999,
        -1.0925484305920792 * x * z, 0.54627421529603959 * (x2 - y2),
        0.59004358992664352 * y * (-3 * x2 + y2), 2.8906114426405538 * x * y * z,
        0.45704579946446572 * y * (1 - 5 * z2), 0.3731763325901154 * z * (5 * z2 - 3),
        0.45704579946446572 * x * (1 - 5 * z2), 1.4453057213202769 * z * (x2 - y2),
        0.59004358992664352 * x * (-x2 + 3 * y2),
        2.5033429417967046 * x * y * (x2 - y2), 1.7701307697799304 * y * z * (-3 * x2 + y2),
        0.94617469575756008 * x * y * (7 * z2 - 1), 0.66904654355728921 * y * z * (3 - 7 * z2),
        3.7024941420321507 * z2 * z2 - 3.1735664074561294 * z2 + 0.31735664074561293,
        0.66904654355728921 * x * z * (3 - 7 * z2), 0.47308734787878004 * (x2 - y2) * (7 * z2 - 1),
        1.7701307697799304 * x * z * (-x2 + 3 * y2), 0.62583573544917614 * (x2 * x2 - 6 * x2 * y2 + y2 * y2),
    ]
    return torch.stack(cols, dim=-1)


def test_tcnn_constants_up_to_l4() -> None:
    # Also off the unit sphere: tcnn does not normalise, and neither do we; the polynomials must
    # still agree because both use "polynomial in z times (x + iy)^m".
    gen = torch.Generator().manual_seed(1)
    v = torch.cat([random_unit_vectors(32), 0.9 * torch.rand(32, 3, generator=gen, dtype=torch.float64) * 2 - 0.9])
    torch.testing.assert_close(encode(v, 5), tcnn_l_le_4(v), rtol=0, atol=1e-13)


def test_tcnn_exact_values_up_to_l3() -> None:
    axes = torch.eye(3, dtype=torch.float64)  # +x, +y, +z
    out = encode(axes, 4)
    c0, c1 = 0.28209479177387814, 0.48860251190291987
    assert out[:, 0].tolist() == [c0, c0, c0]
    assert out[1, 1].item() == pytest.approx(-c1, rel=1e-15, abs=0)  # index 1 = -c*y
    assert out[2, 2].item() == pytest.approx(c1, rel=1e-15, abs=0)  # index 2 = +c*z
    assert out[0, 3].item() == pytest.approx(-c1, rel=1e-15, abs=0)  # index 3 = -c*x
    assert out[2, 6].item() == pytest.approx(0.94617469575755997 - 0.31539156525251999, rel=1e-14)
    assert out[0, 8].item() == pytest.approx(0.54627421529603959, rel=1e-15)
    assert out[2, 12].item() == pytest.approx(0.3731763325901154 * 2, rel=1e-15)
    assert out[0, 15].item() == pytest.approx(-0.59004358992664352, rel=1e-15)


def test_tcnn_spot_values_l5_to_l7() -> None:
    """A few tcnn polynomials of the higher bands, copied as numbers from spherical_harmonics.h."""
    gen = torch.Generator().manual_seed(2)
    v = torch.rand(16, 3, generator=gen, dtype=torch.float64) * 2 - 1
    x, y, z = v.unbind(-1)
    x2, y2, z2 = x * x, y * y, z * z
    out = encode(v, 8)
    expected = {
        25: 0.65638205684017015 * y * (10 * x2 * y2 - 5 * x2 * x2 - y2 * y2),
        30: 0.1169503224534236 * z * (-70 * z2 + 63 * z2 * z2 + 15),
        42: 6.6747662381009842 * z2 - 20.024298714302954 * z2**2 + 14.684485723822165 * z2**3 - 0.31784601133814211,
        48: 0.6831841051919143 * (15 * x2 * y2**2 - 15 * x2**2 * y2 + x2**3 - y2**3),
        53: -0.15645893386229404 * y * (3 * x2 - y2) * (13 * z2 * (11 * z2 - 3) - 27 * z2 + 3),
        63: 0.70716273252459627 * x * (-35 * x2 * y2**2 + 21 * x2**2 * y2 - x2**3 + 7 * y2**3),
    }
    for index, value in expected.items():
        torch.testing.assert_close(out[:, index], value, rtol=0, atol=1e-13, msg=f"output {index}")


def test_orthonormal_on_the_sphere() -> None:
    # Gauss-Legendre in z (16 nodes: exact to polynomial degree 31) times a uniform phi grid
    # (32 points: exact for |m1 +- m2| < 32) integrates every product of two l <= 7 SH exactly.
    z_nodes, z_weights = np.polynomial.legendre.leggauss(16)
    n_phi = 32
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    z, ph = np.meshgrid(z_nodes, phi, indexing="ij")
    s = np.sqrt(1 - z**2)
    v = torch.from_numpy(np.stack([s * np.cos(ph), s * np.sin(ph), z], axis=-1).reshape(-1, 3))
    w = torch.from_numpy(np.repeat(z_weights, n_phi) * (2 * np.pi / n_phi))
    y = encode(v, 8)
    gram = y.T @ (w[:, None] * y)
    torch.testing.assert_close(gram, torch.eye(64, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("degree", [4, 8])
def test_gradcheck(degree: int) -> None:
    x = ((random_unit_vectors(4, seed=3) + 1) / 2).requires_grad_(True)
    assert torch.autograd.gradcheck(SphericalHarmonics(3, {"degree": degree}), (x,))


def test_gradient_matches_tcnn_with_factor_two() -> None:
    # tcnn: d out[3]/dv_x = -0.4886, d out[15]/dv_x = -1.7701 (x^2 - y^2); w.r.t. the [0,1] input x2.
    v = random_unit_vectors(5, seed=4)
    x = ((v + 1) / 2).requires_grad_(True)
    out = SphericalHarmonics(3, {"degree": 4})(x)
    (g3,) = torch.autograd.grad(out[:, 3].sum(), x, retain_graph=True)
    (g15,) = torch.autograd.grad(out[:, 15].sum(), x)
    torch.testing.assert_close(g3[:, 0], torch.full((5,), -0.48860251190291987 * 2, dtype=torch.float64))
    expected = -1.7701307697799304 * (v[:, 0] ** 2 - v[:, 1] ** 2) * 2
    torch.testing.assert_close(g15[:, 0], expected)


def test_float32_batch_dims_and_default_degree() -> None:
    enc = build_encoding({"otype": "SphericalHarmonics"}, 3)
    assert enc.config == {"otype": "SphericalHarmonics", "degree": 4} and enc.n_output_dims == 16
    v = random_unit_vectors(24).reshape(2, 4, 3, 3)
    x64 = (v + 1) / 2
    out = enc(x64.float())
    assert out.shape == (2, 4, 3, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), enc(x64), rtol=0, atol=1e-6)


def test_round_trip() -> None:
    enc = build_encoding({"otype": "sphericalharmonics", "degree": 8}, 3)
    again = build_encoding(json.loads(json.dumps(enc.config)), 3)
    assert again.config == enc.config == {"otype": "SphericalHarmonics", "degree": 8}


@pytest.mark.parametrize(
    "config,n_dims,match",
    [
        ({"otype": "SphericalHarmonics", "degree": 0}, 3, "between 1 and 8"),
        ({"otype": "SphericalHarmonics", "degree": 9}, 3, "between 1 and 8"),
        ({"otype": "SphericalHarmonics", "degree": "4"}, 3, "degree"),
        ({"otype": "SphericalHarmonics", "degrees": 4}, 3, "unknown field 'degrees'"),
        ({"otype": "SphericalHarmonics"}, 2, "encodes 3-D directions"),
    ],
)
def test_bad_config(config: dict, n_dims: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_encoding(config, n_dims)


def test_half_precision_input_is_computed_in_float32() -> None:
    enc = SphericalHarmonics(3, {"degree": 8})
    x = ((random_unit_vectors(8, seed=5) + 1) / 2).half()
    out = enc(x)  # half in, half out; (2m-1)!! = 135135 would overflow float16 inside
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    # the reference sees the same half-rounded input; only the output rounding may differ
    torch.testing.assert_close(out.double(), enc(x.double()), rtol=0, atol=2e-3)
