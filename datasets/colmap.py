"""COLMAP sparse models, text or binary (``cameras.txt|bin``, ``images.txt|bin``), plus ``images/``.

Written from COLMAP's format description (read_write_model.py layout, little-endian):

* ``cameras.bin``: uint64 count, then per camera int32 id, int32 model id, uint64 width,
  uint64 height, and the model's number of float64 parameters.
* ``images.bin``: uint64 count, then per image int32 id, 4 float64 quaternion (qw qx qy qz),
  3 float64 translation, int32 camera id, a NUL-terminated name, uint64 number of 2D points and
  that many (float64 x, float64 y, int64 point id).
* Text: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...`` per line; images take two lines each,
  ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then the 2D points (possibly an empty line).

Models read: SIMPLE_PINHOLE (f cx cy), PINHOLE (fx fy cx cy), SIMPLE_RADIAL (f cx cy k),
RADIAL (f cx cy k1 k2), OPENCV (fx fy cx cy k1 k2 p1 p2). COLMAP poses are world-to-camera with
OpenCV axes (x right, y down, looking down +z): ``X_cam = R(q) X_world + t``; they become OpenGL
camera-to-world as ``c2w = [R^T | -R^T t] @ diag(1, -1, -1, 1)``. COLMAP's pixel convention (the
top-left pixel's centre at (0.5, 0.5)) is fieldstudio's. The scene is centred on the cameras'
look-at point, turned so the cameras' mean up vector is +z, and scaled as instant-ngp's colmap2nerf
does (0.375 x the mean camera distance -> 0.5).
The model folder is found at ``DATA/sparse/0``, ``DATA/sparse`` or ``DATA``; images in ``images/``
next to it (``images_d/`` for ``downscale=d`` when there). Splits: every 8th image by name held out.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch

from fieldstudio.errors import InputError

from .cameras import Cameras, opencv_to_opengl
from .scene import SceneDataset, check_pose, held_out_splits, object_centric, read_images

#: COLMAP model id -> (name, number of parameters)
CAMERA_MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
                 4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
                 8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
                 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16)}
MODEL_IDS = {name: i for i, (name, _) in CAMERA_MODELS.items()}
SUPPORTED = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


def find_model_dir(path: Path) -> Path | None:
    for cand in (path / "sparse" / "0", path / "sparse", path, path / "colmap" / "sparse" / "0"):
        if cand.is_dir() and any((cand / f"cameras.{e}").is_file() for e in ("bin", "txt")) and \
                any((cand / f"images.{e}").is_file() for e in ("bin", "txt")):
            return cand
    return None


def intrinsics(model: str, params, where: str) -> tuple[float, float, float, float, list[float]]:
    """(fx, fy, cx, cy, [k1, k2, p1, p2]) of a COLMAP camera."""
    p = [float(x) for x in params]
    if model not in SUPPORTED:
        raise InputError(f"{where}: camera model {model} is not supported",
                         f"use {', '.join(SUPPORTED)}; e.g. run COLMAP's image_undistorter to get PINHOLE cameras")
    need = CAMERA_MODELS[MODEL_IDS[model]][1]
    if len(p) != need:
        raise InputError(f"{where}: {model} needs {need} parameters, found {len(p)}", "fix cameras.txt")
    if not all(math.isfinite(x) for x in p):
        raise InputError(f"{where}: parameters are not finite", "re-run COLMAP")
    if model == "SIMPLE_PINHOLE":
        return p[0], p[0], p[1], p[2], [0.0] * 4
    if model == "PINHOLE":
        return p[0], p[1], p[2], p[3], [0.0] * 4
    if model == "SIMPLE_RADIAL":
        return p[0], p[0], p[1], p[2], [p[3], 0.0, 0.0, 0.0]
    if model == "RADIAL":
        return p[0], p[0], p[1], p[2], [p[3], p[4], 0.0, 0.0]
    return p[0], p[1], p[2], p[3], p[4:8]


# ------------------------------------------------------------------------------------------------
# Readers: each returns cameras {id: (model, width, height, params)} / images [(id, q, t, camera_id, name)]
# ------------------------------------------------------------------------------------------------

def read_cameras_text(path: Path) -> dict:
    cams = {}
    for ln, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        e = line.split()
        try:
            cams[int(e[0])] = (e[1].upper(), int(e[2]), int(e[3]), [float(x) for x in e[4:]])
        except (IndexError, ValueError) as exc:
            raise InputError(f"{path} line {ln}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS...", "fix or re-export the model") from exc
    return cams


def read_images_text(path: Path) -> list:
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        e = line.split(maxsplit=9)
        try:
            out.append((int(e[0]), [float(x) for x in e[1:5]], [float(x) for x in e[5:8]], int(e[8]), e[9].strip()))
        except (IndexError, ValueError) as exc:
            raise InputError(f"{path} line {i}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME",
                             "fix or re-export the model") from exc
        i += 1  # the POINTS2D line that follows (may be empty)
    return out


class _Reader:
    def __init__(self, path: Path):
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def read(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise InputError(f"{self.path}: the file ends early (at byte {self.pos})", "the model is truncated; re-export it")
        vals = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return vals

    def cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise InputError(f"{self.path}: unterminated image name", "the model is truncated; re-export it")
        s = self.data[self.pos:end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return s


def read_cameras_binary(path: Path) -> dict:
    r, cams = _Reader(path), {}
    (n,) = r.read("Q")
    for _ in range(n):
        cid, mid, w, h = r.read("iiQQ")
        if mid not in CAMERA_MODELS:
            raise InputError(f"{path}: camera {cid} has unknown model id {mid}", "is this a COLMAP cameras.bin?")
        name, n_params = CAMERA_MODELS[mid]
        cams[cid] = (name, int(w), int(h), list(r.read("d" * n_params)))
    return cams


def read_images_binary(path: Path) -> list:
    r, out = _Reader(path), []
    (n,) = r.read("Q")
    for _ in range(n):
        iid, qw, qx, qy, qz, tx, ty, tz, cid = r.read("idddddddi")
        name = r.cstring()
        (n_pts,) = r.read("Q")
        r.pos += 24 * n_pts
        out.append((iid, [qw, qx, qy, qz], [tx, ty, tz], cid, name))
    return out


def qvec_to_rotmat(q) -> np.ndarray:
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * y * y - 2 * z * z, 2 * x * y - 2 * w * z, 2 * x * z + 2 * w * y],
                     [2 * x * y + 2 * w * z, 1 - 2 * x * x - 2 * z * z, 2 * y * z - 2 * w * x],
                     [2 * x * z - 2 * w * y, 2 * y * z + 2 * w * x, 1 - 2 * x * x - 2 * y * y]])


def rotmat_to_qvec(r: np.ndarray) -> np.ndarray:
    """Quaternion (qw, qx, qy, qz) of a rotation matrix (for writing test models)."""
    r = np.asarray(r, np.float64)
    k = np.array([[r[0, 0] - r[1, 1] - r[2, 2], 0, 0, 0],
                  [r[1, 0] + r[0, 1], r[1, 1] - r[0, 0] - r[2, 2], 0, 0],
                  [r[2, 0] + r[0, 2], r[2, 1] + r[1, 2], r[2, 2] - r[0, 0] - r[1, 1], 0],
                  [r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1], r[0, 0] + r[1, 1] + r[2, 2]]]) / 3.0
    vals, vecs = np.linalg.eigh(k)
    q = vecs[[3, 0, 1, 2], np.argmax(vals)]
    return -q if q[0] < 0 else q


def read_model(model_dir: Path) -> tuple[dict, list, str]:
    ext = "bin" if (model_dir / "cameras.bin").is_file() and (model_dir / "images.bin").is_file() else "txt"
    if ext == "bin":
        return read_cameras_binary(model_dir / "cameras.bin"), read_images_binary(model_dir / "images.bin"), ext
    return read_cameras_text(model_dir / "cameras.txt"), read_images_text(model_dir / "images.txt"), ext


def load_colmap(path: str | Path, downscale: int = 1, holdout: int = 8, images: str | Path | None = None,
                background: str = "random") -> SceneDataset:
    path = Path(path)
    if path.is_file():
        path = path.parent
    model_dir = find_model_dir(path)
    if model_dir is None:
        raise InputError(f"{path}: no COLMAP model (cameras.bin|txt and images.bin|txt in sparse/0, sparse or here)",
                         "run COLMAP's mapper first, or pass the folder that holds the model")
    cam_table, img_table, ext = read_model(model_dir)
    if not img_table:
        raise InputError(f"{model_dir / ('images.' + ext)}: no registered images", "COLMAP failed to pose any photo")
    if images is not None:
        img_root = Path(images)
    else:
        bases = [path, model_dir, model_dir.parent, model_dir.parent.parent]
        root = next((b for b in bases if (b / "images").is_dir()), None)
        if root is None:
            raise InputError(f"{path}: no images/ folder next to the COLMAP model", "put the photos in DATA/images/")
        img_root = root / f"images_{downscale}" if downscale > 1 and (root / f"images_{downscale}").is_dir() \
            else root / "images"
    extra = 1 if img_root.name == f"images_{downscale}" else downscale
    img_file = model_dir / f"images.{ext}"
    img_table = sorted(img_table, key=lambda x: x[4])
    paths, labels, poses, intr = [], [], [], []
    for k, (iid, q, t, cid, name) in enumerate(img_table):
        label = f"{img_file.name} image {iid} ({name})"
        if cid not in cam_table:
            raise InputError(f"{label}: camera {cid} is not in cameras.{ext}", "the model is inconsistent; re-export it")
        p = img_root / name
        if not p.is_file():
            raise InputError(f"{label}: image not found: {p}", "copy the photos COLMAP used into images/")
        if not (np.isfinite(q).all() and np.isfinite(t).all()) or np.linalg.norm(q) < 1e-8:
            raise InputError(f"{label}: the pose contains NaN, infinite or zero values", "re-run COLMAP")
        r = qvec_to_rotmat(q)
        c2w_cv = np.concatenate([r.T, -r.T @ np.asarray(t, np.float64)[:, None]], axis=1)
        poses.append(check_pose(c2w_cv, label))
        model, w, h, params = cam_table[cid]
        intr.append((model, w, h, intrinsics(model, params, f"cameras.{ext} camera {cid} (used by {name})")))
        paths.append(p)
        labels.append(label)
    imgs, alpha = read_images(paths, labels, extra)
    hl, wl = imgs.shape[1], imgs.shape[2]
    from .blender import _full_size

    w_file, h_file = _full_size(paths[0], wl * extra, hl * extra)
    fx, fy, cx, cy, dist, models = [], [], [], [], [], []
    for (model, w, h, (f_x, f_y, c_x, c_y, d)), label in zip(intr, labels):
        sx, sy = w_file / w, h_file / h
        if abs(sx - sy) > 0.02 * sx:
            raise InputError(f"{label}: the image is {w_file}x{h_file} but its camera is {w}x{h} (another aspect)",
                             "use the images COLMAP was run on")
        fx.append(f_x * sx)
        fy.append(f_y * sy)
        cx.append(c_x * sx)
        cy.append(c_y * sy)
        dist.append(d)
        models.append(model)
    c2w = opencv_to_opengl(torch.from_numpy(np.stack(poses)))
    cams = Cameras(c2w.float(), fx, fy, cx, cy, w_file, h_file, torch.tensor(dist), models)
    if extra > 1:
        cams = cams.scaled(1.0 / extra, width=wl, height=hl)
    norm, info = object_centric(cams.c2w)
    info["normalization_rule"] = "object-centric (look-at point, 0.375 x camera distance -> 0.5)"
    info["model"] = str(model_dir)
    cams = norm.apply_cameras(cams)
    n = len(img_table)
    splits = held_out_splits(n, holdout) if holdout and holdout > 1 else {s: torch.arange(n) for s in ("train", "val", "test")}
    return SceneDataset(images=imgs, alpha=alpha, cameras=cams, splits=splits, aabb=torch.tensor([[0.0] * 3, [1.0] * 3]),
                        near=0.05, far=math.inf, normalization=norm, format="colmap", source=str(path),
                        background=background, names=[x[4] for x in img_table], info=info)
