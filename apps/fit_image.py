"""Fit a coordinate network to an image: ``fit_image()`` is what ``fieldstudio fit image`` runs.

The result is a run folder (see `fieldstudio.runs`): config, weights, metrics.json, the
reconstruction at full resolution, an error map and a PSNR curve.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fieldstudio import __version__, runs
from fieldstudio.datasets.images import DEFAULT_IMAGE, BUNDLED, bundled_image, center_crop, drop_alpha, load_image
from fieldstudio.device import pick_device
from fieldstudio.errors import ConfigError, InputError
from fieldstudio.fields.image import IMAGE_PRESETS, PRESET_LR, ImageField, image_field_preset
from fieldstudio.renderers.sampling import render_image

from .config_files import read_encoder_file
from .training import TrainingStopped, TrainState, encoder_param_groups, load_checkpoint, make_adam, psnr_from_mse, train


def resolve_field_config(encoder: str, n_channels: int, size: tuple[int, int],
                         cam: bool = False) -> tuple[dict[str, Any], float]:
    """``encoder`` is a preset name or a JSON file; returns (field config, default learning rate).

    ``cam`` adds coordinate-aware modulation (the ``ffn`` preset only; a JSON field config may
    carry its own ``"modulation"``).

    A JSON file may hold a whole field config (``{"encoding": ..., "network": ...}``) or just a
    tcnn encoding config (``{"otype": "HashGrid", ...}``), which then gets the hash-grid preset's
    2 x 64 MLP.
    """
    if cam and encoder != "ffn":
        raise ConfigError(f"--cam is defined for --encoder ffn, not '{encoder}'",
                          "use --encoder ffn --cam (or put a \"modulation\" in a field config file)")
    if encoder in IMAGE_PRESETS:
        return image_field_preset(encoder, n_channels, size, cam=cam), PRESET_LR[encoder]
    cfg = read_encoder_file(encoder, IMAGE_PRESETS, example='{"otype": "HashGrid"}')
    lr = float(cfg.pop("learning_rate", 1e-2)) if "encoding" in cfg else 1e-2
    if "encoding" in cfg:
        field_cfg = {"n_channels": n_channels, **cfg}
        field_cfg.setdefault("network", image_field_preset("hashgrid", n_channels, size)["network"])
    else:  # a bare encoding config, as in tcnn's docs
        field_cfg = image_field_preset("hashgrid", n_channels, size)
        field_cfg["encoding"] = cfg
    return field_cfg, lr


def _load_target(image: str | None, crop: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    if image is None or image in BUNDLED:
        name = image or DEFAULT_IMAGE
        arr, source = bundled_image(name), f"skimage:{name}"
    else:
        arr, source = load_image(image), str(Path(image).resolve())
    arr = drop_alpha(arr)
    if crop:
        arr = center_crop(arr, crop)
    h, w, c = arr.shape
    return arr, {"source": source, "height": h, "width": w, "channels": c, "crop": crop}


def initialize_kernels(fld: ImageField, target: np.ndarray, seed: int = 0) -> dict[str, Any] | None:
    """Place an adaptive encoder's kernels on the image's edges (Sobel magnitude); None for others.

    Kernels stay where they are on resume: the checkpoint holds them.
    """
    enc = fld.encoding
    if not hasattr(enc, "initialize"):
        return None
    from fieldstudio.encoders.rbf_init import sobel_weights
    from fieldstudio.renderers.sampling import pixel_centers

    h, w, _ = target.shape
    uv = pixel_centers(h, w).reshape(-1, 2).double()
    if fld.cfg["input_range"] == "signed":
        uv = uv * 2 - 1
    # the narrowest kernel is 1/200 of a pixel, the widest a tenth of the image (official clipping)
    extent = enc.cfg["bounds"][1] - enc.cfg["bounds"][0]
    info = enc.initialize(uv, sobel_weights(target).reshape(-1), min_width=extent / max(h, w) / 200,
                          max_width=extent / 10, seed=seed)
    info["n_kernels"] = enc.n_kernels
    return info


def _ssim(pred: np.ndarray, target: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(target, pred, channel_axis=2, data_range=1.0))


def evaluate(fld: ImageField, target: np.ndarray, device, chunk: int = 1 << 16) -> tuple[np.ndarray, dict[str, float]]:
    """Full-resolution reconstruction and its PSNR / SSIM against ``target`` (both in [0, 1])."""
    h, w, _ = target.shape
    fld.eval()
    pred = render_image(fld, h, w, chunk=chunk, device=device).clamp(0, 1).numpy()
    fld.train()
    mse = float(np.mean((pred - target) ** 2))
    return pred, {"psnr": round(psnr_from_mse(mse), 4), "ssim": round(_ssim(pred, target), 5), "mse": mse}


def _save_png(path: Path, img: np.ndarray) -> None:
    import io

    from PIL import Image

    arr = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    runs.atomic_write_bytes(path, buf.getvalue())


def _save_curve(path: Path, history: list[dict[str, float]], title: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(h["step"], h["seconds"], h["psnr"]) for h in history if "psnr" in h]
    if not pts:
        return
    steps, secs, psnr = zip(*pts)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(steps, psnr)
    axes[0].set_xlabel("step")
    axes[1].plot(secs, psnr)
    axes[1].set_xlabel("seconds")
    for ax in axes:
        ax.set_ylabel("training PSNR (dB)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    runs.atomic_write_bytes(path, buf.getvalue())


#: pixels a step on a GPU; a CPU pays for every pixel, and the hash grid reaches a given PSNR in
#: nearly as many steps with 2^14 pixels as with 2^16 (kodim03, full image: 30 dB at step ~55 vs ~47)
BATCH_GPU, BATCH_CPU = 1 << 16, 1 << 14
#: the hash grid's rate on a CPU: with the smaller batch, 2e-2 takes ~10 % fewer steps to 30 dB than
#: the preset's 1e-2; 4e-2 oscillates early (measured on kodim03)
CPU_HASHGRID_LR = 2e-2


def image_defaults(device: torch.device, encoder: str) -> dict[str, Any]:
    """Batch size and learning rate used where the caller gives none (``lr`` None: the preset's)."""
    if device.type == "cuda":
        return {"batch_size": BATCH_GPU, "lr": None}
    return {"batch_size": BATCH_CPU, "lr": CPU_HASHGRID_LR if encoder == "hashgrid" else None}


def fit_image(image: str | None = None, *, encoder: str = "hashgrid", steps: int = 1000, out: str | Path = "runs/image",
              batch_size: int | None = None, lr: float | None = None, crop: int | None = None, device: str = "auto",
              seed: int = 0, resume: bool = False, checkpoint_every: int = 250, progress: bool = True,
              backend: str = "auto", budget: int | None = None, callback=None, eval_every: int = 0,
              stop_at_psnr: float | None = None, cam: bool = False, precision: str = "fp32") -> dict[str, Any]:
    """Fit ``image`` (a path, a bundled photo name, or None for the default photo) and write a run.

    ``budget`` resizes the field to at most that many parameters (`fit_to_budget`).
    ``batch_size`` / ``lr`` default to `image_defaults` (2^16 pixels on a GPU; 2^14 and, for the
    hash grid, 2e-2 on a CPU).
    ``cam`` adds the CAM paper's coordinate-aware modulation (with ``encoder="ffn"``).
    ``callback(step, record) -> bool|None`` follows training and may stop it (see `train`).
    ``resume=True`` continues the run in ``out`` (image, field and settings come from its
    config.json; ``steps`` is the new total). Returns the metrics written to metrics.json.

    ``eval_every > 0`` renders the whole image every that many steps and records its PSNR as
    ``metrics["curve"]`` against steps and training seconds (the rendering is not counted as
    training time); with ``stop_at_psnr`` as well, training ends at the first such point at or
    above that PSNR.

    ``precision="bf16"`` runs the field's forward in bfloat16 autocast: the matrix products of the
    network take half the memory traffic, while the grid lookup (its own kernel), the loss, the
    gradients' accumulation and Adam stay float32. Safe here because the network's output is a
    colour compared to 8-bit pixels; SDF and radiance-field training stay float32 (second
    derivatives, exponentiated densities).
    """
    out = Path(out)
    dev = pick_device(device)
    if resume:
        old = runs.read_json(out / runs.CONFIG, "run config")
        data, train_cfg = old["data"], old["train"]
        src = data["source"]
        image = src.split(":", 1)[1] if src.startswith("skimage:") else src
        target, data = _load_target(image, data.get("crop"))
        field_cfg = old["field"]
        lr, batch_size, seed, encoder = train_cfg["lr"], train_cfg["batch_size"], train_cfg["seed"], train_cfg["encoder"]
        precision = train_cfg.get("precision", "fp32")
    else:
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"unknown precision '{precision}'", "use fp32 or bf16")
        if steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {steps}", "e.g. --steps 1000")
        target, data = _load_target(image, crop)
        field_cfg, default_lr = resolve_field_config(encoder, data["channels"], (data["height"], data["width"]), cam=cam)
        auto = image_defaults(dev, encoder)
        lr = (auto["lr"] or default_lr) if lr is None else lr
        batch_size = auto["batch_size"] if batch_size is None else batch_size
        if budget is not None:
            from .budget import fit_to_budget

            field_cfg, _ = fit_to_budget(field_cfg, budget, lambda c: ImageField(c, backend="torch"))
        if (out / runs.CONFIG).exists() and (out / runs.STATE).exists():
            raise InputError(f"{out} already holds a run", "pass --resume to continue it, or choose another --out")

    torch.manual_seed(seed)
    fld = ImageField(field_cfg, backend=backend)
    init_info = None if resume else initialize_kernels(fld, target, seed)
    fld = fld.to(dev)
    opt = make_adam(fld, lr, param_groups=encoder_param_groups(fld, lr))
    config = {
        "format_version": runs.FORMAT_VERSION, "fieldstudio": __version__, "kind": "image",
        "field": fld.config, "data": data,
        "train": {"encoder": encoder, "cam": bool(cam or field_cfg.get("modulation")), "lr": lr, "batch_size": batch_size, "seed": seed, "steps": steps, "budget": budget, "precision": precision,
                  "optimizer": {"otype": "Adam", "beta1": 0.9, "beta2": 0.99, "epsilon": 1e-15}},
    }
    out.mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(out, fld, opt) if resume else TrainState()
    if not resume:
        runs.atomic_write_json(out / runs.CONFIG, config)

    h, w, c = target.shape
    pixels = torch.from_numpy(target.reshape(-1, c)).to(dev)
    n_pix = pixels.shape[0]
    full_batch = batch_size >= n_pix
    if full_batch:
        from fieldstudio.renderers.sampling import pixel_centers

        uv_all = pixel_centers(h, w, device=dev)

    curve = state.extra.setdefault("curve", [])
    stop = {"now": False}

    def full_image_psnr() -> float:
        with torch.no_grad():
            fld.eval()
            pred = render_image(fld, h, w, chunk=1 << 16, device=dev).clamp(0, 1)
            fld.train()
        return psnr_from_mse(float(torch.mean((pred.reshape(-1, c) - pixels.cpu()).double() ** 2)))

    def step_fn(step: int):
        if eval_every and step and step % eval_every == 0 and not any(p["step"] == step for p in curve):
            t_eval = time.perf_counter()
            curve.append({"step": step, "seconds": round(state.seconds, 3), "psnr": round(full_image_psnr(), 4)})
            # the loop times the whole step_fn: take the rendering back out of the training time
            state.seconds -= time.perf_counter() - t_eval
            if stop_at_psnr is not None and curve[-1]["psnr"] >= stop_at_psnr:
                stop["now"] = True
        if full_batch:
            uv, tgt = uv_all, pixels
        else:
            # a generator seeded by the step makes batches independent of where a run was resumed
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
            idx = torch.randint(0, n_pix, (batch_size,), generator=gen).to(dev)
            px = (idx % w).float()
            py = torch.div(idx, w, rounding_mode="floor").float()
            uv = torch.stack(((px + 0.5) / w, (py + 0.5) / h), dim=1)
            tgt = pixels[idx]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            pred = fld(uv)
        mse = torch.mean((pred.float() - tgt) ** 2)
        return mse, -10.0 * torch.log10(mse.detach().clamp_min(1e-12))

    log_lines: list[str] = []
    t_start = time.perf_counter()
    def on_step(step, rec):
        if callback is not None and callback(step, rec):
            return True
        return stop["now"]

    try:
        state = train(fld, step_fn, opt, steps=steps, run_dir=out, config=config, state=state,
                      checkpoint_every=checkpoint_every, progress=progress,
                      desc=f"fit image [{encoder if len(str(encoder)) < 20 else 'custom'}]", log=log_lines.append,
                      callback=on_step if stop_at_psnr is not None else callback)
    except TrainingStopped:
        if not stop["now"]:
            raise
    pred, quality = evaluate(fld, target, dev)
    _save_png(out / "reconstruction.png", pred)
    err = np.abs(pred - target).mean(axis=2, keepdims=True)
    _save_png(out / "error.png", np.clip(err * 10, 0, 1))
    _save_curve(out / "psnr.png", state.history, f"fit image: {encoder}")
    n_params = sum(p.numel() for p in fld.parameters())
    metrics = {
        "psnr": quality["psnr"], "ssim": quality["ssim"], "params": n_params, "steps": state.step,
        "seconds": round(state.seconds, 3), "seconds_total": round(time.perf_counter() - t_start, 3),
        "encoder": encoder, "image": data, "device": str(dev), "batch_size": min(batch_size, n_pix),
        **({"kernel_init": init_info} if init_info else {}),
        **({"curve": curve + [{"step": state.step, "seconds": round(state.seconds, 3), "psnr": quality["psnr"]}]}
           if eval_every else {}),
        "psnr_protocol": "prediction clamped to [0,1], float, over all pixels and channels",
        "ssim_protocol": "skimage.metrics.structural_similarity, data_range=1, channel_axis=2",
    }
    runs.atomic_write_json(out / runs.METRICS, metrics)
    log_lines.append(f"final: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}, {n_params} params")
    with open(out / runs.LOG, "a") as f:
        f.write("\n".join(log_lines) + "\n")
    return metrics
