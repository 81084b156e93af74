"""instant-ngp / nerfstudio ``transforms.json``.

Intrinsics at the top level and/or per frame (a frame's value wins): ``fl_x``, ``fl_y`` (or
``camera_angle_x``/``camera_angle_y``), ``cx``, ``cy``, ``w``, ``h``, and OpenCV distortion
``k1 k2 p1 p2`` (ray directions are undistorted by `fieldstudio.renderers.rays.camera_rays`).
Missing ``cx``/``cy`` mean the image centre, missing ``w``/``h`` the image's size. Each frame has
``file_path`` (relative to the JSON) and ``transform_matrix`` (4x4 camera-to-world, OpenGL
convention, as in Blender scenes); nerfstudio's optional ``mask_path`` is read into ``masks``.

Normalisation as instant-ngp: ``scene = scale * world + offset`` with the file's ``scale``
(default 0.33) and ``offset`` (default [0.5, 0.5, 0.5]); the aabb is the cube of side
``aabb_scale`` (default 1) centred at 0.5. instant-ngp also cycles the axes (x, y, z) -> (y, z, x);
we do not, so our scene axes are the file's axes (the aabb is centred, so it is the same box).
A file with none of scale / offset / aabb_scale (nerfstudio's) is centred on the cameras' look-at
point, turned z-up and scaled like a COLMAP scene. Splits: nerfstudio's ``train_filenames`` / ``val_filenames`` /
``test_filenames`` when present, else every 8th view held out (``holdout=0``: all views in every split).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from fieldstudio.errors import InputError

from .blender import frame_label, frame_pose, read_json
from .cameras import Cameras
from .scene import (Normalization, SceneDataset, find_image, held_out_splits, object_centric, read_images)

INTRINSIC_KEYS = ("fl_x", "fl_y", "camera_angle_x", "camera_angle_y", "cx", "cy", "w", "h", "k1", "k2", "p1", "p2",
                  "k3", "k4", "camera_model", "is_fisheye")
UNSUPPORTED_MODELS = ("OPENCV_FISHEYE", "FISHEYE", "EQUIRECTANGULAR", "FULL_OPENCV")


def _norm_name(p: str) -> str:
    p = str(p).replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p


def load_ngp(path: str | Path, downscale: int = 1, background: str = "random", holdout: int = 8) -> SceneDataset:
    path = Path(path)
    file = path if path.is_file() else path / "transforms.json"
    if not file.is_file():
        raise InputError(f"{path}: no transforms.json", "pass the folder that holds transforms.json, or the file itself")
    folder = file.parent
    meta = read_json(file)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError(f"{file}: no 'frames' (camera poses)",
                         "the file lists no posed views; run COLMAP / colmap2nerf.py / ns-process-data first")
    if not any(isinstance(f, dict) and "transform_matrix" in f for f in frames):
        raise InputError(f"{file}: no frame has a camera pose ('transform_matrix')",
                         "this transforms.json has no poses; run COLMAP / colmap2nerf.py / ns-process-data first")
    poses, paths, labels, names, mask_paths, intr = [], [], [], [], [], []
    for k, fr in enumerate(frames):
        label = frame_label(fr, k)
        poses.append(frame_pose(fr, file, k, label))
        if "file_path" not in fr:
            raise InputError(f"{file.name} {label}: no 'file_path'", "every frame needs the path of its image")
        paths.append(find_image(folder / fr["file_path"], f"{file.name} {label}"))
        labels.append(f"{file.name} {label}")
        names.append(_norm_name(fr["file_path"]))
        mask_paths.append(fr.get("mask_path"))
        intr.append({key: fr.get(key, meta.get(key)) for key in INTRINSIC_KEYS})
    images, alpha = read_images(paths, labels, downscale)
    hl, wl = images.shape[1], images.shape[2]
    from .blender import _full_size

    w0, h0 = _full_size(paths[0], wl * downscale, hl * downscale)
    fx, fy, cx, cy, dist, models = [], [], [], [], [], []
    for k, it in enumerate(intr):
        where = f"{file.name} {labels[k].split(' ', 1)[1]}"
        model = str(it.get("camera_model") or "").upper()
        if it.get("is_fisheye") or model in UNSUPPORTED_MODELS or any(float(it.get(x) or 0) != 0 for x in ("k3", "k4")):
            raise InputError(f"{where}: camera model {model or 'fisheye / k3 k4'} is not supported",
                             "use PINHOLE or OPENCV (k1 k2 p1 p2) cameras, e.g. undistort the images with COLMAP first")
        w = float(it["w"]) if it.get("w") else float(w0)
        h = float(it["h"]) if it.get("h") else float(h0)
        if abs(w - w0) > 0.5 or abs(h - h0) > 0.5:
            # intrinsics were estimated at another resolution than the stored images: rescale them
            sx, sy = w0 / w, h0 / h
        else:
            sx = sy = 1.0
        if it.get("fl_x") is not None:
            f_x = float(it["fl_x"])
        elif it.get("camera_angle_x") is not None:
            f_x = 0.5 * w / math.tan(0.5 * float(it["camera_angle_x"]))
        else:
            raise InputError(f"{where}: no focal length (fl_x or camera_angle_x)", "add fl_x (pixels) to the file")
        if it.get("fl_y") is not None:
            f_y = float(it["fl_y"])
        elif it.get("camera_angle_y") is not None:
            f_y = 0.5 * h / math.tan(0.5 * float(it["camera_angle_y"]))
        else:
            f_y = f_x
        c_x = float(it["cx"]) if it.get("cx") is not None else w / 2
        c_y = float(it["cy"]) if it.get("cy") is not None else h / 2
        vals = [f_x, f_y, c_x, c_y] + [float(it.get(x) or 0.0) for x in ("k1", "k2", "p1", "p2")]
        if not all(math.isfinite(v) for v in vals) or f_x <= 0 or f_y <= 0:
            raise InputError(f"{where}: intrinsics are not finite positive numbers ({vals[:4]})",
                             "fix fl_x / fl_y / cx / cy in the file")
        fx.append(f_x * sx)
        fy.append(f_y * sy)
        cx.append(c_x * sx)
        cy.append(c_y * sy)
        dist.append(vals[4:])
        models.append(model or ("OPENCV" if any(vals[4:]) else "PINHOLE"))
    cams = Cameras(torch.from_numpy(np.stack(poses)).float(), fx, fy, cx, cy, w0, h0, torch.tensor(dist), models)
    if downscale > 1:
        cams = cams.scaled(1.0 / downscale, width=wl, height=hl)

    masks = None
    if all(m for m in mask_paths):
        mpaths = [find_image(folder / m, f"{file.name} frame {k} mask") for k, m in enumerate(mask_paths)]
        masks, _ = read_images(mpaths, [f"{file.name} frame {k} mask ({m})" for k, m in enumerate(mask_paths)],
                               downscale, mask=True)
        if masks.shape[1:] != images.shape[1:3]:
            raise InputError(f"{file.name}: masks are {masks.shape[2]}x{masks.shape[1]} but images {wl}x{hl}",
                             "masks must have the images' size")

    info = {}
    if any(key in meta for key in ("scale", "offset", "aabb_scale")):
        scale = float(meta.get("scale", 0.33))
        offset = tuple(float(x) for x in np.broadcast_to(np.asarray(meta.get("offset", 0.5), float), 3))
        norm = Normalization(scale, offset)
        a = float(meta.get("aabb_scale", 1))
        aabb = torch.tensor([[0.5 - a / 2] * 3, [0.5 + a / 2] * 3])
        info["normalization_rule"] = "instant-ngp (scale, offset, aabb_scale)"
    else:
        norm, info = object_centric(cams.c2w)
        aabb = torch.tensor([[0.0] * 3, [1.0] * 3])
        info["normalization_rule"] = "object-centric (look-at point, 0.375 x camera distance -> 0.5)"
    cams = norm.apply_cameras(cams)

    n = len(frames)
    split_keys = {s: meta.get(f"{s}_filenames") for s in ("train", "val", "test")}
    if any(v is not None for v in split_keys.values()):
        index = {nm: i for i, nm in enumerate(names)}  # as written, and as resolved (extension added)
        for i, pth in enumerate(paths):
            if pth.is_relative_to(folder):
                index.setdefault(_norm_name(pth.relative_to(folder).as_posix()), i)
        splits = {}
        for s, lst in split_keys.items():
            if lst is None:
                continue
            missing = [x for x in lst if _norm_name(x) not in index]
            if missing:
                raise InputError(f"{file.name}: {s}_filenames lists {missing[0]!r}, which no frame has",
                                 "fix the split lists or the frames' file_path")
            splits[s] = torch.tensor([index[_norm_name(x)] for x in lst], dtype=torch.long)
        splits.setdefault("train", torch.tensor([i for i in range(n) if not any(
            i in set(v.tolist()) for v in splits.values())], dtype=torch.long))
        splits.setdefault("val", splits.get("test", splits["train"]).clone())
        splits.setdefault("test", splits["val"].clone())
    elif holdout and holdout > 1:
        splits = held_out_splits(n, holdout)
    else:
        all_idx = torch.arange(n)
        splits = {"train": all_idx, "val": all_idx.clone(), "test": all_idx.clone()}
    return SceneDataset(images=images, alpha=alpha, masks=masks, cameras=cams, splits=splits, aabb=aabb,
                        near=0.05, far=math.inf, normalization=norm, format="ngp", source=str(file),
                        background=background, names=names, info=info)
