"""The bundled default scene of posed photos, made here (no download): a Blender-format scene.

Three textured primitives around the origin (Blender world, z up), rendered by analytic ray casting
in numpy with Lambert shading under a fixed light (so colours do not depend on the view) on a
transparent background, 2 x 2 supersampled for soft edges:

* a sphere (radius 0.5 at (0, 0, 0.1)) with a 12 x 6 red / cream checker in longitude / latitude,
* a torus (radii 0.85 / 0.12, same centre, tilted 25 degrees about x) in rainbow bands, found by
  sphere tracing its signed distance,
* a box pedestal (half sizes 0.75, 0.75, 0.2 at (0, 0, -0.75)) with blue / yellow diagonal stripes.

Everything lies within [-1, 1]^3, inside the usual [-1.5, 1.5]^3 Blender bound. Cameras sit on the
upper hemisphere at distance 4 looking at the origin, with NeRF-synthetic's field of view
(``camera_angle_x = 0.6911``). `default_scene_path()` writes it once into the cache folder
(``$FIELDSTUDIO_CACHE`` or ``~/.cache/fieldstudio``) and returns the path.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

#: bump when the scene changes, so caches are rebuilt
VERSION = 1
CAMERA_ANGLE_X = 0.6911112070083618
RADIUS = 4.0
LIGHT = np.array([0.45, -0.35, 0.82]) / np.linalg.norm([0.45, -0.35, 0.82])

SPHERE_C, SPHERE_R = np.array([0.0, 0.0, 0.1]), 0.5
TORUS_C, TORUS_R, TORUS_r, TORUS_TILT = np.array([0.0, 0.0, 0.1]), 0.85, 0.12, math.radians(25.0)
BOX_C, BOX_H = np.array([0.0, 0.0, -0.75]), np.array([0.75, 0.75, 0.2])
_ct, _st = math.cos(TORUS_TILT), math.sin(TORUS_TILT)
#: torus frame -> world (rotation about x); its axis is the frame's z
TORUS_ROT = np.array([[1.0, 0.0, 0.0], [0.0, _ct, -_st], [0.0, _st, _ct]])


def look_at_c2w(eye: np.ndarray, target=np.zeros(3), up=np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """4x4 OpenGL camera-to-world (x right, y up, looking down -z) of a camera at ``eye``."""
    back = eye - target
    back = back / np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, np.cross(back, right), back, eye
    return m


def camera_positions(n: int, phase: float = 0.0, elevation=(8.0, 70.0)) -> np.ndarray:
    """``n`` points on the upper hemisphere (Fibonacci spiral in elevation band, radius `RADIUS`)."""
    golden = math.pi * (3.0 - math.sqrt(5.0))
    k = np.arange(n) + 0.5
    lo, hi = np.sin(np.radians(elevation[0])), np.sin(np.radians(elevation[1]))
    z = lo + (hi - lo) * k / n
    az = phase + golden * np.arange(n)
    r = np.sqrt(1 - z * z)
    return RADIUS * np.stack([r * np.cos(az), r * np.sin(az), z], axis=1)


def _sphere_hit(o, d):
    oc = o - SPHERE_C
    b = (oc * d).sum(-1)
    c = (oc * oc).sum(-1) - SPHERE_R ** 2
    disc = b * b - c
    t = -b - np.sqrt(np.maximum(disc, 0))
    return np.where((disc > 0) & (t > 0), t, np.inf)


def _box_hit(o, d):
    inv = 1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)
    t0, t1 = (BOX_C - BOX_H - o) * inv, (BOX_C + BOX_H - o) * inv
    tn, tf = np.minimum(t0, t1).max(-1), np.maximum(t0, t1).min(-1)
    return np.where((tf > tn) & (tn > 0), tn, np.inf)


def _torus_sdf(q):
    k = np.sqrt(q[:, 0] ** 2 + q[:, 1] ** 2)
    return np.sqrt((k - TORUS_R) ** 2 + q[:, 2] ** 2) - TORUS_r


def _torus_hit(o, d):
    """Sphere tracing in the torus frame, only for rays that meet its bounding sphere."""
    t_out = np.full(len(o), np.inf)
    q_o = (o - TORUS_C) @ TORUS_ROT  # world -> frame: R^T x, rows as vectors
    q_d = d @ TORUS_ROT
    rb = TORUS_R + TORUS_r + 1e-3
    b = (q_o * q_d).sum(-1)
    disc = b * b - ((q_o * q_o).sum(-1) - rb * rb)
    cand = np.nonzero(disc > 0)[0]
    if len(cand) == 0:
        return t_out
    sq = np.sqrt(disc[cand])
    t, t_end = np.maximum(-b[cand] - sq, 0.0), -b[cand] + sq
    qo, qd = q_o[cand], q_d[cand]
    active = np.arange(len(cand))
    done = np.zeros(len(cand), bool)
    for _ in range(96):
        if len(active) == 0:
            break
        p = qo[active] + t[active, None] * qd[active]
        s = _torus_sdf(p)
        hit = s < 1e-5
        done[active[hit]] = True
        t[active] += np.where(hit, 0.0, s)
        active = active[~hit & (t[active] < t_end[active])]
    t_out[cand[done]] = t[done]
    return t_out


def _shade(p, kind):
    """Albedo and normal at hit points ``p`` of object ``kind`` (0 sphere, 1 torus, 2 box)."""
    n = np.zeros_like(p)
    col = np.zeros_like(p)
    s = kind == 0
    if s.any():
        q = p[s] - SPHERE_C
        n[s] = q / SPHERE_R
        lon = np.arctan2(q[:, 1], q[:, 0]) / (2 * math.pi) + 0.5
        lat = np.arccos(np.clip(q[:, 2] / SPHERE_R, -1, 1)) / math.pi
        check = (np.floor(lon * 12) + np.floor(lat * 6)) % 2 == 0
        col[s] = np.where(check[:, None], [0.85, 0.18, 0.12], [0.95, 0.90, 0.78])
    s = kind == 1
    if s.any():
        q = (p[s] - TORUS_C) @ TORUS_ROT
        k = np.sqrt(q[:, 0] ** 2 + q[:, 1] ** 2)
        nq = np.stack([q[:, 0] * (1 - TORUS_R / k), q[:, 1] * (1 - TORUS_R / k), q[:, 2]], axis=1)
        nq /= np.linalg.norm(nq, axis=1, keepdims=True)
        n[s] = nq @ TORUS_ROT.T
        phi = np.arctan2(q[:, 1], q[:, 0])
        band = np.floor((phi / (2 * math.pi) + 0.5) * 8) / 8
        col[s] = 0.55 + 0.4 * np.cos(2 * math.pi * (band[:, None] + np.array([0.0, 1 / 3, 2 / 3])))
    s = kind == 2
    if s.any():
        q = (p[s] - BOX_C) / BOX_H
        axis = np.abs(q).argmax(1)
        nb = np.zeros_like(q)
        nb[np.arange(len(q)), axis] = np.sign(q[np.arange(len(q)), axis])
        n[s] = nb
        stripe = np.floor((p[s, 0] + p[s, 1] + p[s, 2]) * 5) % 2 == 0
        col[s] = np.where(stripe[:, None], [0.15, 0.35, 0.85], [0.95, 0.80, 0.15])
    shade = 0.3 + 0.7 * np.clip((n * LIGHT).sum(-1), 0, None)
    return np.clip(col * shade[:, None], 0, 1)


def render_view(c2w: np.ndarray, size: int, supersample: int = 2) -> np.ndarray:
    """RGBA float ``[size, size, 4]`` (straight alpha) of the scene seen by ``c2w`` (OpenGL, 4x4)."""
    f = 0.5 * size / math.tan(0.5 * CAMERA_ANGLE_X)
    ss = supersample
    sub = (np.arange(ss) + 0.5) / ss
    u = (np.arange(size)[:, None] + sub[None, :]).reshape(-1)
    uu, vv = np.meshgrid(u, u, indexing="xy")  # vv: rows (down), uu: columns
    d_cam = np.stack([(uu - size / 2) / f, -(vv - size / 2) / f, -np.ones_like(uu)], axis=-1).reshape(-1, 3)
    d = d_cam @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    o = np.broadcast_to(c2w[:3, 3], d.shape)
    ts = np.stack([_sphere_hit(o, d), _torus_hit(o, d), _box_hit(o, d)], axis=1)
    kind, t = ts.argmin(1), ts.min(1)
    hit = np.isfinite(t)
    rgb = np.zeros_like(d)
    rgb[hit] = _shade(o[hit] + t[hit, None] * d[hit], kind[hit])
    a = hit.astype(np.float64)
    n = size * ss
    # flat index = row * n + column, row = i * ss + a, column = j * ss + b: average each ss x ss block
    prem = (rgb * a[:, None]).reshape(n, n, 3).reshape(size, ss, size, ss, 3).mean(axis=(1, 3))
    alpha = a.reshape(n, n).reshape(size, ss, size, ss).mean(axis=(1, 3))
    col = prem / np.maximum(alpha, 1e-8)[..., None]
    return np.concatenate([col, alpha[..., None]], axis=-1)


def make_default_scene(folder: str | Path, n_train: int = 50, n_val: int = 10, n_test: int = 10, size: int = 100,
                       supersample: int = 2) -> Path:
    """Write the default scene as a Blender-format folder (transforms_*.json + RGBA PNGs); deterministic."""
    from PIL import Image

    folder = Path(folder)
    views = {"train": camera_positions(n_train), "val": camera_positions(n_val, phase=0.9, elevation=(15, 60)),
             "test": camera_positions(n_test, phase=2.1, elevation=(12, 65))}
    for split, eyes in views.items():
        (folder / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for k, eye in enumerate(eyes):
            c2w = look_at_c2w(eye)
            rgba = render_view(c2w, size, supersample)
            Image.fromarray(np.round(rgba * 255).astype(np.uint8), "RGBA").save(folder / split / f"r_{k}.png",
                                                                                  optimize=False, compress_level=6)
            frames.append({"file_path": f"./{split}/r_{k}", "rotation": 0.0,
                           "transform_matrix": [[float(x) for x in row] for row in c2w]})
        (folder / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": CAMERA_ANGLE_X,
                                                                     "frames": frames}, indent=1) + "\n")
    (folder / "SOURCE.md").write_text(
        f"# fieldstudio default scene (v{VERSION})\n\nMade by `fieldstudio.datasets.procedural.make_default_scene` "
        f"(no external data): a checkered sphere, a rainbow torus and a striped box, ray cast in numpy with Lambert "
        f"shading, {size}x{size} RGBA, {n_train}/{n_val}/{n_test} views. Blender / NeRF-synthetic format.\n")
    return folder


def cache_dir() -> Path:
    env = os.environ.get("FIELDSTUDIO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fieldstudio"


def default_scene_path() -> Path:
    """The default scene's folder, made on first use (atomically: a stopped run leaves no half scene)."""
    target = cache_dir() / f"default_scene_v{VERSION}"
    if (target / "transforms_test.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".default_scene.", dir=target.parent))
    try:
        make_default_scene(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # made meanwhile by another process (or a half-made stale folder)
            if not (target / "transforms_test.json").is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
