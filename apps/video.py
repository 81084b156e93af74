"""``fieldstudio video compress | decompress | append | info``: neural video compression to .fsv files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fieldstudio import runs
from fieldstudio.codecs import fsv
from fieldstudio.device import pick_device as resolve_device
from fieldstudio.errors import InputError

DEFAULT_CLIP = {"frames": 24, "height": 64, "width": 80}
# an estimate of the coded mask (about half a bit per weight); only used to size the network,
# the bpp reported is always the file's own
_MASK_BYTES_PER_WEIGHT = 0.06


def parse_size(text: str) -> int:
    """'0.5MB', '200kB', '12000' (bytes) -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmM]?)[bB]?\s*", str(text))
    if not m:
        raise InputError(f"cannot read size {text!r}", "write e.g. --size 0.5MB, --size 200kB or --size 30000")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]
    if value < 512:
        raise InputError(f"size {text!r} is too small for a video field", "give at least 512 bytes")
    return int(value)


def load_frames(video: str | None, max_frames: int | None, size: tuple[int, int] | None = None,
                seed: int = 0) -> tuple[np.ndarray, float, str]:
    from fieldstudio.datasets.videos import procedural_clip, read_video

    if max_frames is not None and max_frames < 1:
        raise InputError(f"--frames {max_frames} is not a frame count", "give --frames 1 or more")
    if video is None:
        h, w = size or (DEFAULT_CLIP["height"], DEFAULT_CLIP["width"])
        clip = procedural_clip(DEFAULT_CLIP["frames"], h, w, seed=seed)
        return (clip[:max_frames] if max_frames else clip), 24.0, f"procedural-{seed}"
    frames, fps = read_video(video, max_frames)
    if min(frames.shape[1:3]) < 16:
        raise InputError(f"frames of {frames.shape[2]}x{frames.shape[1]} are too small", "give frames of 16 px or more")
    return frames, fps, Path(video).stem or "video"


def _target_params(target_bytes: float, bits: int, prune: float, capacity: float) -> int:
    per_weight = (1 - prune) * capacity * bits / 8 + _MASK_BYTES_PER_WEIGHT
    return max(500, int(target_bytes / per_weight))


def _check_out(out: Path, suffix: str = ".fsv") -> None:
    if out.suffix.lower() != suffix:
        raise InputError(f"output {out} does not end in {suffix}", f"name the output like clip{suffix}")
    if out.is_dir():
        raise InputError(f"output {out} is a folder", f"give a file name like {out / ('clip' + suffix)}")


def _metrics_path(out: Path) -> Path:
    return out.with_name(out.stem + ".metrics.json")


def compress(video: str | None = None, *, out: str = "clip.fsv", size: str | None = None, bpp: float | None = None,
             steps: int = 1500, max_frames: int | None = None, bits: int = 8, prune: float = 0.2,
             capacity: float = 1.0, fso: bool = False, cam: bool = False, compare: bool = False, lr: float = 1e-2,
             batch: int = 2, seed: int = 0, device: str = "auto", progress: bool = True,
             callback=None) -> dict[str, Any]:
    """``callback(step, record) -> bool|None`` follows training and may stop it (see `train_session`)."""
    from fieldstudio.fields.video import VideoField, count_params, size_config

    from .video_train import train_session

    if size is not None and bpp is not None:
        raise InputError("both --size and --bpp given", "give one of them")
    _check_settings(steps, bits, prune, capacity)
    outp = Path(out)
    _check_out(outp)
    frames, fps, name = load_frames(video, max_frames)
    t, h, w, _ = frames.shape
    if size is not None:
        target = parse_size(size)
    else:
        bpp = 0.3 if bpp is None else bpp
        if not bpp > 0:
            raise InputError(f"--bpp {bpp} must be positive", "give e.g. --bpp 0.1")
        target = bpp * t * h * w / 8
    dev = resolve_device(device)
    torch.manual_seed(seed)
    extra = {"cam": cam_config(t)} if cam else {}
    # with CAM the time grids are counted in the size, so the network shrinks to make room for them
    cfg = size_config(h, w, _target_params(target, bits, prune, capacity), fso=fso, **extra)
    lib = fsv.VideoLibrary(VideoField(cfg).to(dev), bits=bits)
    r = train_session(lib, frames, name=name, fps=fps, steps=steps, capacity=capacity, prune=prune, lr=lr,
                      batch=batch, seed=seed, device=dev, progress=progress, callback=callback)
    lib.videos[0]["capacity"] = capacity
    nbytes = lib.save(outp)
    result = {"out": str(outp), "video": name, "frames": t, "height": h, "width": w, "bytes": nbytes,
              "bpp": nbytes * 8 / (t * h * w), "target_bytes": int(target), "params": count_params(cfg),
              **{k: r[k] for k in ("psnr", "ms_ssim", "new_weights", "train_seconds", "decode_seconds")},
              "per_frame": r["per_frame"], "config": cfg}
    if compare:
        from fieldstudio.codecs.baseline import at_bpp

        result["baselines"] = {c: at_bpp(frames, c, result["bpp"]) for c in ("x264", "x265")}
    runs.atomic_write_json(_metrics_path(outp), result)
    return result


def cam_config(frames: int) -> dict[str, Any]:
    """CAM's time grid for a clip: about one node per 4 frames, at most the paper's 30 (FFNeRV
    compression uses 30 nodes for 600-frame videos; a short clip needs fewer)."""
    return {"resolution": [max(2, min(30, round(frames / 4)))], "lr_factor": 1.0}


def _check_settings(steps: int, bits: int, prune: float, capacity: float) -> None:
    if steps < 1:
        raise InputError(f"--steps {steps} must be at least 1", "give e.g. --steps 1500")
    if not 2 <= bits <= 16:
        raise InputError(f"--bits {bits} is not supported", "use --bits between 2 and 16")
    if not 0 <= prune < 1:
        raise InputError(f"--prune {prune} must be in [0, 1)", "give e.g. --prune 0.2")
    if not 0 < capacity <= 1:
        raise InputError(f"--capacity {capacity} must be in (0, 1]", "give e.g. --capacity 0.5")


def append(library: str, video: str | None, *, out: str | None = None, steps: int = 1500,
           max_frames: int | None = None, prune: float = 0.2, capacity: float = 0.5, lr: float = 1e-2,
           batch: int = 2, seed: int = 0, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """A new PFNR session: train ``video`` into the free (and reusable frozen) weights of ``library``."""
    from .video_train import train_session

    _check_settings(steps, 8, prune, capacity)
    src = Path(library)
    dst = Path(out) if out else src
    _check_out(dst)
    dev = resolve_device(device)
    lib = fsv.load(src, dev)
    h, w = lib.field.config["height"], lib.field.config["width"]
    frames, fps, name = load_frames(video, max_frames, (h, w), seed=len(lib.videos))
    if frames.shape[1:3] != (h, w):
        raise InputError(f"{name} has {frames.shape[2]}x{frames.shape[1]} frames; the videos in {src.name} are {w}x{h}",
                         f"resize the video to {w}x{h} or start a new file with `fieldstudio video compress`")
    before = list(lib.chunks)
    free = sum(int((~u).sum()) for u in lib.used().values())
    r = train_session(lib, frames, name=name, fps=fps, steps=steps, capacity=capacity, prune=prune, lr=lr,
                      batch=batch, seed=seed, device=dev, progress=progress)
    lib.videos[-1]["capacity"] = capacity
    if lib.chunks[:len(before)] != before:  # earlier sessions must be carried over byte for byte
        raise RuntimeError("an earlier session changed while appending")
    nbytes = lib.save(dst)
    t = frames.shape[0]
    return {"out": str(dst), "video": name, "session": len(lib.videos), "bytes": nbytes,
            "session_bytes": lib.videos[-1]["bytes"], "bpp": lib.videos[-1]["bytes"] * 8 / (t * h * w),
            "free_weights_before": free, **{k: r[k] for k in ("psnr", "ms_ssim", "new_weights", "reused_weights",
                                                             "train_seconds")}}


def decompress(path: str, out: str, *, video: int | None = None, device: str = "auto") -> list[str]:
    from fieldstudio.codecs.quality import to_uint8
    from fieldstudio.datasets.videos import write_frames

    lib = fsv.load(path, resolve_device(device))
    n = len(lib.videos)
    chosen = [video - 1] if video is not None else list(range(n))
    for j in chosen:
        if not 0 <= j < n:
            raise InputError(f"there is no video {j + 1} in {Path(path).name} ({n} videos)", f"choose --video 1..{n}")
    outp = Path(out)
    is_file = outp.suffix.lower() in (".mp4", ".mkv", ".mov", ".avi")
    written = []
    for j in chosen:
        frames = to_uint8(lib.decode(j))
        if len(chosen) == 1:
            target = outp
        else:  # clip-1.mp4, clip-2.mp4 or frames/video_1/, frames/video_2/
            target = outp.with_name(f"{outp.stem}-{j + 1}{outp.suffix}") if is_file else outp / f"video_{j + 1}"
        write_frames(frames, target, lib.videos[j].get("fps", 24.0))
        written.append(str(target))
    return written


def info(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"file not found: {p}", "give a .fsv file written by `fieldstudio video compress`")
    data = p.read_bytes()
    header, _ = fsv.read_header(data, p.name)
    from fieldstudio.fields.video import count_params

    return {"file": str(p), "bytes": len(data), "format_version": fsv.file_version(data), "bits": header["bits"],
            "params_per_video": count_params(header["field"]), "field": header["field"], "videos": header["videos"]}


def format_info(d: dict[str, Any]) -> str:
    f = d["field"]
    lines = [f"{d['file']}: {d['bytes']:,} bytes, .fsv v{d['format_version']}, {len(d['videos'])} video(s), "
             f"{d['bits']}-bit weights",
             f"network: {f['width']}x{f['height']} frames, {f['blocks']} blocks, {f['channels']} channels"
             f"{', FSO block ' + str(f['fso_block']) if f['fso'] else ''}, {d['params_per_video']:,} weights per video"]
    for i, v in enumerate(d["videos"], 1):
        m = v.get("metrics", {})
        lines.append(f"  {i}. {v['name']}: {v['frames']} frames {v['width']}x{v['height']} @ {v['fps']:g} fps, "
                     f"{v['bytes']:,} bytes, {m.get('bpp', float('nan')):.4f} bpp, PSNR {m.get('psnr', float('nan')):.2f} dB, "
                     f"MS-SSIM {m.get('ms_ssim', float('nan')):.4f}, {m.get('new_weights', 0):,} new + "
                     f"{m.get('reused_weights', 0):,} reused weights")
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------------

def _cmd_compress(args) -> int:
    r = compress(args.video, out=args.out, size=args.size, bpp=args.bpp, steps=args.steps, max_frames=args.frames,
                 bits=args.bits, prune=args.prune, capacity=args.capacity, fso=args.fso, cam=args.cam,
                 compare=args.compare, lr=args.lr, seed=args.seed, device=args.device, progress=not args.quiet)
    print(f"{r['video']}: {r['frames']} frames {r['width']}x{r['height']} -> {r['out']} {r['bytes']:,} bytes "
          f"({r['bpp']:.4f} bpp)  PSNR {r['psnr']:.2f} dB  MS-SSIM {r['ms_ssim']:.4f}  "
          f"trained in {r['train_seconds']:.1f} s")
    for c, b in r.get("baselines", {}).items():
        print(f"  {c} (crf {b['crf']}): {b['bytes']:,} bytes ({b['bpp']:.4f} bpp)  PSNR {b['psnr']:.2f} dB  "
              f"MS-SSIM {b['ms_ssim']:.4f}")
    print(f"per-frame metrics: {_metrics_path(Path(r['out']))}")
    return 0


def _cmd_decompress(args) -> int:
    written = decompress(args.file, args.out, video=args.video, device=args.device)
    print("wrote " + ", ".join(written))
    return 0


def _cmd_append(args) -> int:
    r = append(args.library, args.video, out=args.out, steps=args.steps, max_frames=args.frames, prune=args.prune,
               capacity=args.capacity, lr=args.lr, seed=args.seed, device=args.device, progress=not args.quiet)
    print(f"session {r['session']}: {r['video']} +{r['session_bytes']:,} bytes ({r['bpp']:.4f} bpp)  "
          f"PSNR {r['psnr']:.2f} dB  MS-SSIM {r['ms_ssim']:.4f}  {r['new_weights']:,} new + "
          f"{r['reused_weights']:,} reused weights  ->  {r['out']} ({r['bytes']:,} bytes)")
    return 0


def _cmd_info(args) -> int:
    d = info(args.file)
    print(json.dumps(d, indent=2) if args.json else format_info(d))
    return 0


def _add_training_flags(p, capacity: float) -> None:
    p.add_argument("--steps", type=int, default=1500, help="training steps, 2 frames each (default 1500)")
    p.add_argument("--frames", type=int, default=None, help="use only the first N frames")
    p.add_argument("--prune", type=float, default=0.2, help="share of new weights removed by magnitude (default 0.2)")
    p.add_argument("--capacity", type=float, default=capacity,
                   help=f"share of each layer's weights this video may use (PFNR subnetwork; default {capacity:g})")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate, cosine schedule with 10%% warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parser(sub) -> None:
    video = sub.add_parser("video", help="compress videos into neural .fsv files (NeRV / PFNR)")
    vs = video.add_subparsers(dest="video_command", metavar="ACTION")
    vs.required = True

    c = vs.add_parser("compress", help="train a video field and write one .fsv file",
                      description="Train a NeRV-style video field on a video, prune, quantise and entropy-code it.")
    c.add_argument("video", nargs="?", default=None,
                   help="mp4 / avi / gif / ... file or a folder of frames; default: a generated 24-frame clip")
    c.add_argument("--out", default="clip.fsv", help="file to write (.fsv)")
    c.add_argument("--size", default=None, help="target file size, e.g. 0.5MB or 200kB (approximate)")
    c.add_argument("--bpp", type=float, default=None, help="target bits per pixel (default 0.3; approximate)")
    c.add_argument("--bits", type=int, default=8, help="quantisation bit depth (default 8)")
    c.add_argument("--fso", action="store_true", help="Fourier subneural operator in the second block (PFNR)")
    c.add_argument("--cam", action="store_true",
                   help="coordinate-aware modulation: a time grid scales and shifts every block's channels")
    c.add_argument("--compare", action="store_true", help="also code the clip with x264 and x265 at the same bpp")
    _add_training_flags(c, capacity=1.0)
    c.set_defaults(func=_cmd_compress)

    d = vs.add_parser("decompress", help="decode a .fsv file to PNG frames or an mp4")
    d.add_argument("file", help=".fsv file")
    d.add_argument("--out", required=True, help="folder for PNG frames, or a .mp4 file")
    d.add_argument("--video", type=int, default=None, help="which video of a multi-video file (1-based; default all)")
    d.add_argument("--device", default="auto")
    d.set_defaults(func=_cmd_decompress)

    a = vs.add_parser("append", help="add a video to a .fsv library as a new PFNR session",
                      description="Train a new session on the weights the earlier videos left free (reusing frozen "
                                  "ones); earlier videos decode exactly as before.")
    a.add_argument("library", help=".fsv file to extend (rewritten atomically)")
    a.add_argument("video", nargs="?", default=None, help="video file or folder of frames (same size as the library); default: a generated clip")
    a.add_argument("--out", default=None, help="write the extended library here instead of replacing LIBRARY")
    _add_training_flags(a, capacity=0.5)
    a.set_defaults(func=_cmd_append)

    i = vs.add_parser("info", help="what a .fsv file holds")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_info)
