"""LLFF scenes: ``poses_bounds.npy`` + ``images/`` (or ``images_N/``, N x smaller).

``poses_bounds.npy`` is ``[N, 17]``: per view a row-major 3x5 matrix ``[R | t | hwf]`` (camera-to-
world with columns [down, right, backwards]; ``hwf`` = height, width, focal of the *full-size*
images) and the near/far depth bounds. Rows follow the image file names in sorted order. Columns
are reordered to [right, up, backwards] (OpenGL); intrinsics are scaled to the images actually read
(``images_8`` -> / 8). ``downscale=d`` reads ``images_d/`` when it exists, else shrinks a folder
whose factor divides d; with d = 1 and no ``images/``, the smallest ``images_N/`` there is.
``masks_N/`` (same factor, same count) are read into ``masks``.

Two kinds of capture:

* **forward-facing** (all viewing axes within 30 degrees of their mean; ``forward_facing=`` forces
  it): NeRF's recipe. The world is scaled so the nearest bound is 1 / 0.75 and re-centred on the
  average pose (which becomes the identity: at the origin, looking down -z). Then
  ``contraction = "ndc"``: the field lives in the normalised device coordinates of that average
  camera (`fieldstudio.datasets.scene.NDC`, near plane z = -1, infinity at z01 = 1), so unbounded
  depth fits in [0, 1]^3. Use `fieldstudio.renderers.rays.dataset_rays` to get rays in that cube.
* **surrounding an object** (e.g. nerf_ethiopianhead_llff): centred on the look-at point and
  scaled so the content within the near bounds of every camera (90th percentile of camera
  distance - near bound, + 10 %) fits in the unit cube, like a COLMAP scene. No contraction.

Splits: every 8th view (0, 8, 16, ...) is test and val, the rest train (NeRF's ``llffhold = 8``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from fieldstudio.errors import InputError

from .cameras import Cameras
from .scene import (NDC, Normalization, SceneDataset, focus_point, held_out_splits, list_images, object_centric,
                    read_images, unit_aabb)

#: the largest angle (degrees) between a view and the mean view for a capture to count as forward-facing
FORWARD_FACING_DEGREES = 30.0
BD_FACTOR = 0.75


def _image_folders(folder: Path, stem: str = "images") -> dict[int, Path]:
    out = {}
    for p in folder.iterdir() if folder.is_dir() else []:
        if not p.is_dir():
            continue
        if p.name == stem:
            out[1] = p
        m = re.fullmatch(rf"{stem}_(\d+)", p.name)
        if m and int(m.group(1)) >= 1:
            out[int(m.group(1))] = p
    return {k: v for k, v in out.items() if list_images(v)}


def _choose_folder(folders: dict[int, Path], downscale: int, root: Path) -> tuple[int, int]:
    """(factor of the folder to read, extra block averaging)."""
    if not folders:
        raise InputError(f"{root}: no images/ or images_N/ folder with images next to poses_bounds.npy",
                         "put the photos in images/ (or images_4/, images_8/, ...)")
    if downscale in folders:
        return downscale, 1
    divisors = [k for k in folders if downscale % k == 0]
    if divisors:
        k = max(divisors)
        return k, downscale // k
    if downscale == 1:
        return min(folders), 1
    raise InputError(f"{root}: no images_{downscale}/ and no folder to shrink it from "
                     f"(found {', '.join(folders[k].name for k in sorted(folders))})",
                     f"pass --downscale {' or '.join(str(k) for k in sorted(folders))}")


def load_llff(path: str | Path, downscale: int = 1, forward_facing: bool | None = None, holdout: int = 8,
              ndc_margin: float = 0.1, background: str = "random", masks_as_alpha: bool = True) -> SceneDataset:
    """Read an LLFF scene (``poses_bounds.npy`` + ``images_N/``, optional ``masks_N/``).

    With object masks, RGB photos and a capture that surrounds the object, the masks become the
    images' alpha (``masks_as_alpha``): the photos' background lies outside the scene box, where no
    field can represent it, so the object is reconstructed alone -- trained on random backgrounds
    and evaluated on white like the synthetic scenes.
    """
    path = Path(path)
    file = path if path.is_file() else path / "poses_bounds.npy"
    folder = file.parent
    if not file.is_file():
        raise InputError(f"{path}: no poses_bounds.npy", "pass the LLFF scene folder")
    try:
        arr = np.load(file, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"cannot read {file}: {exc}", "regenerate it with LLFF's imgs2poses.py") from exc
    if arr.ndim != 2 or arr.shape[1] != 17 or len(arr) == 0:
        raise InputError(f"{file}: expected an array of shape [N, 17], found {arr.shape}",
                         "regenerate it with LLFF's imgs2poses.py")
    arr = arr.astype(np.float64)
    factor, extra = _choose_folder(_image_folders(folder), downscale, folder)
    img_dir = _image_folders(folder)[factor]
    paths = list_images(img_dir)
    if len(paths) != len(arr):
        raise InputError(f"{file.name} holds {len(arr)} poses but {img_dir.name}/ holds {len(paths)} images",
                         "the pose file and the image folder must list the same views (one pose row per image, "
                         "in sorted file-name order); re-run imgs2poses.py or remove the extra images")
    for k, row in enumerate(arr):
        if not np.isfinite(row).all():
            raise InputError(f"{file.name} frame {k} ({paths[k].name}): the pose or bounds contain NaN or infinite values",
                             "drop this view (row and image) or re-run the pose estimation")
        if row[15] <= 0 or row[16] <= row[15]:
            raise InputError(f"{file.name} frame {k} ({paths[k].name}): bounds near={row[15]:.4g}, far={row[16]:.4g} "
                             "are not 0 < near < far", "re-run imgs2poses.py")
    labels = [f"{img_dir.name}/{p.name} (frame {k} of {file.name})" for k, p in enumerate(paths)]
    images, alpha = read_images(paths, labels, extra)
    hl, wl = images.shape[1], images.shape[2]

    poses = arr[:, :15].reshape(-1, 3, 5)
    bds = arr[:, 15:17].copy()
    hwf = poses[:, :, 4]
    h_full, w_full, f_full = hwf[:, 0], hwf[:, 1], hwf[:, 2]
    # the images as stored in the chosen folder, before any extra block averaging
    w_file, h_file = wl * extra, hl * extra
    from .blender import _full_size

    w_file, h_file = _full_size(paths[0], w_file, h_file)
    sx, sy = w_file / w_full, h_file / h_full
    if np.abs(sx - sy).max() > 0.02 * sx.max():
        raise InputError(f"{file.name}: images in {img_dir.name}/ are {w_file}x{h_file}, which does not match the "
                         f"{int(w_full[0])}x{int(h_full[0])} aspect in the poses", "use the images the poses were made for")
    c2w = np.concatenate([poses[:, :, 1:2], -poses[:, :, 0:1], poses[:, :, 2:4]], axis=2)
    for k in range(len(c2w)):
        s = np.linalg.svd(c2w[k, :, :3], compute_uv=False)
        if s.min() < 1e-6:
            raise InputError(f"{file.name} frame {k} ({paths[k].name}): degenerate rotation", "re-run the pose estimation")
    cams = Cameras(torch.from_numpy(c2w).float(), f_full * sx, f_full * sy, w_file / 2, h_file / 2, w_file, h_file)
    if extra > 1:
        cams = cams.scaled(1.0 / extra, width=wl, height=hl)

    fwd = cams.forward.double()
    mean = fwd.mean(0)
    mean = mean / mean.norm().clamp(min=1e-12)
    max_angle = float(torch.rad2deg(torch.arccos((fwd @ mean).clamp(-1, 1))).max())
    ff = max_angle <= FORWARD_FACING_DEGREES if forward_facing is None else bool(forward_facing)
    info = {"max_view_angle_deg": max_angle, "images_folder": img_dir.name, "bounds": [float(bds.min()), float(bds.max())]}

    if ff:
        sc = 1.0 / (bds.min() * BD_FACTOR)
        centre = c2w[:, :, 3].mean(0) * sc
        back = c2w[:, :, 2].sum(0)
        back /= np.linalg.norm(back)
        up = c2w[:, :, 1].sum(0)
        right = np.cross(up, back)
        right /= np.linalg.norm(right)
        upv = np.cross(back, right)
        r_avg = np.stack([right, upv, back], axis=1)
        rot = r_avg.T
        norm = Normalization(float(sc), tuple(float(x) for x in -rot @ centre), tuple(map(tuple, rot.tolist())))
        cams = norm.apply_cameras(cams)
        ndc = NDC(float(cams.fx.mean()), float(cams.fy.mean()), float(cams.cx.mean()), float(cams.cy.mean()),
                  int(wl), int(hl), near=1.0, margin=float(ndc_margin))
        near, far, contraction = 1.0, math.inf, "ndc"
        info["normalization_rule"] = "LLFF forward-facing: scale 1/(0.75 min bound), average pose -> identity, NDC"
    else:
        ndc, contraction = None, "none"
        p, ok = focus_point(cams.c2w)
        dist = (cams.c2w[:, :, 3].double() - p).norm(dim=-1).numpy()
        radius = None
        if ok:
            radius = 1.1 * float(np.quantile(dist - bds[:, 0], 0.9))
            radius = float(np.clip(radius, 0.05 * dist.mean(), dist.mean()))
        norm, extra_info = object_centric(cams.c2w, radius)
        info.update(extra_info)
        cams = norm.apply_cameras(cams)
        near, far = 0.9 * float(bds.min()) * norm.scale, 1.1 * float(bds.max()) * norm.scale
        info["normalization_rule"] = "LLFF surrounding: look-at point -> 0.5, content radius from near bounds -> 0.5"

    masks = None
    mfolders = _image_folders(folder, "masks")
    if factor in mfolders:
        mpaths = list_images(mfolders[factor])
        if len(mpaths) == len(paths):
            masks, _ = read_images(mpaths, [f"{mfolders[factor].name}/{p.name}" for p in mpaths], extra, mask=True)
            if masks.shape[1:] != images.shape[1:3]:
                masks = None
    if masks is not None and alpha is None and masks_as_alpha and not ff:
        alpha = masks
        info["alpha_from_masks"] = True
    splits = held_out_splits(len(arr), holdout) if holdout and holdout > 1 else \
        {s: torch.arange(len(arr)) for s in ("train", "val", "test")}
    return SceneDataset(images=images, alpha=alpha, masks=masks, cameras=cams, splits=splits, aabb=unit_aabb(),
                        near=near, far=far, normalization=norm, forward_facing=ff, contraction=contraction, ndc=ndc,
                        format="llff", source=str(folder), background=background,
                        names=[f"{img_dir.name}/{p.name}" for p in paths], info=info)
