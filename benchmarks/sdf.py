"""SDF-fit benchmark: quality, time and memory of `fieldstudio fit sdf` on the shared meshes.

    python benchmarks/sdf.py [--data ../shared/data] [--meshes spot,fandisk,bunny] [--encoders hashgrid,siren]
                             [--steps hashgrid=300,siren=300] [--batch-size 16384] [--samples 524288]
                             [--resolution 256] [--device cpu|cuda|auto] [--out benchmarks/results/sdf.json]
                             [--quick]

Every mesh x encoder is fitted by `fit_sdf` (the code behind ``fieldstudio fit sdf``, with the
encoder's preset, learning rate and default loss: MAPE for the hash grid, L1 for SIREN) in a fresh
Python process, so its peak memory (VmHWM; CUDA: max allocated) is its own. Reported per fit, from
the run's metrics.json: volumetric IoU (128^3 cell centres), Chamfer-L1 (mean of both directions,
unit-cube units, 200k area-uniform samples per surface, exact point-to-triangle distances; mesh
from marching cubes at ``--resolution``^3), normal consistency, F-score at 0.005 and 0.01, steps,
training seconds, total seconds (ground truth sampling, extraction, metrics and preview
included) and peak memory. The issue's bar -- IoU >= 0.99 and Chamfer-L1 <= 2e-3 on spot and
fandisk -- is checked and printed per fit (``meets_bar``).

Writes ``--out`` (JSON: settings, machine, every fit) and the run folders beside it
(``sdf_runs/<mesh>/<encoder>``), and prints a table. Without the shared data folder the script
says so in one line and exits 0. ``--quick`` (development): spot only, 30 steps, 128^3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DEFAULT_DATA = C.REPO_ROOT.parent / "shared" / "data"
MESHES = {"spot": "mesh_spot/spot.obj", "fandisk": "mesh_fandisk/fandisk.obj", "bunny": "mesh_bunny/stanford-bunny.obj"}
DEFAULT_STEPS = {"hashgrid": 300, "siren": 300, "frequency": 300}
BAR = {"meshes": ("spot", "fandisk"), "iou": 0.99, "chamfer_l1": 2e-3}
KEYS = ("iou", "chamfer_l1", "accuracy", "completeness", "normal_consistency", "f_score@0.005", "f_score@0.01",
        "params", "steps", "seconds", "seconds_sampling", "seconds_total", "batch_size", "loss", "final_loss")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"shared data folder (default {DEFAULT_DATA})")
    p.add_argument("--meshes", default="spot,fandisk,bunny", help="comma-separated: spot, fandisk, bunny")
    p.add_argument("--encoders", default="hashgrid,siren", help="comma-separated presets")
    p.add_argument("--steps", default=None, help="steps per encoder, e.g. hashgrid=300,siren=300 (or one number for all)")
    p.add_argument("--batch-size", type=int, default=1 << 14)
    p.add_argument("--samples", type=int, default=1 << 19, help="training points with ground truth per mesh")
    p.add_argument("--resolution", type=int, default=256, help="marching cubes resolution for Chamfer & co.")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None, help="JSON to write (default benchmarks/results/sdf.json)")
    p.add_argument("--quick", action="store_true", help="spot only, 30 steps, 128^3 (development)")
    p.add_argument("--one", nargs=3, metavar=("MESH_PATH", "ENCODER", "RUN_DIR"), help=argparse.SUPPRESS)
    p.add_argument("--steps-one", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    steps = dict(DEFAULT_STEPS)
    if args.quick:
        steps = {k: 30 for k in steps}
        args.meshes, args.resolution = "spot", 128
    if args.steps:
        if "=" in args.steps:
            for part in args.steps.split(","):
                k, v = part.split("=")
                steps[k.strip()] = int(v)
        else:
            steps = {k: int(args.steps) for k in steps}
    args.step_map = steps
    args.mesh_list = [m.strip() for m in args.meshes.split(",") if m.strip()]
    args.encoder_list = [e.strip() for e in args.encoders.split(",") if e.strip()]
    unknown = [m for m in args.mesh_list if m not in MESHES]
    if unknown:
        p.error(f"unknown mesh {unknown[0]!r}; use {', '.join(MESHES)}")
    if args.out is None:
        args.out = C.REPO_ROOT / "benchmarks" / "results" / ("sdf_quick.json" if args.quick else "sdf.json")
    return args


def run_one(mesh_path: str, encoder: str, run_dir: str, args) -> dict[str, Any]:
    """One fit in this process; returns its metrics plus peak memory."""
    C.ensure_fieldstudio()
    import torch

    from fieldstudio.apps.fit_sdf import fit_sdf

    use_hwm = C.reset_peak_rss()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    m = fit_sdf(mesh_path, encoder=encoder, steps=args.steps_one, out=run_dir, batch_size=args.batch_size,
                n_samples=args.samples, resolution=args.resolution, device=args.device, progress=False)
    out = {k: m.get(k) for k in KEYS}
    out["extraction_seconds"] = m["extraction"]["seconds"]
    out["extraction_evaluated_fraction"] = m["extraction"]["evaluated_fraction"]
    out["mesh_faces"] = m["mesh"]["faces"]
    out["watertight"] = m["mesh"]["watertight"]
    out["sign"] = m["ground_truth"]["sign"]
    out["peak_rss_bytes"] = C.peak_rss_bytes(use_hwm)
    if cuda:
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        res = run_one(*args.one, args)
        print("RESULT " + json.dumps(res))
        return 0
    if not args.data.exists():
        print(f"sdf benchmark: shared data not found at {args.data}; nothing to do")
        return 0
    runs_root = args.out.parent / (args.out.stem + "_runs")
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    env = {**os.environ, **C.CPU_MEMORY_ENV}
    for mesh in args.mesh_list:
        path = args.data / MESHES[mesh]
        if not path.exists():
            print(f"  {mesh}: {path} missing, skipped")
            continue
        for enc in args.encoder_list:
            run_dir = runs_root / mesh / enc
            if run_dir.exists():
                shutil.rmtree(run_dir)
            steps = args.step_map.get(enc, 300)
            cmd = [sys.executable, __file__, "--one", str(path), enc, str(run_dir), "--steps-one", str(steps),
                   "--batch-size", str(args.batch_size), "--samples", str(args.samples), "--resolution",
                   str(args.resolution), "--device", args.device]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                results.setdefault(mesh, {})[enc] = {"error": err}
                print(f"  {mesh:8s} {enc:9s} FAILED: {err}")
                continue
            r = json.loads(line[len("RESULT "):])
            r["wall_seconds"] = round(time.perf_counter() - t, 2)
            r["run_dir"] = str(run_dir.relative_to(C.REPO_ROOT)) if run_dir.is_relative_to(C.REPO_ROOT) else str(run_dir)
            if mesh in BAR["meshes"]:
                r["meets_bar"] = bool(r["iou"] >= BAR["iou"] and r["chamfer_l1"] <= BAR["chamfer_l1"])
            results.setdefault(mesh, {})[enc] = r
            print(f"  {mesh:8s} {enc:9s} IoU {r['iou']:.4f}  Chamfer-L1 {r['chamfer_l1']:.2e}  "
                  f"NC {r['normal_consistency']:.4f}  F@0.005 {r['f_score@0.005']:.4f}  {r['steps']} steps  "
                  f"{r['seconds']:.0f} s train / {r['wall_seconds']:.0f} s  {r['peak_rss_bytes'] / 2**30:.2f} GiB",
                  flush=True)
    total = round(time.perf_counter() - t0, 1)
    rows = []
    for mesh, per in results.items():
        for enc, r in per.items():
            if "error" in r:
                rows.append([f"{mesh}/{enc}", "error", "", "", "", "", "", "", "", ""])
                continue
            bar = {True: "yes", False: "NO"}.get(r.get("meets_bar"), "-")
            rows.append([f"{mesh}/{enc}", f"{r['iou']:.4f}", f"{r['chamfer_l1']:.2e}", f"{r['normal_consistency']:.4f}",
                         f"{r['f_score@0.005']:.4f}", str(r["steps"]), f"{r['seconds']:.0f}", f"{r['wall_seconds']:.0f}",
                         f"{r['peak_rss_bytes'] / 2**30:.2f}", bar])
    table = C.fmt_table(["mesh/encoder", "IoU", "Chamfer-L1", "NC", "F@0.005", "steps", "train s", "total s",
                         "peak GiB", "bar"], rows)
    print(table)
    print(f"bar: IoU >= {BAR['iou']} and Chamfer-L1 <= {BAR['chamfer_l1']} on {', '.join(BAR['meshes'])}; "
          f"all fits in {total} s")
    payload = {
        "settings": {"meshes": args.mesh_list, "encoders": args.encoder_list, "steps": args.step_map,
                     "batch_size": args.batch_size, "samples": args.samples, "resolution": args.resolution,
                     "device": args.device, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "bar": BAR, "protocol": "see fieldstudio.renderers.mesh_metrics and each run's metrics.json 'protocol'",
        "total_seconds": total, "results": results, "table": table,
    }
    path = C.write_json(args.out, payload, args.device if args.device != "auto" else "cpu")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
