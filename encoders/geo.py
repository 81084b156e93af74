"""Location encoders on the sphere: (longitude, latitude) in degrees -> features.

Every encoder here takes inputs ``[..., 2]`` = ``(lon, lat)`` in **degrees** (lon in [-180, 180],
lat in [-90, 90]; larger longitudes simply wrap through the trigonometric functions) and has no
trainable parameters. They follow "Geographic Location Encoding with Spherical Harmonics and
Sinusoidal Representation Networks" (Rußwurm et al., ICLR 2024) and the baselines compared there.

``SphericalHarmonicsGeo`` -- real spherical harmonics, the paper's encoder
    Conventions (the paper's, kept so configs and features line up with its code):

    * ``phi = rad(lon + 180)`` in [0, 2 pi] and ``theta = rad(lat + 90)`` in [0, pi]: theta is a
      colatitude measured from the **south** pole (lat -90 -> theta 0).
    * ``legendre_polys = L`` bands ``l = 0..L-1``, all orders ``m = -l..l``, ordered l-major, then
      m ascending: output ``l*l + l + m``, ``L**2`` dims in all.
    * ``Y_l^0 = P~_l^0(cos theta)``, ``Y_l^m = sqrt(2) P~_l^m(cos theta) cos(m phi)`` for m > 0 and
      ``Y_l^m = sqrt(2) P~_l^|m|(cos theta) sin(|m| phi)`` for m < 0, with the normalised associated
      Legendre function ``P~_l^m = N_l^m P_l^m``, ``N_l^m = sqrt((2l+1)/(4 pi) (l-m)!/(l+m)!)``.
      The basis is orthonormal on the unit sphere.
    * Condon-Shortley phase: **off** by default (``P_l^m`` without the ``(-1)^m`` factor). That is
      what the paper's default "analytic" implementation computes (SymPy's ``assoc_legendre``,
      which includes the phase, times an explicit ``(-1)^m``). ``"condon_shortley": true`` includes
      it, which matches the paper's "closed-form" mode and ``scipy.special.sph_harm_y``; the two
      differ only in the sign of the odd-m features.

    Evaluation: the normalised functions are built directly by the standard stable recurrences
    (never factorial ratios, which overflow float32 long before L = 40):

    * ``P~_0^0 = 1 / sqrt(4 pi)``, ``P~_m^m = sqrt((2m+1) / (2m)) sin(theta) P~_{m-1}^{m-1}``,
    * ``P~_l^m = a_lm (x P~_{l-1}^m - b_lm P~_{l-2}^m)`` with ``x = cos theta``,
      ``a_lm = sqrt((4l^2-1) / (l^2-m^2))``, ``b_lm = sqrt(((l-1)^2-m^2) / (4(l-1)^2-1))``
      (for ``l = m+1`` this is ``sqrt(2m+3) x P~_m^m``, since ``b = 0`` there).

    Every term stays of order one, so the recurrence is stable to high degree. The work is done in
    float64 (then cast to the input's dtype): float32 can represent the features to ~1e-7, but
    ``cos(m phi)`` of a float32 angle at m = 39 would already carry ~1e-5 of rounding error. On
    devices without float64 (Apple MPS) it falls back to float32.

Baselines (all in degrees in, as above):

* ``GeoDirect``: ``(lon / 180, lat / 90)`` -- the raw coordinates scaled to [-1, 1].
* ``GeoWrap``: ``(cos lon, sin lon, cos lat, sin lat)`` (radians), as in the paper's ``wrap.py``.
  Mac Aodha et al.'s original "wrap" scales latitude by pi/90 instead; we keep the paper's form.
* ``GeoCartesian3D``: the unit vector ``(cos lat cos lon, cos lat sin lon, sin lat)``, optionally
  followed by tcnn's ``Frequency`` encoding of it (``n_frequencies`` > 0).
* ``GeoGrid`` / ``GeoTheory`` (Space2Vec, Mai et al. 2020) and ``GeoSphereC`` / ``GeoSphereCPlus``
  / ``GeoSphereM`` / ``GeoSphereMPlus`` (Sphere2Vec, Mai et al. 2023): multi-scale sinusoids of
  the angles with ``frequency_num`` scales ``r_s = min_radius * (max_radius/min_radius)^(s/(S-1))``,
  each used as ``sin(angle / r_s)``, ``cos(angle / r_s)``.

  **Units.** The angles are converted from degrees to **radians** first, as Sphere2Vec's own code
  does. The paper's repository (MarcCoru/locationencoder, ``pe/theory.py`` and
  ``pe/grid_and_sphere.py``) feeds degrees into these formulas without that conversion -- its
  author confirmed this as a bug in issue #5 -- so its tuned radii (``min_radius`` 1..73,
  ``max_radius`` 360) were in effect *degrees*. Here the radii are in radians; the defaults,
  ``min_radius = rad(10 deg)`` and ``max_radius = rad(360 deg) = 2 pi``, give exactly the features
  of the paper's most common setting (min 10, max 360), and any of its settings converts by
  multiplying both radii by pi/180.

  Layout (kept from the paper's code so feature ``j`` means the same thing): Grid is
  coordinate-major (lon first), then scale, then ``[sin, cos]`` -> ``4S`` dims; Theory and the
  Sphere* variants are scale-major with the per-scale terms listed in the class docstrings. The
  paper's ``grid_and_sphere.py`` outputs every Sphere* term twice (``12S`` dims for SphereC+);
  we drop the duplicates (``6S``), which changes nothing a network can learn.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import torch

from fieldstudio.config import Field, at_least, between, positive
from fieldstudio.errors import ConfigError

from .base import Encoding
from .registry import register

#: largest ``legendre_polys`` accepted (L**2 = 10,000 features)
MAX_LEGENDRE_POLYS = 100


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for the SH recurrence, except where the device has none (Apple MPS)."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def _float_dtype(x: torch.Tensor) -> torch.dtype:
    """At least float32 for computing, whatever the input's dtype."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


class _GeoEncoding(Encoding):
    """Shared by every encoder here: exactly 2 input dims, ``(lon, lat)`` in degrees."""

    def __init__(self, n_input_dims: int, config: Mapping[str, Any] | None = None):
        super().__init__(n_input_dims, config)
        if self.n_input_dims != 2:
            raise ConfigError(
                f"encoding '{self.otype}' encodes (longitude, latitude) pairs, got n_input_dims={self.n_input_dims}",
                "feed it exactly 2 dims: (lon, lat) in degrees")

    def _out(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return y.to(x.dtype) if x.is_floating_point() else y


# --- spherical harmonics -----------------------------------------------------------------------

def _legendre_coefficients(L: int) -> tuple[list[list[float]], list[list[float]], list[float]]:
    """Recurrence constants ``a[l][m]``, ``a[l][m] * b[l][m]`` (0 where unused) and the sectoral factors."""
    a = [[0.0] * L for _ in range(L)]
    ab = [[0.0] * L for _ in range(L)]
    for l in range(1, L):
        for m in range(0, l):  # m <= l - 1; for m = l - 1, b = 0 and a = sqrt(2l + 1)
            a[l][m] = math.sqrt((4 * l * l - 1) / (l * l - m * m))
            b = math.sqrt(((l - 1) ** 2 - m * m) / (4 * (l - 1) ** 2 - 1)) if l - 1 > m else 0.0
            ab[l][m] = a[l][m] * b
    sectoral = [math.sqrt(1.0 / (4.0 * math.pi))]  # P~_m^m / sin^m(theta)
    for m in range(1, L):
        sectoral.append(sectoral[-1] * math.sqrt((2 * m + 1) / (2 * m)))
    return a, ab, sectoral


_COEFF_CACHE: dict[int, tuple] = {}


def _coefficients(L: int):
    if L not in _COEFF_CACHE:
        _COEFF_CACHE[L] = _legendre_coefficients(L)
    return _COEFF_CACHE[L]


def normalized_legendre(x: torch.Tensor, s: torch.Tensor, L: int, condon_shortley: bool = False) -> torch.Tensor:
    """``P~_l^m(x)`` for ``l, m = 0..L-1`` -> ``[..., L, L]`` (zero where m > l).

    ``x = cos(theta)``, ``s = sin(theta)`` (passed separately so no square root is ever taken and
    gradients stay finite at the poles). Vectorised over m; the Python loop runs over l only.
    """
    a, ab, sectoral = _coefficients(L)
    opts = {"dtype": x.dtype, "device": x.device}
    # sectoral terms P~_m^m = c_m (+-1)^m sin^m(theta), powers by repeated products (exact grads at s = 0)
    pows = [torch.ones_like(s)]
    for _ in range(1, L):
        pows.append(pows[-1] * s)
    sign = torch.tensor([(-1.0) ** m if condon_shortley else 1.0 for m in range(L)], **opts)
    pmm = torch.stack(pows, dim=-1) * (torch.tensor(sectoral, **opts) * sign)  # [..., L]
    eye = torch.eye(L, **opts)
    rows = []
    p1 = torch.zeros_like(pmm)  # P~_{l-1}^m
    p2 = torch.zeros_like(pmm)  # P~_{l-2}^m
    xe = x.unsqueeze(-1)
    for l in range(L):
        row = pmm * eye[l]  # P~_l^l in column l
        if l > 0:
            row = row + torch.tensor(a[l], **opts) * xe * p1 - torch.tensor(ab[l], **opts) * p2
        rows.append(row)
        p2, p1 = p1, row
    return torch.stack(rows, dim=-2)


_INDEX_CACHE: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _sh_indices(L: int, device: torch.device):
    """For output ``k = l*l + l + m``: index into the flat ``[L, L]`` Legendre table, into
    ``[cos(0..L-1 phi), sin(0..L-1 phi)]``, and the sqrt(2) factor."""
    key = (L, str(device))
    if key not in _INDEX_CACHE:
        p_idx, t_idx, fac = [], [], []
        for l in range(L):
            for m in range(-l, l + 1):
                p_idx.append(l * L + abs(m))
                t_idx.append(m if m >= 0 else L - m)  # sin(|m| phi) lives at L + |m|
                fac.append(1.0 if m == 0 else math.sqrt(2.0))
        _INDEX_CACHE[key] = (torch.tensor(p_idx, device=device), torch.tensor(t_idx, device=device),
                             torch.tensor(fac, dtype=torch.float64, device=device))
    return _INDEX_CACHE[key]


def geo_spherical_harmonics(lon: torch.Tensor, lat: torch.Tensor, L: int, condon_shortley: bool = False) -> torch.Tensor:
    """Real SH features of ``(lon, lat)`` in degrees -> ``[..., L**2]``, computed in the inputs' dtype.

    See the module docstring for the conventions; `SphericalHarmonicsGeo` calls this in float64.
    """
    phi = torch.deg2rad(lon + 180.0)
    theta = torch.deg2rad(lat + 90.0)
    table = normalized_legendre(torch.cos(theta), torch.sin(theta), L, condon_shortley)
    m = torch.arange(L, dtype=phi.dtype, device=phi.device)
    mphi = phi.unsqueeze(-1) * m
    trig = torch.cat([torch.cos(mphi), torch.sin(mphi)], dim=-1)  # [..., 2L]
    p_idx, t_idx, fac = _sh_indices(L, phi.device)
    flat = table.flatten(-2)
    return flat.index_select(-1, p_idx) * trig.index_select(-1, t_idx) * fac.to(phi.dtype)


@register
class SphericalHarmonicsGeo(_GeoEncoding):
    """Real spherical harmonics of a location (Rußwurm et al. 2024); see the module docstring.

    Config: ``legendre_polys`` (integer 1..100, default 10): number of bands L, ``L**2`` outputs;
    ``condon_shortley`` (bool, default false): include the ``(-1)^m`` phase.
    """

    otype: ClassVar[str] = "SphericalHarmonicsGeo"
    aliases: ClassVar[tuple[str, ...]] = ("GeoSphericalHarmonics",)
    fields: ClassVar[dict[str, Field]] = {
        "legendre_polys": Field(int, 10, check=between(1, MAX_LEGENDRE_POLYS),
                                doc="number of SH bands L (l = 0..L-1); L**2 outputs"),
        "condon_shortley": Field(bool, False, doc="include the (-1)^m Condon-Shortley phase"),
    }

    @property
    def n_output_dims(self) -> int:
        return self.cfg["legendre_polys"] ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        work = x.to(_work_dtype(x))
        lon, lat = work.unbind(-1)
        y = geo_spherical_harmonics(lon, lat, self.cfg["legendre_polys"], self.cfg["condon_shortley"])
        return y.to(x.dtype) if x.is_floating_point() else y.float()


# --- simple baselines --------------------------------------------------------------------------

@register
class GeoDirect(_GeoEncoding):
    """``(lon / 180, lat / 90)``: the coordinates themselves, scaled to [-1, 1]. 2 outputs."""

    otype: ClassVar[str] = "GeoDirect"
    fields: ClassVar[dict[str, Field]] = {}

    @property
    def n_output_dims(self) -> int:
        return 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        w = x.to(_float_dtype(x))
        scale = torch.tensor([1.0 / 180.0, 1.0 / 90.0], dtype=w.dtype, device=w.device)
        return self._out(w * scale, x)


@register
class GeoWrap(_GeoEncoding):
    """``(cos lon, sin lon, cos lat, sin lat)`` in radians (the paper's ``wrap``). 4 outputs."""

    otype: ClassVar[str] = "GeoWrap"
    fields: ClassVar[dict[str, Field]] = {}

    @property
    def n_output_dims(self) -> int:
        return 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        lon, lat = torch.deg2rad(x.to(_float_dtype(x))).unbind(-1)
        return self._out(torch.stack([torch.cos(lon), torch.sin(lon), torch.cos(lat), torch.sin(lat)], -1), x)


@register
class GeoCartesian3D(_GeoEncoding):
    """The unit vector ``(cos lat cos lon, cos lat sin lon, sin lat)``, optionally with tcnn's
    ``Frequency`` encoding of it appended.

    Config: ``n_frequencies`` (integer >= 0, default 0). Outputs: 3 with 0 frequencies, else
    ``3 + 6 * n_frequencies`` -- the vector followed by ``sin/cos(2^f pi v_i)`` in tcnn's layout.
    The vector is kept (a NeRF-style passthrough) because tcnn's lowest band alone maps
    ``v_i = 1`` and ``v_i = -1`` to the same features (lon 0 and lon 180 on the equator would collide).
    """

    otype: ClassVar[str] = "GeoCartesian3D"
    fields: ClassVar[dict[str, Field]] = {
        "n_frequencies": Field(int, 0, check=at_least(0), doc="tcnn Frequency octaves applied to the unit vector"),
    }

    def __init__(self, n_input_dims: int, config: Mapping[str, Any] | None = None):
        super().__init__(n_input_dims, config)
        n = self.cfg["n_frequencies"]
        if n > 0:
            from .frequency import Frequency

            self.frequency = Frequency(3, {"n_frequencies": n})
        else:
            self.frequency = None

    @property
    def n_output_dims(self) -> int:
        return 3 + 6 * self.cfg["n_frequencies"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        lon, lat = torch.deg2rad(x.to(_float_dtype(x))).unbind(-1)
        v = torch.stack([torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)], -1)
        if self.frequency is not None:
            v = torch.cat([v, self.frequency(v)], dim=-1)
        return self._out(v, x)


# --- multi-scale sinusoids (Space2Vec / Sphere2Vec) --------------------------------------------

def _check_radius_order(enc: Encoding) -> None:
    c = enc.cfg
    if c["frequency_num"] > 1 and not c["min_radius"] < c["max_radius"]:
        raise ConfigError(f"encoding '{enc.otype}': min_radius ({c['min_radius']}) must be smaller than "
                          f"max_radius ({c['max_radius']})", "swap them or change one")


class _MultiScale(_GeoEncoding):
    """Angles in radians, divided by ``frequency_num`` geometrically spaced radii."""

    #: per-scale output dims (set by each subclass)
    per_scale: ClassVar[int] = 0
    fields: ClassVar[dict[str, Field]] = {
        "frequency_num": Field(int, 16, check=at_least(1), doc="number of scales S"),
        "min_radius": Field(float, math.radians(10.0), check=positive,
                            doc="smallest scale, in radians of arc (highest frequency 1/min_radius)"),
        "max_radius": Field(float, math.radians(360.0), check=positive,
                            doc="largest scale, in radians of arc (lowest frequency 1/max_radius)"),
    }

    def __init__(self, n_input_dims: int, config: Mapping[str, Any] | None = None):
        super().__init__(n_input_dims, config)
        _check_radius_order(self)

    def frequencies(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """``1 / r_s`` for ``s = 0..S-1`` (highest first), as in Space2Vec's "geometric" init."""
        c = self.cfg
        n, lo, hi = c["frequency_num"], c["min_radius"], c["max_radius"]
        step = math.log(hi / lo) / (n - 1) if n > 1 else 0.0
        radii = [lo * math.exp(s * step) for s in range(n)]
        return torch.tensor([1.0 / r for r in radii], dtype=dtype, device=device)

    @property
    def n_output_dims(self) -> int:
        return self.per_scale * self.cfg["frequency_num"]

    def _scaled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(lon, lat)`` in radians (shape [...]) and times every frequency (shape [..., S])."""
        self._check_input(x)
        w = torch.deg2rad(x.to(_float_dtype(x)))  # degrees -> radians: the step the paper's code misses
        f = self.frequencies(w.dtype, w.device)
        lon, lat = w.unbind(-1)
        return lon, lat, lon.unsqueeze(-1) * f, lat.unsqueeze(-1) * f


@register
class GeoGrid(_MultiScale):
    """Space2Vec "grid": for lon then lat, for every scale, ``[sin, cos](angle / r_s)``. ``4S`` outputs."""

    otype: ClassVar[str] = "GeoGrid"
    per_scale = 4
    fields = dict(_MultiScale.fields)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, lon_s, lat_s = self._scaled(x)
        a = torch.stack([lon_s, lat_s], dim=-2)  # [..., 2, S]
        y = torch.stack([torch.sin(a), torch.cos(a)], dim=-1)  # [..., 2, S, 2]
        return self._out(y.flatten(-3), x)


@register
class GeoTheory(_MultiScale):
    """Space2Vec "theory": the (lon, lat) vector projected on three unit vectors 120 degrees apart,
    ``a_k = (lon, lat) . u_k``; per scale ``[sin a1, cos a1, sin a2, cos a2, sin a3, cos a3](/ r_s)``.
    ``6S`` outputs."""

    otype: ClassVar[str] = "GeoTheory"
    per_scale = 6
    fields = dict(_MultiScale.fields)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lon, lat, _, _ = self._scaled(x)
        h = math.sqrt(3.0) / 2.0
        proj = torch.stack([lon, -0.5 * lon + h * lat, -0.5 * lon - h * lat], dim=-1)  # [..., 3]
        a = proj.unsqueeze(-2) * self.frequencies(proj.dtype, proj.device).unsqueeze(-1)  # [..., S, 3]
        y = torch.stack([torch.sin(a), torch.cos(a)], dim=-1)  # [..., S, 3, 2]
        return self._out(y.flatten(-3), x)


@register
class GeoSphereC(_MultiScale):
    """Sphere2Vec "sphereC": per scale ``[sin lat_s, cos lat_s cos lon_s, cos lat_s sin lon_s]``. ``3S`` outputs."""

    otype: ClassVar[str] = "GeoSphereC"
    per_scale = 3
    fields = dict(_MultiScale.fields)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, lon_s, lat_s = self._scaled(x)
        y = torch.stack([torch.sin(lat_s), torch.cos(lat_s) * torch.cos(lon_s), torch.cos(lat_s) * torch.sin(lon_s)], -1)
        return self._out(y.flatten(-2), x)


@register
class GeoSphereCPlus(_MultiScale):
    """Sphere2Vec "sphereC+" (grid + sphereC): per scale
    ``[sin lat_s, cos lat_s, sin lon_s, cos lon_s, cos lat_s cos lon_s, cos lat_s sin lon_s]``. ``6S`` outputs."""

    otype: ClassVar[str] = "GeoSphereCPlus"
    aliases: ClassVar[tuple[str, ...]] = ("GeoSphereC+",)
    per_scale = 6
    fields = dict(_MultiScale.fields)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, lon_s, lat_s = self._scaled(x)
        sl, cl, so, co = torch.sin(lat_s), torch.cos(lat_s), torch.sin(lon_s), torch.cos(lon_s)
        y = torch.stack([sl, cl, so, co, cl * co, cl * so], dim=-1)
        return self._out(y.flatten(-2), x)


@register
class GeoSphereM(_MultiScale):
    """Sphere2Vec "sphereM": per scale, with ``lat``/``lon`` the unscaled angles,
    ``[sin lat_s, cos lat_s cos lon, cos lat cos lon_s, cos lat_s sin lon, cos lat sin lon_s]``. ``5S`` outputs."""

    otype: ClassVar[str] = "GeoSphereM"
    per_scale = 5
    fields = dict(_MultiScale.fields)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lon, lat, lon_s, lat_s = self._scaled(x)
        lon1, lat1 = lon.unsqueeze(-1), lat.unsqueeze(-1)
        y = torch.stack([torch.sin(lat_s), torch.cos(lat_s) * torch.cos(lon1), torch.cos(lat1) * torch.cos(lon_s),
                         torch.cos(lat_s) * torch.sin(lon1), torch.cos(lat1) * torch.sin(lon_s)], dim=-1)
        return self._out(y.flatten(-2), x)


@register
class GeoSphereMPlus(_MultiScale):
    """Sphere2Vec "sphereM+" (grid + sphereM): per scale ``[sin lat_s, cos lat_s, sin lon_s, cos lon_s,
    cos lat_s cos lon, cos lat cos lon_s, cos lat_s sin lon, cos lat sin lon_s]``. ``8S`` outputs."""

    otype: ClassVar[str] = "GeoSphereMPlus"
    aliases: ClassVar[tuple[str, ...]] = ("GeoSphereM+",)
    per_scale = 8
    fields = dict(_MultiScale.fields)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lon, lat, lon_s, lat_s = self._scaled(x)
        lon1, lat1 = lon.unsqueeze(-1), lat.unsqueeze(-1)
        y = torch.stack([torch.sin(lat_s), torch.cos(lat_s), torch.sin(lon_s), torch.cos(lon_s),
                         torch.cos(lat_s) * torch.cos(lon1), torch.cos(lat1) * torch.cos(lon_s),
                         torch.cos(lat_s) * torch.sin(lon1), torch.cos(lat1) * torch.sin(lon_s)], dim=-1)
        return self._out(y.flatten(-2), x)
