"""Videos -> uint8 arrays [T, H, W, 3]: mp4/avi/gif/... through imageio-ffmpeg, or a folder of frames.

Also the default clip (procedural moving textured shapes, deterministic) and an mp4 / PNG writer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fieldstudio.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".avi", ".gif", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".y4m")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise InputError("video files need imageio-ffmpeg, which is not installed",
                         'pip install "fieldstudio[video]" (or pip install imageio-ffmpeg)') from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def read_video(path: str | Path, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Frames [T, H, W, 3] uint8 and the frame rate (24 for a folder of frames)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"video not found: {path}", "give an mp4/avi/gif file or a folder of frames")
    if path.is_dir():
        return _read_folder(path, max_frames), 24.0
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(f"{path.name}: unsupported video type '{path.suffix}'",
                         f"use one of {', '.join(VIDEO_SUFFIXES)} or a folder of frames")
    ffmpeg_exe()
    import imageio_ffmpeg

    frames = []
    try:
        gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(gen)
        w, h = meta["size"]
        for raw in gen:
            frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3))
            if max_frames is not None and len(frames) >= max_frames:
                break
        gen.close()
    except (RuntimeError, OSError, StopIteration, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read video {path.name}: {first[:160]}",
                         "check that the file is a complete, playable video") from None
    if not frames:
        raise InputError(f"video {path.name} has no frames", "check that the file is a complete, playable video")
    return np.stack(frames), float(meta.get("fps") or 24.0)


def _read_folder(path: Path, max_frames: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise InputError(f"no frames in folder {path}", f"put {'/'.join(FRAME_SUFFIXES)} files in it")
    if max_frames is not None:
        files = files[:max_frames]
    frames, size = [], None
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"cannot read frame {f.name}: {exc}", "replace or remove the file") from None
        if size is None:
            size = arr.shape
        elif arr.shape != size:
            raise InputError(f"frames of mixed sizes: {f.name} is {arr.shape[1]}x{arr.shape[0]}, "
                             f"{files[0].name} is {size[1]}x{size[0]}", "give frames of one size")
        frames.append(arr)
    return np.stack(frames)


def procedural_clip(frames: int = 24, height: int = 64, width: int = 80, seed: int = 0) -> np.ndarray:
    """A deterministic clip of textured shapes moving over a textured background: [T, H, W, 3] uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((frames, height, width, 3), dtype=np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    shapes = [(rng.uniform(0.2, 0.8, 2), rng.uniform(-0.4, 0.4, 2), rng.uniform(0.12, 0.22), rng.uniform(0.2, 1.0, 3))
              for _ in range(3)]
    for t in range(frames):
        s = t / max(1, frames)
        bg = 0.5 + 0.25 * np.sin(xx * 0.15 + 2 * np.pi * s + phase[:, None, None]) * np.cos(yy * 0.11 - phase[:, None, None])
        img = np.moveaxis(bg, 0, -1).copy()
        for k, (c0, vel, r, col) in enumerate(shapes):
            cy, cx = (c0 + vel * s) % 1.0 * (height, width)
            rad = r * min(height, width)
            if k == 1:  # a square with a checker texture
                inside = (np.abs(yy - cy) < rad) & (np.abs(xx - cx) < rad)
                tex = 0.75 + 0.25 * np.sign(np.sin(yy * 0.8) * np.sin(xx * 0.8))
            else:  # discs with stripes
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 < rad ** 2
                tex = 0.7 + 0.3 * np.sin((xx + yy) * 0.6 + 6 * s)
            img[inside] = (col[None, :] * tex[inside][:, None])
        out[t] = img
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def write_frames(frames: np.ndarray, out: str | Path, fps: float = 24.0) -> list[str]:
    """PNG files into a folder (frame_0000.png, ...) or one H.264 mp4 (needs imageio-ffmpeg)."""
    out = Path(out)
    if out.suffix.lower() in (".mp4", ".mkv", ".mov", ".avi"):
        import subprocess

        exe = ffmpeg_exe()
        out.parent.mkdir(parents=True, exist_ok=True)
        t, h, w, _ = frames.shape
        # yuv420p needs even sizes; pad by repeating the edge rather than scaling
        ph, pw = h + h % 2, w + w % 2
        cmd = [exe, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
               "-r", f"{fps}", "-i", "-", "-vf", f"pad={pw}:{ph}", "-c:v", "libx264", "-pix_fmt", "yuv420p",
               "-crf", "12", str(out)]
        proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
        if proc.returncode != 0:
            raise InputError(f"ffmpeg could not write {out}: {proc.stderr.decode(errors='replace').strip()[:200]}",
                             "write PNG frames to a folder instead")
        return [str(out)]
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(frames):
        p = out / f"frame_{i:04d}.png"
        Image.fromarray(f).save(p)
        paths.append(str(p))
    return paths
