"""NeuRBF benchmark: iso-parameter image fits against the hash grid, the sinusoid ablation, speed and init cost.

    python benchmarks/neurbf.py [--data ../shared/data] [--images kodim03,...] [--crop 256] [--steps 150]
                                [--methods hashgrid,neurbf,neurbf-nosine] [--parts fits,speed,init,sdf]
                                [--sdf-steps 300] [--meshes spot,fandisk] [--out benchmarks/results/neurbf]
                                [--quick]

Parts (``--parts``, all by default):

* ``fits``: every Kodak photo x method is fitted by `fit_image` (the code behind ``fieldstudio
  fit image``) with the method's preset and default learning rate, the same steps, batch and
  crop for all. ``neurbf`` and ``neurbf-nosine`` (both sinusoidal compositions off) take the
  kernel count that makes their parameter count equal the hashgrid preset's on that image size,
  and the hashgrid preset's 2 x 64 MLP (with biases). Reported: full-image PSNR / SSIM, params,
  training seconds, the kernel placement time.
* ``speed``: forward + backward of a 65,536-point batch through each field sized for a full
  768 x 512 photo (kernels placed on kodim05), median of 5 after 2 warm-ups, and the ratio.
* ``init``: kernel placement in a fresh process each: a 768 x 512 photo (Sobel weights, the
  photo's iso-parameter kernel count) and 2M SDF samples (1 / (|sdf| + 1e-4) weights around a
  sphere, the SDF preset's kernel count); seconds and peak memory (VmHWM) over the placement.
* ``sdf``: `fit_sdf` on spot and fandisk for the hash grid at the NeuRBF SDF preset's reference
  size (2^15 table, as the official configs) and for the NeuRBF SDF preset, same steps; IoU,
  Chamfer-L1, normal consistency, params, seconds.

Timings are wall clock on whatever else the machine runs (the load averages are recorded).
Writes ``OUT/neurbf.json`` and ``OUT/neurbf.png`` (PSNR per photo and method) and prints tables.
Without the shared data the script says so in one line and exits 0. ``--quick``: 2 photos,
96 px crop, 20 steps, SDF on spot with 20 steps.
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
DEFAULT_OUT = C.REPO_ROOT / "benchmarks" / "results" / "neurbf"
METHODS = "hashgrid,neurbf,neurbf-nosine"
MESHES = {"spot": "mesh_spot/spot.obj", "fandisk": "mesh_fandisk/fandisk.obj"}
COLORS = {"hashgrid": "tab:blue", "neurbf": "tab:red", "neurbf-nosine": "tab:orange"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--images", default=None, help="comma-separated photo names (default: all in photos_kodak)")
    p.add_argument("--crop", type=int, default=256, help="centre crop N x N (0: full photo); default 256")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=1 << 16)
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--parts", default="fits,speed,init,sdf")
    p.add_argument("--sdf-steps", type=int, default=300)
    p.add_argument("--meshes", default="spot,fandisk")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--init-probe", choices=("image", "sdf"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.crop, args.steps, args.sdf_steps, args.meshes = 96, 20, 20, "spot"
    return args


# --- parts ------------------------------------------------------------------------------------

def run_fits(args, photos: list[Path], methods: list[str]) -> dict[str, Any]:
    from fieldstudio.apps.fit_image import fit_image

    per_image: dict[str, dict[str, Any]] = {}
    for photo in photos:
        per_image[photo.stem] = {}
        for method in methods:
            out = args.out / "runs" / photo.stem / method
            shutil.rmtree(out, ignore_errors=True)
            m = fit_image(str(photo), encoder=method, steps=args.steps, out=out, crop=args.crop or None,
                          batch_size=args.batch_size, progress=False, device="cpu")
            row = {k: m[k] for k in ("psnr", "ssim", "params", "seconds", "seconds_total")}
            if "kernel_init" in m:
                row["kernel_init"] = m["kernel_init"]
            row["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
            per_image[photo.stem][method] = row
            print(f"  {photo.stem:8s} {method:14s} PSNR {m['psnr']:6.2f} dB  SSIM {m['ssim']:.4f}  "
                  f"{m['params']:,} params  {m['seconds']:.0f} s", flush=True)
    mean = {}
    for method in methods:
        rows = [per_image[p][method] for p in per_image]
        mean[method] = {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in ("psnr", "ssim", "seconds")}
        mean[method]["params"] = [r["params"] for r in rows]
    return {"per_image": per_image, "mean": mean}


def _full_photo_fields(photo: Path, methods: list[str]):
    import numpy as np  # noqa: F401
    import torch

    from fieldstudio.apps.fit_image import initialize_kernels
    from fieldstudio.datasets.images import drop_alpha, load_image
    from fieldstudio.fields.image import ImageField, image_field_preset

    img = drop_alpha(load_image(str(photo)))
    h, w, c = img.shape
    fields = {}
    for method in methods:
        torch.manual_seed(0)
        fld = ImageField(image_field_preset(method, c, (h, w)), backend="torch")
        initialize_kernels(fld, img)
        fields[method] = fld
    return img, fields


def run_speed(args, photo: Path, methods: list[str]) -> dict[str, Any]:
    import torch

    _, fields = _full_photo_fields(photo, methods)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 2, generator=gen)
    y = torch.rand(args.batch_size, 3, generator=gen)

    def step(fld):
        def fn():
            fld.zero_grad(set_to_none=True)
            loss = ((fld(x) - y) ** 2).mean()
            loss.backward()
        return fn

    times = C.time_steps({m: step(f) for m, f in fields.items()}, repeats=5, warmup=2, device="cpu")
    out = {m: {"median_seconds": round(C.median(t), 4), "points_per_second": round(args.batch_size / C.median(t)),
               "repeats": [round(v, 4) for v in t], "params": sum(p.numel() for p in fields[m].parameters())}
           for m, t in times.items()}
    if "hashgrid" in out:
        for m in out:
            out[m]["time_vs_hashgrid"] = round(out[m]["median_seconds"] / out["hashgrid"]["median_seconds"], 3)
    return {"photo": photo.stem, "batch": args.batch_size, "threads": torch.get_num_threads(), "fields": out}


def init_probe(kind: str, data: Path) -> dict[str, Any]:
    """Runs in a fresh process: placement seconds and peak memory of one initialisation."""
    import numpy as np
    import torch

    if kind == "image":
        from fieldstudio.apps.fit_image import initialize_kernels
        from fieldstudio.datasets.images import drop_alpha, load_image
        from fieldstudio.fields.image import ImageField, image_field_preset

        img = drop_alpha(load_image(str(data / "photos_kodak" / "kodim05.png")))
        fld = ImageField(image_field_preset("neurbf", img.shape[2], img.shape[:2]), backend="torch")
        box: dict[str, Any] = {}
        t = time.perf_counter()
        mem = C.cpu_step_memory(lambda: box.update(initialize_kernels(fld, img)))
        return {"what": f"768x512 photo ({img.shape[0] * img.shape[1]} weighted pixels)",
                "n_kernels": fld.encoding.n_kernels, "seconds": round(time.perf_counter() - t, 3), **box,
                "peak_bytes_over_start": mem["step_peak_bytes"], "memory_method": mem["method"]}
    from fieldstudio.encoders.rbf_init import surface_weights
    from fieldstudio.fields.sdf import SDFField, sdf_field_preset

    torch.manual_seed(0)
    fld = SDFField(sdf_field_preset("neurbf"), backend="torch")
    rng = np.random.default_rng(0)
    n = 2_000_000
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = 0.3 + rng.normal(scale=0.02, size=(n, 1)) * (rng.random((n, 1)) < 0.75)
    pts = 0.5 + d * r
    sdf = r[:, 0] - 0.3
    box = {}
    t = time.perf_counter()
    mem = C.cpu_step_memory(lambda: box.update(fld.encoding.initialize(pts, surface_weights(sdf),
                                                                       min_width=1 / 1024 / 200, max_width=0.1)))
    return {"what": f"{n} SDF samples around a sphere (3D)", "n_kernels": fld.encoding.n_kernels,
            "seconds": round(time.perf_counter() - t, 3), **box,
            "peak_bytes_over_start": mem["step_peak_bytes"], "memory_method": mem["method"]}


def run_init(args) -> dict[str, Any]:
    res = {}
    for kind in ("image", "sdf"):
        env = {**os.environ, **C.CPU_MEMORY_ENV}
        proc = subprocess.run([sys.executable, __file__, "--init-probe", kind, "--data", str(args.data)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            res[kind] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
        else:
            res[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = res[kind]
        print(f"  init {kind}: {r.get('seconds')} s, peak {r.get('peak_bytes_over_start', 0) / 2**30:.2f} GiB, "
              f"{r.get('n_kernels')} kernels", flush=True)
    return res


def run_sdf(args) -> dict[str, Any]:
    from fieldstudio.apps.fit_sdf import fit_sdf
    from fieldstudio.fields.sdf import sdf_field_preset

    ref = sdf_field_preset("hashgrid")
    ref["encoding"]["log2_hashmap_size"] = 15
    ref["learning_rate"] = 1e-2
    args.out.mkdir(parents=True, exist_ok=True)
    ref_file = args.out / "hashgrid_2e15.json"
    ref_file.write_text(json.dumps(ref))
    methods = {"hashgrid (2^15)": str(ref_file), "neurbf": "neurbf"}
    rows: dict[str, dict[str, Any]] = {}
    for mesh in [m for m in args.meshes.split(",") if m]:
        rows[mesh] = {}
        for name, enc in methods.items():
            out = args.out / "sdf_runs" / mesh / name.split()[0]
            shutil.rmtree(out, ignore_errors=True)
            m = fit_sdf(str(args.data / MESHES[mesh]), encoder=enc, steps=args.sdf_steps, out=out, progress=False,
                        device="cpu")
            rows[mesh][name] = {k: m.get(k) for k in ("iou", "chamfer_l1", "normal_consistency", "f_score@0.005",
                                                      "params", "steps", "seconds", "seconds_total", "kernel_init")}
            print(f"  {mesh:8s} {name:16s} IoU {m['iou']:.4f}  Chamfer-L1 {m['chamfer_l1']:.2e}  "
                  f"{m['params']:,} params  {m['seconds']:.0f} s", flush=True)
    return {"steps": args.sdf_steps, "per_mesh": rows,
            "note": "hashgrid (2^15) is the hashgrid preset with a 2^15 table: the reference size whose parameter "
                    "count the NeuRBF SDF preset matches (official configs use the same reference)"}


def plot(path: Path, fits: dict[str, Any], methods: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(fits["per_image"])
    xs = np.arange(len(names))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.6))
    for i, m in enumerate(methods):
        ax.bar(xs + i * width, [fits["per_image"][n][m]["psnr"] for n in names], width,
               label=f"{m} (mean {fits['mean'][m]['psnr']:.2f} dB)", color=COLORS.get(m))
    ax.set_xticks(xs + width * (len(methods) - 1) / 2, names)
    ax.set_ylabel("PSNR (dB)")
    lo = min(fits["per_image"][n][m]["psnr"] for n in names for m in methods)
    ax.set_ylim(max(0, lo - 3), None)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    C.ensure_fieldstudio()
    if args.init_probe:
        print(json.dumps(init_probe(args.init_probe, args.data)))
        return 0
    kodak = args.data / "photos_kodak"
    if not kodak.is_dir():
        print(f"neurbf benchmark: no data at {kodak} (the shared photos are not in the repository); nothing to do")
        return 0
    photos = sorted(kodak.glob("*.png"))
    if args.images:
        wanted = args.images.split(",")
        photos = [p for p in photos if p.stem in wanted]
    elif args.quick:
        photos = photos[:2]
    methods = [m for m in args.methods.split(",") if m]
    parts = set(args.parts.split(","))
    machine = C.machine_info("cpu")
    t0 = time.perf_counter()
    doc: dict[str, Any] = {"benchmark": "neurbf", "settings": {
        "images": [p.stem for p in photos], "crop": args.crop, "steps": args.steps, "batch_size": args.batch_size,
        "methods": methods, "lr": "each preset's default (fieldstudio.fields.image.PRESET_LR)",
        "sdf_steps": args.sdf_steps, "meshes": args.meshes, "quick": args.quick,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}}
    args.out.mkdir(parents=True, exist_ok=True)
    if "fits" in parts:
        print(f"fits: {len(photos)} photos x {methods}, crop {args.crop}, {args.steps} steps", flush=True)
        doc["fits"] = run_fits(args, photos, methods)
        plot(args.out / "neurbf.png", doc["fits"], methods)
        C.write_json(args.out / "neurbf.json", doc, "cpu", machine)
    if "speed" in parts:
        print("speed: forward + backward, fields sized for a full photo", flush=True)
        doc["speed"] = run_speed(args, kodak / "kodim05.png", methods)
        C.write_json(args.out / "neurbf.json", doc, "cpu", machine)
    if "init" in parts:
        print("init: kernel placement, fresh processes", flush=True)
        doc["init"] = run_init(args)
        C.write_json(args.out / "neurbf.json", doc, "cpu", machine)
    if "sdf" in parts:
        print(f"sdf: {args.meshes}, {args.sdf_steps} steps", flush=True)
        doc["sdf"] = run_sdf(args)
    doc["wall_seconds"] = round(time.perf_counter() - t0, 1)
    doc["load_average_now"] = [round(v, 2) for v in os.getloadavg()]
    path = C.write_json(args.out / "neurbf.json", doc, "cpu", machine)
    if "fits" in doc:
        rows = [[m, f"{doc['fits']['mean'][m]['psnr']:.2f}", f"{doc['fits']['mean'][m]['ssim']:.4f}",
                 f"{doc['fits']['mean'][m]['seconds']:.0f}"] for m in methods]
        print(C.fmt_table(["method", "mean PSNR", "mean SSIM", "train s"], rows))
    if "speed" in doc:
        print(C.fmt_table(["method", "fwd+bwd s", "vs hashgrid"],
                          [[m, f"{r['median_seconds']:.3f}", str(r.get("time_vs_hashgrid", ""))]
                           for m, r in doc["speed"]["fields"].items()]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
