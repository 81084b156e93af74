"""Fit a location encoder + network to points on the globe: what ``fieldstudio fit geo`` runs.

The data is a CSV / GeoJSON of points with a label (``classify``) or a value (``regress``), or,
with no file, land/ocean labels of points drawn uniformly on the sphere from a mask bundled with
``global-land-mask`` (so the command works offline). The points are split into training and
validation sets by ``seed``; the run folder (see `fieldstudio.runs`) gets the usual config,
weights, history and log, plus

* ``metrics.json``: on the validation split, accuracy and cross-entropy (classify) or RMSE, MAE
  and R^2 in the target's units (regress), with the same numbers on the training split, the
  parameter count, steps and seconds;
* ``map.png``: the prediction on an equirectangular grid (one cell per degree by default) with
  the points drawn over it, coloured by their label / value.

Training uses the shared loop (`fieldstudio.apps.training.train`): checkpoints, ``resume`` and the
NaN guard. Adam as everywhere in fieldstudio (tcnn's betas 0.9 / 0.99); ``weight_decay`` is
Adam's L2 term on the network, as in the paper's code (the encoders have no parameters).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fieldstudio import __version__, runs
from fieldstudio.datasets.geo_points import (DEFAULT_N_POINTS, GeoPoints, encode_targets, infer_task,
                                             landocean_points, load_points)
from fieldstudio.device import pick_device
from fieldstudio.errors import ConfigError, InputError
from fieldstudio.fields.geo import (GEO_ENCODERS, GEO_NETWORKS, TASKS, GeoField, geo_encoding_preset,
                                    geo_network_preset)

from .config_files import read_encoder_file
from .training import TrainState, load_checkpoint, make_adam, train

#: the default map: one cell per degree
MAP_SIZE = (360, 180)


# --- data --------------------------------------------------------------------------------------

def _load(data: str | None, lon: str, lat: str, target: str | None, task: str | None, n_points: int) -> GeoPoints:
    if data is None:
        return landocean_points(n_points, seed=0)
    return load_points(data, lon=lon, lat=lat, target=target, task=task)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random (train, validation) split of ``range(n)`` fixed by ``seed``."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0:
        n_val = min(max(n_val, 1), n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def resolve_field_config(encoder: str | dict, network: str, *, L: int, frequency_num: int, hidden: int, layers: int
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(encoding, network) configs for CLI names, for a JSON file given as ``encoder``, or for an
    encoding config dict given as ``encoder``.

    The file may hold an encoding config (``{"otype": "SphericalHarmonicsGeo", ...}``) or both
    parts (``{"encoding": ..., "network": ...}``); a missing network comes from ``network``.
    """
    if network not in GEO_NETWORKS:
        raise ConfigError(f"unknown network '{network}'", f"use one of {', '.join(GEO_NETWORKS)}")
    net_cfg = geo_network_preset(network, hidden, layers)
    if isinstance(encoder, dict):  # an encoding config given directly (Python API)
        return dict(encoder), net_cfg
    key = encoder.lower()
    if key in GEO_ENCODERS:
        return geo_encoding_preset(key, L=L, frequency_num=frequency_num), net_cfg
    cfg = read_encoder_file(encoder, GEO_ENCODERS, example='{"otype": "SphericalHarmonicsGeo", "legendre_polys": 20}')
    if "encoding" in cfg:
        return cfg["encoding"], cfg.get("network", net_cfg)
    return cfg, net_cfg


# --- evaluation --------------------------------------------------------------------------------

@torch.no_grad()
def _raw(fld: GeoField, lonlat: np.ndarray, device, chunk: int = 1 << 15) -> torch.Tensor:
    fld.eval()
    outs = []
    for i in range(0, len(lonlat), chunk):
        x = torch.as_tensor(lonlat[i:i + chunk], dtype=torch.float32, device=device)
        outs.append(fld(x).float().cpu())
    fld.train()
    return torch.cat(outs) if outs else torch.zeros(0, fld.n_outputs)


def evaluate(fld: GeoField, lonlat: np.ndarray, y: np.ndarray, device) -> dict[str, float]:
    """Accuracy and cross-entropy (nats) or RMSE, MAE and R^2 (target units) of ``fld`` on the points."""
    if len(y) == 0:
        return {}
    raw = _raw(fld, lonlat, device)
    if fld.task == "classify":
        t = torch.as_tensor(y)
        if raw.shape[1] == 1:
            ce = F.binary_cross_entropy_with_logits(raw[:, 0], t.float()).item()
            pred = (raw[:, 0] > 0).long()
        else:
            ce = F.cross_entropy(raw, t).item()
            pred = raw.argmax(1)
        counts = np.bincount(y, minlength=len(fld.classes))
        return {"accuracy": float((pred == t).float().mean()), "cross_entropy": ce,
                "majority_accuracy": float(counts.max() / counts.sum())}
    pred = fld.to_units(raw).double().numpy()
    err = pred - y
    ss_res = float(np.sum(err ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")}


def map_grid(width: int = MAP_SIZE[0], height: int = MAP_SIZE[1]) -> np.ndarray:
    """Cell centres of an equirectangular grid, ``[height, width, 2]`` (lon, lat), north up."""
    lon = -180.0 + (np.arange(width) + 0.5) * 360.0 / width
    lat = 90.0 - (np.arange(height) + 0.5) * 180.0 / height
    return np.stack(np.meshgrid(lon, lat), axis=-1)


def predict_map(fld: GeoField, device, width: int = MAP_SIZE[0], height: int = MAP_SIZE[1]) -> np.ndarray:
    """``[height, width]`` map: P(second class) for two classes, the class index for more, or the value."""
    grid = map_grid(width, height).reshape(-1, 2)
    raw = _raw(fld, grid, device)
    if fld.task == "regress":
        out = fld.to_units(raw)
    elif raw.shape[1] == 1:
        out = torch.sigmoid(raw[:, 0])
    else:
        out = raw.argmax(1).float()
    return out.numpy().reshape(height, width)


def save_map(path: Path, fld: GeoField, grid: np.ndarray, lonlat: np.ndarray, y: np.ndarray, title: str) -> None:
    """The prediction as an image with the points scattered over it, coloured alike."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.8))
    classes = fld.classes
    if fld.task == "regress":
        cmap, vmin, vmax = "viridis", float(np.percentile(y, 1)), float(np.percentile(y, 99))
        label, yc = fld.cfg["target_name"], y
    elif len(classes) == 2:
        cmap, vmin, vmax = "RdBu_r", 0.0, 1.0
        label, yc = f"P({fld.cfg['target_name']} = {classes[1]})", y.astype(float)
    else:
        cmap = "tab10" if len(classes) <= 10 else "tab20"
        vmin, vmax = -0.5, len(classes) - 0.5
        label, yc = f"{fld.cfg['target_name']} (class)", y.astype(float)
    im = ax.imshow(grid, extent=(-180, 180, -90, 90), origin="upper", cmap=cmap, vmin=vmin, vmax=vmax,
                   interpolation="nearest", aspect="equal")
    ax.scatter(lonlat[:, 0], lonlat[:, 1], c=yc, cmap=cmap, vmin=vmin, vmax=vmax, s=7,
               edgecolors="black", linewidths=0.25)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xticks(range(-180, 181, 60))
    ax.set_yticks(range(-90, 91, 30))
    ax.set_xlabel("longitude (deg)")
    ax.set_ylabel("latitude (deg)")
    cb = fig.colorbar(im, ax=ax, fraction=0.025, pad=0.02)
    cb.set_label(label)
    if fld.task == "classify" and len(classes) > 2:
        cb.set_ticks(range(len(classes)))
        cb.set_ticklabels(classes)
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    runs.atomic_write_bytes(path, buf.getvalue())


# --- the command -------------------------------------------------------------------------------

def fit_geo(data: str | Path | None = None, *, lon: str = "lon", lat: str = "lat", target: str | None = None,
            task: str | None = None, encoder: str | dict = "sh", L: int = 10, frequency_num: int = 16,
            network: str = "siren", hidden: int = 64, layers: int = 2, steps: int = 1000, batch_size: int = 2000,
            lr: float = 1e-3, weight_decay: float = 0.0, val_fraction: float = 0.2, seed: int = 0,
            n_points: int = DEFAULT_N_POINTS, out: str | Path = "runs/geo", device: str = "auto",
            resume: bool = False, checkpoint_every: int = 250, progress: bool = True, write_map: bool = True,
            map_size: tuple[int, int] = MAP_SIZE, callback=None) -> dict[str, Any]:
    """Fit a location field to points (``data`` a CSV/GeoJSON path, or None for land/ocean) and write a run.

    ``task`` is ``classify``, ``regress`` or None (numbers other than 0/1 -> regress, else
    classify). ``layers`` counts hidden layers as the paper does (see `geo_network_preset`).
    ``resume=True`` continues the run in ``out`` with its own data and settings (``steps`` is the
    new total). Returns the metrics written to metrics.json.
    """
    out = Path(out)
    dev = pick_device(device)
    if resume:
        old = runs.read_json(out / runs.CONFIG, "run config")
        d, tr = old["data"], old["train"]
        data, lon, lat, target, task, n_points = d["path"], d["lon"], d["lat"], d["target"], d["task"], d["n_points"]
        field_cfg = old["field"]
        batch_size, lr, weight_decay = tr["batch_size"], tr["lr"], tr["weight_decay"]
        val_fraction, seed, encoder, network = tr["val_fraction"], tr["seed"], tr["encoder"], tr["network"]
    else:
        if steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {steps}", "e.g. --steps 1000")
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}", "e.g. --batch-size 2000")
        if not 0.0 <= val_fraction <= 0.9:
            raise ConfigError(f"--val-fraction must be in [0, 0.9], got {val_fraction}", "e.g. --val-fraction 0.2")
        if task is not None and task not in TASKS:
            raise ConfigError(f"unknown task '{task}'", "use --task classify or --task regress")
        if lr <= 0 or weight_decay < 0:
            raise ConfigError(f"--lr must be > 0 and --weight-decay >= 0, got {lr} and {weight_decay}", "e.g. --lr 1e-3")
        if (out / runs.CONFIG).exists() and (out / runs.STATE).exists():
            raise InputError(f"{out} already holds a run", "pass --resume to continue it, or choose another --out")
        data = None if data is None else str(data)

    points = _load(data, lon, lat, target, task, n_points)
    task = task or infer_task(points.target)
    y, classes = encode_targets(points.target, task, field_cfg["classes"] if resume and task == "classify" else None)
    if task == "classify" and len(classes) < 2:
        raise InputError(f"{points.source}: target '{points.target_name}' has a single class {classes[0]!r}",
                         "a classifier needs at least two classes; check --target")
    n = len(points)
    if n < 2:
        raise InputError(f"{points.source} has only {n} usable point(s)", "give at least a few points")
    tr_idx, va_idx = split_indices(n, val_fraction, seed)

    if not resume:
        enc_cfg, net_cfg = resolve_field_config(encoder, network, L=L, frequency_num=frequency_num,
                                                hidden=hidden, layers=layers)
        field_cfg = {"task": task, "encoding": enc_cfg, "network": net_cfg, "target_name": points.target_name or "target"}
        if task == "classify":
            field_cfg["classes"] = classes
        else:
            mu, sd = float(np.mean(y[tr_idx])), float(np.std(y[tr_idx]))
            field_cfg.update(target_mean=mu, target_std=sd if sd > 0 else 1.0)

    torch.manual_seed(seed)
    fld = GeoField(field_cfg).to(dev)
    opt = make_adam(fld, lr, param_groups=[{"params": list(fld.network.parameters()), "weight_decay": weight_decay}])
    data_info = {"path": data, "source": points.source, "lon": lon, "lat": lat, "target": points.target_name,
                 "task": task, "n_points": n_points, "n": n, "n_train": len(tr_idx), "n_val": len(va_idx),
                 "n_skipped": points.n_skipped, **points.meta}
    if isinstance(encoder, dict):
        enc_name = str(encoder.get("otype", "custom"))
    else:
        enc_name = encoder if str(encoder).lower() in GEO_ENCODERS else f"custom:{Path(encoder).name}"
    config = {
        "format_version": runs.FORMAT_VERSION, "fieldstudio": __version__, "kind": "geo",
        "field": fld.config, "data": data_info,
        "train": {"encoder": enc_name if not resume else encoder, "network": network, "lr": lr,
                  "weight_decay": weight_decay, "batch_size": batch_size, "val_fraction": val_fraction,
                  "seed": seed, "steps": steps,
                  "optimizer": {"otype": "Adam", "beta1": 0.9, "beta2": 0.99, "epsilon": 1e-15}},
    }
    out.mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(out, fld, opt) if resume else TrainState()
    if not resume:
        runs.atomic_write_json(out / runs.CONFIG, config)

    # the encoders have no parameters: encode the training points once
    x_tr = torch.as_tensor(points.lonlat[tr_idx], dtype=torch.float32, device=dev)
    with torch.no_grad():
        feats = fld.encoding(x_tr)
    if task == "regress":
        y_tr = torch.as_tensor((y[tr_idx] - fld.cfg["target_mean"]) / fld.cfg["target_std"], dtype=torch.float32, device=dev)
    elif fld.n_outputs == 1:
        y_tr = torch.as_tensor(y[tr_idx], dtype=torch.float32, device=dev)
    else:
        y_tr = torch.as_tensor(y[tr_idx], dtype=torch.long, device=dev)
    n_tr = len(tr_idx)
    per_epoch = max(1, math.ceil(n_tr / batch_size))

    def step_fn(step: int):
        if batch_size >= n_tr:
            f, t = feats, y_tr
        else:
            # one permutation per epoch, seeded by the epoch: batches do not depend on where a run resumed
            epoch, b = divmod(step, per_epoch)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            idx = torch.randperm(n_tr, generator=gen)[b * batch_size:(b + 1) * batch_size].to(dev)
            f, t = feats[idx], y_tr[idx]
        raw = fld.from_features(f)
        if task == "regress":
            loss = F.mse_loss(raw[:, 0], t)
        elif raw.shape[1] == 1:
            loss = F.binary_cross_entropy_with_logits(raw[:, 0], t)
        else:
            loss = F.cross_entropy(raw, t)
        return loss, None

    log_lines = [f"data: {points.source}: {n} points ({len(tr_idx)} train / {len(va_idx)} validation), "
                 f"target '{points.target_name}', task {task}"
                 + (f", {points.n_skipped} rows with an empty target skipped" if points.n_skipped else "")]
    t_start = time.perf_counter()
    state = train(fld, step_fn, opt, steps=steps, run_dir=out, config=config, state=state,
                  checkpoint_every=checkpoint_every, progress=progress,
                  desc=f"fit geo [{config['train']['encoder']} + {network}]", log=log_lines.append, callback=callback)

    val = evaluate(fld, points.lonlat[va_idx], y[va_idx], dev)
    trn = evaluate(fld, points.lonlat[tr_idx], y[tr_idx], dev)
    split = "validation" if len(va_idx) else "train"
    main = val if val else trn
    n_params = sum(p.numel() for p in fld.parameters())
    metrics: dict[str, Any] = {**main, "split": split, "train": trn, "params": n_params, "steps": state.step,
                               "seconds": round(state.seconds, 3),
                               "encoder": config["train"]["encoder"], "network": network, "task": task,
                               "n_train": len(tr_idx), "n_val": len(va_idx), "n_skipped": points.n_skipped,
                               "device": str(dev)}
    if task == "classify":
        metrics["classes"] = fld.classes
        summary = f"accuracy {100 * main['accuracy']:.2f}% (cross-entropy {main['cross_entropy']:.4f})"
    else:
        summary = f"RMSE {main['rmse']:.4g}, R2 {main['r2']:.4f}"
    if write_map:
        grid = predict_map(fld, dev, *map_size)
        title = f"{config['train']['encoder']} + {network}: {split} {summary}"
        save_map(out / "map.png", fld, grid, points.lonlat, y, title)
    metrics["seconds_total"] = round(time.perf_counter() - t_start, 3)
    runs.atomic_write_json(out / runs.METRICS, metrics)
    log_lines.append(f"final ({split}): {summary}, {n_params} params")
    with open(out / runs.LOG, "a") as fh:
        fh.write("\n".join(log_lines) + "\n")
    return metrics
