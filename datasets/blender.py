"""Blender / NeRF-synthetic scenes: ``transforms_{train,val,test}.json`` + RGBA PNGs.

Each JSON holds ``camera_angle_x`` (horizontal field of view, radians; ``camera_angle_y`` or
``fl_x``/``fl_y``/``cx``/``cy`` are honoured when present) and ``frames``, each with ``file_path``
(relative to the JSON, often without extension: ``./train/r_0``) and ``transform_matrix``, a 4x4
camera-to-world matrix already in the OpenGL convention fieldstudio uses. The principal point is
the image centre. The world is normalised as instant-ngp does for these scenes: ``scene = 0.33 *
world + 0.5``, which maps the standard [-1.5, 1.5]^3 bound into the unit cube; NeRF's near/far
(2, 6) are scaled alike. Images keep their alpha: training composites on a random colour per ray,
evaluation on white (``background=`` changes the training policy).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from fieldstudio.errors import InputError

from .cameras import Cameras
from .scene import Normalization, SceneDataset, check_pose, find_image, read_images

SPLITS = ("train", "val", "test")
#: instant-ngp's defaults for NeRF-synthetic scenes
NGP_SCALE, NGP_OFFSET = 0.33, (0.5, 0.5, 0.5)
NEAR, FAR = 2.0, 6.0


def read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})", "fix or regenerate the file") from exc
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}", "check the file and its permissions") from exc
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object with 'frames'", "is this a NeRF transforms file?")
    return meta


def frame_pose(frame, file: Path, k: int, label: str, key: str = "transform_matrix") -> np.ndarray:
    if not isinstance(frame, dict) or key not in frame:
        raise InputError(f"{file.name} {label}: no '{key}' (camera pose)",
                         "every frame needs a 4x4 camera-to-world transform_matrix; re-run the pose estimation")
    return check_pose(frame[key], f"{file.name} {label}")


def frame_label(frame, k: int) -> str:
    fp = frame.get("file_path") if isinstance(frame, dict) else None
    return f"frame {k} ({fp})" if fp else f"frame {k}"


def load_blender(path: str | Path, downscale: int = 1, background: str = "random", scale: float = NGP_SCALE,
                 offset=NGP_OFFSET) -> SceneDataset:
    path = Path(path)
    folder = path.parent if path.is_file() else path
    files = {s: folder / f"transforms_{s}.json" for s in SPLITS}
    if not files["train"].is_file():
        raise InputError(f"{folder}: no transforms_train.json", "a Blender scene needs transforms_{train,val,test}.json")
    poses, image_paths, labels, split_of, angles = [], [], [], [], []
    for split, file in files.items():
        if not file.is_file():
            continue
        meta = read_json(file)
        frames = meta.get("frames")
        if not isinstance(frames, list) or not frames:
            raise InputError(f"{file}: no 'frames' (camera poses)", "the file lists no views; regenerate it")
        if "camera_angle_x" not in meta and "fl_x" not in meta:
            raise InputError(f"{file}: no 'camera_angle_x' (field of view)", "add the horizontal field of view in radians")
        for k, fr in enumerate(frames):
            label = frame_label(fr, k)
            poses.append(frame_pose(fr, file, k, label))
            if "file_path" not in fr:
                raise InputError(f"{file.name} {label}: no 'file_path'", "every frame needs the path of its image")
            image_paths.append(find_image(folder / fr["file_path"], f"{file.name} {label}"))
            labels.append(f"{file.name} {label}")
            split_of.append(split)
            angles.append(meta)
    images, alpha = read_images(image_paths, labels, downscale)
    w0, h0 = _full_size(image_paths[0], images.shape[2] * downscale, images.shape[1] * downscale)
    fx, fy, cx, cy = [], [], [], []
    for meta in angles:
        f_x = meta.get("fl_x", None)
        if f_x is None:
            f_x = 0.5 * w0 / math.tan(0.5 * float(meta["camera_angle_x"]))
        f_y = meta.get("fl_y", None)
        if f_y is None:
            f_y = 0.5 * h0 / math.tan(0.5 * float(meta["camera_angle_y"])) if "camera_angle_y" in meta else f_x
        fx.append(float(f_x))
        fy.append(float(f_y))
        cx.append(float(meta.get("cx", w0 / 2)))
        cy.append(float(meta.get("cy", h0 / 2)))
    cams = Cameras(torch.from_numpy(np.stack(poses)).float(), fx, fy, cx, cy, w0, h0)
    if downscale > 1:
        cams = cams.scaled(1.0 / downscale, width=images.shape[2], height=images.shape[1])
    norm = Normalization(float(scale), tuple(float(o) for o in np.broadcast_to(np.asarray(offset, float), 3)))
    cams = norm.apply_cameras(cams)
    splits = {s: torch.tensor([i for i, x in enumerate(split_of) if x == s], dtype=torch.long) for s in SPLITS}
    if len(splits["val"]) == 0:
        splits["val"] = splits["test"].clone() if len(splits["test"]) else splits["train"].clone()
    if len(splits["test"]) == 0:
        splits["test"] = splits["val"].clone()
    return SceneDataset(images=images, alpha=alpha, cameras=cams, splits=splits,
                        aabb=torch.tensor([[0.0] * 3, [1.0] * 3]), near=NEAR * norm.scale, far=FAR * norm.scale,
                        normalization=norm, format="blender", source=str(folder), background=background,
                        names=[str(p.relative_to(folder)) if p.is_relative_to(folder) else str(p) for p in image_paths])


def _full_size(path: Path, w: int, h: int) -> tuple[int, int]:
    """The stored image's (width, height) before any block averaging; ``(w, h)`` if PIL cannot tell (EXR)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception:
        return w, h
