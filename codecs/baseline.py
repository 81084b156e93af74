"""x264 / x265 through the ffmpeg binary imageio-ffmpeg ships, at a bits-per-pixel target.

Frames go in as 8-bit RGB and are coded as yuv420p (the usual setting of both codecs; odd sizes
are padded by one pixel and cropped back). The rate is the size of the raw elementary stream
(``-f h264`` / ``-f hevc``, no container, SEI metadata removed) over T*H*W; the constant-rate factor is bisected to the
largest quality whose stream fits the target. Quality is measured on the decoded RGB frames with
`fieldstudio.codecs.quality`, exactly as for the neural codec.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fieldstudio.datasets.videos import ffmpeg_exe
from fieldstudio.errors import InputError

from .quality import frame_metrics, summarize

# (ffmpeg encoder, raw stream format, largest CRF, SEI NAL unit types)
CODECS = {"x264": ("libx264", "h264", 51, "6"), "x265": ("libx265", "hevc", 51, "39|40")}


def encode(frames: np.ndarray, codec: str, crf: float, preset: str = "medium") -> bytes:
    lib, fmt, _, sei = CODECS[codec]
    t, h, w, _ = frames.shape
    ph, pw = h + h % 2, w + w % 2
    cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", "25", "-i", "-", "-vf", f"pad={pw}:{ph}", "-c:v", lib, "-preset", preset, "-crf", f"{crf}",
           "-pix_fmt", "yuv420p"]
    if codec == "x265":
        cmd += ["-x265-params", "log-level=error"]
    # the encoders' SEI messages (their settings as text: ~0.7 kB for x264, ~2.3 kB for x265) are
    # not needed to decode and would dominate the stream of a small clip
    cmd += ["-bsf:v", f"filter_units=remove_types={sei}", "-f", fmt, "-"]
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise InputError(f"ffmpeg {lib} failed: {proc.stderr.decode(errors='replace').strip()[:200]}",
                         "check the imageio-ffmpeg installation")
    return proc.stdout


def decode(stream: bytes, codec: str, shape: tuple[int, ...]) -> np.ndarray:
    fmt = CODECS[codec][1]
    t, h, w, _ = shape
    ph, pw = h + h % 2, w + w % 2
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"in.{fmt}"
        src.write_bytes(stream)
        proc = subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-f", fmt, "-i", str(src), "-f", "rawvideo",
                               "-pix_fmt", "rgb24", "-"], capture_output=True)
    if proc.returncode != 0:
        raise InputError(f"ffmpeg could not decode the {codec} stream", "check the imageio-ffmpeg installation")
    out = np.frombuffer(proc.stdout, dtype=np.uint8).reshape(-1, ph, pw, 3)[:, :h, :w]
    return out[:t]


def at_bpp(frames: np.ndarray, codec: str, bpp: float, preset: str = "medium") -> dict[str, Any]:
    """Encode at the best quality whose stream is at most ``bpp`` bits per pixel (nearest above if none is)."""
    t, h, w, _ = frames.shape
    pixels = t * h * w
    lo, hi = 0.0, float(CODECS[codec][2])
    best = None
    t0 = time.perf_counter()
    for _ in range(8):  # bisect the CRF to 0.2 precision
        crf = round((lo + hi) / 2, 2)
        stream = encode(frames, codec, crf, preset)
        rate = len(stream) * 8 / pixels
        if rate <= bpp:
            best, hi = (crf, stream), crf
        else:
            lo = crf
    if best is None:  # even the lowest quality is above the target
        best = (hi, encode(frames, codec, hi, preset))
    crf, stream = best
    seconds = time.perf_counter() - t0
    decoded = decode(stream, codec, frames.shape)
    per_frame = frame_metrics(decoded, frames)
    return {"codec": codec, "crf": crf, "bytes": len(stream), "bpp": len(stream) * 8 / pixels,
            **summarize(per_frame), "per_frame": per_frame, "search_seconds": round(seconds, 2)}
