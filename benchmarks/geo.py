"""Location-encoding benchmark: every encoder x network on land/ocean (classification) and volcano
elevation (regression), as in Rußwurm et al. (ICLR 2024), Table 1.

    python benchmarks/geo.py [--data ../shared/data] [--seeds 3] [--steps 1000] [--threads 1]
                             [--hparams paper|shared] [--datasets landocean,volcano_elevation]
                             [--encoders ...] [--networks ...] [--tune-wd WD,WD,...]
                             [--out benchmarks/results] [--quick]

Data (from ``../shared/data``; without it the script says so in one line and exits 0):

* ``geo_landocean/landocean_seed0.csv``: the paper's 5,000 points uniform on the sphere labelled
  land / ocean by Natural Earth 1:110m polygons (1,398 land). Metric: accuracy (and cross-entropy).
* ``geo_volcanoes/volcano_db.csv``: 1,571 volcanoes; target ``Elev`` (metres; 13 blank rows are
  skipped, 1,558 used). Metric: RMSE (metres) and R^2.

Protocol: for each seed s, a random 80 / 20 split (seed s) into training and held-out points,
network init seed s, then ``--steps`` Adam steps with batches of 2000 points (the paper's batch
size: 2 steps per epoch on land/ocean, full batch on volcanoes), and the scores of the final model
on the held-out 20 %. No early stopping or model selection (the held-out points are never used
for choices). Mean +- standard deviation over the seeds. Every fit goes through
`fieldstudio.apps.fit_geo.fit_geo` (the code behind ``fieldstudio fit geo``).

Hyper-parameters (``--hparams``):

* ``paper`` (default): for every encoder x network pair, the values tuned by the paper's authors
  for land/ocean (``hparams.yaml`` of MarcCoru/locationencoder: learning rate, weight decay,
  hidden width and depth, L, frequency_num, min_radius), used for both data sets (the paper has no
  tuned values for volcano elevation). Radii are converted to radians (see
  ``fieldstudio/encoders/geo.py`` on the paper's missing degree->radian conversion), so the
  features equal the paper's. The paper trains up to 500 epochs with early stopping; here the step
  budget is fixed.
* ``shared``: one setting for all: L = 10, 16 scales, 64 x 2 hidden, lr 1e-3, no weight decay.

``--tune-wd 0,1e-3,1e-2`` (an investigation mode, off by default): for every pair, the weight
decay is chosen from the list by the mean score over seeds on an inner validation split (25 % of
each seed's training points, never the held-out ones), then the held-out fits use it. The
paper's weight decays were tuned for land/ocean; volcano elevation (1,246 training points, a
noisy target) is dominated by over-fitting, so its ranking depends on this regularisation.

Encoders: sh, direct, wrap, grid, theory, spherec+, cartesian3d. Networks: siren (omega_0 = 30 on
the first layer, 1 after it, as in the paper's code), mlp (ReLU, with biases), linear.

Written to OUT: ``geo.json`` (settings, machine, every fit, means and the SH+SIREN verdict),
``geo.png`` (bar charts with the seed standard deviation) and ``geo_maps/`` (land/ocean
predictions of every encoder with SIREN, seed 0). ``--quick`` (2 encoders x 3 networks, 1 seed,
100 steps) writes to ``OUT/geo_quick``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DEFAULT_DATA = C.REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUT = C.REPO_ROOT / "benchmarks" / "results"
ENCODERS = ("sh", "direct", "wrap", "grid", "theory", "spherec+", "cartesian3d")
NETWORKS = ("siren", "mlp", "linear")
BATCH = 2000

# hparams.yaml (MarcCoru/locationencoder), "landoceandataset": lr, wd, hidden, layers and the
# encoder's own settings per pair. Radii are the paper's, i.e. in degrees (converted below).
_PAPER = {
    ("direct", "linear"): dict(lr=0.0265847155325488, wd=0.1858733703347651),
    ("direct", "mlp"): dict(hidden=128, layers=3, lr=0.0035558563048427, wd=2.0958744260383424e-05),
    ("direct", "siren"): dict(hidden=128, layers=2, lr=0.0001725277183529, wd=0.0001090817845892),
    ("cartesian3d", "linear"): dict(lr=0.0003, wd=4.0e-05),
    ("cartesian3d", "mlp"): dict(hidden=96, layers=2, lr=0.0005306961036125, wd=3.328140604442639e-06),
    ("cartesian3d", "siren"): dict(hidden=32, layers=2, lr=0.0012740213611169, wd=0.0285902893156072),
    ("sh", "linear"): dict(L=20, lr=0.0010349759437545, wd=0.0004079629041632),
    ("sh", "mlp"): dict(L=15, hidden=64, layers=2, lr=0.0002552750718501, wd=0.0076563901899422),
    ("sh", "siren"): dict(L=10, hidden=64, layers=2, lr=0.0001421671897373, wd=0.0036709986823345),
    ("theory", "linear"): dict(min_radius=1, fn=32, lr=0.0135095110064387, wd=4.0889217403681565e-05),
    ("theory", "mlp"): dict(min_radius=10, fn=16, hidden=96, layers=1, lr=0.0012361255318711, wd=0.0009363775521204),
    ("theory", "siren"): dict(min_radius=10, fn=48, hidden=96, layers=2, lr=0.0001004821525198, wd=0.0022026749564627),
    ("grid", "linear"): dict(min_radius=1, fn=64, lr=0.0020783920661973, wd=1.0054739949133692e-08),
    ("grid", "mlp"): dict(min_radius=10, fn=32, hidden=96, layers=1, lr=0.0050218436457857, wd=0.0017379670084103),
    ("grid", "siren"): dict(min_radius=10, fn=16, hidden=96, layers=2, lr=0.0001200008856403, wd=0.0002689034415994),
    ("spherec+", "linear"): dict(min_radius=1, fn=64, lr=0.0050330956661103, wd=0.0049597380852616),
    ("spherec+", "mlp"): dict(min_radius=10, fn=16, hidden=128, layers=1, lr=0.002785325558348, wd=9.77950621702066e-07),
    ("spherec+", "siren"): dict(min_radius=10, fn=16, hidden=96, layers=3, lr=0.0001647981369387, wd=0.0009302760295749),
    ("wrap", "linear"): dict(lr=0.0573443293176404, wd=5.239147536568486e-05),
    ("wrap", "mlp"): dict(hidden=96, layers=2, lr=0.0197475512304471, wd=4.4558885812237795e-08),
    ("wrap", "siren"): dict(hidden=64, layers=3, lr=0.0005893623455571, wd=0.0003864940630778),
}
_SHARED = dict(L=10, fn=16, min_radius=10, hidden=64, layers=2, lr=1e-3, wd=0.0)
_OTYPES = {"sh": "SphericalHarmonicsGeo", "direct": "GeoDirect", "wrap": "GeoWrap", "grid": "GeoGrid",
           "theory": "GeoTheory", "spherec+": "GeoSphereCPlus", "cartesian3d": "GeoCartesian3D"}


def settings(encoder: str, network: str, which: str) -> dict[str, Any]:
    """Encoding config and training settings of one pair."""
    h = dict(_SHARED) if which == "shared" else {**{"hidden": 64, "layers": 2}, **_PAPER[(encoder, network)]}
    enc: dict[str, Any] = {"otype": _OTYPES[encoder]}
    if encoder == "sh":
        enc["legendre_polys"] = h.get("L", 10)
    elif encoder in ("grid", "theory", "spherec+"):
        # the paper's radii act on degrees; in radians they are r * pi / 180 (same features)
        enc.update(frequency_num=h.get("fn", 16), min_radius=math.radians(h.get("min_radius", 10)),
                   max_radius=math.radians(360.0))
    return {"encoding": enc, "hidden": h["hidden"], "layers": h["layers"], "lr": h["lr"], "weight_decay": h["wd"]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000, help="Adam steps per fit (batches of 2000 points)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these small fits)")
    p.add_argument("--hparams", choices=("paper", "shared"), default="paper")
    p.add_argument("--encoders", default=",".join(ENCODERS))
    p.add_argument("--networks", default=",".join(NETWORKS))
    p.add_argument("--datasets", default="landocean,volcano_elevation")
    p.add_argument("--tune-wd", default=None, metavar="WD,WD,...",
                   help="choose the weight decay of every pair among these, by the mean score over seeds on an "
                        "inner validation split (25 %% of each seed's training points); the held-out points stay unseen")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="2 encoders, 1 seed, 100 steps (development)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.encoders = 1, 100, "sh,wrap"
    if args.out is None:
        args.out = DEFAULT_OUT / "geo_quick" if args.quick else DEFAULT_OUT
    return args


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def verdict(summary: dict[str, dict[str, Any]], metric: str, n: int, fits: list[dict[str, Any]]) -> dict[str, Any]:
    """Is SH + SIREN the best pair, or within noise of the best?

    Every pair sees the same split and init seed per seed, so the comparison is paired: the
    per-seed differences ``best - sh+siren`` have mean ``d`` and standard deviation ``s_d``, and
    SH + SIREN is "within noise" when ``d <= 2 s_d / sqrt(n)`` (about a one-sided paired t-test at
    the few seeds used; loose by design, so the table should be read with it).
    """
    key = "sh+siren"
    if key not in summary:
        return {}
    best = max(summary, key=lambda k: summary[k][metric]["mean"])
    per_seed = {}
    for f in fits:
        per_seed.setdefault(f"{f['encoder']}+{f['network']}", {})[f["seed"]] = f[metric]
    diffs = [per_seed[best][s] - per_seed[key][s] for s in sorted(per_seed[key])]
    d = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    rank = sorted(summary, key=lambda k: -summary[k][metric]["mean"]).index(key) + 1
    return {"metric": metric, "best": best, "best_mean": summary[best][metric]["mean"],
            "sh_siren_mean": summary[key][metric]["mean"], "sh_siren_rank": rank, "n_pairs": len(summary),
            "paired_differences": diffs, "difference": d, "two_standard_errors": 2 * sd / math.sqrt(max(n, 1)),
            "sh_siren_best_or_within_noise": bool(best == key or d <= 2 * sd / math.sqrt(max(n, 1)))}


def main(argv=None) -> int:
    args = parse_args(argv)
    land = args.data / "geo_landocean" / "landocean_seed0.csv"
    volc = args.data / "geo_volcanoes" / "volcano_db.csv"
    if not land.exists() or not volc.exists():
        print(f"geo benchmark skipped: {land} or {volc} not found (the shared data folder is not here)")
        return 0
    C.ensure_fieldstudio()
    import torch

    from fieldstudio.apps.fit_geo import fit_geo, split_indices
    from fieldstudio.datasets.geo_points import load_points

    torch.set_num_threads(args.threads)
    machine = C.machine_info(args.device)
    encoders = [e for e in args.encoders.split(",") if e]
    networks = [n for n in args.networks.split(",") if n]
    datasets = {
        "landocean": dict(data=str(land), lon="lon", lat="lat", target="land", task="classify"),
        "volcano_elevation": dict(data=str(volc), lon="Longitude", lat="Latitude", target="Elev", task="regress"),
    }
    datasets = {k: v for k, v in datasets.items() if k in args.datasets.split(",")}
    metric_of = {"landocean": ("accuracy", "cross_entropy"), "volcano_elevation": ("r2", "rmse")}
    args.out.mkdir(parents=True, exist_ok=True)
    maps = args.out / "geo_maps"
    fits: list[dict[str, Any]] = []
    tuning: dict[str, Any] = {}
    wd_grid = [float(w) for w in args.tune_wd.split(",")] if args.tune_wd else None
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="geo_bench_") as tmp:
        for dname, dkw in datasets.items():
            if wd_grid:
                # each seed's training points (the split fit_geo makes) as a file of their own
                pts = load_points(dkw["data"], lon=dkw["lon"], lat=dkw["lat"], target=dkw["target"], task=dkw["task"])
                for seed in range(args.seeds):
                    tr, _ = split_indices(len(pts), 0.2, seed)
                    rows = "".join(f"{float(pts.lonlat[i, 0])!r},{float(pts.lonlat[i, 1])!r},{pts.target[i]}\n" for i in tr)
                    (Path(tmp) / f"{dname}_train_{seed}.csv").write_text("lon,lat,y\n" + rows)
            for enc in encoders:
                for net in networks:
                    s = settings(enc, net, args.hparams)
                    if wd_grid:
                        a = metric_of[dname][0]
                        inner = {}
                        for wd in wd_grid:
                            sc = []
                            for seed in range(args.seeds):
                                m = fit_geo(str(Path(tmp) / f"{dname}_train_{seed}.csv"), target="y", task=dkw["task"],
                                            encoder=s["encoding"], network=net, hidden=s["hidden"], layers=s["layers"],
                                            lr=s["lr"], weight_decay=wd, steps=args.steps, batch_size=BATCH,
                                            seed=100 + seed, val_fraction=0.25, out=Path(tmp) / f"inner_{dname}_{enc}_{net}_{wd}_{seed}",
                                            device=args.device, progress=False, checkpoint_every=10 ** 9, write_map=False)
                                sc.append(m[a])
                            inner[wd] = statistics.fmean(sc)
                        chosen = max(wd_grid, key=lambda w: inner[w])
                        tuning[f"{dname}/{enc}+{net}"] = {"paper_weight_decay": s["weight_decay"], "chosen": chosen,
                                                          "inner_validation": {str(k): v for k, v in inner.items()}}
                        print(f"{dname:18s} {enc:12s} {net:7s} weight decay {chosen:g} "
                              f"(inner {a} {inner[chosen]:.4f}; paper value {s['weight_decay']:.3g})", flush=True)
                        s = {**s, "weight_decay": chosen}
                    for seed in range(args.seeds):
                        run_dir = Path(tmp) / f"{dname}_{enc}_{net}_{seed}"
                        draw = dname == "landocean" and net == "siren" and seed == 0
                        m = fit_geo(**dkw, encoder=s["encoding"], network=net, hidden=s["hidden"],
                                    layers=s["layers"], lr=s["lr"], weight_decay=s["weight_decay"], steps=args.steps,
                                    batch_size=BATCH, seed=seed, out=run_dir, device=args.device, progress=False,
                                    checkpoint_every=10 ** 9, write_map=draw)
                        if draw:
                            maps.mkdir(parents=True, exist_ok=True)
                            shutil.copyfile(run_dir / "map.png", maps / f"landocean_{enc.replace('+', 'plus')}_siren.png")
                        rec = {"dataset": dname, "encoder": enc, "network": net, "seed": seed,
                               **{k: m[k] for k in (*metric_of[dname], "params", "steps", "seconds")},
                               "train": {k: m["train"][k] for k in metric_of[dname]}, "settings": s}
                        fits.append(rec)
                        a, b = metric_of[dname]
                        print(f"{dname:18s} {enc:12s} {net:7s} seed {seed}: {a} {m[a]:.4f}  {b} {m[b]:.4g}  "
                              f"({m['seconds']:.1f} s)", flush=True)
    total = time.perf_counter() - t_all

    summary: dict[str, dict[str, Any]] = {}
    verdicts = {}
    tables = []
    for dname in datasets:
        a, b = metric_of[dname]
        summ: dict[str, Any] = {}
        for enc in encoders:
            for net in networks:
                rs = [f for f in fits if f["dataset"] == dname and f["encoder"] == enc and f["network"] == net]
                ma, sa = mean_std([r[a] for r in rs])
                mb, sb = mean_std([r[b] for r in rs])
                summ[f"{enc}+{net}"] = {a: {"mean": ma, "std": sa}, b: {"mean": mb, "std": sb},
                                        "params": rs[0]["params"], "seconds_mean": statistics.fmean(r["seconds"] for r in rs)}
        summary[dname] = summ
        verdicts[dname] = verdict(summ, a, args.seeds, [f for f in fits if f["dataset"] == dname])
        rows = []
        for enc in encoders:
            row = [enc]
            for net in networks:
                v = summ[f"{enc}+{net}"]
                row.append(f"{100 * v[a]['mean']:.2f} +- {100 * v[a]['std']:.2f}" if a == "accuracy"
                           else f"{v[a]['mean']:.3f} +- {v[a]['std']:.3f} ({v[b]['mean']:.0f} m)")
            rows.append(row)
        title = ("land/ocean: held-out accuracy (%)" if dname == "landocean"
                 else "volcano elevation: held-out R^2 (RMSE)")
        tables.append(f"{title}, mean +- std over {args.seeds} seed(s), {args.steps} steps\n"
                      + C.fmt_table(["encoder", *networks], rows))
    text = "\n\n".join(tables)
    print("\n" + text)
    for dname, v in verdicts.items():
        if v:
            print(f"{dname}: best {v['best']} ({v['best_mean']:.4f}); sh+siren {v['sh_siren_mean']:.4f}, rank "
                  f"{v['sh_siren_rank']} of {v['n_pairs']}, paired difference {v['difference']:.4f} vs 2 s.e. "
                  f"{v['two_standard_errors']:.4f} "
                  f"-> best or within noise: {v['sh_siren_best_or_within_noise']}")
    print(f"total {total:.0f} s")

    payload = {"settings": {"seeds": args.seeds, "steps": args.steps, "batch_size": BATCH, "hparams": args.hparams,
                            "tune_weight_decay": wd_grid,
                            "threads": args.threads, "split": "random 80/20 per seed", "encoders": encoders,
                            "networks": networks, "data": str(args.data)},
               "seconds_total": round(total, 1), "summary": summary, "verdicts": verdicts, "table": text,
               "tuning": tuning,
               "fits": fits}
    C.write_json(args.out / "geo.json", payload, args.device, machine)
    _plot(args.out / "geo.png", summary, encoders, networks, metric_of, args)
    print(f"wrote {args.out / 'geo.json'} and {args.out / 'geo.png'}")
    return 0


def _plot(path: Path, summary, encoders, networks, metric_of, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    colors = {"siren": "tab:red", "mlp": "tab:blue", "linear": "tab:gray"}
    for ax, dname in zip(axes, summary):
        a = metric_of[dname][0]
        x = np.arange(len(encoders))
        w = 0.8 / len(networks)
        for i, net in enumerate(networks):
            mean = [summary[dname][f"{e}+{net}"][a]["mean"] for e in encoders]
            std = [summary[dname][f"{e}+{net}"][a]["std"] for e in encoders]
            ax.bar(x + (i - (len(networks) - 1) / 2) * w, mean, w, yerr=std, capsize=2, label=net, color=colors.get(net))
        ax.set_xticks(x)
        ax.set_xticklabels(encoders, fontsize=8)
        vals = [summary[dname][k][a]["mean"] for k in summary[dname]]
        tops = [v[a]["mean"] + v[a]["std"] for v in summary[dname].values()]
        lo = max(0.0, min(vals) - 0.05) if a == "accuracy" else min(0.0, min(vals))
        ax.set_ylim(lo, 1.0 if a == "accuracy" else max(tops) + 0.03)
        ax.set_ylabel("held-out accuracy" if a == "accuracy" else "held-out R^2")
        ax.set_title(f"{dname} ({args.seeds} seeds, {args.steps} steps, {args.hparams} hparams)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
