"""Surfaces of signed distance functions: mesh extraction and sphere-traced images.

Everything here works through a closure ``sdf_fn(points [n, 3] torch) -> sdf [n] (or [n, 1])``
and never imports fields, so the same code extracts or renders a neural field, an analytic
shape or a ground-truth mesh's distance.

* `extract_mesh`: marching cubes (scikit-image) over a grid of ``resolution``^3 samples spanning
  ``bounds``, evaluated in chunks. With ``narrow_band=True`` (the default) a coarse grid (every
  ``coarse_step``-th sample) is evaluated first, and only the coarse cells within ``band`` cell
  diagonals of the surface (plus one cell around them) are refined; marching cubes then runs slab
  by slab, so neither the evaluations nor the memory grow with the volume: 512^3 needs a few
  percent of the evaluations and about (coarse grid + one slab) of memory.
* `sphere_trace` / `render_sdf`: a pinhole camera, sphere tracing with a safety factor and a
  bisection refinement of the last step, normals by central differences and simple two-light
  Lambert shading (`shade`), which ground-truth renders share.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

SdfFn = Callable[[torch.Tensor], torch.Tensor]

UNIT_BOUNDS = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@dataclass
class SurfaceMesh:
    """A triangle mesh in the coordinates of ``bounds`` (vertices float64, faces int64)."""

    vertices: np.ndarray
    faces: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    def to_trimesh(self):
        import trimesh

        return trimesh.Trimesh(self.vertices, self.faces, process=False)


# ------------------------------------------------------------------------------------------------
# Chunked evaluation
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_points(sdf_fn: SdfFn, points: np.ndarray | torch.Tensor, *, chunk: int = 1 << 18,
                    device=None) -> np.ndarray:
    """``sdf_fn`` at ``points [N, 3]`` in chunks; float32 numpy ``[N]``."""
    pts = torch.as_tensor(points, dtype=torch.float32)
    out = np.empty(len(pts), dtype=np.float32)
    for start in range(0, len(pts), chunk):
        p = pts[start:start + chunk]
        if device is not None:
            p = p.to(device)
        v = sdf_fn(p)
        out[start:start + len(p)] = v.reshape(len(p)).float().cpu().numpy()
    return out


def _axis_positions(bounds, n: int) -> list[np.ndarray]:
    lo, hi = np.asarray(bounds[0], np.float64), np.asarray(bounds[1], np.float64)
    return [lo[a] + (hi[a] - lo[a]) * np.arange(n, dtype=np.float64) / (n - 1) for a in range(3)]


def evaluate_grid(sdf_fn: SdfFn, resolution: int, *, bounds=UNIT_BOUNDS, chunk: int = 1 << 18,
                  device=None) -> np.ndarray:
    """``sdf_fn`` on a ``resolution``^3 grid of samples (corners included), ``[x, y, z]`` float32."""
    n = int(resolution)
    xs, ys, zs = _axis_positions(bounds, n)
    out = np.empty((n, n, n), dtype=np.float32)
    yz = np.stack(np.meshgrid(ys, zs, indexing="ij"), axis=-1).reshape(-1, 2)
    planes = max(1, chunk // len(yz))
    for x0 in range(0, n, planes):
        xx = xs[x0:x0 + planes]
        pts = np.concatenate([np.column_stack((np.full(len(yz), x), yz)) for x in xx])
        out[x0:x0 + len(xx)] = evaluate_points(sdf_fn, pts, chunk=chunk, device=device).reshape(len(xx), n, n)
    return out


# ------------------------------------------------------------------------------------------------
# Marching cubes
# ------------------------------------------------------------------------------------------------

def _marching_cubes(vol: np.ndarray, level: float):
    from skimage.measure import marching_cubes

    if not (vol.min() < level < vol.max()):
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    # "descent": the surface's outside is where values grow (an SDF), so faces wind outwards
    verts, faces, _, _ = marching_cubes(vol, level, gradient_direction="descent", allow_degenerate=False)
    return verts.astype(np.float64), faces.astype(np.int64)


def _to_world(idx: np.ndarray, bounds, n: int) -> np.ndarray:
    lo, hi = np.asarray(bounds[0], np.float64), np.asarray(bounds[1], np.float64)
    return lo + idx * ((hi - lo) / (n - 1))


class _NarrowBand:
    """The coarse pass of a narrow-band evaluation: which coarse cells may hold the surface.

    Coarse samples are every ``s``-th fine sample (the last one clamped to the far side). A coarse
    cell is active when its corners change sign or all of them lie within ``band`` cell diagonals
    of the level: a surface through the cell is within one diagonal of every corner, and ``band``
    > 1 leaves room for a fitted SDF, whose |grad f| is only roughly 1. Fine samples touching an active cell are
    evaluated; every other fine sample lies in an inactive cell, whose corners share one sign,
    and takes the value of its nearest coarse sample, which has the right sign.
    """

    def __init__(self, sdf_fn, n, bounds, level, s, band, chunk, device):
        self.n, self.s = n, s
        self.nc = nc = -(-(n - 1) // s) + 1
        cidx = np.minimum(np.arange(nc) * s, n - 1)
        self.axes = _axis_positions(bounds, n)
        cgrid = np.stack(np.meshgrid(*(a[cidx] for a in self.axes), indexing="ij"), axis=-1).reshape(-1, 3)
        self.coarse = evaluate_points(sdf_fn, cgrid, chunk=chunk, device=device).reshape(nc, nc, nc) - level
        h = float(np.max((np.asarray(bounds[1], np.float64) - np.asarray(bounds[0], np.float64)) / (n - 1)))
        tau = band * s * h * math.sqrt(3.0)
        c = self.coarse
        corners = [c[i:nc - 1 + i, j:nc - 1 + j, k:nc - 1 + k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
        self.active = ((np.minimum.reduce(corners) <= 0) & (np.maximum.reduce(corners) >= 0)) | \
            (np.maximum.reduce([np.abs(x) for x in corners]) < tau)
        i = np.arange(n)
        self.upper = np.minimum(i // s, nc - 2)  # the coarse cell above / below each fine sample
        self.lower = np.clip(-(-i // s) - 1, 0, nc - 2)
        self.near = np.rint(i / s).astype(np.int64).clip(0, nc - 1)  # nearest coarse sample
        self.evaluated = nc ** 3

    def slab_active(self, x0: int, x1: int) -> bool:
        return bool(self.active[self.lower[x0]:self.upper[x1] + 1].any())

    def slab(self, sdf_fn, x0: int, x1: int, chunk, device) -> np.ndarray:
        """Values of fine sample planes ``x0..x1`` (inclusive), ``[x1 - x0 + 1, n, n]`` float32."""
        xi = np.arange(x0, x1 + 1)
        lo, up, near = self.lower, self.upper, self.near
        vol = self.coarse[np.ix_(near[xi], near, near)].astype(np.float32)
        if not self.slab_active(x0, x1):
            return vol
        mask = np.zeros(vol.shape, dtype=bool)
        for ax in (lo, up):
            for ay in (lo, up):
                for az in (lo, up):
                    mask |= self.active[np.ix_(ax[xi], ay, az)]
        sel = np.nonzero(mask)
        if len(sel[0]):
            xs, ys, zs = self.axes
            pts = np.column_stack((xs[xi[sel[0]]], ys[sel[1]], zs[sel[2]]))
            vol[sel] = evaluate_points(sdf_fn, pts, chunk=chunk, device=device) - self.level_offset
            self.evaluated += len(pts)
        return vol

    level_offset = 0.0


def _slabs(n: int, slab: int):
    x0 = 0
    while x0 < n - 1:
        x1 = min(x0 + slab, n - 1)  # planes x0..x1; x1 is shared with the next slab
        yield x0, x1
        x0 = x1


def sample_volume(sdf_fn: SdfFn, resolution: int, *, bounds=UNIT_BOUNDS, level: float = 0.0, narrow_band: bool = True,
                  coarse_step: int = 4, band: float = 1.25, chunk: int = 1 << 18, device=None) -> tuple[np.ndarray, dict]:
    """``sdf_fn - level`` on ``resolution``^3 samples; with ``narrow_band`` exact only near the level
    set and elsewhere a value of the right sign (enough for occupancy and marching cubes)."""
    t0 = time.perf_counter()
    n = int(resolution)
    if not narrow_band or n <= 2 * coarse_step + 1:
        vol = evaluate_grid(sdf_fn, n, bounds=bounds, chunk=chunk, device=device) - level
        return vol, {"evaluated": n ** 3, "evaluated_fraction": 1.0, "narrow_band": False,
                     "seconds": round(time.perf_counter() - t0, 3)}
    nb = _NarrowBand(sdf_fn, n, bounds, level, coarse_step, band, chunk, device)
    nb.level_offset = level
    vol = np.empty((n, n, n), np.float32)
    for x0, x1 in _slabs(n, max(coarse_step, (1 << 22) // (n * n) // coarse_step * coarse_step)):
        vol[x0:x1 + 1] = nb.slab(sdf_fn, x0, x1, chunk, device)
    return vol, {"evaluated": nb.evaluated, "evaluated_fraction": round(nb.evaluated / n ** 3, 5), "narrow_band": True,
                 "coarse_step": coarse_step, "seconds": round(time.perf_counter() - t0, 3)}


def extract_mesh(sdf_fn: SdfFn, resolution: int = 256, *, bounds=UNIT_BOUNDS, level: float = 0.0,
                 narrow_band: bool = True, coarse_step: int = 4, band: float = 1.25, chunk: int = 1 << 18,
                 max_slab_samples: int = 1 << 24, device=None) -> SurfaceMesh:
    """Marching cubes of ``sdf_fn`` on ``resolution``^3 samples spanning ``bounds`` (see module doc).

    Returns the mesh in the coordinates of ``bounds``, faces wound so normals point to positive
    values (outwards for an SDF). ``stats`` says how many samples were evaluated and how long it took.
    """
    t0 = time.perf_counter()
    n = int(resolution)
    if n < 2:
        raise ValueError("resolution must be at least 2")
    if not narrow_band or n <= 2 * coarse_step + 1:
        vol, stats = sample_volume(sdf_fn, n, bounds=bounds, level=level, narrow_band=False, chunk=chunk, device=device)
        idx, faces = _marching_cubes(vol, 0.0)
        stats.update(resolution=n, seconds=round(time.perf_counter() - t0, 3))
        return SurfaceMesh(_to_world(idx, bounds, n), faces, stats)
    nb = _NarrowBand(sdf_fn, n, bounds, level, int(coarse_step), band, chunk, device)
    nb.level_offset = level
    slab = max(coarse_step, (max_slab_samples // (n * n)) // coarse_step * coarse_step)
    all_verts, all_faces, n_verts = [], [], 0
    for x0, x1 in _slabs(n, slab):
        if not nb.slab_active(x0, x1):
            continue  # no active cell: one sign throughout, no surface
        idx, faces = _marching_cubes(nb.slab(sdf_fn, x0, x1, chunk, device), 0.0)
        if len(faces):
            idx[:, 0] += x0
            all_verts.append(idx)
            all_faces.append(faces + n_verts)
            n_verts += len(idx)
    if not all_faces:
        verts, faces = np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    else:
        verts, faces = np.concatenate(all_verts), np.concatenate(all_faces)
        # slabs share their boundary planes, computed from the same values: weld exact duplicates
        verts, inverse = np.unique(verts, axis=0, return_inverse=True)
        faces = inverse.reshape(-1)[faces]
    return SurfaceMesh(_to_world(verts, bounds, n), faces,
                       {"resolution": n, "evaluated": int(nb.evaluated),
                        "evaluated_fraction": round(nb.evaluated / n ** 3, 5), "narrow_band": True,
                        "coarse_step": int(coarse_step), "seconds": round(time.perf_counter() - t0, 3)})


# ------------------------------------------------------------------------------------------------
# Cameras, sphere tracing and shading
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Camera:
    """A pinhole camera looking from ``eye`` at ``target``; ``fov`` is vertical, in degrees."""

    eye: tuple[float, float, float]
    target: tuple[float, float, float] = (0.5, 0.5, 0.5)
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)
    fov: float = 40.0

    def rays(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Origins and unit directions ``[H*W, 3]`` through pixel centres, row-major from the top."""
        eye, target, up = (np.asarray(v, np.float64) for v in (self.eye, self.target, self.up))
        fwd = target - eye
        fwd /= np.linalg.norm(fwd)
        right = np.cross(fwd, up)
        right /= np.linalg.norm(right)
        true_up = np.cross(right, fwd)
        half = math.tan(math.radians(self.fov) / 2)
        aspect = width / height
        px = ((np.arange(width) + 0.5) / width * 2 - 1) * half * aspect
        py = (1 - (np.arange(height) + 0.5) / height * 2) * half
        gx, gy = np.meshgrid(px, py)
        dirs = fwd + gx[..., None] * right + gy[..., None] * true_up
        dirs = dirs.reshape(-1, 3)
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        return np.broadcast_to(eye, dirs.shape).copy(), dirs


def default_camera(bounds=UNIT_BOUNDS) -> Camera:
    """Three-quarter view from above-front-right, framing the whole box."""
    lo, hi = np.asarray(bounds[0], np.float64), np.asarray(bounds[1], np.float64)
    c = (lo + hi) / 2
    r = float(np.linalg.norm(hi - lo)) / 2
    d = np.array([0.9, 0.65, 1.3])
    d /= np.linalg.norm(d)
    fov = 40.0
    dist = r / math.sin(math.radians(fov) / 2) * 0.72
    return Camera(eye=tuple(c + d * dist), target=tuple(c), up=(0.0, 1.0, 0.0), fov=fov)


def _ray_box(origins: np.ndarray, dirs: np.ndarray, bounds) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.asarray(bounds[0], np.float64), np.asarray(bounds[1], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs
        t0 = (lo - origins) * inv
        t1 = (hi - origins) * inv
    tmin = np.nanmax(np.minimum(t0, t1), axis=1)
    tmax = np.nanmin(np.maximum(t0, t1), axis=1)
    return np.maximum(tmin, 0.0), tmax


@torch.no_grad()
def sphere_trace(sdf_fn: SdfFn, origins: np.ndarray, dirs: np.ndarray, *, bounds=UNIT_BOUNDS, max_steps: int = 128,
                 eps: float = 2e-4, step_scale: float = 0.9, min_step: float = 1e-3, chunk: int = 1 << 18,
                 device=None):
    """First zero crossing of ``sdf_fn`` along each ray inside ``bounds``; ``(t [N], hit [N] bool)``.

    Steps are ``step_scale * sdf`` (a fitted SDF over-estimates distances in places) but at least
    ``min_step`` (a half-trained field is small everywhere and would crawl); a step that lands
    inside (sdf < 0) is refined by bisection against the previous point, so only shells thinner
    than ``min_step`` can be stepped over.
    """
    origins = np.asarray(origins, np.float64)
    dirs = np.asarray(dirs, np.float64)
    t_near, t_far = _ray_box(origins, dirs, bounds)
    t = t_near.copy()
    hit = np.zeros(len(t), bool)
    alive = np.nonzero(t_near < t_far)[0]
    t_prev = t.copy()
    for _ in range(max_steps):
        if len(alive) == 0:
            break
        p = origins[alive] + dirs[alive] * t[alive, None]
        f = evaluate_points(sdf_fn, p, chunk=chunk, device=device).astype(np.float64)
        inside = f < 0
        close = np.abs(f) < eps
        done_hit = close | inside
        if inside.any():  # bisection between the last outside point and this inside one
            rays = alive[inside & ~close]
            a, b = t_prev[rays], t[rays]
            for _ in range(8):
                mid = (a + b) / 2
                fm = evaluate_points(sdf_fn, origins[rays] + dirs[rays] * mid[:, None], chunk=chunk,
                                     device=device).astype(np.float64)
                out = fm > 0
                a = np.where(out, mid, a)
                b = np.where(out, b, mid)
            t[rays] = (a + b) / 2
        hit[alive[done_hit]] = True
        keep = ~done_hit
        alive, f = alive[keep], f[keep]
        t_prev[alive] = t[alive]
        t[alive] += np.maximum(f * step_scale, min_step)
        alive = alive[t[alive] < t_far[alive]]
    return t, hit


@torch.no_grad()
def sdf_normals(sdf_fn: SdfFn, points: np.ndarray, *, h: float = 2e-3, chunk: int = 1 << 18, device=None) -> np.ndarray:
    """Unit normals by central differences of ``sdf_fn``, ``[N, 3]``."""
    points = np.asarray(points, np.float64)
    if len(points) == 0:
        return np.zeros((0, 3))
    offsets = np.concatenate([np.eye(3) * h, -np.eye(3) * h])
    pts = (points[None, :, :] + offsets[:, None, :]).reshape(-1, 3)
    f = evaluate_points(sdf_fn, pts, chunk=chunk, device=device).astype(np.float64).reshape(6, -1)
    g = (f[:3] - f[3:]).T
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)


def shade(normals: np.ndarray, hit: np.ndarray, dirs: np.ndarray, width: int, height: int, *,
          color=(0.78, 0.80, 0.86), background=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Two-light Lambert shading (key light above-right, fill from the camera) -> ``[H, W, 3]`` in [0, 1]."""
    n = np.asarray(normals, np.float64).reshape(-1, 3)
    d = np.asarray(dirs, np.float64).reshape(-1, 3)
    # normals facing away from the camera (back faces of open meshes) are flipped for display
    n = np.where(((n * d).sum(1) > 0)[:, None], -n, n)
    key = np.array([0.5, 0.8, 0.35])
    key /= np.linalg.norm(key)
    lambert_key = np.clip(n @ key, 0, None)
    lambert_fill = np.clip((n * -d).sum(1), 0, None)
    intensity = 0.18 + 0.55 * lambert_key + 0.35 * lambert_fill
    rgb = np.clip(intensity[:, None] * np.asarray(color)[None, :], 0, 1)
    img = np.where(np.asarray(hit).reshape(-1, 1), rgb, np.asarray(background)[None, :])
    return img.reshape(height, width, 3)


def render_sdf(sdf_fn: SdfFn, *, camera: Camera | None = None, width: int = 512, height: int | None = None,
               bounds=UNIT_BOUNDS, chunk: int = 1 << 18, device=None, **trace_kw) -> tuple[np.ndarray, dict[str, Any]]:
    """A shaded image ``[H, W, 3]`` of the zero level set of ``sdf_fn`` and ``{"hit", "t", "seconds"}``."""
    t0 = time.perf_counter()
    height = height or width
    camera = camera or default_camera(bounds)
    origins, dirs = camera.rays(width, height)
    t, hit = sphere_trace(sdf_fn, origins, dirs, bounds=bounds, chunk=chunk, device=device, **trace_kw)
    normals = np.zeros_like(origins)
    pts = origins[hit] + dirs[hit] * t[hit, None]
    normals[hit] = sdf_normals(sdf_fn, pts, chunk=chunk, device=device)
    img = shade(normals, hit, dirs, width, height)
    return img, {"hit": hit.reshape(height, width), "t": t.reshape(height, width),
                 "seconds": round(time.perf_counter() - t0, 3)}


def render_ray_hits(cast_fn: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]], *,
                    camera: Camera | None = None, width: int = 512, height: int | None = None,
                    bounds=UNIT_BOUNDS) -> np.ndarray:
    """Shade a surface given by a ray caster ``cast_fn(origins, dirs) -> (t, normals)`` (e.g. a mesh)."""
    height = height or width
    camera = camera or default_camera(bounds)
    origins, dirs = camera.rays(width, height)
    t, normals = cast_fn(origins, dirs)
    return shade(normals, np.isfinite(t), dirs, width, height)


def side_by_side(images: Sequence[np.ndarray], gap: int = 8, background: float = 1.0) -> np.ndarray:
    """Images of equal height next to each other with a ``gap`` pixel margin."""
    h = max(im.shape[0] for im in images)
    parts = []
    for i, im in enumerate(images):
        if i:
            parts.append(np.full((h, gap, 3), background))
        parts.append(im)
    return np.concatenate(parts, axis=1)
