"""Volume renderer benchmark: marching and compositing throughput, and an NGP training step.

    python benchmarks/renderer.py [--device cpu|cuda] [--threads N] [--backend auto|torch|nerfacc]
                                  [--repeats 5] [--out benchmarks/results/renderer.json] [--twin]

Scene: three blobs of density with compact support in the unit box (the scene of
tests/renderers/test_volume.py, density 60 inside), seen by a 64 x 64 = 4096-ray pinhole camera
from z = -1; a 128^3 occupancy grid after the 16 warm-up updates; instant-ngp's step sqrt(3)/1024.
The closures are analytic (cheap), so the march and the compositing are what is timed.

Cases (median of ``--repeats`` after one warm-up; rays/s = 4096 / seconds):

* ``march_dense``: no grid (every step inside the box), no early stop -- the baseline;
* ``march_grid``: occupancy-grid skipping only;
* ``march_grid_early_stop``: skipping + the early-termination pass (one sigma_fn call);
* ``rendering``: `rendering` of those samples (one rgb_sigma_fn call, weights, accumulation);
* ``march_and_render``: the last two together, the cost of one image tile of 4096 rays;
* ``ngp_forward_backward_65536``: `NGPRadianceField` (paper config) on 2^16 random samples:
  ``field(x, d)``, ``loss = rgb.sum() + sigma.sum()``, backward;
* ``ngp_render_step``: march (grid + early stop with the field's density) and render through a
  default NGPRadianceField for 1024 rays, then backward from the rendered colour (a training step
  without the optimiser).
* ``composite_fwd_bwd``: `rendering` of the ``march_grid`` samples from leaf tensors (densities
  and colours that need gradients), then backward: the compositing alone.

``--twin`` (CPU) also times every marching / compositing case on the PyTorch twins of the fused
kernels (``fieldstudio.kernels.render_kernels``), interleaved with the fused runs, and reports
the ratio of the medians (``<case> [twin]``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

C.ensure_fieldstudio()

import torch  # noqa: E402

import fieldstudio.renderers.volume as vol  # noqa: E402
from fieldstudio.fields.radiance import NGPRadianceField  # noqa: E402
from fieldstudio.kernels import render_kernel_status  # noqa: E402
from fieldstudio.renderers.occupancy import OccupancyGrid  # noqa: E402
from fieldstudio.renderers.volume import march, rendering  # noqa: E402

UNIT = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    ap.add_argument("--twin", action="store_true", help="also time the PyTorch twins of the fused CPU kernels")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    machine = C.machine_info(dev)
    torch.manual_seed(0)

    centres = torch.tensor([[0.35, 0.4, 0.5], [0.65, 0.55, 0.45], [0.5, 0.7, 0.7]], device=dev)
    radii = torch.tensor([0.18, 0.15, 0.1], device=dev)
    colours = torch.tensor([[1.0, 0.2, 0.1], [0.1, 1.0, 0.2], [0.2, 0.3, 1.0]], device=dev)

    def blobs(x):
        return ((radii - (x.unsqueeze(1) - centres).norm(dim=-1)) / 0.01).clamp(0, 1) * 60.0

    res = 64
    u = (torch.arange(res, device=dev) + 0.5) / res
    gy, gx = torch.meshgrid(u, u, indexing="ij")
    target = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.ones(res * res, device=dev)], dim=-1)
    o = torch.tensor([0.5, 0.5, -1.0], device=dev).expand(res * res, 3).contiguous()
    d = torch.nn.functional.normalize(target - o, dim=-1)
    n_rays = o.shape[0]
    dt = math.sqrt(3) / 1024
    grid = OccupancyGrid(UNIT, 128).to(dev)
    for step in range(0, 256, 16):
        grid.update(step, lambda x: blobs(x).sum(-1) * dt)

    def pts(ts, te, ri):
        return o[ri] + d[ri] * ((ts + te) * 0.5).unsqueeze(-1)

    def sigma_fn(ts, te, ri):
        return blobs(pts(ts, te, ri)).sum(-1)

    def rgb_sigma_fn(ts, te, ri):
        w = blobs(pts(ts, te, ri))
        s = w.sum(-1)
        return (w @ colours) / s.clamp_min(1e-6).unsqueeze(-1), s

    be = args.backend
    samples = {}

    def run_march(name, **kw):
        def fn():
            samples[name] = march(o, d, render_step_size=dt, backend=be, **kw)
        return fn

    bkgd = torch.ones(3, device=dev)

    def render():
        ri, ts, te = samples["march_grid_early_stop"]
        return rendering(ts, te, ri, n_rays, rgb_sigma_fn, render_bkgd=bkgd, backend=be)

    def march_and_render():
        ri, ts, te = march(o, d, grid=grid, render_step_size=dt, sigma_fn=sigma_fn, backend=be)
        return rendering(ts, te, ri, n_rays, rgb_sigma_fn, render_bkgd=bkgd, backend=be)

    def composite_fwd_bwd():
        ri, ts, te = samples["march_grid"]
        gen = torch.Generator(device="cpu").manual_seed(1)
        sig = (torch.rand(ri.shape[0], generator=gen) * 50).to(dev).requires_grad_(True)
        rgb = torch.rand(ri.shape[0], 3, generator=gen).to(dev).requires_grad_(True)
        c, op, dep, _ = rendering(ts, te, ri, n_rays, lambda *a: (rgb, sig), render_bkgd=bkgd, backend=be)
        (c.sum() + dep.sum()).backward()

    def on_twin(fn):
        def twin_fn():
            saved, vol.render_kernels = vol.render_kernels, lambda: None
            try:
                return fn()
            finally:
                vol.render_kernels = saved
        return twin_fn

    def with_twins(cases):
        if not args.twin:
            return cases
        return {k: v for name, fn in cases.items() for k, v in ((name, fn), (f"{name} [twin]", on_twin(fn)))}

    cases = {
        "march_dense": run_march("march_dense", aabb=UNIT, early_stop_eps=0.0),
        "march_grid": run_march("march_grid", grid=grid, early_stop_eps=0.0),
        "march_grid_early_stop": run_march("march_grid_early_stop", grid=grid, sigma_fn=sigma_fn),
    }
    times = C.time_steps(with_twins(cases), args.repeats, 1, dev)
    times.update(C.time_steps(with_twins({"rendering": render, "march_and_render": march_and_render,
                                          "composite_fwd_bwd": composite_fwd_bwd}), args.repeats, 1, dev))

    field = NGPRadianceField().to(dev)
    xs = torch.rand(1 << 16, 3, device=dev)
    ds = torch.nn.functional.normalize(torch.randn(1 << 16, 3, device=dev), dim=-1)

    def ngp_step():
        rgb, sigma = field(xs, ds)
        (rgb.sum() + sigma.sum()).backward()

    rays_sub = slice(0, n_rays, 4)  # 1024 rays, a strided subset covering the image
    o2, d2 = o[rays_sub].contiguous(), d[rays_sub].contiguous()
    counted = {}

    def ngp_render_step():
        def p2(ts, te, ri):
            return o2[ri] + d2[ri] * ((ts + te) * 0.5).unsqueeze(-1)

        ri, ts, te = march(o2, d2, grid=grid, render_step_size=dt,
                           sigma_fn=lambda ts, te, ri: field.density(p2(ts, te, ri)), backend=be)
        counted["samples"] = ri.numel()
        rgb, opacity, depth, _ = rendering(ts, te, ri, o2.shape[0], lambda ts, te, ri: field(p2(ts, te, ri), d2[ri]),
                                           render_bkgd=bkgd, backend=be)
        rgb.sum().backward()

    times.update(C.time_steps({"ngp_forward_backward_65536": ngp_step, "ngp_render_step": ngp_render_step},
                              args.repeats, 1, dev))

    n_samples = {k: int(v[0].numel()) for k, v in samples.items()}
    rows, results = [], {}
    for name, ts in times.items():
        sec = C.median(ts)
        rays = 1024 if name == "ngp_render_step" else (None if name.startswith("ngp_forward") else n_rays)
        entry = {"seconds": sec, "repeats": len(ts)}
        if rays:
            entry["rays_per_second"] = rays / sec
        if name.startswith("ngp_forward"):
            entry["samples_per_second"] = (1 << 16) / sec
        if name in n_samples:
            entry["samples"] = n_samples[name]
        if name == "ngp_render_step":
            entry["samples"] = counted.get("samples")
        results[name] = entry
        if name.endswith(" [twin]") and name[:-7] in results:
            entry["fused_speedup"] = sec / results[name[:-7]]["seconds"]
        rows.append([name, f"{sec * 1e3:.1f} ms", f"{entry.get('rays_per_second', 0):,.0f}", str(entry.get("samples", "")),
                     f"{entry['fused_speedup']:.2f}x" if "fused_speedup" in entry else ""])
    print(f"device {dev}, threads {torch.get_num_threads()}, backend {be}, occupied cells "
          f"{grid.occupied_fraction():.1%}, load {machine.get('load_average_1_5_15min')}")
    print(C.fmt_table(["case", "median", "rays/s", "samples", "fused kernel speed-up"], rows))
    if args.out:
        C.write_json(args.out, {"benchmark": "renderer", "backend": be, "n_rays": n_rays, "step": dt,
                                "render_kernels": render_kernel_status()[1],
                                "grid_resolution": 128, "occupied_fraction": grid.occupied_fraction(),
                                "results": results}, dev, machine)


if __name__ == "__main__":
    main()
