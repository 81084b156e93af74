"""Distillation's point-colour loss: the plain mean over all samples against the mean weighted by the
teacher's rendering weight (`LossWeights.visible_color`), per student type, distillation only.

    OMP_NUM_THREADS=2 python benchmarks/distill_color_loss.py [--students tensorf,mlp,neurbf,cam,voxels]
        [--teacher benchmarks/results/lego_hashgrid_teacher] [--data ../shared/data/nerf_lego_blender]
        [--budget 330] [--rays 2048] [--eval-views 3]

Each student is distilled twice from the same teacher for the same wall-clock budget, the two losses
one after the other (so slow drift of the machine falls on both alike), and scored on the first
``--eval-views`` lego test views, as `benchmarks/distill.py` scores its runs. The teacher is a run of
`benchmarks/distill.py` (it trains one when missing). Writes ``benchmarks/results/distill_color_loss.json``
after every run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from _common import REPO_ROOT, build_cpu_kernels, fmt_table, machine_info, write_json

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "nerf_lego_blender"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=str(REPO_ROOT / "benchmarks" / "results" / "lego_hashgrid_teacher"))
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--students", default="tensorf,mlp,neurbf,cam,voxels")
    ap.add_argument("--budget", type=float, default=330.0, help="seconds of distillation per run")
    ap.add_argument("--rays", type=int, default=2048)
    ap.add_argument("--eval-views", type=int, default=3)
    ap.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "distill_color_loss.json"))
    ap.add_argument("--workdir", default=str(REPO_ROOT / "benchmarks" / "results" / "distill_color_loss_runs"))
    args = ap.parse_args(argv)
    if not Path(args.data).exists():
        print(f"skipped: the lego scene is not at {args.data} (pass --data)")
        return 0
    if not (Path(args.teacher) / "config.json").exists():
        print(f"no teacher run at {args.teacher}: make one with `python benchmarks/distill.py --students mlp` "
              f"(it trains the teacher first) or pass --teacher")
        return 1
    build_cpu_kernels()
    import json

    import torch

    from fieldstudio.apps.distill import distill_run
    from fieldstudio.renderers.distill import LossWeights

    machine = machine_info("cpu")
    teacher_metrics = json.loads((Path(args.teacher) / "metrics.json").read_text())
    payload = {"teacher": {"run": args.teacher, "psnr_recorded": teacher_metrics.get("psnr")},
               "protocol": f"first {args.eval_views} lego test views, white background; each run {args.budget:.0f} s "
                           f"of distillation on {args.rays} virtual rays/step, OMP_NUM_THREADS="
                           f"{os.environ.get('OMP_NUM_THREADS')}, torch threads {torch.get_num_threads()}",
               "budget_seconds": args.budget, "students": {}}
    work = Path(args.workdir)
    rows = []
    for s in args.students.split(","):
        res = payload["students"][s] = {}
        for name, visible in (("plain", False), ("visible", True)):
            out = work / f"{s}_{name}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            m = distill_run(args.teacher, s, out=out, steps=1_000_000, n_rays=args.rays, time_budget=args.budget,
                            data=args.data, eval_views=args.eval_views, progress=False, checkpoint_every=1_000_000,
                            device="cpu", weights=LossWeights(visible_color=visible))
            res[name] = {k: m[k] for k in ("psnr", "ssim", "psnr_per_view", "steps", "seconds", "psnr_vs_teacher_last")} \
                | {"wall_seconds": round(time.perf_counter() - t0, 1), "load_average_at_end": list(os.getloadavg())}
            print(f"{s} ({name} point colour): {m['psnr']:.2f} dB, {m['steps']} steps", flush=True)
            write_json(args.out, payload, "cpu", machine=machine)
        res["visible_minus_plain_db"] = round(res["visible"]["psnr"] - res["plain"]["psnr"], 2)
        rows.append([s, f"{res['plain']['psnr']:.2f}", f"{res['visible']['psnr']:.2f}",
                     f"{res['visible_minus_plain_db']:+.2f}", f"{res['plain']['steps']}/{res['visible']['steps']}"])
        write_json(args.out, payload, "cpu", machine=machine)
    print(fmt_table(["student", "plain mean dB", "visible mean dB", "difference", "steps"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
