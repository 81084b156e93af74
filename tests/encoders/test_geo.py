"""Location encoders on the sphere: SH against scipy, orthonormality, continuity at the dateline and
the poles, gradients, and the baselines' formulas, layouts and configs."""

import math

import numpy as np
import pytest
import torch

from fieldstudio.encoders import build_encoding
from fieldstudio.encoders.geo import geo_spherical_harmonics, normalized_legendre
from fieldstudio.encoders.registry import list_encodings
from fieldstudio.errors import ConfigError

scipy_special = pytest.importorskip("scipy.special")


def sh(L, **kw):
    return build_encoding({"otype": "SphericalHarmonicsGeo", "legendre_polys": L, **kw}, 2)


def reference_sh(lon, lat, L, condon_shortley=False):
    """Real SH from scipy's complex ``sph_harm_y`` (which includes the Condon-Shortley phase)."""
    phi = np.deg2rad(lon + 180.0)
    theta = np.deg2rad(lat + 90.0)
    cols = []
    for l in range(L):
        for m in range(-l, l + 1):
            y = scipy_special.sph_harm_y(l, abs(m), theta, phi)
            sign = 1.0 if condon_shortley else (-1.0) ** abs(m)  # undo scipy's (-1)^m
            if m == 0:
                cols.append(y.real)
            elif m > 0:
                cols.append(math.sqrt(2.0) * sign * y.real)
            else:
                cols.append(math.sqrt(2.0) * sign * y.imag)
    return np.stack(cols, axis=-1)


def random_points(n, seed=0):
    rng = np.random.default_rng(seed)
    lon = rng.uniform(-180, 180, n)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    # the edges of the domain: poles, dateline, equator
    lon[:6] = [-180.0, 180.0, 0.0, 179.9999, -179.9999, 90.0]
    lat[:6] = [90.0, -90.0, 0.0, 89.9999, -89.9999, 0.0]
    return np.stack([lon, lat], axis=-1)


# --- spherical harmonics -----------------------------------------------------------------------

@pytest.mark.parametrize("L", [1, 2, 5, 10, 25, 40])
def test_sh_matches_scipy_float32_and_float64(L):
    pts = random_points(300, seed=L)
    x32 = torch.tensor(pts, dtype=torch.float32)
    x64 = x32.double()  # the reference sees exactly the float32 inputs
    ref = reference_sh(x64[:, 0].numpy(), x64[:, 1].numpy(), L)
    y32, y64 = sh(L)(x32), sh(L)(x64)
    assert y32.dtype == torch.float32 and y64.dtype == torch.float64
    assert y32.shape == (300, L * L)
    assert np.abs(y32.numpy() - ref).max() <= 1e-5
    assert np.abs(y64.numpy() - ref).max() <= 1e-10


def test_condon_shortley_option_matches_scipy_signs():
    pts = random_points(100, seed=3)
    ref = reference_sh(pts[:, 0], pts[:, 1], 12, condon_shortley=True)
    y = sh(12, condon_shortley=True)(torch.tensor(pts)).numpy()
    assert np.abs(y - ref).max() <= 1e-10
    # the two conventions differ exactly by the sign of the odd-m features
    y0 = sh(12)(torch.tensor(pts)).numpy()
    m = np.array([m for l in range(12) for m in range(-l, l + 1)])
    np.testing.assert_allclose(y0, y * np.where(m % 2 == 1, -1.0, 1.0)[None], atol=1e-12)


def test_sh_layout_low_degrees_in_closed_form():
    """Bands 0 and 1 by hand, in the paper's angles (theta from the south pole, no CS phase)."""
    pts = random_points(50, seed=5)
    y = sh(2)(torch.tensor(pts)).numpy()
    phi, theta = np.deg2rad(pts[:, 0] + 180), np.deg2rad(pts[:, 1] + 90)
    c1 = math.sqrt(3 / (4 * math.pi))
    expected = np.stack([np.full(len(pts), 0.5 / math.sqrt(math.pi)),
                         c1 * np.sin(theta) * np.sin(phi),  # m = -1
                         c1 * np.cos(theta),  # m = 0
                         c1 * np.sin(theta) * np.cos(phi)], axis=-1)  # m = +1
    np.testing.assert_allclose(y, expected, atol=1e-12)


@pytest.mark.parametrize("L", [5, 20, 40])
def test_sh_orthonormal_by_quadrature(L):
    """Gauss-Legendre in cos(theta) x uniform phi integrates every product Y_a Y_b exactly."""
    nodes, weights = np.polynomial.legendre.leggauss(L + 1)
    n_phi = 2 * L + 2
    phi = np.arange(n_phi) * 2 * np.pi / n_phi
    th = np.arccos(nodes)
    lat = np.degrees(th) - 90.0
    lon = np.degrees(phi) - 180.0
    LAT, LON = np.meshgrid(lat, lon, indexing="ij")
    w = (weights[:, None] * np.full(n_phi, 2 * np.pi / n_phi)[None]).reshape(-1)
    x = torch.tensor(np.stack([LON.reshape(-1), LAT.reshape(-1)], -1))
    y = sh(L)(x)  # float64
    gram = (y * torch.tensor(w)[:, None]).T @ y
    err = (gram - torch.eye(L * L, dtype=torch.float64)).abs().max().item()
    assert err < 1e-10, err
    y32 = sh(L)(x.float()).double()
    gram32 = (y32 * torch.tensor(w)[:, None]).T @ y32
    assert (gram32 - torch.eye(L * L, dtype=torch.float64)).abs().max().item() < 1e-5


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_sh_continuous_across_the_dateline(dtype, atol):
    enc = sh(40)
    lat = torch.linspace(-89.0, 89.0, 37, dtype=torch.float64)

    def f(lon):
        return enc(torch.stack([torch.full_like(lat, lon), lat], -1).to(dtype)).double()

    # lon = 180 and lon = -180 are the same place: identical features
    assert (f(180.0) - f(-180.0)).abs().max().item() <= atol
    # a step across the dateline changes the features no more than the same step beside it
    across = (f(179.9999) - f(-179.9999)).abs().max().item()
    beside = (f(179.9997) - f(179.9999)).abs().max().item()
    if dtype == torch.float64:
        assert across <= 1.01 * beside + 1e-12, (across, beside)
    assert across < 1e-3


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("pole", [90.0, -90.0])
def test_sh_identical_at_the_poles_for_every_longitude(dtype, atol, pole):
    enc = sh(40)
    lon = torch.linspace(-180.0, 180.0, 73, dtype=torch.float64)
    y = enc(torch.stack([lon, torch.full_like(lon, pole)], -1).to(dtype)).double()
    assert (y - y[0]).abs().max().item() <= atol
    # and only the m = 0 features are non-zero there
    m = torch.tensor([m for l in range(40) for m in range(-l, l + 1)])
    assert y[:, m != 0].abs().max().item() <= atol
    # approaching the pole along any meridian converges to the pole value
    near = enc(torch.stack([lon, torch.full_like(lon, math.copysign(89.9999, pole))], -1).double())
    assert (near - y.double()[0]).abs().max().item() < 1e-3


def test_sh_gradcheck_float64():
    x = torch.tensor([[10.0, 20.0], [-179.0, -60.0], [179.5, 89.0], [0.0, 90.0], [33.0, -90.0]],
                     dtype=torch.float64, requires_grad=True)
    enc = sh(6)
    assert torch.autograd.gradcheck(enc, (x,), eps=1e-6, atol=1e-6)
    # finite gradients for every feature at the poles
    enc(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_sh_recurrence_is_stable_at_high_degree():
    # L = 100 (the largest allowed): every value of order one, no overflow / NaN in float32 inputs
    x = torch.tensor(random_points(64, seed=9), dtype=torch.float32)
    y = sh(100)(x)
    assert torch.isfinite(y).all() and y.abs().max() < 5.0
    # the normalised Legendre table itself matches scipy's sph_legendre_p at l = 99
    th = torch.linspace(0.01, math.pi - 0.01, 7, dtype=torch.float64)
    table = normalized_legendre(torch.cos(th), torch.sin(th), 100, condon_shortley=True)
    for m in (0, 1, 50, 99):
        ref = np.ravel(scipy_special.sph_legendre_p(99, m, th.numpy()))
        np.testing.assert_allclose(table[:, 99, m].numpy(), ref, atol=1e-10)


def test_sh_any_batch_shape_and_function_api():
    x = torch.tensor(random_points(24), dtype=torch.float64).reshape(2, 3, 4, 2)
    y = sh(4)(x)
    assert y.shape == (2, 3, 4, 16)
    flat = geo_spherical_harmonics(x[..., 0].reshape(-1), x[..., 1].reshape(-1), 4)
    torch.testing.assert_close(y.reshape(-1, 16), flat)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sh_cuda_matches_cpu():
    x = torch.tensor(random_points(1000), dtype=torch.float32)
    enc = sh(40)
    torch.testing.assert_close(enc(x.cuda()).cpu(), enc(x), atol=1e-6, rtol=0)


# --- baselines ---------------------------------------------------------------------------------

PTS = torch.tensor(random_points(40, seed=11), dtype=torch.float64)
LON, LAT = PTS[:, 0], PTS[:, 1]
RLON, RLAT = torch.deg2rad(LON), torch.deg2rad(LAT)


def test_direct_wrap_cartesian_formulas():
    torch.testing.assert_close(build_encoding({"otype": "GeoDirect"}, 2)(PTS), torch.stack([LON / 180, LAT / 90], -1))
    torch.testing.assert_close(build_encoding({"otype": "GeoWrap"}, 2)(PTS),
                               torch.stack([RLON.cos(), RLON.sin(), RLAT.cos(), RLAT.sin()], -1))
    v = torch.stack([RLAT.cos() * RLON.cos(), RLAT.cos() * RLON.sin(), RLAT.sin()], -1)
    torch.testing.assert_close(build_encoding({"otype": "GeoCartesian3D"}, 2)(PTS), v)
    enc = build_encoding({"otype": "GeoCartesian3D", "n_frequencies": 2}, 2)
    y = enc(PTS)
    assert enc.n_output_dims == 15 and y.shape == (40, 15)
    torch.testing.assert_close(y[:, :3], v)
    # then tcnn's Frequency layout: per dim, per octave, [sin, cos] of 2^f pi v
    torch.testing.assert_close(y[:, 3:7], torch.stack([torch.sin(math.pi * v[:, 0]), torch.cos(math.pi * v[:, 0]),
                                                       torch.sin(2 * math.pi * v[:, 0]), torch.cos(2 * math.pi * v[:, 0])], -1))


def _freqs(S, lo, hi):
    return [1.0 / (lo * (hi / lo) ** (s / (S - 1))) for s in range(S)]


def test_multiscale_frequencies_and_radian_inputs():
    enc = build_encoding({"otype": "GeoGrid", "frequency_num": 4, "min_radius": 0.1, "max_radius": 1.0}, 2)
    np.testing.assert_allclose(enc.frequencies().numpy(), _freqs(4, 0.1, 1.0))
    y = enc(PTS)
    assert y.shape == (40, 16)
    # lon first: [sin, cos] per scale; then lat. The angle is in radians (divided by the radius).
    f = _freqs(4, 0.1, 1.0)
    for s in range(4):
        torch.testing.assert_close(y[:, 2 * s], torch.sin(RLON * f[s]))
        torch.testing.assert_close(y[:, 2 * s + 1], torch.cos(RLON * f[s]))
        torch.testing.assert_close(y[:, 8 + 2 * s], torch.sin(RLAT * f[s]))
    # the largest scale of radius 1 is the plain wrap encoding
    torch.testing.assert_close(y[:, [6, 7, 14, 15]], torch.stack([RLON.sin(), RLON.cos(), RLAT.sin(), RLAT.cos()], -1))


def test_default_radii_reproduce_the_papers_features():
    """The paper's code feeds degrees with min_radius 10 / max_radius 360; our radian defaults
    (rad(10 deg), 2 pi) give exactly those features (see the module docstring on units)."""
    S = 16
    f_deg = np.array(_freqs(S, 10.0, 360.0))
    lon, lat = LON.numpy(), LAT.numpy()
    a_lon, a_lat = lon[:, None] * f_deg, lat[:, None] * f_deg  # degrees times 1/radius, as in the paper's code
    grid = np.concatenate([np.stack([np.sin(a_lon), np.cos(a_lon)], -1).reshape(40, -1),
                           np.stack([np.sin(a_lat), np.cos(a_lat)], -1).reshape(40, -1)], axis=1)
    np.testing.assert_allclose(build_encoding({"otype": "GeoGrid"}, 2)(PTS).numpy(), grid, atol=1e-10)
    cplus = np.stack([np.sin(a_lat), np.cos(a_lat), np.sin(a_lon), np.cos(a_lon),
                      np.cos(a_lat) * np.cos(a_lon), np.cos(a_lat) * np.sin(a_lon)], -1).reshape(40, -1)
    np.testing.assert_allclose(build_encoding({"otype": "GeoSphereCPlus"}, 2)(PTS).numpy(), cplus, atol=1e-10)


def test_theory_and_sphere_formulas():
    cfg = {"frequency_num": 3, "min_radius": 0.2, "max_radius": 2.0}
    f = torch.tensor(_freqs(3, 0.2, 2.0), dtype=torch.float64)
    lo, la = RLON[:, None] * f, RLAT[:, None] * f
    # theory: projections on unit vectors at 0, 120, 240 degrees
    h = math.sqrt(3) / 2
    proj = [RLON, -0.5 * RLON + h * RLAT, -0.5 * RLON - h * RLAT]
    y = build_encoding({"otype": "GeoTheory", **cfg}, 2)(PTS)
    assert y.shape == (40, 18)
    for s in range(3):
        for k in range(3):
            torch.testing.assert_close(y[:, 6 * s + 2 * k], torch.sin(proj[k] * f[s]))
            torch.testing.assert_close(y[:, 6 * s + 2 * k + 1], torch.cos(proj[k] * f[s]))
    expect = {
        "GeoSphereC": [la.sin(), la.cos() * lo.cos(), la.cos() * lo.sin()],
        "GeoSphereCPlus": [la.sin(), la.cos(), lo.sin(), lo.cos(), la.cos() * lo.cos(), la.cos() * lo.sin()],
        "GeoSphereM": [la.sin(), la.cos() * RLON.cos()[:, None], RLAT.cos()[:, None] * lo.cos(),
                       la.cos() * RLON.sin()[:, None], RLAT.cos()[:, None] * lo.sin()],
        "GeoSphereMPlus": [la.sin(), la.cos(), lo.sin(), lo.cos(), la.cos() * RLON.cos()[:, None],
                           RLAT.cos()[:, None] * lo.cos(), la.cos() * RLON.sin()[:, None], RLAT.cos()[:, None] * lo.sin()],
    }
    for otype, terms in expect.items():
        enc = build_encoding({"otype": otype, **cfg}, 2)
        y = enc(PTS)
        assert enc.n_output_dims == 3 * len(terms) == y.shape[-1], otype
        torch.testing.assert_close(y, torch.stack(terms, -1).flatten(-2), msg=otype)  # scale-major


@pytest.mark.parametrize("otype", ["SphericalHarmonicsGeo", "GeoDirect", "GeoWrap", "GeoCartesian3D", "GeoGrid",
                                   "GeoTheory", "GeoSphereC", "GeoSphereCPlus", "GeoSphereM", "GeoSphereMPlus"])
def test_config_round_trip_dtypes_and_no_parameters(otype):
    assert otype in list_encodings()
    enc = build_encoding({"otype": otype.lower()}, 2)  # names are case-insensitive
    again = build_encoding(enc.config, 2)
    assert again.config == enc.config and enc.config["otype"] == otype
    x = PTS.float()
    y = enc(x)
    assert y.dtype == torch.float32 and y.shape == (40, enc.n_output_dims) and torch.isfinite(y).all()
    torch.testing.assert_close(again(x), y)
    assert enc(PTS).dtype == torch.float64
    assert sum(p.numel() for p in enc.parameters()) == 0


def test_sphere_cartesian_and_wrap_are_continuous_at_the_dateline():
    for otype in ("GeoWrap", "GeoCartesian3D", "SphericalHarmonicsGeo"):
        enc = build_encoding({"otype": otype}, 2)
        a = enc(torch.tensor([[180.0, 12.0]], dtype=torch.float64))
        b = enc(torch.tensor([[-180.0, 12.0]], dtype=torch.float64))
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cfg,needle", [
    ({"otype": "SphericalHarmonicsGeo", "legendre_polys": 0}, "between 1 and 100"),
    ({"otype": "SphericalHarmonicsGeo", "legendre_polys": 101}, "between 1 and 100"),
    ({"otype": "SphericalHarmonicsGeo", "legendre_polys": "10"}, "must be an integer"),
    ({"otype": "SphericalHarmonicsGeo", "legendre_poly": 10}, "did you mean 'legendre_polys'"),
    ({"otype": "GeoGrid", "min_radius": 2.0, "max_radius": 1.0}, "min_radius"),
    ({"otype": "GeoGrid", "min_radius": 0.0}, "must be > 0"),
    ({"otype": "GeoTheory", "frequency_num": 0}, "must be >= 1"),
    ({"otype": "GeoCartesian3D", "n_frequencies": -1}, "must be >= 0"),
    ({"otype": "GeoWrap", "scale": 1}, "unknown field 'scale'"),
    ({"otype": "GeoSphereCplsu"}, "unknown encoding otype"),
])
def test_bad_configs(cfg, needle):
    with pytest.raises(ConfigError, match=needle):
        build_encoding(cfg, 2)


def test_geo_encoders_need_two_input_dims():
    with pytest.raises(ConfigError, match=r"\(lon, lat\)"):
        build_encoding({"otype": "SphericalHarmonicsGeo"}, 3)
    enc = build_encoding({"otype": "GeoWrap"}, 2)
    with pytest.raises(ValueError, match="expected inputs with 2 dims"):
        enc(torch.zeros(4, 3))
