"""CAM benchmark: each network with and without coordinate-aware modulation, side by side in one run.

    python benchmarks/cam.py images [--data ../shared/data/photos_kodak] [--steps 200] [--quick]
    python benchmarks/cam.py video  [--data ../shared/data/video_carphone] [--steps 600] [--quick]
    python benchmarks/cam.py lego   [--data ../shared/data/nerf_lego_blender] [--steps 500] [--quick]

Each part writes ``benchmarks/results/cam_<part>.json`` (settings, the reduced protocol, machine and
load averages at the start and end, every fit). The paper's protocols are far too heavy for a shared
2-core CPU, so each part runs a documented reduced one (``protocol`` in the JSON):

* **images**: FFN (random Fourier features sigma 10, 256 frequencies, 3 x 256 ReLU, sigmoid) vs
  FFN + CAM (32 x 32 grid, shared gamma/beta, per-sample normalisation, width 252 so the parameter
  counts match) on the 6 shared Kodak photos, each area-downscaled 4x (192 x 128) and centre-cropped
  to 96 x 96. Regression: full-batch training on every pixel, PSNR on every pixel. Generalisation:
  full-batch training on the pixels with even (x, y) (a quarter), PSNR on the other three quarters.
  Adam lr 1e-3 (grid 1e-2), x0.1 at 50% and x0.01 at 75% of the steps (the paper's 1000 / 1500 of
  2000), 1000 steps for both networks. Paper: 2000 steps on 512 x 512 images. Short runs hide the
  difference: at 200 steps on 128 x 128 crops neither network has converged and CAM gains nothing
  (-0.03 dB); kodim03 at 600 steps gains +1.1 dB.
* **video**: `fieldstudio video compress` on the first 24 frames of carphone (176 x 144) at 0.3 bpp,
  600 steps, with and without ``--cam`` (the CAM time grids are counted in the parameter budget and
  stored in the file, so the network with CAM is narrower and the totals match within 2%).
* **lego**: `fieldstudio reconstruct` (Instant-NGP field, the CPU defaults it picks) on the 200 px
  lego scene with and without ``--cam``, 500 steps each; PSNR on the first 8 test views.

Timings are wall clock on a shared machine (the load averages are recorded); run with
OMP_NUM_THREADS=1. Without the data folder a part says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DATA = C.REPO_ROOT.parent / "shared" / "data"
RESULTS = C.REPO_ROOT / "benchmarks" / "results"
KODAK = ("kodim03", "kodim05", "kodim08", "kodim15", "kodim19", "kodim23")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=("images", "video", "lego"))
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--images", default=",".join(KODAK))
    p.add_argument("--downscale", type=int, default=4)
    p.add_argument("--crop", type=int, default=96, help="centre crop after downscaling (0: none)")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--quick", action="store_true", help="a few steps, to check the script")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    print(f"wrote {path}")


def _comparison(name: str, machine: dict, protocol: str, labels: tuple[str, str], rows: list[dict]) -> dict:
    """The JSON of a without / with CAM pair of fits (rows[0] without, rows[1] with)."""
    import torch

    return {"benchmark": name, "machine": machine, "load_average_end": list(os.getloadavg()),
            "torch_threads": torch.get_num_threads(), "protocol": protocol,
            "params": {labels[0]: rows[0]["params"], labels[1]: rows[1]["params"],
                       "ratio": round(rows[1]["params"] / rows[0]["params"], 6)},
            "gain_db": round(rows[1]["psnr"] - rows[0]["psnr"], 3), "fits": rows}


# --- images ---------------------------------------------------------------------------------------

def _load_photo(path: Path, downscale: int, crop: int):
    import numpy as np
    from PIL import Image

    img = Image.open(path).convert("RGB")
    if downscale > 1:
        img = img.resize((img.width // downscale, img.height // downscale), Image.BOX)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    h, w, _ = arr.shape
    if crop and crop < min(h, w):
        top, left = (h - crop) // 2, (w - crop) // 2
        arr = arr[top:top + crop, left:left + crop]
    return arr


def _fit_image(target, cam: bool, steps: int, task: str, seed: int = 0) -> dict[str, Any]:
    import torch

    from fieldstudio.apps.training import encoder_param_groups, make_adam
    from fieldstudio.fields.image import PRESET_LR, ImageField, image_field_preset
    from fieldstudio.renderers.sampling import pixel_centers

    h, w, c = target.shape
    torch.manual_seed(seed)
    fld = ImageField(image_field_preset("ffn", c, (h, w), cam=cam), backend="torch")
    lr = PRESET_LR["ffn"]
    opt = make_adam(fld, lr, param_groups=encoder_param_groups(fld, lr))
    base = [g["lr"] for g in opt.param_groups]
    uv = pixel_centers(h, w).reshape(h, w, 2)
    rgb = torch.from_numpy(target)
    if task == "regression":
        train_mask = torch.ones(h, w, dtype=torch.bool)
        test_mask = train_mask
    else:  # every second pixel in x and y for training, the other three quarters for testing
        train_mask = torch.zeros(h, w, dtype=torch.bool)
        train_mask[::2, ::2] = True
        test_mask = ~train_mask
    uv_tr, rgb_tr = uv[train_mask], rgb[train_mask]
    uv_te, rgb_te = uv[test_mask], rgb[test_mask]
    t0 = time.perf_counter()
    curve = []
    for step in range(steps):
        factor = 1.0 if step < steps // 2 else 0.1 if step < (3 * steps) // 4 else 0.01
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * factor
        loss = torch.mean((fld(uv_tr) - rgb_tr) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            curve.append({"step": step + 1, "train_psnr": round(-10 * math.log10(max(float(loss.detach()), 1e-12)), 3)})
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        pred = fld(uv_te).clamp(0, 1)
    mse = float(torch.mean((pred - rgb_te) ** 2))
    return {"cam": cam, "task": task, "psnr": round(-10 * math.log10(mse), 4),
            "params": sum(p.numel() for p in fld.parameters()), "steps": steps, "seconds": round(seconds, 2),
            "train_pixels": int(train_mask.sum()), "test_pixels": int(test_mask.sum()), "curve": curve}


def run_images(args) -> int:
    data = args.data or DATA / "photos_kodak"
    names = args.images.split(",")
    paths = [data / f"{n}.png" for n in names]
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"{missing[0]} not found: the images part needs shared/data/photos_kodak; nothing to do")
        return 0
    steps = args.steps or (20 if args.quick else 1000)
    if args.quick:
        paths = paths[:1]
    import torch

    machine = C.machine_info("cpu")
    fits = []
    for path in paths:
        target = _load_photo(path, args.downscale, args.crop)
        for task in ("regression", "generalisation"):
            for cam in (False, True):
                r = _fit_image(target, cam, steps, task)
                r["image"] = path.stem
                fits.append(r)
                print(f"{path.stem} {task:14s} {'FFN+CAM' if cam else 'FFN    '} PSNR {r['psnr']:.2f} dB  "
                      f"{r['params']:,} params  {r['seconds']:.0f} s", flush=True)
    summary = {}
    for task in ("regression", "generalisation"):
        ffn = [f["psnr"] for f in fits if f["task"] == task and not f["cam"]]
        cam = [f["psnr"] for f in fits if f["task"] == task and f["cam"]]
        summary[task] = {"ffn_mean_psnr": round(sum(ffn) / len(ffn), 3), "cam_mean_psnr": round(sum(cam) / len(cam), 3),
                         "gain_db": round(sum(cam) / len(cam) - sum(ffn) / len(ffn), 3)}
    p_ffn = next(f["params"] for f in fits if not f["cam"])
    p_cam = next(f["params"] for f in fits if f["cam"])
    out = {
        "benchmark": "cam images", "machine": machine, "load_average_end": list(os.getloadavg()),
        "torch_threads": torch.get_num_threads(),
        "protocol": (f"reduced: Kodak {', '.join(p.stem for p in paths)}, area-downscaled {args.downscale}x, centre crop "
                     f"{args.crop or 'none'}; full-batch Adam lr 1e-3 (CAM grid 1e-2), x0.1 at 50% and x0.01 at 75% of "
                     f"{steps} steps (paper: 2000 steps on 512 px, milestones 1000/1500); regression = train and test "
                     "on all pixels; generalisation = train on pixels with even (x, y), test on the other 3/4"),
        "params": {"ffn": p_ffn, "ffn_cam": p_cam, "ratio": round(p_cam / p_ffn, 5)},
        "summary": summary, "paper": {"regression": [30.30, 32.21], "generalisation": [27.48, 28.19]},
        "fits": fits,
    }
    _write(args.out or RESULTS / ("cam_images_quick.json" if args.quick else "cam_images.json"), out)
    for task, s in summary.items():
        print(f"{task}: FFN {s['ffn_mean_psnr']:.2f} dB, FFN+CAM {s['cam_mean_psnr']:.2f} dB, gain {s['gain_db']:+.2f} dB")
    return 0


# --- video ---------------------------------------------------------------------------------------

def run_video(args) -> int:
    video = (args.data or DATA / "video_carphone") / "carphone_pristine.mp4"
    if not video.exists():
        print(f"{video} not found: the video part needs shared/data/video_carphone; nothing to do")
        return 0
    from fieldstudio.apps.video import compress

    frames = 4 if args.quick else args.frames
    steps = args.steps or (10 if args.quick else 600)
    bpp = 0.3
    machine = C.machine_info("cpu")
    rows = []
    work = RESULTS / "cam_video_files"
    for cam in (False, True):
        out = work / f"{'cam' if cam else 'nerv'}.fsv"
        t0 = time.perf_counter()
        r = compress(str(video), out=str(out), bpp=bpp, steps=steps, max_frames=frames, cam=cam, progress=False,
                     device="cpu")
        rows.append({"cam": cam, "psnr": r["psnr"], "ms_ssim": r["ms_ssim"], "bytes": r["bytes"], "bpp": r["bpp"],
                     "params": r["params"], "train_seconds": r["train_seconds"],
                     "wall_seconds": round(time.perf_counter() - t0, 1), "config": r["config"],
                     "per_frame_psnr": [round(v, 3) for v in r["per_frame"]["psnr"]]})
        print(f"{'NeRV+CAM' if cam else 'NeRV    '} PSNR {r['psnr']:.2f} dB  MS-SSIM {r['ms_ssim']:.4f}  "
              f"{r['bpp']:.4f} bpp ({r['bytes']} B)  {r['params']:,} params  {r['train_seconds']:.0f} s", flush=True)
    protocol = (f"reduced: `video compress` on the first {frames} frames of carphone (176x144), target {bpp} bpp, "
                f"{steps} steps (80% training, 20% fine-tuning after 20% magnitude pruning), 8-bit weights, "
                "batch 2, lr 1e-2 (CAM grids at the same rate, as the released FFNeRV+CAM code), with and without "
                "--cam; the CAM time grids are counted in the parameter budget and stored in the file (paper: FFNeRV "
                "on UVG 1080p)")
    out = _comparison("cam video", machine, protocol, ("nerv", "nerv_cam"), rows)
    _write(args.out or RESULTS / ("cam_video_quick.json" if args.quick else "cam_video.json"), out)
    return 0


# --- lego -----------------------------------------------------------------------------------------

def run_lego(args) -> int:
    data = args.data or DATA / "nerf_lego_blender"
    if not (data / "transforms_train.json").exists():
        print(f"{data} not found: the lego part needs shared/data/nerf_lego_blender; nothing to do")
        return 0
    import shutil

    from fieldstudio.apps.reconstruct import reconstruct

    steps = args.steps or (6 if args.quick else 500)
    views = 2 if args.quick else 8
    machine = C.machine_info("cpu")
    rows = []
    for cam in (False, True):
        run = RESULTS / "cam_lego_runs" / ("cam" if cam else "ngp")
        if run.exists():
            shutil.rmtree(run)
        t0 = time.perf_counter()
        m = reconstruct(str(data), steps=steps, out=run, eval_views=views, cam=cam, progress=False, device="cpu",
                        checkpoint_every=max(steps, 1))
        rows.append({"cam": cam, **{k: m[k] for k in ("psnr", "ssim", "test_views", "steps", "seconds", "params",
                                                      "train_rays_per_second", "samples_per_ray",
                                                      "occupied_fraction", "psnr_per_view")},
                     "wall_seconds": round(time.perf_counter() - t0, 1)})
        print(f"{'NGP+CAM' if cam else 'NGP    '} test PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}  "
              f"{m['params']:,} params  {m['seconds']:.0f} s  occupied {m['occupied_fraction']:.3f}", flush=True)
    protocol = (f"reduced: `reconstruct` (Instant-NGP field, CPU defaults: T=2^17, N_max=512, 2^15 samples/step, "
                 f"64^3 occupancy grid) on lego 200x200, {steps} steps each, with and without --cam (10x3 view-"
                 f"direction grid on the density MLP's hidden layer, per-sample normalisation); PSNR over the "
                 f"first {views} test views on white (paper: Mip-NeRF + CAM, all views, 1M steps scale)")
    out = _comparison("cam lego", machine, protocol, ("ngp", "ngp_cam"), rows)
    _write(args.out or RESULTS / ("cam_lego_quick.json" if args.quick else "cam_lego.json"), out)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    C.ensure_fieldstudio()
    if args.part == "images":
        return run_images(args)
    if args.part == "video":
        return run_video(args)
    return run_lego(args)


if __name__ == "__main__":
    raise SystemExit(main())
