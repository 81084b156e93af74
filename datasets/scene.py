"""Posed photos as one `SceneDataset`, whatever format they came in; `load_scene` picks the reader.

Formats (one small reader module each): Blender / NeRF-synthetic (``transforms_train.json``),
instant-ngp / nerfstudio (``transforms.json``), LLFF (``poses_bounds.npy``), COLMAP text or binary
(``sparse/0/cameras.bin``, ``images.bin``). With no path, the procedural default scene.

**Spaces.** Readers convert poses to the OpenGL convention (see `fieldstudio.datasets.cameras`) and
then move the world by a similarity, ``scene = normalization.scale * R @ original + offset``
(`Normalization`), chosen so that the region of interest lands in the unit cube:

* Blender: instant-ngp's ``scale = 0.33, offset = 0.5`` (the usual [-1.5, 1.5]^3 bound -> ~[0, 1]^3).
* instant-ngp transforms.json: its ``scale`` (default 0.33) and ``offset`` (default 0.5), and the aabb
  ``0.5 -+ aabb_scale / 2`` as instant-ngp does (no axis cycling: our axes stay the file's axes).
  A nerfstudio file without scale/offset/aabb_scale is centred like COLMAP.
* COLMAP, and LLFF captures that surround the object: centred on the point the cameras look at
  (least squares over the optical axes), turned so the cameras' mean up vector is +z (z-up like
  Blender scenes), and scaled so the object's radius maps to ~0.5.
* LLFF forward-facing captures: NeRF's recipe (scale so the nearest bound is 1/0.75, re-centre on
  the average pose), and then ``contraction = "ndc"``: the field lives in normalised device
  coordinates of that average camera, mapped into [0, 1]^3 (`NDC`). Rays must then be generated
  with `fieldstudio.renderers.rays.dataset_rays`, which does the mapping.

``aabb`` (``[2, 3]``) is where the renderer marches, in scene space (field space for NDC). It is
[0, 1]^3 except for instant-ngp files with ``aabb_scale > 1``; the field's encoder should see
``(p - aabb[0]) / (aabb[1] - aabb[0])``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fieldstudio.errors import InputError

from .cameras import Cameras

FORMATS = ("blender", "ngp", "llff", "colmap")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".bmp", ".webp")


# ------------------------------------------------------------------------------------------------
# Spaces
# ------------------------------------------------------------------------------------------------

@dataclass
class Normalization:
    """``scene = scale * rotation @ original + offset``; `inverse` goes back to the file's units."""

    scale: float = 1.0
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation: tuple = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def _mats(self, like: torch.Tensor):
        r = torch.as_tensor(self.rotation, dtype=like.dtype, device=like.device)
        o = torch.as_tensor(self.offset, dtype=like.dtype, device=like.device)
        return r, o

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        points = torch.as_tensor(points, dtype=torch.float32) if not torch.is_tensor(points) else points
        r, o = self._mats(points)
        return self.scale * points @ r.T + o

    def inverse(self, points: torch.Tensor) -> torch.Tensor:
        points = torch.as_tensor(points, dtype=torch.float32) if not torch.is_tensor(points) else points
        r, o = self._mats(points)
        return ((points - o) @ r) / self.scale

    def apply_cameras(self, cams: Cameras) -> Cameras:
        return cams.transformed(self.scale, self.offset, torch.tensor(self.rotation, dtype=torch.float32))

    def as_dict(self) -> dict[str, Any]:
        return {"scale": float(self.scale), "offset": [float(x) for x in self.offset],
                "rotation": [[float(x) for x in row] for row in self.rotation],
                "convention": "scene = scale * rotation @ original + offset"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Normalization":
        return cls(float(d["scale"]), tuple(float(x) for x in d["offset"]),
                   tuple(tuple(float(x) for x in row) for row in d.get("rotation", np.eye(3).tolist())))


@dataclass
class NDC:
    """Normalised device coordinates of a reference camera at the origin looking down -z, in [0, 1]^3.

    A scene point ``(x, y, z)`` (z < 0 in front) maps to ``(u / W, 1 - v / H, 1 + near / z)``, where
    ``(u, v)`` is its pixel position in the reference image; x and y are then widened by ``margin``
    on each side (``q = (q + margin) / (1 + 2 margin)``) so views that see a little beyond the
    reference image still fit. z: 0 at the near plane, 1 at infinity. This is NeRF's NDC
    (``near = 1``) moved from [-1, 1] to [0, 1], with a general principal point.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    near: float = 1.0
    margin: float = 0.1

    def to_cube(self, p: torch.Tensor) -> torch.Tensor:
        x, y, z = p.unbind(-1)
        u = self.fx * x / (-z) + self.cx
        v = self.cy - self.fy * y / (-z)
        m = self.margin
        return torch.stack([(u / self.width + m) / (1 + 2 * m), (1 - v / self.height + m) / (1 + 2 * m),
                            1 + self.near / z], dim=-1)

    def from_cube(self, q: torch.Tensor) -> torch.Tensor:
        m = self.margin
        qx, qy, qz = q.unbind(-1)
        qx, qy = qx * (1 + 2 * m) - m, qy * (1 + 2 * m) - m
        z = self.near / (qz - 1).clamp(max=-1e-9)
        u, v = qx * self.width, (1 - qy) * self.height
        return torch.stack([(u - self.cx) / self.fx * (-z), -(v - self.cy) / self.fy * (-z), z], dim=-1)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("fx", "fy", "cx", "cy", "width", "height", "near", "margin")}


def focus_point(c2w: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The point closest (least squares) to all optical axes, and whether it is well defined.

    Not well defined when the axes are (nearly) parallel or the point lies behind the cameras.
    """
    c = c2w[:, :, 3].double()
    d = -c2w[:, :, 2].double()
    d = d / d.norm(dim=-1, keepdim=True)
    a = torch.eye(3, dtype=torch.float64) - d[:, :, None] * d[:, None, :]
    m, b = a.sum(0), (a @ c[:, :, None]).sum(0)[:, 0]
    ev = torch.linalg.eigvalsh(m)
    if len(c2w) < 2 or float(ev[0]) < 1e-3 * float(ev[-1]):
        return c.mean(0), False
    p = torch.linalg.solve(m, b)
    ahead = ((p - c) * d).sum(-1)
    return p, bool((ahead > 0).float().mean() > 0.5)


def up_rotation(c2w: torch.Tensor) -> torch.Tensor:
    """The rotation (float64 [3, 3]) that turns the cameras' mean up vector to +z (identity if it is ill defined)."""
    up = c2w[:, :, 1].double().mean(0)
    if float(up.norm()) < 0.3:  # cameras rolled every which way: no clear up
        return torch.eye(3, dtype=torch.float64)
    a = up / up.norm()
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    v, c = torch.linalg.cross(a, z), float(a @ z)
    if c < -1 + 1e-9:
        return torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    vx = torch.tensor([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + vx + vx @ vx / (1 + c)


def object_centric(c2w: torch.Tensor, radius: float | None = None, orient: bool = True) -> tuple[Normalization, dict]:
    """Centre the look-at point at 0.5, turn the cameras' mean up to +z (``orient``), and map a ball
    of ``radius`` (default: 0.375 x the mean camera distance, instant-ngp's colmap2nerf proportion)
    to half the unit cube."""
    p, ok = focus_point(c2w)
    dist = (c2w[:, :, 3].double() - p).norm(dim=-1)
    mean_dist = float(dist.mean()) if len(dist) else 1.0
    if radius is None or not math.isfinite(radius) or radius <= 0:
        radius = 0.375 * max(mean_dist, 1e-6)
    scale = 0.5 / radius
    rot = up_rotation(c2w) if orient else torch.eye(3, dtype=torch.float64)
    offset = tuple(float(x) for x in 0.5 - scale * (rot @ p))
    norm = Normalization(scale, offset, tuple(tuple(float(x) for x in row) for row in rot.tolist()))
    return norm, {"focus": [float(x) for x in p], "focus_well_defined": ok, "mean_camera_distance": mean_dist,
                  "radius": float(radius)}


# ------------------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------------------

@dataclass
class SceneDataset:
    """Posed images of one scene, normalised (see the module docstring).

    ``images`` uint8 ``[N, H, W, 3]`` (kept uint8 in memory; `image` / `pixels` give floats);
    ``alpha`` uint8 ``[N, H, W]`` for RGBA sources (colour is *not* premultiplied; composite with
    `image` / `pixels`), else None; ``masks`` uint8 ``[N, H, W]`` object masks from a separate folder
    (LLFF ``masks_N/``), else None. ``splits`` maps "train"/"val"/"test" to index tensors.
    ``background`` is the training background for RGBA data ("random": a uniform random colour per
    ray, as instant-ngp does; or "white"/"black"); evaluation always composites on ``eval_background``.
    ``near``/``far`` bound the content along rays in scene units (``far`` may be inf).
    """

    images: torch.Tensor
    cameras: Cameras
    splits: dict[str, torch.Tensor]
    aabb: torch.Tensor
    near: float
    far: float
    normalization: Normalization
    alpha: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    forward_facing: bool = False
    contraction: str = "none"
    ndc: NDC | None = None
    format: str = ""
    source: str = ""
    background: str = "random"
    eval_background: str = "white"
    names: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    @property
    def has_alpha(self) -> bool:
        return self.alpha is not None

    @property
    def device(self) -> torch.device:
        return self.images.device

    def split(self, name: str) -> torch.Tensor:
        if name not in self.splits:
            raise InputError(f"{self.source}: no '{name}' split", f"use one of: {', '.join(self.splits)}")
        return self.splits[name]

    def to(self, device) -> "SceneDataset":
        d = dict(self.__dict__)
        d["images"] = self.images.to(device)
        d["alpha"] = None if self.alpha is None else self.alpha.to(device)
        d["masks"] = None if self.masks is None else self.masks.to(device)
        d["cameras"] = self.cameras.to(device)
        d["aabb"] = self.aabb.to(device)
        d["splits"] = {k: v.to(device) for k, v in self.splits.items()}
        return SceneDataset(**d)

    def _bg(self, background, n: int, generator=None) -> torch.Tensor:
        dev = self.images.device
        if torch.is_tensor(background) or isinstance(background, (tuple, list)):
            return torch.as_tensor(background, dtype=torch.float32, device=dev).reshape(-1, 3).expand(n, 3)
        if background == "white":
            return torch.ones(n, 3, device=dev)
        if background == "black":
            return torch.zeros(n, 3, device=dev)
        if background == "random":
            return torch.rand(n, 3, device=dev, generator=generator)
        raise ValueError(f"background must be white, black, random or an RGB triple, not {background!r}")

    def image(self, i: int, background="white") -> torch.Tensor:
        """Image ``i`` as float32 ``[H, W, 3]`` in [0, 1], RGBA composited on ``background``."""
        rgb = self.images[i].float() / 255.0
        if self.alpha is None:
            return rgb
        a = self.alpha[i].float()[..., None] / 255.0
        bg = self._bg(background, 1).reshape(1, 1, 3) if background != "random" else \
            torch.rand(self.height, self.width, 3, device=rgb.device)
        return rgb * a + bg * (1 - a)

    def pixels(self, idx: torch.Tensor, py: torch.Tensor, px: torch.Tensor, background=None, generator=None):
        """Target colours of pixels (image ``idx``, row ``py``, column ``px``; integer tensors).

        Returns ``(rgb [n, 3], bg [n, 3])``: RGBA composited on ``bg`` (``background`` defaults to the
        dataset's training policy; "random" draws a colour per pixel). The renderer must composite
        its prediction on the same ``bg``. For RGB data ``bg`` is what the caller asked for but unused.
        """
        background = self.background if background is None else background
        rgb = self.images[idx, py, px].float() / 255.0
        bg = self._bg(background, rgb.shape[0], generator)
        if self.alpha is not None:
            a = self.alpha[idx, py, px].float()[:, None] / 255.0
            rgb = rgb * a + bg * (1 - a)
        return rgb, bg

    def to_original(self, points: torch.Tensor) -> torch.Tensor:
        """Field-space points back to the file's world units (through the inverse NDC map if used)."""
        if self.contraction == "ndc":
            points = self.ndc.from_cube(points)
        return self.normalization.inverse(points)

    def from_original(self, points: torch.Tensor) -> torch.Tensor:
        points = self.normalization.apply(points)
        return self.ndc.to_cube(points) if self.contraction == "ndc" else points

    def summary(self) -> dict[str, Any]:
        c = self.cameras
        return {"format": self.format, "source": self.source, "views": len(self),
                "splits": {k: int(len(v)) for k, v in self.splits.items()}, "width": self.width,
                "height": self.height, "alpha": self.has_alpha, "masks": self.masks is not None,
                "models": sorted(set(c.model)), "fx": [float(c.fx.min()), float(c.fx.max())],
                "fy": [float(c.fy.min()), float(c.fy.max())], "near": self.near, "far": self.far,
                "aabb": self.aabb.tolist(), "forward_facing": self.forward_facing, "contraction": self.contraction,
                "normalization": self.normalization.as_dict(), **({"ndc": self.ndc.as_dict()} if self.ndc else {}),
                "background": {"train": self.background, "eval": self.eval_background}, **self.info}


# ------------------------------------------------------------------------------------------------
# Helpers shared by the readers
# ------------------------------------------------------------------------------------------------

def check_downscale(downscale) -> int:
    if isinstance(downscale, float) and downscale.is_integer():
        downscale = int(downscale)
    if not isinstance(downscale, int) or isinstance(downscale, bool) or downscale < 1:
        raise InputError(f"downscale must be a whole number >= 1, not {downscale!r}", "use 1, 2, 4 or 8")
    return downscale


def check_pose(m: np.ndarray, where: str) -> np.ndarray:
    """A 3x4 / 4x4 pose from a file, with a clear error when it is malformed or not finite."""
    try:
        arr = np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: the pose is not a matrix of numbers", "fix or regenerate the pose file") from exc
    if arr.shape not in ((4, 4), (3, 4)):
        raise InputError(f"{where}: the pose has shape {arr.shape}, expected 4x4 (or 3x4)",
                         "fix or regenerate the pose file")
    if not np.isfinite(arr).all():
        raise InputError(f"{where}: the pose contains NaN or infinite values",
                         "drop this frame or re-run the pose estimation")
    r = arr[:3, :3]
    s = np.linalg.svd(r, compute_uv=False)
    if s.min() < 1e-6 * max(s.max(), 1e-12):
        raise InputError(f"{where}: the pose's rotation is degenerate (singular 3x3 part)",
                         "fix or regenerate the pose file")
    return arr[:3, :4]


def orthonormalize(c2w: np.ndarray) -> np.ndarray:
    """Poses ``[N, 3, 4]`` with rotations made exactly orthonormal (their scale removed), via SVD."""
    out = c2w.copy()
    u, _, vt = np.linalg.svd(c2w[:, :, :3])
    out[:, :, :3] = u @ vt
    return out


def find_image(path: Path, where: str) -> Path:
    """``path`` itself, or with an image suffix appended (Blender's ``./train/r_0``)."""
    if path.is_file():
        return path
    for suf in IMAGE_SUFFIXES:
        for s in (suf, suf.upper()):
            cand = path.with_name(path.name + s)
            if cand.is_file():
                return cand
    raise InputError(f"{where}: image not found: {path}",
                     "check the frame's file_path (relative to the pose file) or remove the frame")


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _block_mean(arr: np.ndarray, d: int) -> np.ndarray:
    h, w = arr.shape[0] // d, arr.shape[1] // d
    return arr[:h * d, :w * d].reshape(h, d, w, d, *arr.shape[2:]).mean(axis=(1, 3))


def read_images(paths: Sequence[Path], labels: Sequence[str], downscale: int = 1, mask: bool = False):
    """Load frames as uint8 ``rgb [N, H, W, 3]`` and ``alpha [N, H, W]`` (None when no frame has alpha).

    ``labels[i]`` names frame i in errors ("frame 3 (train/r_3.png)"). ``downscale`` averages d x d
    blocks (premultiplied by alpha, so transparent pixels do not bleed colour); sizes must all
    match. With ``mask=True`` returns one channel ``[N, H, W]`` instead (masks).
    """
    from .images import load_image

    rgbs, alphas, first = [], [], None
    for path, label in zip(paths, labels):
        try:
            img = load_image(path)
        except InputError as exc:
            raise InputError(f"{label}: {exc.problem}", exc.fix) from exc
        size = img.shape[:2]
        if first is None:
            first = (size, label)
        elif size != first[0]:
            raise InputError(f"{label} is {size[1]}x{size[0]} pixels but {first[1]} is {first[0][1]}x{first[0][0]}",
                             "all views of a scene must have the same size; resize them or drop the odd ones")
        c = img.shape[2]
        if mask:
            m = img[..., 0] if c in (1, 2) else img[..., :3].mean(-1)
            if downscale > 1:
                m = _block_mean(m, downscale)
            rgbs.append(np.round(m * 255).astype(np.uint8))
            continue
        rgb = np.repeat(img[..., :1], 3, axis=2) if c in (1, 2) else img[..., :3]
        a = img[..., -1] if c in (2, 4) else None
        if downscale > 1:
            if a is not None:
                am = _block_mean(a, downscale)
                rgb = _block_mean(rgb * a[..., None], downscale) / np.maximum(am, 1e-8)[..., None]
                a = am
            else:
                rgb = _block_mean(rgb, downscale)
        rgbs.append(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8))
        alphas.append(None if a is None else np.round(np.clip(a, 0, 1) * 255).astype(np.uint8))
    if not rgbs:
        raise InputError("no images to load", "check the data folder")
    images = torch.from_numpy(np.stack(rgbs))
    if mask or all(a is None for a in alphas):
        return images, None
    h, w = rgbs[0].shape[:2]
    alpha = np.stack([np.full((h, w), 255, np.uint8) if a is None else a for a in alphas])
    return images, torch.from_numpy(alpha)


def held_out_splits(n: int, every: int = 8) -> dict[str, torch.Tensor]:
    """LLFF's convention: every ``every``-th view (0, 8, 16, ...) is held out for test (and val)."""
    idx = torch.arange(n)
    test = idx[::every] if n > 1 else idx
    train = idx[(idx % every) != 0] if n > 1 else idx
    return {"train": train, "val": test.clone(), "test": test}


def unit_aabb() -> torch.Tensor:
    return torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


# ------------------------------------------------------------------------------------------------
# Dispatch
# ------------------------------------------------------------------------------------------------

def detect_format(path: Path) -> str:
    """Which reader fits the files at ``path`` (a folder, or a pose file inside one)."""
    from . import colmap

    if path.is_file():
        name = path.name.lower()
        if name.startswith("transforms_") and name.endswith(".json"):
            return "blender"
        if name.endswith(".json"):
            return "ngp"
        if name == "poses_bounds.npy":
            return "llff"
        if name in ("cameras.txt", "cameras.bin", "images.txt", "images.bin"):
            return "colmap"
        raise InputError(f"{path}: not a pose file fieldstudio reads",
                         "pass the scene folder (or transforms.json / poses_bounds.npy / a COLMAP sparse folder)")
    if not path.is_dir():
        raise InputError(f"scene not found: {path}", "pass a folder of posed photos, or nothing for the default scene")
    if (path / "transforms_train.json").is_file():
        return "blender"
    if (path / "transforms.json").is_file():
        return "ngp"
    if (path / "poses_bounds.npy").is_file():
        return "llff"
    if colmap.find_model_dir(path) is not None:
        return "colmap"
    raise InputError(f"{path}: no poses found (looked for transforms_train.json, transforms.json, poses_bounds.npy, "
                     "sparse/0/cameras.bin|txt)",
                     "run COLMAP (or instant-ngp's colmap2nerf.py) on the photos first, or pass --format")


def load_scene(path: str | Path | None = None, format: str = "auto", downscale: int = 1, **options) -> SceneDataset:
    """Read a scene of posed photos (format auto-detected) into a normalised `SceneDataset`.

    ``path=None`` gives the procedural default scene. ``downscale`` (1, 2, 4, ...) shrinks images
    and intrinsics together. Reader options pass through (e.g. ``forward_facing=False`` for LLFF,
    ``background="white"`` for RGBA data).
    """
    downscale = check_downscale(downscale)
    if path is None:
        from .procedural import default_scene_path

        path, format = default_scene_path(), "blender"
    path = Path(os.path.expanduser(str(path)))
    fmt = detect_format(path) if format in (None, "auto") else str(format).lower()
    if fmt in ("nerfstudio", "instant-ngp", "transforms"):
        fmt = "ngp"
    if fmt not in FORMATS:
        raise InputError(f"unknown scene format '{format}'", f"use auto or one of: {', '.join(FORMATS)}")
    if not path.exists():
        raise InputError(f"scene not found: {path}", "pass a folder of posed photos, or nothing for the default scene")
    if fmt == "blender":
        from .blender import load_blender as reader
    elif fmt == "ngp":
        from .ngp_json import load_ngp as reader
    elif fmt == "llff":
        from .llff import load_llff as reader
    else:
        from .colmap import load_colmap as reader
    return reader(path, downscale=downscale, **options)
