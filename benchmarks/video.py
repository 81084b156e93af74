"""Video compression benchmark on the real Carphone clip: NeRV, NeRV+FSO, x264, x265, and a PFNR continual run.

    python benchmarks/video.py [--data ../shared/data/video_carphone] [--frames 48] [--steps 1500]
                               [--bpp 0.1,0.2,0.4] [--capacity 0.4] [--out benchmarks/results/video] [--quick]

1. Rate-distortion: for each target bpp, `fieldstudio video compress` (the same function) trains a
   NeRV field (and a NeRV+FSO field) on the first ``--frames`` frames of carphone_pristine.mp4
   (176x144), prunes 20 %, fine-tunes, quantises to 8 bits and writes the .fsv file; bpp is the
   file's size (header, masks, checksum included) over T*H*W. x264 and x265 code the same frames
   at each achieved bpp (CRF bisected, raw elementary stream). PSNR and MS-SSIM are measured on the
   8-bit RGB frames with the same functions for all codecs.
2. Continual (PFNR): session 1 = carphone, sessions 2 and 3 = generated 24-frame 176x144 clips
   (`procedural_clip`, seeds 1 and 2), each with ``--capacity`` of every layer and its own head,
   appended with `fieldstudio video append`. After each session every video learned so far is
   decoded from the file: the S x S PSNR matrix (row i: after session i, column j: video j).
   Entries also record whether the decoded frames are bit-identical to those right after
   session j.

Times are wall clock on a shared 2-core machine (load averages are recorded); memory is the
process's peak resident set size after each phase (it only grows). Writes ``video.json`` and
``video.png`` to OUT. Without the data folder the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DEFAULT_DATA = C.REPO_ROOT.parent / "shared" / "data" / "video_carphone"
DEFAULT_OUT = C.REPO_ROOT / "benchmarks" / "results" / "video"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--bpp", default="0.1,0.2,0.4")
    p.add_argument("--capacity", type=float, default=0.4)
    p.add_argument("--continual-bpp", type=float, default=0.6, help="size of the shared continual network")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--skip-rd", action="store_true")
    p.add_argument("--quick", action="store_true", help="8 frames, 40 steps, one rate (development)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    video = args.data / "carphone_pristine.mp4"
    if not video.exists():
        print(f"{video} not found: the benchmark needs shared/data/video_carphone; nothing to do")
        return 0
    if args.quick:
        args.frames, args.steps, args.bpp = 8, 40, "0.4"
    C.ensure_fieldstudio()
    import numpy as np
    import torch

    from fieldstudio.apps.video import append, compress
    from fieldstudio.codecs import fsv
    from fieldstudio.codecs.quality import frame_metrics, summarize, to_uint8
    from fieldstudio.datasets.videos import procedural_clip, read_video

    machine = C.machine_info("cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    rates = [float(b) for b in args.bpp.split(",")]
    settings = {"video": str(video), "frames": args.frames, "size": "176x144", "steps": args.steps, "batch": 2,
                "bits": 8, "prune": 0.2, "lr": 1e-2, "rates": rates, "capacity": args.capacity,
                "torch_threads": torch.get_num_threads()}
    rd = []
    if not args.skip_rd:
        for fso in (False, True):
            for bpp in rates:
                label = "NeRV+FSO" if fso else "NeRV"
                out = args.out / f"{'fso' if fso else 'nerv'}_{bpp}.fsv"
                r = compress(str(video), out=str(out), bpp=bpp, steps=args.steps, max_frames=args.frames, fso=fso,
                             compare=True, progress=False, device="cpu")
                row = {"method": label, "target_bpp": bpp, "bpp": r["bpp"], "bytes": r["bytes"], "psnr": r["psnr"],
                       "ms_ssim": r["ms_ssim"], "params": r["params"], "train_seconds": r["train_seconds"],
                       "decode_seconds": r["decode_seconds"],
                       "decode_fps": round(args.frames / max(r["decode_seconds"], 1e-9), 1),
                       "peak_rss_mb": round(peak_rss_mb(), 1), "config": r["config"],
                       "per_frame_psnr": [round(v, 3) for v in r["per_frame"]["psnr"]]}
                rd.append(row)
                print(f"{label:9s} target {bpp:.2f}: {r['bpp']:.4f} bpp  PSNR {r['psnr']:.2f}  "
                      f"MS-SSIM {r['ms_ssim']:.4f}  {r['params']:,} params  {r['train_seconds']:.0f} s", flush=True)
                for c, b in r["baselines"].items():
                    rd.append({"method": c, "target_bpp": r["bpp"], "bpp": b["bpp"], "bytes": b["bytes"],
                               "psnr": b["psnr"], "ms_ssim": b["ms_ssim"], "crf": b["crf"],
                               "search_seconds": b["search_seconds"],
                               "per_frame_psnr": [round(v, 3) for v in b["per_frame"]["psnr"]]})
                    print(f"  {c}: {b['bpp']:.4f} bpp  PSNR {b['psnr']:.2f}  MS-SSIM {b['ms_ssim']:.4f}", flush=True)

    # --- continual sessions -------------------------------------------------------------------
    lib_path = args.out / "library.fsv"
    refs = [read_video(video, args.frames)[0]]
    sessions = []
    t0 = time.perf_counter()
    r = compress(str(video), out=str(lib_path), bpp=args.continual_bpp, steps=args.steps, max_frames=args.frames,
                 capacity=args.capacity, progress=False, device="cpu")
    sessions.append({"video": "carphone", "bytes_total": r["bytes"], "psnr": r["psnr"], "train_seconds": r["train_seconds"],
                     "params": r["params"], "peak_rss_mb": round(peak_rss_mb(), 1)})
    first_decode = {0: fsv.load(lib_path).decode(0)}
    matrix, identical = [], []
    for s in range(3):
        if s > 0:
            a = append(str(lib_path), None, steps=args.steps, capacity=args.capacity, progress=False, device="cpu")
            refs.append(procedural_clip(24, 144, 176, seed=s))
            sessions.append({"video": a["video"], "bytes_total": a["bytes"], "session_bytes": a["session_bytes"],
                             "psnr": a["psnr"], "new_weights": a["new_weights"], "reused_weights": a["reused_weights"],
                             "free_weights_before": a["free_weights_before"], "train_seconds": a["train_seconds"],
                             "peak_rss_mb": round(peak_rss_mb(), 1)})
        lib = fsv.load(lib_path)
        row, same = [], []
        for j in range(3):
            if j > s:
                row.append(None)
                same.append(None)
                continue
            dec = lib.decode(j)
            if j not in first_decode:
                first_decode[j] = dec
            row.append(round(summarize(frame_metrics(to_uint8(dec), refs[j]))["psnr"], 3))
            same.append(bool(torch.equal(dec, first_decode[j])))
        matrix.append(row)
        identical.append(same)
        print(f"after session {s + 1}: PSNR {row}  bit-identical {same}", flush=True)
    continual = {"capacity": args.capacity, "target_bpp_session_1": args.continual_bpp, "sessions": sessions,
                 "psnr_matrix": matrix, "bit_identical_to_own_session": identical,
                 "library_bytes": lib_path.stat().st_size, "seconds": round(time.perf_counter() - t0, 1),
                 "videos": ["carphone (48 frames)" if args.frames == 48 else f"carphone ({args.frames} frames)",
                            "procedural seed 1 (24 frames)", "procedural seed 2 (24 frames)"]}
    payload = {"settings": settings, "rate_distortion": rd, "continual": continual,
               "load_average_end": list(__import__("os").getloadavg()), "peak_rss_mb": round(peak_rss_mb(), 1)}
    path = C.write_json(args.out / "video.json", payload, "cpu", machine)
    if rd:
        plot(rd, args.out / "video.png", args.frames)
    print(f"wrote {path}")
    return 0


def plot(rd, path, frames) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"NeRV": "o-", "NeRV+FSO": "s-", "x264": "^--", "x265": "v--"}
    for method, style in styles.items():
        pts = sorted((r["bpp"], r["psnr"], r["ms_ssim"]) for r in rd if r["method"] == method)
        if not pts:
            continue
        b, p, m = zip(*pts)
        axes[0].plot(b, p, style, label=method)
        axes[1].plot(b, m, style, label=method)
    for ax, name in zip(axes, ("PSNR (dB)", "MS-SSIM")):
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Carphone 176x144, first {frames} frames (RGB, 8-bit)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
