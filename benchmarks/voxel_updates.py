"""One training step of the voxel grid: sparse gradients + LazyAdam against dense gradients + fused Adam.

    python benchmarks/voxel_updates.py [--points 12288] [--resolutions 96,128,160] [--repeats 9]

A step is what `reconstruct --field voxels` and `distill --to voxels` do per batch to the grid:
the trilinear lookup of ``--points`` points (a 2,048-ray batch marches about 12k samples on lego),
an SH colour, a loss, the backward pass, zeroing nothing (gradients set to None) and the optimiser
step. Dense: the lookup's gradient fills a tensor the size of the grid and PyTorch's fused Adam
passes over every value. Sparse (`VoxelField` default): the gradient holds the reached vertices
only and `fieldstudio.optim.LazyAdam` updates those rows. Points are uniform in the cube, which
reaches the most distinct vertices (real samples crowd near surfaces): the sparse side's worst case.
The two sides are timed interleaved, per resolution, after warm-up steps that also fault in Adam's state.
"""

from __future__ import annotations

import argparse
import sys

from _common import REPO_ROOT, build_cpu_kernels, ensure_fieldstudio, fmt_table, machine_info, median, time_steps, write_json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=12288)
    ap.add_argument("--resolutions", default="96,128,160")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "voxel_updates_cpu.json"))
    args = ap.parse_args(argv)
    ensure_fieldstudio()
    build_cpu_kernels()
    import torch

    from fieldstudio.fields.radiance_grids import VoxelField
    from fieldstudio.optim import adam

    machine = machine_info("cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.points, 3, generator=gen)
    d = torch.nn.functional.normalize(torch.randn(args.points, 3, generator=gen), dim=-1)
    target = torch.rand(args.points, 3, generator=gen)
    rows, results = [], {}
    for r in (int(v) for v in args.resolutions.split(",")):
        steps, sides = {}, {}
        for label, sparse in (("sparse", True), ("dense", False)):
            torch.manual_seed(0)
            fld = VoxelField({"resolution": r, "sh_degree": 3, "log_density_clip": [-2.0, 7.0], "sparse_gradients": sparse})
            opt = adam(fld, 0.03)

            def step(fld=fld, opt=opt):
                c = fld.channels(x, d)
                loss = ((c["rgb"] - target) ** 2).mean() + 1e-3 * (c["log_density"] ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            steps[label], sides[label] = step, (fld, opt)
        times = time_steps(steps, args.repeats, args.warmup, "cpu")
        ms, md = median(times["sparse"]), median(times["dense"])
        held = int(sides["sparse"][0].grid.grad.coalesce().indices().shape[1])
        results[str(r)] = {"sparse_s": times["sparse"], "dense_s": times["dense"], "sparse_median_s": ms,
                           "dense_median_s": md, "dense_over_sparse": round(md / ms, 2),
                           "optimizers": {k: type(v[1]).__name__ for k, v in sides.items()},
                           "grid_values": sides["sparse"][0].grid.numel(), "vertices_reached": held,
                           "vertices": r ** 3}
        rows.append([f"{r}^3", f"{held / r ** 3:.1%}", f"{ms * 1e3:.1f}", f"{md * 1e3:.1f}", f"{md / ms:.2f}x"])
        del steps, sides
    payload = {"protocol": f"{args.points} uniform points, VoxelField SH degree 3, channels + MSE + backward + "
                           f"optimiser step, medians of {args.repeats} interleaved repeats after {args.warmup} "
                           f"warm-ups, torch threads {torch.get_num_threads()}", "cases": results}
    write_json(args.out, payload, "cpu", machine=machine)
    print(fmt_table(["grid", "vertices reached", "sparse ms", "dense ms", "dense / sparse"], rows))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
