"""Rays from posed cameras: pinhole and OpenCV-distorted cameras, the aabb, and LLFF's NDC.

Conventions (see `fieldstudio.datasets.cameras`): poses are OpenGL camera-to-world (+x right,
+y up, looking down -z); ``px, py`` are pixel *indices* (column, row; int or float, fractional
values for jitter) and the ray passes through image point ``(px + 0.5, py + 0.5)``, the pixel's
centre, in corner-origin image coordinates. Directions come back unit length.

For training and evaluation use `dataset_rays`: it returns rays in the space the field lives in
(NDC-mapped for forward-facing LLFF scenes), the view directions for the colour network, and the
``[t_near, t_far]`` interval to march, clipped to the dataset's aabb and near/far.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fieldstudio.datasets.cameras import Cameras

UNDISTORT_ITERATIONS = 10


def distort(x: torch.Tensor, y: torch.Tensor, dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's forward model on normalised coordinates (y down): undistorted -> distorted."""
    k1, k2, p1, p2 = dist.unbind(-1)
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + k2 * r2)
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + 2 * p2 * x * y + p1 * (r2 + 2 * y * y)
    return xd, yd


def undistort(xd: torch.Tensor, yd: torch.Tensor, dist: torch.Tensor,
              iterations: int = UNDISTORT_ITERATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert `distort` by Newton's method (as nerfstudio and instant-ngp do), starting at the distorted point."""
    k1, k2, p1, p2 = dist.unbind(-1)
    x, y = xd.clone(), yd.clone()
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + k2 * r2)
        dr = k1 + 2 * k2 * r2  # d(radial)/d(r2)
        fx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
        fy = y * radial + 2 * p2 * x * y + p1 * (r2 + 2 * y * y) - yd
        fx_x = radial + 2 * x * x * dr + 2 * p1 * y + 6 * p2 * x
        fx_y = 2 * x * y * dr + 2 * p1 * x + 2 * p2 * y
        fy_x = 2 * x * y * dr + 2 * p2 * y + 2 * p1 * x
        fy_y = radial + 2 * y * y * dr + 2 * p2 * x + 6 * p1 * y
        det = fx_x * fy_y - fx_y * fy_x
        ok = det.abs() > 1e-12
        det = torch.where(ok, det, torch.ones_like(det))
        step_x = torch.where(ok, (fx * fy_y - fy * fx_y) / det, torch.zeros_like(det))
        step_y = torch.where(ok, (fy * fx_x - fx * fy_x) / det, torch.zeros_like(det))
        x, y = x - step_x, y - step_y
    return x, y


def _as_index(idx, n: int, device) -> torch.Tensor:
    t = torch.as_tensor(idx, device=device)
    return t.long().expand(n) if t.ndim == 0 else t.long().reshape(-1)


def camera_rays(cameras: Cameras, idx, px, py) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space (scene-space) rays through pixels: ``(origins [n, 3], directions [n, 3] unit)``.

    ``idx``: camera index per ray (int or ``[n]``); ``px``, ``py``: pixel column / row ``[n]``.
    OPENCV cameras have their normalised coordinates undistorted before the ray is formed.
    """
    dev = cameras.device
    px = torch.as_tensor(px, device=dev).reshape(-1).float()
    py = torch.as_tensor(py, device=dev).reshape(-1).float()
    idx = _as_index(idx, px.shape[0], dev)
    x = (px + 0.5 - cameras.cx[idx]) / cameras.fx[idx]
    y = (py + 0.5 - cameras.cy[idx]) / cameras.fy[idx]  # OpenCV normalised coordinates, y down
    if cameras.has_distortion:
        dist = cameras.distortion[idx]
        ux, uy = undistort(x, y, dist)
        has = dist.ne(0).any(-1)
        x, y = torch.where(has, ux, x), torch.where(has, uy, y)
    d_cam = torch.stack([x, -y, -torch.ones_like(x)], dim=-1)  # OpenGL camera frame
    c2w = cameras.c2w[idx]
    d = (c2w[:, :, :3] @ d_cam[:, :, None])[:, :, 0]
    return c2w[:, :, 3].clone(), d / d.norm(dim=-1, keepdim=True)


def pixel_grid(width: int, height: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """All pixel indices ``(px, py)`` of an image, row-major (the order of ``image.reshape(-1, 3)``)."""
    py, px = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return px.reshape(-1), py.reshape(-1)


def image_rays(cameras: Cameras, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rays of every pixel of camera ``i``: ``[H * W, 3]`` each, row-major."""
    px, py = pixel_grid(int(cameras.width[i]), int(cameras.height[i]), cameras.device)
    return camera_rays(cameras, i, px, py)


def ray_aabb_intersect(origins: torch.Tensor, directions: torch.Tensor, aabb: torch.Tensor):
    """Slab test: ``(t_near, t_far, hit)`` of rays with the box ``aabb = [[xmin, ymin, zmin], [xmax, ymax, zmax]]``.

    ``t_near`` is clamped at 0 (a ray starting inside the box enters at 0); ``hit`` is
    ``t_far > t_near``. Directions need not be unit (t is then in units of ``|d|``).
    """
    aabb = torch.as_tensor(aabb, dtype=origins.dtype, device=origins.device)
    eps = 1e-12
    d = torch.where(directions.abs() < eps, torch.full_like(directions, eps), directions)
    t0 = (aabb[0] - origins) / d
    t1 = (aabb[1] - origins) / d
    t_near = torch.minimum(t0, t1).amax(-1).clamp(min=0)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far, t_far > t_near


def ndc_rays(origins: torch.Tensor, directions: torch.Tensor, ndc) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scene-space rays -> rays in the [0, 1]^3 NDC cube (`fieldstudio.datasets.scene.NDC`).

    Each ray is first moved to start on the near plane z = -near (NeRF's shift), then both ends,
    that start and the point at infinity, are mapped into the cube. Returns ``(origins, unit
    directions, t_far)``: the NDC segment is ``origins + t * directions`` for ``t`` in
    ``[0, t_far]`` (t_far reaches z = 1, i.e. infinite depth). Rays that do not point to -z get
    ``t_far = 0``.
    """
    dz = directions[:, 2]
    valid = dz < -1e-6
    dz = torch.where(valid, dz, torch.full_like(dz, -1e-6))
    t0 = -(ndc.near + origins[:, 2]) / dz
    o = origins + t0[:, None] * torch.cat([directions[:, :2], dz[:, None]], dim=-1)
    q0 = ndc.to_cube(o)
    m = ndc.margin
    u_inf = ndc.fx * directions[:, 0] / (-dz) + ndc.cx
    v_inf = ndc.cy - ndc.fy * directions[:, 1] / (-dz)
    q_inf = torch.stack([(u_inf / ndc.width + m) / (1 + 2 * m), (1 - v_inf / ndc.height + m) / (1 + 2 * m),
                         torch.ones_like(u_inf)], dim=-1)
    d = q_inf - q0
    length = d.norm(dim=-1)
    return q0, d / length.clamp(min=1e-12)[:, None], torch.where(valid, length, torch.zeros_like(length))


@dataclass
class Rays:
    """Rays in field space: march ``origins + t * directions`` for ``t`` in ``[t_near, t_far]`` where ``hit``.

    ``viewdirs`` (unit, scene space) feed the colour network; they equal ``directions`` except
    for NDC scenes. ``directions`` are unit length in field space, so ``t`` is a field-space distance.
    """

    origins: torch.Tensor
    directions: torch.Tensor
    viewdirs: torch.Tensor
    t_near: torch.Tensor
    t_far: torch.Tensor
    hit: torch.Tensor

    def __len__(self) -> int:
        return self.origins.shape[0]

    def __getitem__(self, sel) -> "Rays":
        return Rays(self.origins[sel], self.directions[sel], self.viewdirs[sel], self.t_near[sel], self.t_far[sel],
                    self.hit[sel])


def dataset_rays(dataset, idx, px, py) -> Rays:
    """Rays of a `SceneDataset`'s pixels in field space, clipped to its aabb and near/far (NDC when it says so)."""
    o, d = camera_rays(dataset.cameras, idx, px, py)
    aabb = dataset.aabb.to(o.device)
    if dataset.contraction == "ndc":
        o2, d2, length = ndc_rays(o, d, dataset.ndc)
        tn, tf, _ = ray_aabb_intersect(o2, d2, aabb)
        tf = torch.minimum(tf, length)
        return Rays(o2, d2, d, tn, tf, tf > tn)
    if dataset.contraction != "none":
        raise ValueError(f"unknown contraction {dataset.contraction!r}")
    tn, tf, _ = ray_aabb_intersect(o, d, aabb)
    tn = tn.clamp(min=float(dataset.near))
    tf = tf.clamp(max=float(dataset.far))
    return Rays(o, d, d, tn, tf, tf > tn)


def dataset_image_rays(dataset, i: int) -> Rays:
    """`dataset_rays` for every pixel of view ``i`` (row-major, ``H * W`` rays)."""
    px, py = pixel_grid(dataset.width, dataset.height, dataset.cameras.device)
    return dataset_rays(dataset, i, px, py)
