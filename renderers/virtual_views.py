"""Random virtual cameras around a scene, so a field can be distilled without any training images.

PVD draws a fresh set of poses on a sphere around the object every epoch, all looking at its
centre. `VirtualCameras` does the same: ``n_cameras`` centres at distance ``radius`` from
``center`` with an elevation (against ``up``) drawn uniformly from ``elevation`` degrees and a
uniform azimuth; each ray picks one of them and a uniform point of its square image plane of
field of view ``fov_deg``. `from_poses` fits radius, elevation range, up and fov to real cameras.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .rays import Rays, ray_aabb_intersect


class VirtualCameras:
    def __init__(self, center: Sequence[float], radius: float, *, elevation: tuple[float, float] = (-90.0, 90.0),
                 up: Sequence[float] = (0.0, 0.0, 1.0), fov_deg: float = 40.0, n_cameras: int = 100,
                 near: float = 0.0):
        if radius <= 0 or n_cameras < 1 or not 0 < fov_deg < 180 or not -90 <= elevation[0] <= elevation[1] <= 90:
            raise ValueError(f"VirtualCameras: invalid radius={radius}, n_cameras={n_cameras}, fov={fov_deg}, "
                             f"elevation={elevation}")
        self.center = torch.as_tensor(center, dtype=torch.float32).reshape(3)
        up = torch.as_tensor(up, dtype=torch.float32).reshape(3)
        self.up = up / up.norm()
        self.radius, self.elevation, self.fov_deg = float(radius), (float(elevation[0]), float(elevation[1])), float(fov_deg)
        self.n_cameras, self.near = int(n_cameras), float(near)
        # two unit vectors orthogonal to up, for the azimuth
        helper = torch.tensor([1.0, 0.0, 0.0]) if abs(float(self.up[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0])
        self._e1 = torch.linalg.cross(self.up, helper)
        self._e1 = self._e1 / self._e1.norm()
        self._e2 = torch.linalg.cross(self.up, self._e1)
        self.positions = torch.empty(0, 3)

    @classmethod
    def from_poses(cls, c2w: torch.Tensor, center: Sequence[float], fov_deg: float, n_cameras: int = 100,
                   near: float = 0.0) -> "VirtualCameras":
        """Cameras like the real ones (``c2w [n, 3, 4]``, OpenGL): their mean distance to ``center``,
        their range of elevations about their mean up vector, their field of view."""
        c2w = torch.as_tensor(c2w, dtype=torch.float32).cpu()
        ctr = torch.as_tensor(center, dtype=torch.float32)
        up = c2w[:, :3, 1].mean(0)
        up = up / up.norm().clamp_min(1e-8)
        rel = c2w[:, :3, 3] - ctr
        dist = rel.norm(dim=-1)
        elev = torch.rad2deg(torch.asin((rel @ up / dist.clamp_min(1e-8)).clamp(-1, 1)))
        return cls(ctr.tolist(), float(dist.mean()), elevation=(float(elev.min()), float(elev.max())), up=up.tolist(),
                   fov_deg=fov_deg, n_cameras=n_cameras, near=near)

    def config(self) -> dict:
        return {"center": self.center.tolist(), "radius": self.radius, "elevation": list(self.elevation),
                "up": self.up.tolist(), "fov_deg": self.fov_deg, "n_cameras": self.n_cameras, "near": self.near}

    def regenerate(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw a new set of camera centres ``[n_cameras, 3]`` (one epoch's poses)."""
        n = self.n_cameras
        lo, hi = (math.sin(math.radians(e)) for e in self.elevation)
        s = lo + (hi - lo) * torch.rand(n, generator=generator)  # uniform in sin(elevation): uniform on the band
        az = 2 * math.pi * torch.rand(n, generator=generator)
        c = torch.sqrt((1 - s * s).clamp_min(0))
        dirs = s[:, None] * self.up + c[:, None] * (torch.cos(az)[:, None] * self._e1 + torch.sin(az)[:, None] * self._e2)
        self.positions = self.center + self.radius * dirs
        return self.positions

    def rays(self, n: int, aabb, generator: torch.Generator | None = None, device=None) -> Rays:
        """``n`` rays from random cameras of the current set through random image points, clipped to ``aabb``."""
        if self.positions.shape[0] == 0:
            self.regenerate(generator)
        cam = torch.randint(0, self.positions.shape[0], (n,), generator=generator)
        o = self.positions[cam]
        fwd = self.center - o
        fwd = fwd / fwd.norm(dim=-1, keepdim=True)
        right = torch.linalg.cross(fwd, self.up.expand_as(fwd))
        # a camera straight above the centre has no defined "right": any perpendicular will do
        right = torch.where(right.norm(dim=-1, keepdim=True) < 1e-6, self._e1.expand_as(fwd), right)
        right = right / right.norm(dim=-1, keepdim=True)
        cam_up = torch.linalg.cross(right, fwd)
        half = math.tan(math.radians(self.fov_deg) / 2)
        uv = (torch.rand(n, 2, generator=generator) * 2 - 1) * half
        d = fwd + uv[:, :1] * right + uv[:, 1:] * cam_up
        d = d / d.norm(dim=-1, keepdim=True)
        o, d = o.to(device), d.to(device)
        tn, tf, _ = ray_aabb_intersect(o, d, torch.as_tensor(aabb, dtype=o.dtype, device=o.device).reshape(2, 3))
        tn = tn.clamp(min=self.near)
        return Rays(o, d, d, tn, tf, tf > tn)
