"""Image-fit benchmark: PSNR against steps and wall time for each image encoder on Kodak photos.

    python benchmarks/image_fit.py [--data ../shared/data/photos_kodak] [--encoders hashgrid,frequency,siren]
                                   [--steps 300] [--batch-size 65536] [--device cpu|cuda|auto]
                                   [--out benchmarks/results/image_fit] [--images kodim03,kodim05]
                                   [--crop N] [--quick] [--eval-every 5] [--stop-at-db] [--threads N]

Time to 30 dB on the two photos of the CPU target (a short command):

    python benchmarks/image_fit.py --images kodim03,kodim05 --encoders hashgrid --stop-at-db

After an untimed 2-step warm-up fit per encoder (64 px crop), for every image x encoder,
`fit_image` (the code behind ``fieldstudio fit image``) trains the encoder's preset with its
default learning rate into a run folder ``OUT/runs/<image>/<encoder>`` (replaced if it exists;
``--reuse`` keeps a finished one made with the same settings, to complete an interrupted run).
Timings are wall clock: other load on the machine (recorded as load averages) inflates them.
Collected per fit:

* the training curve: the PSNR of the *full image* against step and training wall seconds,
  rendered every ``--eval-every`` steps (default 5) outside the training clock (`fit_image`'s
  ``eval_every``); ``--eval-every 0`` falls back to the training loop's log of each logged
  step's random training batch (cheaper, but not the image's PSNR);
* the final PSNR / SSIM of the full-resolution reconstruction (metrics.json), parameter count,
  training seconds (the loop's clock, checkpoints excluded) and seconds in all (with evaluation
  and the run folder's files);
* time to 30 dB: the first curve point whose full-image PSNR is >= 30 dB (step and training
  seconds), or null when the curve never gets there. ``--stop-at-db`` ends each fit there (the
  final PSNR is then the one at that step).

Written to OUT: ``image_fit.json`` (settings, machine, every fit with its curve, and the mean per
encoder) and ``image_fit.png`` (two panels: PSNR vs step and vs wall seconds; thin lines per
image, a thick line for the mean over images). A table of the means is printed.

Without the data folder (the Kodak photos are not shipped with the repository) the script says
so in one line and exits 0. ``--quick`` (for development) uses the first 2 images, a 128 px
centre crop and 30 steps, and writes to ``benchmarks/results/image_fit_quick`` unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DEFAULT_DATA = C.REPO_ROOT.parent / "shared" / "data" / "photos_kodak"
DEFAULT_OUT = C.REPO_ROOT / "benchmarks" / "results" / "image_fit"
QUICK_OUT = C.REPO_ROOT / "benchmarks" / "results" / "image_fit_quick"
DEFAULT_ENCODERS = "hashgrid,frequency,siren"
DEFAULT_STEPS = 300
QUICK_STEPS, QUICK_CROP, QUICK_IMAGES = 30, 128, 2
TARGET_DB = 30.0
CURVE_NOTE = ("curve PSNR is the full-image PSNR (prediction clamped to [0,1]) rendered every eval_every steps, "
              "rendering time excluded from the training seconds; with eval_every 0 it is the training loop's "
              "PSNR of each logged step's random training batch; final_psnr / final_ssim are on the "
              "full-resolution reconstruction")
BATCH_NOTE = ("curve PSNR is the training loop's PSNR of each logged step's random training batch "
              "(every 10 steps, before that step's update), not the full-image PSNR")
COLORS = {"hashgrid": "tab:blue", "frequency": "tab:orange", "siren": "tab:green"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"folder of PNG photos (default {DEFAULT_DATA})")
    p.add_argument("--encoders", default=DEFAULT_ENCODERS, help=f"comma-separated presets (default {DEFAULT_ENCODERS})")
    p.add_argument("--steps", type=int, default=None, help=f"training steps per fit (default {DEFAULT_STEPS}; quick {QUICK_STEPS})")
    p.add_argument("--batch-size", type=int, default=None,
                   help="pixels per step (default: fit_image's, 65536 on a GPU, 16384 on a CPU)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default {DEFAULT_OUT.relative_to(C.REPO_ROOT)}, "
                                                          f"quick {QUICK_OUT.relative_to(C.REPO_ROOT)})")
    p.add_argument("--images", default=None, help="comma-separated image names (file stems), default all PNGs in --data")
    p.add_argument("--crop", type=int, default=None, help=f"centre-crop every image to N x N (default none; quick {QUICK_CROP})")
    p.add_argument("--reuse", action="store_true",
                   help="keep finished run folders in OUT/runs made with the same image, encoder, steps, batch, crop "
                        "and device instead of refitting them (to complete an interrupted benchmark)")
    p.add_argument("--eval-every", type=int, default=5,
                   help="full-image PSNR every N steps, outside the training clock (default 5; 0: batch PSNR)")
    p.add_argument("--stop-at-db", action="store_true", help="end each fit once the full image reaches 30 dB")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--quick", action="store_true",
                   help=f"development settings: {QUICK_IMAGES} images, crop {QUICK_CROP}, {QUICK_STEPS} steps")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = QUICK_STEPS if args.quick else DEFAULT_STEPS
    if args.crop is None and args.quick:
        args.crop = QUICK_CROP
    if args.out is None:
        args.out = QUICK_OUT if args.quick else DEFAULT_OUT
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if args.crop is not None and args.crop < 1:
        p.error("--crop must be at least 1")
    args.encoder_list = [e.strip() for e in args.encoders.split(",") if e.strip()]
    if not args.encoder_list:
        p.error("--encoders is empty")
    return args


def find_images(data: Path, names: str | None, quick: bool) -> list[Path]:
    pngs = {p.stem: p for p in sorted(data.iterdir()) if p.suffix.lower() == ".png" and p.is_file()}
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        wanted = [n[:-4] if n.lower().endswith(".png") else n for n in wanted]
        missing = [n for n in wanted if n not in pngs]
        if missing:
            raise SystemExit(f"image_fit: no {', '.join(n + '.png' for n in missing)} in {data} "
                             f"(there: {', '.join(pngs) or 'no PNGs'})")
        paths = [pngs[n] for n in wanted]
    else:
        paths = list(pngs.values())
    return paths[:QUICK_IMAGES] if quick else paths


# --- one fit --------------------------------------------------------------------------------------

def time_to(curve: list[dict[str, float]], db: float) -> dict[str, float] | None:
    for pt in curve:
        if pt["psnr"] >= db:
            return {"step": pt["step"], "seconds": pt["seconds"]}
    return None


def warm_up(image: Path, encoders: list[str], args) -> None:
    """A 2-step fit per encoder on a small crop, untimed: the first fit of a process pays one-off costs
    (imports, thread pools, allocator growth) that would otherwise be charged to the first image."""
    import tempfile

    from fieldstudio.apps.fit_image import fit_image

    with tempfile.TemporaryDirectory(prefix="image_fit_warmup_") as tmp:
        for enc in encoders:
            fit_image(str(image), encoder=enc, steps=2, out=Path(tmp) / enc, batch_size=args.batch_size,
                      crop=64, device=args.device, progress=False)


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def reusable(run_dir: Path, image: Path, encoder: str, args, device: str) -> bool:
    """Whether ``run_dir`` holds a finished fit made with exactly these settings."""
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        (run_dir / "history.json").stat()
    except (OSError, ValueError):
        return False
    train, data = cfg.get("train", {}), cfg.get("data", {})
    return (train.get("encoder") == encoder and train.get("steps") == args.steps == metrics.get("steps")
            and bool(metrics.get("curve")) == bool(args.eval_every) and not args.stop_at_db
            and args.batch_size in (None, train.get("batch_size")) and data.get("crop") == args.crop
            and data.get("source") == str(image.resolve()) and metrics.get("device") == device)


def run_one(image: Path, encoder: str, args, run_dir: Path, reuse: bool = False) -> dict[str, Any]:
    if not reuse:
        from fieldstudio.apps.fit_image import fit_image

        if run_dir.exists():  # fit_image refuses to overwrite a run; this folder is the benchmark's own
            shutil.rmtree(run_dir)
        fit_image(str(image), encoder=encoder, steps=args.steps, out=run_dir, batch_size=args.batch_size,
                  crop=args.crop, device=args.device, progress=False, eval_every=args.eval_every,
                  stop_at_psnr=TARGET_DB if args.stop_at_db else None)
    history = json.loads((run_dir / "history.json").read_text())
    metrics_file = json.loads((run_dir / "metrics.json").read_text())
    curve = metrics_file.get("curve") or [{"step": h["step"], "seconds": h["seconds"], "psnr": h["psnr"]}
                                          for h in history if "psnr" in h]
    hit = time_to(curve, TARGET_DB)
    lr = json.loads((run_dir / "config.json").read_text())["train"]["lr"]
    return {
        "final_psnr": metrics_file["psnr"], "final_ssim": metrics_file["ssim"], "params": metrics_file["params"],
        "seconds": metrics_file["seconds"], "seconds_total": metrics_file["seconds_total"],
        "steps": metrics_file["steps"], "lr": lr, "batch_size": metrics_file["batch_size"],
        "image_size": [metrics_file["image"]["height"], metrics_file["image"]["width"]],
        "final_curve_psnr": curve[-1]["psnr"] if curve else None,
        "time_to_30db": hit, "run_dir": _rel(run_dir), "reused": reuse,
        "load_average_after": None if reuse else _load(), "curve": curve,
    }


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(C.REPO_ROOT))
    except ValueError:
        return str(path)


# --- aggregation ----------------------------------------------------------------------------------

def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def mean_curve(curves: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    """Mean PSNR and mean seconds at every step logged in all the curves."""
    if not curves:
        return []
    common = set.intersection(*({pt["step"] for pt in c} for c in curves))
    by_step = [{pt["step"]: pt for pt in c} for c in curves]
    return [{"step": s, "seconds": round(_mean([b[s]["seconds"] for b in by_step]), 4),
             "psnr": round(_mean([b[s]["psnr"] for b in by_step]), 3)} for s in sorted(common)]


def summarize(per_image: dict[str, dict[str, dict]], encoders: list[str]) -> dict[str, dict[str, Any]]:
    means = {}
    for enc in encoders:
        fits = [r[enc] for r in per_image.values() if enc in r and "error" not in r[enc]]
        failed = [img for img, r in per_image.items() if enc in r and "error" in r[enc]]
        hits = [f["time_to_30db"] for f in fits if f["time_to_30db"] is not None]
        params = sorted({f["params"] for f in fits})
        r = lambda v, n: None if v is None else round(v, n)  # noqa: E731
        mc = mean_curve([f["curve"] for f in fits])
        means[enc] = {
            "n_images": len(fits), "failed_images": failed,
            "final_psnr": r(_mean([f["final_psnr"] for f in fits]), 3),
            "final_ssim": r(_mean([f["final_ssim"] for f in fits]), 4),
            "params": params[0] if len(params) == 1 else params,
            "seconds": r(_mean([f["seconds"] for f in fits]), 3),
            "seconds_total": r(_mean([f["seconds_total"] for f in fits]), 3),
            "reached_30db": len(hits),
            # over the images that reached 30 dB only; see reached_30db
            "time_to_30db_seconds": r(_mean([h["seconds"] for h in hits]), 3),
            "time_to_30db_step": r(_mean([h["step"] for h in hits]), 1),
            # the mean curve itself reaching 30 dB
            "mean_curve_time_to_30db": time_to(mc, TARGET_DB),
            "mean_curve": mc,
        }
    return means


# --- output ---------------------------------------------------------------------------------------

def table(means: dict[str, dict[str, Any]]) -> str:
    rows = []
    for enc, m in means.items():
        if not m["n_images"]:
            rows.append([enc, "failed", "-", "-", "-", "-"])
            continue
        params = m["params"] if isinstance(m["params"], int) else "-".join(str(p) for p in (m["params"][0], m["params"][-1]))
        t30 = "never" if not m["reached_30db"] else f"{m['time_to_30db_seconds']:.1f} s"
        if m["reached_30db"] and m["reached_30db"] < m["n_images"]:
            t30 += f" ({m['reached_30db']}/{m['n_images']} images)"
        rows.append([enc, f"{m['final_psnr']:.2f}", f"{m['final_ssim']:.4f}", f"{params:,}" if isinstance(params, int)
                     else params, f"{m['seconds']:.1f}", t30])
    return C.fmt_table(["encoder", "mean PSNR (dB)", "mean SSIM", "params", "mean train s", "mean time to 30 dB"], rows)


def plot(path: Path, per_image: dict[str, dict[str, dict]], means: dict[str, dict[str, Any]], title: str,
         args_eval: int = 5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, (enc, m) in enumerate(means.items()):
        color = COLORS.get(enc, f"C{i + 3}")
        for img, fits in per_image.items():
            f = fits.get(enc)
            if not f or "error" in f or not f["curve"]:
                continue
            st, se, ps = zip(*((p["step"], p["seconds"], p["psnr"]) for p in f["curve"]))
            axes[0].plot(st, ps, color=color, lw=0.8, alpha=0.3)
            axes[1].plot(se, ps, color=color, lw=0.8, alpha=0.3)
        if m["mean_curve"]:
            st, se, ps = zip(*((p["step"], p["seconds"], p["psnr"]) for p in m["mean_curve"]))
            label = f"{enc} (full image after training: {m['final_psnr']:.2f} dB)"
            axes[0].plot(st, ps, color=color, lw=2.5, label=label)
            axes[1].plot(se, ps, color=color, lw=2.5, label=label)
    for ax, xlabel in zip(axes, ("step", "training wall time (s)")):
        ax.axhline(TARGET_DB, color="0.4", ls="--", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("full-image PSNR (dB)" if args_eval else "training-batch PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=9)
    axes[0].set_title("PSNR vs step")
    axes[1].set_title("PSNR vs wall time")
    if any(m["seconds"] for m in means.values() if m["n_images"]):
        secs = [m["seconds"] for m in means.values() if m["n_images"]]
        if max(secs) / max(min(secs), 1e-9) > 20:  # very different speeds: a log axis keeps the fast ones visible
            axes[1].set_xscale("log")
    fig.suptitle(title, fontsize=10)
    fig.text(0.5, 0.005, "thin: one image, thick: mean over images; dashed: 30 dB. "
             + ("Curve PSNR: the full image, rendered outside the training clock." if args_eval
                else "Curve PSNR is on each step's random training batch, not the full image."),
             ha="center", fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.data.is_dir():
        print(f"image_fit: skipped: data folder {args.data} not found (the Kodak photos are not in the repository; "
              f"pass --data DIR)")
        return 0
    images = find_images(args.data, args.images, args.quick)
    if not images:
        print(f"image_fit: skipped: no PNG images in {args.data}")
        return 0

    C.ensure_fieldstudio()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from fieldstudio.device import pick_device
    from fieldstudio.errors import FieldStudioError
    from fieldstudio.fields.image import IMAGE_PRESETS

    unknown = [e for e in args.encoder_list if e not in IMAGE_PRESETS]
    if unknown:
        print(f"image_fit: unknown encoder(s) {', '.join(unknown)}; use {', '.join(IMAGE_PRESETS)}", file=sys.stderr)
        return 2
    try:
        device = pick_device(args.device)
    except FieldStudioError as exc:
        print(f"image_fit: {exc}", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / "image_fit.json", args.out / "image_fit.png"
    settings = {"data": _rel(args.data), "images": [p.stem for p in images], "encoders": args.encoder_list,
                "steps": args.steps, "batch_size": args.batch_size, "crop": args.crop, "device": str(device),
                "quick": args.quick, "lr": "fit_image's default (fieldstudio.apps.fit_image.image_defaults, "
                                           "else the preset's PRESET_LR)",
                "target_db": TARGET_DB, "curve_note": CURVE_NOTE if args.eval_every else BATCH_NOTE,
                "eval_every": args.eval_every, "stop_at_db": args.stop_at_db, "threads": torch.get_num_threads()}
    n = len(images) * len(args.encoder_list)
    print(f"image_fit: {len(images)} images x {len(args.encoder_list)} encoders, {args.steps} steps, batch "
          f"{args.batch_size}, crop {args.crop or 'none'}, device {device}, {n} fits -> {_rel(args.out)}", flush=True)

    warmed = False
    settings["load_average_at_start"] = _load()  # 1/5/15-min load: other processes on the machine skew timings
    per_image: dict[str, dict[str, dict]] = {}
    t0 = time.perf_counter()
    k = 0
    for img in images:
        per_image[img.stem] = {}
        for enc in args.encoder_list:
            k += 1
            try:
                run_dir = args.out / "runs" / img.stem / enc
                reuse = args.reuse and reusable(run_dir, img, enc, args, str(device))
                if not reuse and not warmed:
                    warm_up(images[0], args.encoder_list, args)
                    warmed = True
                res = run_one(img, enc, args, run_dir, reuse)
                hit = res["time_to_30db"]
                print(f"[{k}/{n}] {img.stem} {enc}{' (reused)' if reuse else ''}: PSNR {res['final_psnr']:.2f} dB, SSIM {res['final_ssim']:.4f}, "
                      f"{res['seconds']:.1f} s, 30 dB " + (f"at step {hit['step']} ({hit['seconds']:.1f} s)" if hit
                                                           else "not reached"), flush=True)
            except FieldStudioError as exc:  # e.g. a diverged fit: record it, keep benchmarking the rest
                res = {"error": str(exc)}
                print(f"[{k}/{n}] {img.stem} {enc}: FAILED: {exc}", flush=True)
            per_image[img.stem][enc] = res
            means = summarize(per_image, args.encoder_list)
            # rewritten after every fit, so a long run can be followed and an interrupted one keeps its results
            C.write_json(json_path, {"benchmark": "image_fit", "settings": settings, "complete": k == n,
                                     "wall_seconds": round(time.perf_counter() - t0, 1), "load_average_now": _load(),
                                     "mean": means, "per_image": per_image}, device)

    wall = time.perf_counter() - t0
    crop = f", crop {args.crop}" if args.crop else ""
    plot(png_path, per_image, means, f"image fit on {len(images)} Kodak images ({', '.join(settings['images'])}), "
                                     f"{args.steps} steps, batch {args.batch_size}{crop}, {device}", args.eval_every)
    print()
    print(table(means))
    print("\nfinal PSNR / SSIM: full-resolution reconstruction. Time to 30 dB: first curve point >= 30 dB, "
          "mean over the images that reached it; " + ("the curve PSNR is on the full image." if args.eval_every
                                                       else "the curve PSNR is on training batches."))
    print(f"wrote {_rel(json_path)} and {_rel(png_path)} ({wall:.0f} s)")
    return 1 if any("error" in f for fits in per_image.values() for f in fits.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
