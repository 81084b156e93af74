"""Outputs of a reconstructed scene: videos along an orbit or the test cameras, and a coloured mesh.

``render_video()`` is ``fieldstudio render``; ``export_scene_mesh()`` is ``fieldstudio export-mesh``
for scene runs (marching cubes on the density, vertex colours from the field, back in the scene
file's original units).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fieldstudio.datasets.cameras import Cameras, look_at
from fieldstudio.datasets.scene import Normalization, load_scene
from fieldstudio.errors import ConfigError, InputError
from fieldstudio.renderers.rays import Rays, camera_rays, pixel_grid, ray_aabb_intersect

from .reconstruct import load_scene_run


def orbit_cameras(dataset, frames: int, elevation_deg: float | None = None) -> Cameras:
    """``frames`` cameras circling the scene centre at the training cameras' mean distance.

    Scenes are normalised with +z up (Blender's convention; object-centric captures are turned so),
    so the orbit runs around the z axis of the field-space box.
    """
    c2w = dataset.cameras.c2w[dataset.split("train")].cpu()
    aabb = dataset.aabb.reshape(2, 3).cpu()
    centre = (aabb[0] + aabb[1]) / 2
    offsets = c2w[:, :, 3] - centre
    radius = float(offsets.norm(dim=1).mean())
    if elevation_deg is None:
        elevation = float(torch.asin((offsets[:, 2] / offsets.norm(dim=1)).clamp(-1, 1)).mean())
    else:
        elevation = math.radians(elevation_deg)
    poses = []
    for k in range(frames):
        az = 2 * math.pi * k / frames
        eye = centre + radius * torch.tensor([math.cos(elevation) * math.cos(az), math.cos(elevation) * math.sin(az),
                                              math.sin(elevation)])
        poses.append(look_at(eye.tolist(), centre.tolist(), up=(0.0, 0.0, 1.0)))
    cams = dataset.cameras
    n = frames

    def rep(t):
        return t[:1].cpu().repeat(n)

    return Cameras(c2w=torch.stack(poses), fx=rep(cams.fx), fy=rep(cams.fy), cx=rep(cams.cx), cy=rep(cams.cy),
                   width=rep(cams.width), height=rep(cams.height), distortion=torch.zeros(n, 4),
                   model=["PINHOLE"] * n)


def _rays_for(cams: Cameras, i: int, dataset) -> Rays:
    w, h = int(cams.width[i]), int(cams.height[i])
    px, py = pixel_grid(w, h)
    o, d = camera_rays(cams, i, px, py)
    tn, tf, hit = ray_aabb_intersect(o, d, dataset.aabb.reshape(2, 3).cpu())
    tn = tn.clamp(min=float(dataset.near))
    tf = tf.clamp(max=float(dataset.far))
    return Rays(o, d, d, tn, tf, hit & (tf > tn))


def _colorize_depth(depth: np.ndarray, opacity: np.ndarray) -> np.ndarray:
    import matplotlib

    valid = opacity > 0.5
    lo, hi = (np.percentile(depth[valid], [2, 98]) if valid.any() else (0.0, 1.0))
    norm = np.clip((depth - lo) / max(hi - lo, 1e-8), 0, 1)
    rgb = matplotlib.colormaps["turbo"](1 - norm)[..., :3]
    return rgb * opacity[..., None] + (1 - opacity[..., None])


def render_video(run: str | Path, *, path: str = "orbit", frames: int = 60, out: str | Path = "video.mp4",
                 fps: int = 24, device: str = "auto", depth: bool = True, progress: bool = True) -> dict[str, Any]:
    """Render ``frames`` views (``path``: "orbit" or "test") to ``out`` (.mp4/.gif, or a folder of PNGs).

    With ``depth``, ``<out>_depth`` and ``<out>_opacity`` are written beside it.
    """
    from tqdm.auto import tqdm

    model, cfg = load_scene_run(run, device="cpu" if device == "auto" and not torch.cuda.is_available() else device)
    dev = next(model.parameters()).device
    s = cfg["scene"]
    dataset = load_scene(s["data"], format=s["format"], downscale=s["downscale"])
    if dataset.contraction != "none":
        raise ConfigError("render paths for NDC (forward-facing) scenes are not supported yet", "use --path test")
    if path == "orbit":
        cams = orbit_cameras(dataset, frames)
        views = list(range(frames))
    elif path == "test":
        cams = dataset.cameras.to("cpu")
        views = [int(i) for i in dataset.split("test")[:frames]]
    else:
        raise ConfigError(f"unknown render path '{path}'", "use orbit or test")
    rgbs, depths, opacities = [], [], []
    for i in tqdm(views, desc=f"render {path}", disable=not progress):
        rays = _rays_for(cams, i, dataset)
        rays = Rays(*(t.to(dev) for t in (rays.origins, rays.directions, rays.viewdirs, rays.t_near, rays.t_far, rays.hit)))
        rgb, dep, op = model.render_rays_chunked(rays, int(cams.height[i]), int(cams.width[i]), "white")
        rgbs.append(rgb.numpy())
        depths.append(_colorize_depth(dep.numpy(), op.numpy()))
        opacities.append(np.repeat(op.numpy()[..., None], 3, axis=2))
    out = Path(out)
    written = [_write_frames(out, rgbs, fps)]
    if depth:
        stem = out.with_suffix("") if out.suffix else out
        ext = out.suffix
        written.append(_write_frames(Path(f"{stem}_depth{ext}"), depths, fps))
        written.append(_write_frames(Path(f"{stem}_opacity{ext}"), opacities, fps))
    return {"frames": len(views), "path": path, "outputs": [str(p) for p in written]}


def _write_frames(out: Path, frames: list[np.ndarray], fps: int) -> Path:
    import imageio.v3 as iio

    u8 = [(np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8) for f in frames]
    if out.suffix.lower() in (".mp4", ".mov", ".mkv", ".gif"):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
        if out.suffix.lower() == ".gif":
            iio.imwrite(tmp, np.stack(u8), duration=1000 / fps, loop=0)
        else:
            # even sizes: yuv420p (what players expect) needs them
            h, w = u8[0].shape[:2]
            u8 = [f[: h - h % 2, : w - w % 2] for f in u8]
            iio.imwrite(tmp, np.stack(u8), fps=fps, codec="libx264", plugin="pyav" if False else None)
        tmp.replace(out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(u8):
        iio.imwrite(out / f"{k:04d}.png", f)
    return out


def export_scene_mesh(run: str | Path, *, resolution: int = 256, out: str | Path = "mesh.ply", threshold: float = 10.0,
                      device: str = "auto") -> dict[str, Any]:
    """Marching cubes of the density at ``threshold`` on a ``resolution``^3 grid over the scene box;
    vertex colours from the field looking along the inward normal; saved in the original units."""
    import trimesh
    from skimage import measure

    model, cfg = load_scene_run(run, device="cpu" if device == "auto" and not torch.cuda.is_available() else device)
    dev = next(model.parameters()).device
    aabb = model.aabb.cpu()
    n = int(resolution)
    if n < 16 or n > 1024:
        raise ConfigError(f"--resolution {n} is out of range", "use 16 to 1024")
    axes = [torch.linspace(float(aabb[0, k]), float(aabb[1, k]), n) for k in range(3)]
    vol = np.empty((n, n, n), dtype=np.float32)
    with torch.no_grad():
        for ix in range(n):  # one slab at a time keeps memory at n^2 points
            gy, gz = torch.meshgrid(axes[1], axes[2], indexing="ij")
            pts = torch.stack([torch.full_like(gy, float(axes[0][ix])), gy, gz], -1).reshape(-1, 3).to(dev)
            vol[ix] = model.field.density(model.to_unit(pts)).reshape(n, n).cpu().numpy()
    if not (vol.max() > threshold > vol.min()):
        raise InputError(f"no surface at density {threshold} (density range {vol.min():.3g}..{vol.max():.3g})",
                         "pass a --threshold inside that range, or train longer")
    verts, faces, normals, _ = measure.marching_cubes(vol, level=threshold)
    spacing = (aabb[1] - aabb[0]).numpy() / (n - 1)
    verts = verts * spacing + aabb[0].numpy()
    with torch.no_grad():
        v = torch.as_tensor(verts, dtype=torch.float32, device=dev)
        nrm = torch.as_tensor(normals.copy(), dtype=torch.float32, device=dev)
        nrm = nrm / nrm.norm(dim=1, keepdim=True).clamp_min(1e-8)
        # skimage's normals point down the gradient (out of the dense region): look back along them
        rgb, _ = model.field(model.to_unit(v), -nrm)
    colors = (rgb.clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
    norm = Normalization.from_dict(cfg["scene"]["normalization"])
    verts_world = norm.inverse(torch.as_tensor(verts, dtype=torch.float32)).numpy()
    mesh = trimesh.Trimesh(verts_world, faces[:, ::-1], vertex_colors=colors, process=False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    mesh.export(tmp)
    tmp.replace(out)
    return {"vertices": int(len(verts)), "faces": int(len(faces)), "out": str(out), "threshold": threshold,
            "resolution": n}
