"""Scene reconstruction benchmark: test-view PSNR against steps and training time, memory, rays/s.

    python benchmarks/nerf.py [--data PATH] [--steps 2500] [--eval-every 250] [--eval-views 4]
                              [--kernels auto|torch] [--threads N] [--name lego] [--stop-at-db 30]
    python benchmarks/nerf.py --from-run RUN [--name NAME]   # report a finished run without training

Default data: ``../shared/data/nerf_lego_blender`` (200 x 200, 100 train / 25 test views). It runs
``fieldstudio reconstruct`` exactly as a user would (the device's default sizes, see
`scene_defaults`), with ``eval_every``: the first ``--eval-views`` test views are rendered every
``--eval-every`` steps (rendering time is not counted as training time), and all test views at the
end (white background, the protocol in metrics.json). ``--kernels torch`` sets
``FIELDSTUDIO_KERNELS=torch`` so the same run can be timed on the PyTorch twins, back to back.

Writes ``benchmarks/results/nerf_<name>.json`` and ``.png`` (PSNR vs steps and vs minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from _common import REPO_ROOT, ensure_fieldstudio, machine_info, write_json

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "nerf_lego_blender"


def time_to(curve: list[dict], target: float) -> dict | None:
    """First curve point at or above ``target`` dB, with the linearly interpolated seconds/step."""
    prev = None
    for c in curve:
        if c["psnr"] >= target:
            if prev is None:
                return {"step": c["step"], "seconds": c["seconds"]}
            f = (target - prev["psnr"]) / max(c["psnr"] - prev["psnr"], 1e-9)
            return {"step": round(prev["step"] + f * (c["step"] - prev["step"])),
                    "seconds": round(prev["seconds"] + f * (c["seconds"] - prev["seconds"]), 1)}
        prev = c
    return None


def plot(curve: list[dict], title: str, path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [c["step"] for c in curve]
    mins = [c["seconds"] / 60 for c in curve]
    psnr = [c["psnr"] for c in curve]
    n_first = curve[0].get("views", "?") if curve else "?"
    for ax, xs, label in ((axes[0], steps, "training steps"), (axes[1], mins, "training minutes")):
        ax.plot(xs[:-1], psnr[:-1], "o-", label=f"first {n_first} test views")
        ax.plot(xs[-1:], psnr[-1:], "*", ms=12, label=f"all {curve[-1].get('views', '?')} test views")
        ax.legend(loc="lower right", fontsize=8)
        ax.axhline(target, color="grey", ls="--", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("test-view PSNR (dB)")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--name", default=None, help="result name (default: the data folder's name)")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-views", type=int, default=4)
    ap.add_argument("--kernels", default="auto", choices=("auto", "torch"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--target", type=float, default=30.0, help="PSNR whose time-to is reported")
    ap.add_argument("--stop-at-db", type=float, default=None,
                    help="end training once two successive curve points reach this PSNR (saves time)")
    ap.add_argument("--from-run", default=None, help="report this finished reconstruct run instead of training")
    ap.add_argument("--note", default=None, help="a remark stored in the result (e.g. how the machine was shared)")
    ap.add_argument("--out-dir", default=str(REPO_ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    os.environ["FIELDSTUDIO_KERNELS"] = args.kernels  # read when the grid first runs
    if not args.from_run and not Path(args.data).exists():
        print(f"data not found: {args.data} (the shared NeRF data is not on this machine)", file=sys.stderr)
        return 2
    ensure_fieldstudio()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from fieldstudio.apps.reconstruct import reconstruct
    from fieldstudio.kernels import kernel_status

    name = args.name or Path(args.data).name.replace("nerf_", "")
    out_dir = Path(args.out_dir)
    run_dir = Path(args.from_run) if args.from_run else out_dir / f"nerf_{name}_run"
    from fieldstudio.device import pick_device

    device = str(pick_device(args.device))
    machine = machine_info(device)
    if args.from_run:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    else:
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        metrics = reconstruct(args.data, steps=args.steps, out=run_dir, eval_every=args.eval_every,
                              eval_every_views=args.eval_views, device=args.device, checkpoint_every=args.eval_every,
                              stop_at_psnr=args.stop_at_db)
    config = json.loads((run_dir / "config.json").read_text())
    curve = metrics["curve"]
    result = {
        "data": str(args.data), "run": str(run_dir), "kernels": kernel_status()[1],
        "psnr": metrics["psnr"], "ssim": metrics["ssim"], "test_views": metrics["test_views"],
        "steps": metrics["steps"], "train_seconds": metrics["seconds"],
        f"time_to_{args.target:g}_db": time_to(curve, args.target),
        "peak_memory_mb": metrics["peak_memory_mb"], "train_rays_per_second": metrics["train_rays_per_second"],
        "render_rays_per_second": metrics["render_rays_per_second"], "samples_per_ray": metrics["samples_per_ray"],
        "params": metrics["params"], "curve": curve, "protocol": metrics["protocol"],
        "curve_protocol": f"intermediate points: the first {curve[0].get('views', '?') if curve else '?'} test views; "
                          "last point: all test views",
        "field": config["field"], "scene": {k: config["scene"][k] for k in ("render_step_size", "grid")},
        "train": config["train"],
    }
    if args.note:
        result["remark"] = args.note
    if args.from_run:
        result["note"] = "reported from a finished run (--from-run); machine info is from the time of reporting"
    path = write_json(out_dir / f"nerf_{name}.json", result, device, machine)
    plot(curve, f"{name}: {metrics['psnr']:.2f} dB after {metrics['steps']} steps, "
                f"{metrics['seconds'] / 60:.1f} min of training ({machine['device_name']})",
         path.with_suffix(".png"), args.target)
    print(json.dumps({k: v for k, v in result.items() if k not in ("curve", "field", "train", "scene")}, indent=1))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
