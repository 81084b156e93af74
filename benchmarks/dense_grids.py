"""Dense-grid kernels against their grid_sample twins: TensoRF's VM product and the voxel grid.

    python benchmarks/dense_grids.py [--points 65536] [--repeats 7] [--out benchmarks/results/dense_grids_cpu.json]

One training step's worth of work each (forward, then backward to the tables from a random
upstream gradient), on the configurations the radiance students use (`fieldstudio distill --to
tensorf` / `--to voxels`: VM rank 16 + 48 per mode on 128-sample planes; a 96^3 grid of 1 + 3 x 9
values). The kernel and its twin share the module, the points and the upstream gradient and are
timed interleaved (a, b, a, b, ...), so their ratio holds on a shared machine; the outputs and
gradients of both are compared first. CPU only (on a GPU the twins are the path).
"""

from __future__ import annotations

import argparse
import sys

from _common import REPO_ROOT, ensure_fieldstudio, fmt_table, machine_info, median, time_steps, write_json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1 << 16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "dense_grids_cpu.json"))
    args = ap.parse_args(argv)
    ensure_fieldstudio()
    import torch

    from fieldstudio.encoders import build_encoding
    from fieldstudio.fields.radiance_grids import VoxelField
    from fieldstudio.kernels import dense_kernel_status

    active, why = dense_kernel_status()
    if not active:
        print(f"skipped: the dense-grid kernels are not available ({why})")
        return 0
    machine = machine_info("cpu")
    torch.manual_seed(args.seed)
    x = torch.rand(args.points, 3)
    vm = build_encoding({"otype": "TensorfVM", "n_components": 64, "resolution": 128, "init_std": 0.1}, 3)
    vox = VoxelField({"resolution": 96, "sh_degree": 3, "sparse_gradients": False})  # the dense backward
    cases = {"tensorf_vm": (vm.forward, vm.forward_torch, [vm.planes, vm.lines]),
             "voxels": (vox._sample, vox.sample_torch, [vox.grid])}
    rows, results = [], {}
    for name, (fast, twin, params) in cases.items():
        g = torch.randn(args.points, fast(x[:1]).shape[-1])

        def step(fn, params=params, g=g):
            for p in params:
                p.grad = None
            (fn(x) * g).sum().backward()

        grads = {}
        for label, fn in (("kernel", fast), ("twin", twin)):
            step(fn)
            grads[label] = [p.grad.clone() for p in params]
        with torch.no_grad():
            out_err = float((fast(x) - twin(x)).abs().max())
        grad_err = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
                       for a, b in zip(grads["kernel"], grads["twin"]))
        times = time_steps({"kernel": lambda: step(fast), "twin": lambda: step(twin)}, args.repeats, args.warmup, "cpu")
        mk, mt = median(times["kernel"]), median(times["twin"])
        paired = [t / k for t, k in zip(times["twin"], times["kernel"])]
        results[name] = {"kernel_s": times["kernel"], "twin_s": times["twin"], "kernel_median_s": mk,
                         "twin_median_s": mt, "speedup_of_medians": round(mt / mk, 2),
                         "speedup_paired_median": round(median(paired), 2),
                         "max_abs_output_diff": out_err, "max_rel_grad_diff": grad_err,
                         "params": sum(p.numel() for p in params)}
        rows.append([name, f"{mk * 1e3:.1f}", f"{mt * 1e3:.1f}", f"{mt / mk:.2f}x", f"{out_err:.1e}", f"{grad_err:.1e}"])
    payload = {"protocol": f"{args.points} points in [0,1]^3, forward + backward to the tables, medians of "
                           f"{args.repeats} interleaved repeats after {args.warmup} warm-ups, torch threads "
                           f"{torch.get_num_threads()}", "cases": results}
    write_json(args.out, payload, "cpu", machine=machine)
    print(fmt_table(["case", "kernel ms", "twin ms", "twin / kernel", "max |out diff|", "max rel grad diff"], rows))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
