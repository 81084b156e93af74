"""One reconstruct training step, fused CPU kernels against their PyTorch twins, interleaved.

    python benchmarks/nerf_step.py --run benchmarks/results/nerf_lego_kernels_run [--rays 4096]
                                   [--repeats 7] [--threads 1]

Opens a finished `reconstruct` run (its field and occupancy grid: the state most of a training
run is spent in), draws a fixed batch of training rays, and times what `reconstruct` does each
step -- march with early termination, render, MSE, backward, Adam -- alternately with all fused
kernels (grid encoding, marching, compositing) and with the PyTorch twins only, so load from
other processes hits both alike. Reports the medians, their ratio, and CPU (process) time.
Writes ``benchmarks/results/nerf_step.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import _common as C

C.ensure_fieldstudio()

import torch  # noqa: E402

import fieldstudio.encoders.grid as grid_mod  # noqa: E402
import fieldstudio.renderers.volume as vol  # noqa: E402
from fieldstudio.apps.reconstruct import load_scene_run  # noqa: E402
from fieldstudio.apps.training import make_adam  # noqa: E402
from fieldstudio.datasets.scene import load_scene  # noqa: E402
from fieldstudio.kernels import cpu_kernels, render_kernels  # noqa: E402
from fieldstudio.renderers.rays import dataset_rays  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished reconstruct run folder")
    ap.add_argument("--rays", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(C.REPO_ROOT / "benchmarks" / "results" / "nerf_step.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if cpu_kernels() is None or render_kernels() is None:
        print("nerf_step: the fused kernels are not available here; nothing to compare", file=sys.stderr)
        return 2
    model, cfg = load_scene_run(args.run, device="cpu")
    model.train()
    ds = load_scene(cfg["scene"]["data"], format=cfg["scene"]["format"], downscale=cfg["scene"]["downscale"])
    train_idx = ds.split("train")
    gen = torch.Generator().manual_seed(0)
    img = train_idx[torch.randint(0, len(train_idx), (args.rays,), generator=gen)]
    px = torch.randint(0, ds.width, (args.rays,), generator=gen)
    py = torch.randint(0, ds.height, (args.rays,), generator=gen)
    rays = dataset_rays(ds, img, px, py)
    target, bg = ds.pixels(img, py, px, generator=gen)
    opt = make_adam(model.field, 1e-3)
    counted = {}

    def step():
        opt.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        rgb, _, _, n = model.render_rays(rays, bg, stratified=True)
        loss = torch.mean((rgb - target) ** 2)
        loss.backward()
        opt.step()
        counted["samples"] = n

    def twin():
        saved = grid_mod.cpu_kernels, vol.render_kernels
        grid_mod.cpu_kernels, vol.render_kernels = (lambda: None), (lambda: None)
        try:
            step()
        finally:
            grid_mod.cpu_kernels, vol.render_kernels = saved

    wall = {"fused": [], "twin": []}
    cpu = {"fused": [], "twin": []}
    for name, fn in (("fused", step), ("twin", twin)):
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in (("fused", step), ("twin", twin)):
            c, t = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    result = {"run": str(args.run), "rays": args.rays, "samples": counted.get("samples"), "threads": args.threads,
              "repeats": args.repeats, "median_seconds": med, "median_cpu_seconds": med_cpu,
              "speedup_wall": med["twin"] / med["fused"], "speedup_cpu": med_cpu["twin"] / med_cpu["fused"],
              "seconds": wall, "cpu_seconds": cpu}
    machine = C.machine_info("cpu")
    C.write_json(Path(args.out), result, "cpu", machine)
    print(f"{args.rays} rays, {counted.get('samples')} samples, {args.threads} thread(s), load "
          f"{machine.get('load_average_1_5_15min')}")
    print(f"fused: {med['fused'] * 1e3:.0f} ms ({med_cpu['fused'] * 1e3:.0f} ms CPU); twins: {med['twin'] * 1e3:.0f} ms "
          f"({med_cpu['twin'] * 1e3:.0f} ms CPU); speed-up {result['speedup_wall']:.2f}x wall, "
          f"{result['speedup_cpu']:.2f}x CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
