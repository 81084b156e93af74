"""Distillation benchmark (PVD): a hash-grid teacher -> each other field type, against training from scratch.

    OMP_NUM_THREADS=2 python benchmarks/distill.py [--teacher benchmarks/results/lego_hashgrid_teacher]
        [--data ../shared/data/nerf_lego_blender] [--budget 330] [--students mlp,tensorf,voxels,neurbf[,cam]]
        [--eval-views 3] [--curve-every 40] [--rays 2048] [--reach-budget 990] [--reach-only]
        [--finetune-share 0.25 [--finetune-students tensorf,voxels] [--finetune-only]]

The teacher is a hash-grid scene run (`fieldstudio reconstruct DATA --steps 2500`); when ``--teacher``
does not exist yet it is trained there first (``--teacher-steps``, about 200 s on 2 cores).

For every student type, with the same wall-clock budget each:
* **distilled**: `fieldstudio distill TEACHER --to TYPE --time-budget B` (virtual cameras only);
* **from scratch**: `fieldstudio reconstruct --field TYPE` on the real training images with the same
  ``time_budget`` (the learning-rate schedule follows the time fraction), PSNR on the first test view
  every ``--curve-every`` steps (rendering not counted as training time).
All are scored on the first ``--eval-views`` test views (white background), as is the teacher
(with PVD's log-density clamp [-2, 7], as the students see it, and without). "Scratch time to the
distilled PSNR" is read off the scratch curve on the first test view against the distilled
student's PSNR on that same view (None: not reached within the budget).

``--reach-budget S``: for students whose scratch run fell short, one more scratch run with an
``S``-second schedule that stops on reaching the distilled PSNR (first test view), giving the time
scratch training needs. ``--finetune-share F``: one more run per ``--finetune-students`` that
distils for ``(1 - F) * B`` seconds and fine-tunes on the real training images for ``F * B`` (PVD's
optional last stage), so the total matches the others. ``--reach-only`` / ``--finetune-only`` add
just those runs to an existing ``--out`` JSON.

Writes ``benchmarks/results/distill.json`` after every student (partial results survive).
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
#: student type -> reconstruct's (field, encoder)
SCRATCH = {"mlp": ("nerf", "hashgrid"), "tensorf": ("tensorf", "hashgrid"), "voxels": ("voxels", "hashgrid"),
           "neurbf": ("ngp", "neurbf"), "hashgrid": ("ngp", "hashgrid"), "cam": ("ngp", "hashgrid")}  # cam: + --cam


def time_to(curve: list[dict], target: float) -> float | None:
    prev = None
    for c in curve:
        if c["psnr"] >= target:
            if prev is None:
                return c["seconds"]
            f = (target - prev["psnr"]) / max(c["psnr"] - prev["psnr"], 1e-9)
            return round(prev["seconds"] + f * (c["seconds"] - prev["seconds"]), 1)
        prev = c
    return None


def plot(payload: dict, path: Path) -> Path:
    """Per student: the from-scratch curve (first test view) and the distilled student on that view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studs = payload["students"]
    # at least two panels' width: one panel alone cannot hold a two-column legend of these labels
    fig, axes = plt.subplots(1, max(1, len(studs)), figsize=(max(3.6 * len(studs), 7.2), 3.4), squeeze=False)
    t_view0 = payload["teacher"]["clamped"]["psnr_per_view"][0]
    for ax, (name, v) in zip(axes[0], studs.items()):
        c = v["scratch"]["curve_first_view"]
        ax.plot([p["seconds"] for p in c], [p["psnr"] for p in c], "o-", ms=3, label="from scratch (real images)")
        reach = v.get("scratch_reach")
        if reach:
            c = reach["curve_first_view"]
            ax.plot([p["seconds"] for p in c], [p["psnr"] for p in c], "--", color="C0", alpha=0.6,
                    label=f"from scratch, {reach['budget_seconds']:.0f} s schedule")
        ax.plot([v["distilled"]["seconds"]], [v["distilled"]["psnr_per_view"][0]], "*", ms=14,
                label="distilled (virtual cameras)")
        ft = v.get("distilled_finetuned")
        if ft:
            ax.plot([ft["seconds"] + ft["finetune_seconds"]], [ft["psnr_per_view"][0]], "P", ms=9, color="C3",
                    alpha=0.8, label=f"distilled, last {ft['share']:.0%} fine-tuned on real images")
        ax.axhline(t_view0, color="grey", ls="--", lw=1, label="hash-grid teacher")
        ax.set_title(name)
        ax.set_xlabel("training seconds (CPU)")
        ax.set_ylabel("PSNR, first test view (dB)")
        ax.grid(alpha=0.3)
    labels = {}  # one legend for the figure, every kind of mark once
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(lab, h)
    ncol = min(len(labels), max(2, len(studs)))  # about one entry per panel width fits; more rows otherwise
    rows = -(-len(labels) // max(ncol, 1))
    fig.legend(list(labels.values()), list(labels.keys()), loc="lower center", ncol=ncol, fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.02 + 0.055 * rows, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reach_runs(payload: dict, args) -> None:
    """For students whose same-time scratch run fell short: a longer scratch run that stops at the
    distilled PSNR (first test view), giving the time scratch training needs to get there."""
    from fieldstudio.apps.reconstruct import reconstruct

    work = Path(args.workdir)
    for s, v in payload["students"].items():
        if v.get("scratch_seconds_to_distilled_psnr_first_view") is not None:
            continue
        field, encoder = SCRATCH[s]
        target = v["distilled"]["psnr_per_view"][0]
        out = work / f"{s}_scratch_reach"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        r = reconstruct(args.data, field=field, encoder=encoder, steps=1_000_000, time_budget=args.reach_budget,
                        out=out, eval_views=1, eval_every=args.curve_every, eval_every_views=1, progress=False,
                        device="cpu", checkpoint_every=1_000_000, stop_at_psnr=target,
                        warmup_steps=30 if encoder == "neurbf" else None, cam=s == "cam")
        curve = [c for c in r["curve"] if c["views"] == 1]
        reach = time_to(curve, target)
        v["scratch_reach"] = {"budget_seconds": args.reach_budget, "target_first_view": target,
                              "seconds_to_target": reach, "steps": r["steps"], "seconds": r["seconds"],
                              "final_psnr_first_view": r["psnr_per_view"][0], "curve_first_view": curve,
                              "wall_seconds": round(time.perf_counter() - t0, 1), "load_average_at_end": list(os.getloadavg()),
                              "ratio_to_distill_seconds": round(reach / v["distilled"]["seconds"], 2) if reach else None}
        print(f"{s}: scratch over {args.reach_budget:.0f} s reaches {target:.2f} dB (view 0) at {reach} s "
              f"(final {r['psnr_per_view'][0]:.2f} dB after {r['seconds']:.0f} s)", flush=True)
        write_json(args.out, payload, "cpu", machine=args.machine)


def finetune_runs(payload: dict, args) -> None:
    """Distil for (1 - share) of the budget, then fine-tune on the real images for the rest."""
    from fieldstudio.apps.distill import distill_run

    work = Path(args.workdir)
    budget = payload["budget_seconds"]
    for s in args.finetune_students.split(","):
        if s not in payload["students"]:
            continue
        out = work / f"{s}_distilled_finetuned"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        d = distill_run(args.teacher, s, out=out, steps=1_000_000, n_rays=args.rays,
                        time_budget=budget * (1 - args.finetune_share), finetune_time=budget * args.finetune_share,
                        data=args.data, eval_views=args.eval_views, progress=False, checkpoint_every=1_000_000,
                        device="cpu")
        v = payload["students"][s]
        v["distilled_finetuned"] = {k: d[k] for k in ("psnr", "ssim", "psnr_per_view", "steps", "seconds",
                                                       "finetune_steps", "finetune_seconds", "psnr_vs_teacher_last")} | {
            "share": args.finetune_share, "wall_seconds": round(time.perf_counter() - t0, 1),
            "load_average_at_end": list(os.getloadavg()),
            "minus_scratch_db": round(d["psnr"] - v["scratch"]["psnr"], 2),
            "gap_to_teacher_db": round(payload["teacher"]["clamped"]["psnr"] - d["psnr"], 2)}
        print(f"{s}: distilled {d['seconds']:.0f} s ({d['steps']} steps) + fine-tuned {d['finetune_seconds']:.0f} s "
              f"({d['finetune_steps']} steps): {d['psnr']:.2f} dB (scratch {v['scratch']['psnr']:.2f})", flush=True)
        write_json(args.out, payload, "cpu", machine=args.machine)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=str(REPO_ROOT / "benchmarks" / "results" / "lego_hashgrid_teacher"),
                    help="the teacher's run folder; trained there first when missing")
    ap.add_argument("--teacher-steps", type=int, default=2500, help="steps of that teacher training")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--budget", type=float, default=330.0, help="seconds of training per run")
    ap.add_argument("--students", default="mlp,tensorf,voxels,neurbf")
    ap.add_argument("--eval-views", type=int, default=3)
    ap.add_argument("--curve-every", type=int, default=40)
    ap.add_argument("--rays", type=int, default=2048)
    ap.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "distill.json"))
    ap.add_argument("--workdir", default=str(REPO_ROOT / "benchmarks" / "results" / "distill_runs"))
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from the --out JSON")
    ap.add_argument("--reach-budget", type=float, default=0.0,
                    help="seconds for a longer scratch run measuring the time to the distilled PSNR (0: none)")
    ap.add_argument("--reach-only", action="store_true", help="only the --reach-budget runs, for the --out JSON")
    ap.add_argument("--finetune-share", type=float, default=0.0,
                    help="share of the budget given to fine-tuning on real images in an extra distilled run (0: none)")
    ap.add_argument("--finetune-students", default="tensorf,voxels")
    ap.add_argument("--finetune-only", action="store_true", help="only the --finetune-share runs, for the --out JSON")
    args = ap.parse_args(argv)
    if args.plot_only or args.reach_only or args.finetune_only:
        import json

        payload = json.loads(Path(args.out).read_text())
        if args.reach_only or args.finetune_only:
            build_cpu_kernels()
            payload.pop("created", None)  # write_json stamps a new one
            args.machine = payload.pop("machine", None)  # the main run's machine record stays
            if args.reach_only:
                reach_runs(payload, args)
            if args.finetune_only:
                finetune_runs(payload, args)
        print(plot(payload, Path(args.out).with_suffix(".png")))
        return 0
    build_cpu_kernels()
    import torch

    from fieldstudio.apps.distill import distill_run, load_teacher
    from fieldstudio.apps.reconstruct import evaluate_views, load_scene_run, reconstruct
    from fieldstudio.datasets.scene import load_scene

    if not Path(args.data).exists():
        print(f"skipped: the lego scene is not at {args.data} (pass --data)")
        return 0
    if not (Path(args.teacher) / "config.json").exists():
        print(f"training the hash-grid teacher ({args.teacher_steps} steps) into {args.teacher}", flush=True)
        shutil.rmtree(args.teacher, ignore_errors=True)
        reconstruct(args.data, field="ngp", encoder="hashgrid", steps=args.teacher_steps, out=args.teacher,
                    eval_views=args.eval_views, progress=False, device="cpu")
    machine = machine_info("cpu")
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    ds = load_scene(args.data)
    views = ds.split("test")[: args.eval_views]

    tmodel, _ = load_teacher(args.teacher, device="cpu")
    teacher = {"clamped": evaluate_views(tmodel, ds, views)}
    tmodel.field.cfg["log_density_clip"] = None
    teacher["unclamped"] = evaluate_views(tmodel, ds, views)
    del tmodel
    payload = {"teacher": {"run": args.teacher, **{k: {"psnr": v["psnr"], "psnr_per_view": v["psnr_per_view"]}
                                                    for k, v in teacher.items()}},
               "protocol": f"first {len(views)} lego test views at {ds.width}px, white background; each run "
                           f"{args.budget:.0f} s of training, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
                           f"torch threads {torch.get_num_threads()}; distillation: {args.rays} virtual rays/step",
               "budget_seconds": args.budget, "students": {}}
    print(f"teacher: {teacher['clamped']['psnr']:.2f} dB clamped, {teacher['unclamped']['psnr']:.2f} dB unclamped", flush=True)
    for s in args.students.split(","):
        t0 = time.perf_counter()
        d = distill_run(args.teacher, s, out=work / f"{s}_distilled", steps=1_000_000, n_rays=args.rays,
                        time_budget=args.budget, data=args.data, eval_views=len(views), progress=False,
                        checkpoint_every=1_000_000, device="cpu")
        d_wall = time.perf_counter() - t0
        print(f"{s}: distilled {d['psnr']:.2f} dB in {d['seconds']:.0f} s ({d['steps']} steps)", flush=True)
        field, encoder = SCRATCH[s]
        t0 = time.perf_counter()
        r = reconstruct(args.data, field=field, encoder=encoder, steps=1_000_000, time_budget=args.budget,
                        out=work / f"{s}_scratch", eval_views=len(views), eval_every=args.curve_every,
                        eval_every_views=1, progress=False, device="cpu", checkpoint_every=1_000_000,
                        warmup_steps=30 if encoder == "neurbf" else None, cam=s == "cam")
        r_wall = time.perf_counter() - t0
        curve1 = [c for c in r["curve"] if c["views"] == 1]
        curve1.append({"step": r["steps"], "seconds": r["seconds"], "psnr": r["psnr_per_view"][0]})
        target = d["psnr_per_view"][0]
        reach = time_to(curve1, target)
        payload["students"][s] = {
            "distilled": {k: d[k] for k in ("psnr", "ssim", "psnr_per_view", "steps", "seconds", "stage_starts",
                                            "params", "psnr_vs_teacher_last")} | {"wall_seconds": round(d_wall, 1)},
            "scratch": {k: r[k] for k in ("psnr", "ssim", "psnr_per_view", "steps", "seconds", "params")}
            | {"curve_first_view": curve1, "wall_seconds": round(r_wall, 1), "field": field, "encoder": encoder},
            "gap_to_teacher_db": round(teacher["clamped"]["psnr"] - d["psnr"], 2),
            "distilled_minus_scratch_db": round(d["psnr"] - r["psnr"], 2),
            "scratch_seconds_to_distilled_psnr_first_view": reach,
            "speedup_vs_scratch": round(reach / d["seconds"], 2) if reach else None,
        }
        with open(work / f"{s}_scratch" / "config.json") as f:
            import json

            kinit = json.load(f)["train"].get("kernel_init")
        if kinit:
            payload["students"][s]["scratch"]["neurbf_warmup_seconds"] = kinit.get("warmup_seconds")
        print(f"{s}: scratch {r['psnr']:.2f} dB in {r['seconds']:.0f} s ({r['steps']} steps); "
              f"scratch reaches the distilled PSNR (view 0: {target:.2f}) at {reach} s", flush=True)
        write_json(args.out, payload, "cpu", machine=machine)
    args.machine = machine
    if args.reach_budget:
        reach_runs(payload, args)
    if args.finetune_share:
        finetune_runs(payload, args)
    rows = [[s, f"{v['distilled']['psnr']:.2f}", f"{v['gap_to_teacher_db']:+.2f}", f"{v['distilled']['seconds']:.0f}",
             f"{v['scratch']['psnr']:.2f}", str(v["scratch_seconds_to_distilled_psnr_first_view"])]
            for s, v in payload["students"].items()]
    payload["machine_end"] = {"load_average_1_5_15min": list(os.getloadavg())}
    write_json(args.out, payload, "cpu", machine=machine)
    plot(payload, Path(args.out).with_suffix(".png"))
    print(fmt_table(["student", "distilled dB", "gap to teacher", "distill s", "scratch dB (same time)",
                     "scratch s to distilled dB"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
