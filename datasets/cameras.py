"""Posed cameras: one convention for every scene format.

**Pose convention (all of fieldstudio).** ``c2w[i]`` is a 3x4 camera-to-world matrix ``[R | t]`` in
the OpenGL / Blender / NeRF convention: the camera sits at ``t``, its columns are the camera's
axes in world coordinates, with **+x right, +y up, and the camera looking down -z** (the third
column points *backwards*, away from what the camera sees). COLMAP (world-to-camera, x right,
y down, looking down +z) and LLFF ([down, right, backwards] columns) poses are converted into this
convention by their readers; nothing downstream ever sees another one.

**Pixel convention.** Image coordinates ``(u, v)`` have their origin at the top-left *corner* of the
image, u to the right, v downwards, in pixels; the centre of pixel (column i, row j) is at
``(i + 0.5, j + 0.5)`` (as in COLMAP, instant-ngp and nerfstudio). ``cx, cy`` are in these
coordinates, so a centred principal point is ``(W / 2, H / 2)``. The pinhole ray through (u, v)
has camera-frame direction ``((u - cx) / fx, -(v - cy) / fy, -1)``.

**Distortion.** ``distortion[i] = (k1, k2, p1, p2)``, OpenCV's radial-tangential model on
normalised image coordinates (OpenCV's y-down frame): zeros for pinhole cameras. ``model[i]`` keeps
the name the file used (PINHOLE, SIMPLE_PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV) for reports; the ray
maths only looks at the four coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

#: distortion models whose coefficients fit in (k1, k2, p1, p2)
MODELS = ("PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")

#: OpenGL camera axes from OpenCV ones: flip y and z
OPENCV_TO_OPENGL = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))


@dataclass
class Cameras:
    """``N`` posed cameras (see the module docstring for the conventions).

    c2w: ``[N, 3, 4]`` float32; fx, fy, cx, cy: ``[N]`` float32 (pixels); width, height: ``[N]``
    int64 (all equal within a `SceneDataset`); distortion: ``[N, 4]`` (k1, k2, p1, p2); model: one
    name per camera.
    """

    c2w: torch.Tensor
    fx: torch.Tensor
    fy: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    width: torch.Tensor
    height: torch.Tensor
    distortion: torch.Tensor | None = None
    model: list[str] = field(default_factory=list)

    def __post_init__(self):
        n = self.c2w.shape[0]
        if self.c2w.shape != (n, 3, 4):
            if self.c2w.shape[1:] == (4, 4):
                self.c2w = self.c2w[:, :3, :]
            else:
                raise ValueError(f"c2w must be [N, 3, 4] (or [N, 4, 4]), got {tuple(self.c2w.shape)}")
        dev = self.c2w.device
        self.c2w = self.c2w.to(torch.float32)

        def vec(x, dtype):
            t = torch.as_tensor(x, dtype=dtype, device=dev)
            return t.expand(n).clone() if t.ndim == 0 or t.numel() == 1 else t.reshape(n)

        self.fx, self.fy = vec(self.fx, torch.float32), vec(self.fy, torch.float32)
        self.cx, self.cy = vec(self.cx, torch.float32), vec(self.cy, torch.float32)
        self.width, self.height = vec(self.width, torch.int64), vec(self.height, torch.int64)
        if self.distortion is None:
            self.distortion = torch.zeros(n, 4, dtype=torch.float32, device=dev)
        else:
            self.distortion = torch.as_tensor(self.distortion, dtype=torch.float32, device=dev).reshape(n, 4)
        if not self.model:
            self.model = ["PINHOLE" if not bool(d.any()) else "OPENCV" for d in self.distortion]
        if len(self.model) != n:
            raise ValueError(f"{len(self.model)} model names for {n} cameras")

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        """A subset (an int keeps a batch of one): ``cams[3]``, ``cams[2:5]``, ``cams[tensor_of_indices]``."""
        if isinstance(idx, int):
            idx = [idx]
        if isinstance(idx, slice):
            sel = list(range(len(self)))[idx]
        else:
            sel = torch.as_tensor(idx).reshape(-1)
            if sel.dtype == torch.bool:
                sel = sel.nonzero().reshape(-1)
            sel = sel.tolist()
        t = torch.as_tensor(sel, dtype=torch.long, device=self.c2w.device)
        return Cameras(self.c2w[t], self.fx[t], self.fy[t], self.cx[t], self.cy[t], self.width[t], self.height[t],
                       self.distortion[t], [self.model[i] for i in sel])

    def to(self, device) -> "Cameras":
        return Cameras(self.c2w.to(device), self.fx.to(device), self.fy.to(device), self.cx.to(device),
                       self.cy.to(device), self.width.to(device), self.height.to(device),
                       self.distortion.to(device), list(self.model))

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def centers(self) -> torch.Tensor:
        """Camera positions ``[N, 3]``."""
        return self.c2w[:, :, 3]

    @property
    def forward(self) -> torch.Tensor:
        """Unit viewing directions ``[N, 3]`` (the -z axis of each camera)."""
        return -self.c2w[:, :, 2] / self.c2w[:, :, 2].norm(dim=-1, keepdim=True)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` shared by all cameras (ValueError when they differ)."""
        w, h = self.width.unique(), self.height.unique()
        if len(w) != 1 or len(h) != 1:
            raise ValueError("the cameras have different image sizes")
        return int(w[0]), int(h[0])

    @property
    def has_distortion(self) -> bool:
        return bool(self.distortion.any())

    # ------------------------------------------------------------------ changes
    def scaled(self, factor: float | None = None, width: int | None = None, height: int | None = None) -> "Cameras":
        """The cameras of the same views resampled to another resolution.

        ``scaled(0.5)`` halves the image size (sizes rounded). With ``width``/``height`` the new sizes
        are exactly those (as the resized files have them) and, without ``factor``, the intrinsics
        scale by the per-axis size ratio; with both, the intrinsics scale by ``factor`` (right for
        d x d block averaging, which drops a partial last block: pixel i covers old pixels
        [d i, d i + d), so u_new = u_old / d exactly). Corner-origin pixel coordinates scale
        linearly, so fx, fy, cx, cy all scale; distortion acts on normalised coordinates and stays.
        """
        if factor is None and (width is None or height is None):
            raise ValueError("give a positive factor, or both width and height")
        if factor is not None and factor <= 0:
            raise ValueError("the factor must be positive")
        new_w = (torch.full_like(self.width, int(width)) if width is not None
                 else torch.round(self.width.double() * factor).long().clamp(min=1))
        new_h = (torch.full_like(self.height, int(height)) if height is not None
                 else torch.round(self.height.double() * factor).long().clamp(min=1))
        if factor is not None:
            sx = sy = torch.full_like(self.fx, float(factor))
        else:
            sx, sy = new_w.float() / self.width.float(), new_h.float() / self.height.float()
        return Cameras(self.c2w.clone(), self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, new_w, new_h,
                       self.distortion.clone(), list(self.model))

    def transformed(self, scale: float = 1.0, offset: Sequence[float] | torch.Tensor = (0.0, 0.0, 0.0),
                    rotation: torch.Tensor | None = None) -> "Cameras":
        """The cameras after the world moves by ``x' = scale * rotation @ x + offset`` (a similarity).

        Camera axes turn with ``rotation`` (identity by default) and stay unit length; positions
        are scaled, turned and offset. Ray directions are unchanged by scale and offset, so
        distances along rays scale by ``scale``.
        """
        dev = self.c2w.device
        rot = torch.eye(3, device=dev) if rotation is None else torch.as_tensor(rotation, dtype=torch.float32, device=dev)
        off = torch.as_tensor(offset, dtype=torch.float32, device=dev).reshape(3)
        c2w = self.c2w.clone()
        c2w[:, :, :3] = rot @ self.c2w[:, :, :3]
        c2w[:, :, 3] = float(scale) * (self.c2w[:, :, 3] @ rot.T) + off
        return Cameras(c2w, self.fx.clone(), self.fy.clone(), self.cx.clone(), self.cy.clone(), self.width.clone(),
                       self.height.clone(), self.distortion.clone(), list(self.model))

    def summary(self) -> dict:
        return {"count": len(self), "models": sorted(set(self.model)),
                "fx": [float(self.fx.min()), float(self.fx.max())], "fy": [float(self.fy.min()), float(self.fy.max())],
                "width": sorted({int(w) for w in self.width}), "height": sorted({int(h) for h in self.height})}

    @staticmethod
    def cat(parts: Sequence["Cameras"]) -> "Cameras":
        return Cameras(torch.cat([p.c2w for p in parts]), torch.cat([p.fx for p in parts]),
                       torch.cat([p.fy for p in parts]), torch.cat([p.cx for p in parts]),
                       torch.cat([p.cy for p in parts]), torch.cat([p.width for p in parts]),
                       torch.cat([p.height for p in parts]), torch.cat([p.distortion for p in parts]),
                       [m for p in parts for m in p.model])


def opencv_to_opengl(c2w_cv: torch.Tensor) -> torch.Tensor:
    """Camera-to-world ``[..., 3, 4]`` with OpenCV camera axes (y down, looking down +z) -> OpenGL axes."""
    out = c2w_cv.clone()
    out[..., :3, 1] = -c2w_cv[..., :3, 1]
    out[..., :3, 2] = -c2w_cv[..., :3, 2]
    return out


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """OpenGL-convention camera-to-world ``[3, 4]`` of a camera at ``eye`` looking at ``target``."""
    eye = torch.as_tensor(eye, dtype=torch.float64)
    back = eye - torch.as_tensor(target, dtype=torch.float64)
    back = back / back.norm()
    right = torch.linalg.cross(torch.as_tensor(up, dtype=torch.float64), back)
    right = right / right.norm()
    upv = torch.linalg.cross(back, right)
    return torch.stack([right, upv, back, eye], dim=1).float()
