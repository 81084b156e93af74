"""Reconstruct a radiance field from posed photos: ``reconstruct()`` is ``fieldstudio reconstruct``.

The recipe is nerfacc's Instant-NGP example on our PyTorch renderer: rays drawn at random from all
training views, a batch size that adapts so each step renders about ``target_samples`` samples,
an occupancy grid updated every 16 steps (all cells during a 256-step warm-up), a random background
colour for RGBA data, Adam (eps 1e-15) with a linear warm-up and step decay. Evaluation renders
every test view on a white background (the protocol is written into metrics.json).

The run folder's weights hold the field (``field.*``) and the occupancy grid (``grid.*``), so
renders and mesh export need no re-training; `load_scene_run` opens both.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fieldstudio import __version__, runs
from fieldstudio.datasets.scene import SceneDataset, load_scene
from fieldstudio.device import pick_device
from fieldstudio.errors import ConfigError, InputError
from fieldstudio.fields.radiance import NGPRadianceField, VanillaNeRF
from fieldstudio.fields.radiance_grids import TensoRFField, VoxelField
from fieldstudio.fields.registry import build_field
from fieldstudio.renderers.occupancy import OccupancyGrid
from fieldstudio.renderers.rays import Rays, dataset_image_rays, dataset_rays
from fieldstudio.renderers.volume import march, rendering

from .training import (TrainingStopped, TrainState, encoder_param_groups, load_checkpoint, make_adam, psnr_from_mse,
                       train)

FIELDS = {"ngp": NGPRadianceField, "nerf": VanillaNeRF, "tensorf": TensoRFField, "voxels": VoxelField}
#: Adam rates. Voxels: on lego 200 px (2 threads, 330 s, grid shrunk to the occupied box) 3e-2 gave
#: 29.51 dB, 1e-1 28.77 dB (stuck near 25 dB until its first decay) and 1e-2 26.33 dB; distillation,
#: fitting the teacher's smoother target, keeps 1e-1 (29.94 dB against 29.72 at 3e-2)
DEFAULT_LR = {"ngp": 1e-2, "nerf": 5e-4, "tensorf": 1e-2, "voxels": 3e-2}
#: the step at which a grid field (TensoRF, voxels) shrinks to the occupied box by default: after the
#: occupancy grid's 256-step warm-up, once the grid has carved the empty space around the scene
#: (TensoRF shrinks at its first alpha-mask update, 2,000 of 30,000 steps)
FIT_BOX_AT = {"tensorf": 500, "voxels": 500}


def occupancy_eval_fn(model: "SceneModel", step_size: float):
    """What the occupancy grid evaluates: world points ``[N, 3]`` -> optical thickness of one step."""
    view_dependent = getattr(model.field, "view_dependent_density", False)

    def occ_eval_fn(x):
        if not view_dependent:
            return model.field.density(model.to_unit(x)) * step_size
        # A CAM field's density depends on the view direction. Its bound over all directions (what
        # density(x) alone returns) is so loose that every cell stays occupied and each ray takes
        # ~16x the samples; like the random point inside each cell, one random direction per cell
        # and update is used instead, and the grid's moving maximum remembers the densest seen.
        d = torch.nn.functional.normalize(torch.randn(x.shape, device=x.device, dtype=x.dtype), dim=-1)
        return model.field.density(model.to_unit(x), d) * step_size

    return occ_eval_fn


class SceneModel(nn.Module):
    """What a scene run trains and saves: the field and its occupancy grid."""

    def __init__(self, fld: nn.Module, grid: OccupancyGrid, aabb: torch.Tensor, render_step_size: float):
        super().__init__()
        self.field = fld
        self.grid = grid
        self.register_buffer("aabb", aabb.float().reshape(2, 3).clone())
        self.render_step_size = float(render_step_size)

    def occupied_bounds(self) -> list[list[float]] | None:
        """The box of the occupied cells (one cell of margin) in the field's [0, 1]^3, as a grid
        field's ``bounds``; None where that box is not simply the field's (a multi-level grid for an
        unbounded scene, a grid over another box) or covers it anyway.

        Rays march only through those cells, so nothing outside is ever sampled; a grid field with
        a fixed count of samples per axis gets them where the scene is (on lego, about twice as
        many across the object on two axes)."""
        grid = self.grid
        if grid.levels != 1 or not torch.allclose(grid.aabb.cpu(), self.aabb.detach().cpu().reshape(-1)):
            return None
        box = grid.occupied_box(margin_cells=1)
        if box is None or bool((box[0] <= 0).all() and (box[1] >= 1).all()):
            return None
        return [[round(float(v), 6) for v in row] for row in box]

    def to_unit(self, p: torch.Tensor) -> torch.Tensor:
        """Field-space points -> the field's [0, 1]^3 input domain."""
        return (p - self.aabb[0]) / (self.aabb[1] - self.aabb[0])

    def render_rays(self, rays: Rays, background: torch.Tensor, *, early_stop_eps: float = 1e-4,
                    alpha_thre: float = 0.0, stratified: bool = False):
        """Volume-render ``rays``: ``(rgb, opacity, depth, n_samples)``."""
        o, d, v = rays.origins, rays.directions, rays.viewdirs
        t_max = torch.where(rays.hit, rays.t_far, rays.t_near - 1.0)  # empty interval for rays that miss
        # only a field with CAM has a view-dependent density: spare the others a gather per sample
        view_dependent = getattr(self.field, "view_dependent_density", False)

        def sigma_fn(ts, te, ri):
            x = o[ri] + d[ri] * ((ts + te) * 0.5)[:, None]
            return self.field.density(self.to_unit(x), v[ri] if view_dependent else None)

        def rgb_sigma_fn(ts, te, ri):
            x = o[ri] + d[ri] * ((ts + te) * 0.5)[:, None]
            return self.field(self.to_unit(x), v[ri])

        ri, ts, te = march(o, d, grid=self.grid, render_step_size=self.render_step_size, t_min=rays.t_near,
                           t_max=t_max, sigma_fn=sigma_fn, early_stop_eps=early_stop_eps, alpha_thre=alpha_thre,
                           stratified=stratified)
        rgb, opacity, depth, _ = rendering(ts, te, ri, o.shape[0], rgb_sigma_fn, render_bkgd=background)
        return rgb, opacity, depth, int(ri.shape[0])

    @torch.no_grad()
    def render_view(self, dataset: SceneDataset, i: int, background: str = "white", chunk: int = 1 << 13):
        """Render view ``i`` at the dataset's resolution: ``(rgb [H,W,3], depth [H,W], opacity [H,W])``."""
        rays = dataset_image_rays(dataset, i)
        return self.render_rays_chunked(rays, dataset.height, dataset.width, background, chunk)

    @torch.no_grad()
    def render_rays_chunked(self, rays: Rays, height: int, width: int, background: str = "white",
                            chunk: int = 1 << 13):
        bg_value = {"white": 1.0, "black": 0.0}.get(background, 1.0)
        outs = []
        for s in range(0, len(rays), chunk):
            r = rays[s:s + chunk]
            bg = torch.full((len(r), 3), bg_value, device=r.origins.device)
            rgb, op, dep, _ = self.render_rays(r, bg)
            outs.append(torch.cat([rgb, dep, op], dim=1).cpu())
        img = torch.cat(outs).reshape(height, width, 5)
        return img[..., :3].clamp(0, 1), img[..., 3], img[..., 4]


def build_scene_model(field_cfg: dict[str, Any], grid_cfg: dict[str, Any], aabb, render_step_size: float,
                      backend: str = "auto") -> SceneModel:
    fld = build_field(field_cfg, backend=backend)
    grid = OccupancyGrid(grid_cfg["aabb"], resolution=grid_cfg["resolution"], levels=grid_cfg.get("levels", 1))
    return SceneModel(fld, grid, torch.as_tensor(aabb, dtype=torch.float32), render_step_size)


def load_scene_run(path: str | Path, device: str = "auto") -> tuple[SceneModel, dict[str, Any]]:
    """Open a `reconstruct` run: the field *and* its occupancy grid, on ``device``."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = runs.read_json(path / runs.CONFIG, "run config")
    if cfg.get("kind") != "scene":
        raise InputError(f"{path} is a '{cfg.get('kind')}' run, not a scene reconstruction",
                         "pass the --out folder of `fieldstudio reconstruct`")
    model = build_scene_model(cfg["field"], cfg["scene"]["grid"], cfg["scene"]["aabb"], cfg["scene"]["render_step_size"])
    if not (path / runs.WEIGHTS).exists():
        raise InputError(f"weights not found in {path}", "the run has no checkpoint yet")
    model.load_state_dict(load_file(str(path / runs.WEIGHTS)))
    return model.to(pick_device(device)).eval(), cfg


def target_samples_for(device: torch.device) -> int:
    """Samples rendered per training step: 2^16 on a GPU (instant-ngp), 2^15 on a CPU."""
    return 1 << (16 if device.type == "cuda" else 15)


def next_ray_count(n_rays: int, n_samples: int, target_samples: int) -> int:
    """The ray count that makes the next step render about ``target_samples`` samples, given that
    ``n_rays`` rays drew ``n_samples`` (kept within [256, 2^16])."""
    return int(min(1 << 16, max(256, n_rays * target_samples / max(n_samples, 1))))


def random_training_rays(ds: SceneDataset, train_idx: torch.Tensor, n: int, gen: torch.Generator):
    """``n`` random pixels of the training views: (rays, target colours, background colours)."""
    dev = ds.device
    pick = torch.randint(0, len(train_idx), (n,), generator=gen).to(dev)
    img = train_idx[pick]
    px = torch.randint(0, ds.width, (n,), generator=gen).to(dev)
    py = torch.randint(0, ds.height, (n,), generator=gen).to(dev)
    target, bg = ds.pixels(img, py, px, generator=gen if dev.type == "cpu" else None)
    return dataset_rays(ds, img, px, py), target, bg


def scene_defaults(width: int, height: int, device: torch.device, field: str = "ngp") -> dict[str, Any]:
    """Sizes that suit the images and the machine, used where the caller gives none.

    A GPU gets instant-ngp's NeRF settings (T = 2^19, N_max = 2048, sqrt(3)/1024 steps, 2^16
    samples a step). A CPU pays for every sample and every table entry, so it gets the grid and
    the step the images can actually resolve: up to 400 px, N_max = 512 with T = 2^17 (a 12 MB
    table that stays in cache) and sqrt(3)/512 steps (about a third of a pixel's footprint at
    lego's distance), 2^15 samples a step; larger images N_max = 1024, T = 2^18.
    """
    from fieldstudio.fields.radiance import NGP_ENCODING, ngp_per_level_scale

    cuda = device.type == "cuda"
    small = max(width, height) <= 400
    n_max, log2_t = (2048, 19) if cuda else ((512, 17) if small else (1024, 18))
    out: dict[str, Any] = {
        "render_step_size": math.sqrt(3) / (512 if (small and not cuda) else 1024),
        "target_samples": target_samples_for(device),
        "grid_resolution": 128 if cuda else 64,  # a 128^3 refresh is 2M field queries: seconds on a CPU
        "field_config": {},
    }
    if field == "ngp" and not cuda:
        out["field_config"] = {"encoding": {**NGP_ENCODING, "log2_hashmap_size": log2_t,
                                            "per_level_scale": round(ngp_per_level_scale(n_max, 16, 16), 6)}}
    return out


def _lr_schedule(steps: int, warmup: int = 100):
    """Linear warm-up, then x0.33 at 50 %, 75 % and 90 % of the steps (nerfacc's NGP example)."""
    milestones = [int(steps * f) for f in (0.5, 0.75, 0.9)]

    def factor(step: int) -> float:
        f = min(1.0, 0.01 + 0.99 * step / warmup) if warmup else 1.0
        return f * 0.33 ** sum(step >= m for m in milestones)

    return factor


def _ssim(pred: np.ndarray, target: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(target, pred, channel_axis=2, data_range=1.0))


def _save_png(path: Path, img: np.ndarray) -> None:
    import io

    from PIL import Image

    arr = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    runs.atomic_write_bytes(path, buf.getvalue())


def evaluate_views(model: SceneModel, dataset: SceneDataset, views, out_dir: Path | None = None,
                   save: int = 8, progress: bool = False) -> dict[str, Any]:
    """Mean PSNR / SSIM over ``views`` on the evaluation background; saves the first ``save`` renders."""
    from tqdm.auto import tqdm

    psnrs, ssims = [], []
    t0 = time.perf_counter()
    n_rays = 0
    for k, i in enumerate(tqdm(list(views), desc="evaluate", disable=not progress, leave=False)):
        i = int(i)
        rgb, depth, _ = model.render_view(dataset, i, background=dataset.eval_background)
        gt = dataset.image(i, dataset.eval_background).cpu().numpy()
        pred = rgb.numpy()
        n_rays += dataset.height * dataset.width
        psnrs.append(psnr_from_mse(float(np.mean((pred - gt) ** 2))))
        ssims.append(_ssim(pred, gt))
        if out_dir is not None and k < save:
            dn = depth.numpy()
            dn = (dn - dn.min()) / max(float(dn.max() - dn.min()), 1e-8)
            _save_png(out_dir / f"test_{i:03d}.png", np.concatenate([pred, gt, np.repeat(dn[..., None], 3, 2)], axis=1))
    seconds = time.perf_counter() - t0
    return {"psnr": round(float(np.mean(psnrs)), 4), "ssim": round(float(np.mean(ssims)), 5),
            "psnr_per_view": [round(p, 3) for p in psnrs], "views": len(psnrs),
            "render_rays_per_second": round(n_rays / max(seconds, 1e-9), 1)}


def reconstruct(data: str | None = None, *, format: str = "auto", field: str = "ngp", steps: int = 2000,
                out: str | Path = "runs/scene", target_samples: int | None = None, init_rays: int = 1 << 10,
                lr: float | None = None, downscale: int = 1, device: str = "auto", seed: int = 0,
                resume: bool = False, checkpoint_every: int = 500, eval_views: int | None = None,
                progress: bool = True, backend: str = "auto", grid_resolution: int | None = None,
                render_step_size: float | None = None, field_config: dict[str, Any] | None = None,
                eval_every: int = 0, eval_every_views: int = 4, callback=None, encoder: str = "hashgrid",
                warmup_steps: int | None = None, stop_at_psnr: float | None = None,
                cam: bool = False, time_budget: float | None = None, fit_box_at: int | None = None) -> dict[str, Any]:
    """Train a radiance field on ``data`` (None: the bundled procedural scene) and write a run folder.

    ``field_config`` overrides entries of the field's default config (e.g. a smaller
    ``"encoding"``). With ``eval_every > 0`` the first ``eval_every_views`` test views are rendered
    every that many steps and the PSNR is recorded as ``metrics["curve"]`` against steps and
    training seconds (rendering time excluded). With ``stop_at_psnr`` as well, training ends early
    once two successive curve points reach that PSNR (the crossing and its confirmation); the final
    evaluation of all test views still runs.

    Returns the metrics written to metrics.json (test-view PSNR/SSIM, steps, seconds, memory, rays/s).
    ``encoder="neurbf"`` (Instant-NGP field only) first fits the default field for ``warmup_steps``
    (default: a fifth of ``steps``, at most 300) into ``out/warmup``, places the kernels where it
    is opaque and textured, then trains the NeuRBF field from scratch.
    ``cam=True`` (Instant-NGP field) modulates the density MLP's hidden layer by a view-direction
    CAM grid (`fieldstudio.fields.radiance.NGP_CAM`); the occupancy grid then uses its
    direction-free upper bound of the density.
    ``time_budget`` (seconds of training): stop when it is spent, with the learning-rate schedule
    following the larger of the step and the time fraction.
    ``fit_box_at`` (tensorf, voxels; default `FIT_BOX_AT`, 0: never): at that step the grid shrinks
    to the box of the occupied cells (`SceneModel.occupied_bounds`, `shrink_to`), keeping its
    samples per axis, as TensoRF does; the run's config then holds the box as the field's bounds.
    """
    out = Path(out)
    dev = pick_device(device)
    if resume:
        old = runs.read_json(out / runs.CONFIG, "run config")
        s = old["scene"]
        data, format, downscale = s["data"], s["format"], s["downscale"]
        field, lr, seed, target_samples = old["train"]["field"], old["train"]["lr"], old["train"]["seed"], old["train"]["target_samples"]
        grid_resolution, render_step_size = s["grid"]["resolution"], s["render_step_size"]
        fit_box_at = old["train"].get("fit_box_at", 0)
    elif (out / runs.STATE).exists():
        raise InputError(f"{out} already holds a run", "pass --resume to continue it, or choose another --out")
    if field not in FIELDS:
        raise ConfigError(f"unknown radiance field '{field}'", f"use one of: {', '.join(FIELDS)}")
    if encoder not in ("hashgrid", "neurbf"):
        raise ConfigError(f"unknown encoder '{encoder}' for reconstruct", "use hashgrid or neurbf")
    if encoder == "neurbf" and field != "ngp":
        raise ConfigError(f"--encoder neurbf replaces the hash grid of the ngp field, not of '{field}'",
                          "use --field ngp with --encoder neurbf")
    if cam and not resume and (field != "ngp" or encoder != "hashgrid"):
        raise ConfigError(f"--cam modulates the density MLP of the ngp field with a hash grid, not '{field}' "
                          f"with '{encoder}'", "use --field ngp --encoder hashgrid with --cam")
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}", "e.g. --steps 2000")
    if fit_box_at is None:
        fit_box_at = FIT_BOX_AT.get(field, 0)
    if fit_box_at and field not in FIT_BOX_AT:
        raise ConfigError(f"--fit-box-at shrinks a grid field (tensorf, voxels), not '{field}'", "leave it out, or pass 0")
    ds = load_scene(data, format=format, downscale=downscale).to(dev)
    train_idx = ds.split("train")
    test_idx = ds.split("test")
    if eval_views is not None:
        test_idx = test_idx[:eval_views]
    aabb = ds.aabb.reshape(2, 3).float()
    auto = scene_defaults(ds.width, ds.height, dev, field)
    extent = float((aabb[1] - aabb[0]).max())
    step_size = render_step_size or float(auto["render_step_size"] * extent)
    target_samples = target_samples or auto["target_samples"]
    lr = DEFAULT_LR[field] if lr is None else lr
    if grid_resolution is None:
        grid_resolution = auto["grid_resolution"]
    if field_config is None:
        field_config = auto["field_config"]
    if cam and not resume:
        from fieldstudio.fields.radiance import NGP_CAM

        field_config = {**(field_config or {}), "cam": dict(NGP_CAM)}

    init_info = None
    if resume:
        fld = build_field(old["field"], backend=backend)
    elif encoder == "neurbf":
        fld, init_info = _neurbf_after_warmup(data, format, downscale, out, steps, warmup_steps, seed, device,
                                              backend, grid_resolution, step_size, target_samples)
    else:
        torch.manual_seed(seed)
        fld = FIELDS[field](field_config or {}, backend=backend)
    grid = OccupancyGrid(aabb, resolution=grid_resolution)
    model = SceneModel(fld, grid, aabb, step_size).to(dev)
    opt = make_adam(model.field, lr, param_groups=encoder_param_groups(model.field, lr))
    config = {
        "format_version": runs.FORMAT_VERSION, "fieldstudio": __version__, "kind": "scene",
        "field": model.field.config, "weights_prefix": "field.",
        "scene": {"data": data, "format": ds.format, "downscale": downscale, "aabb": aabb.tolist(),
                  "render_step_size": step_size, "grid": {"aabb": aabb.reshape(-1).tolist(), "resolution": grid_resolution, "levels": 1},
                  "summary": ds.summary(), "normalization": ds.normalization.as_dict()},
        "train": {"field": field, "encoder": encoder, "cam": model.field.config.get("cam") is not None, "lr": lr, "seed": seed, "steps": steps,
                  "fit_box_at": fit_box_at,
                  "target_samples": target_samples, **({"kernel_init": init_info} if init_info else {}),
                  "optimizer": {"otype": "Adam", "beta1": 0.9, "beta2": 0.99, "epsilon": 1e-15},
                  "schedule": "linear warm-up 100 steps, x0.33 at 50/75/90 %"},
    }
    out.mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(out, model, opt) if resume else TrainState()
    if not resume:
        runs.atomic_write_json(out / runs.CONFIG, config)

    state.extra.setdefault("n_rays", init_rays)  # the adaptive ray count is part of the resumable state
    counters = {"rays": 0, "samples": 0}

    occ_eval_fn = occupancy_eval_fn(model, step_size)

    curve = state.extra.setdefault("curve", [])
    stop = {"now": False}

    def on_step(step, rec):
        if callback is not None and callback(step, rec):
            return True
        return stop["now"]

    def step_fn(step: int):
        if eval_every and step and step % eval_every == 0 and not any(c["step"] == step for c in curve):
            t_eval = time.perf_counter()
            model.eval()
            q = evaluate_views(model, ds, test_idx[:eval_every_views], save=0)
            curve.append({"step": step, "seconds": round(state.seconds, 2), "psnr": q["psnr"], "views": q["views"]})
            if stop_at_psnr is not None and len(curve) >= 2 and min(c["psnr"] for c in curve[-2:]) >= stop_at_psnr:
                stop["now"] = True
            # the loop times the whole step_fn: take the rendering back out of the training time
            state.seconds -= time.perf_counter() - t_eval
        model.train()
        if fit_box_at and step >= fit_box_at and "fitted_box" not in state.extra:
            box = model.occupied_bounds()
            if box is not None:
                for p in model.field.shrink_to(box):
                    opt.state.pop(p, None)  # its moments were for the old cells
                config["field"] = model.field.config  # the next checkpoint's config holds the bounds
            state.extra["fitted_box"] = box
        torch.manual_seed(seed * 1_000_003 + step)  # grid jitter and stratified samples: reproducible on resume
        model.grid.update(step, occ_eval_fn, occ_thre=0.01, ema_decay=0.95, warmup_steps=256, n=16)
        gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + step)
        n = int(state.extra["n_rays"])
        rays, target, bg = random_training_rays(ds, train_idx, n, gen)
        rgb, _, _, n_samples = model.render_rays(rays, bg, stratified=True)
        loss = torch.mean((rgb - target) ** 2)
        counters["rays"] += n
        counters["samples"] += n_samples
        # adapt the ray count so each step renders about target_samples samples
        state.extra["n_rays"] = next_ray_count(n, n_samples, target_samples)
        return loss, -10.0 * torch.log10(loss.detach().clamp_min(1e-12))

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    schedule, user_stop = _lr_schedule(steps), (on_step if stop_at_psnr is not None else callback)
    if time_budget:
        base_schedule, live = schedule, state  # `train` advances this very state object

        def schedule(step):
            return base_schedule(max(step, int(steps * min(1.0, live.seconds / time_budget))))

    def stop_fn(step, rec):
        if time_budget and state.seconds >= time_budget:
            return True
        return bool(user_stop and user_stop(step, rec))

    try:
        state = train(model, step_fn, opt, steps=steps, run_dir=out, config=config, state=state,
                      checkpoint_every=checkpoint_every, progress=progress, desc=f"reconstruct [{field}]",
                      scheduler=schedule, callback=stop_fn if (time_budget or user_stop) else None)
    except TrainingStopped:
        if not (stop["now"] or (time_budget and state.seconds >= time_budget)):
            raise
    train_wall = time.perf_counter() - t0
    model.eval()
    quality = evaluate_views(model, ds, test_idx, out_dir=out, progress=progress)
    metrics = {
        "psnr": quality["psnr"], "ssim": quality["ssim"], "test_views": quality["views"],
        "psnr_per_view": quality["psnr_per_view"], "steps": state.step, "seconds": round(state.seconds, 2),
        "params": sum(p.numel() for p in model.field.parameters()),
        "train_rays_per_second": round(counters["rays"] / max(train_wall, 1e-9), 1),
        "samples_per_ray": round(counters["samples"] / max(counters["rays"], 1), 2),
        "render_rays_per_second": quality["render_rays_per_second"],
        "occupied_fraction": round(float(model.grid.occupied_fraction()), 4),
        "bounds": model.field.config.get("bounds"),
        "peak_memory_mb": _peak_memory_mb(dev), "device": str(dev), "field": field,
        "curve": curve + [{"step": state.step, "seconds": round(state.seconds, 2), "psnr": quality["psnr"],
                           "views": quality["views"]}],
        "protocol": f"all {quality['views']} test views at {ds.width}x{ds.height}, composited on "
                    f"{ds.eval_background}, prediction clamped to [0,1], PSNR averaged over views",
    }
    runs.atomic_write_json(out / runs.METRICS, metrics)
    with open(out / runs.LOG, "a") as f:
        f.write(f"reconstruct: {state.step} steps, {state.seconds:.1f} s, test PSNR {metrics['psnr']:.2f} dB, "
                f"SSIM {metrics['ssim']:.4f}\n")
    return metrics


def _neurbf_after_warmup(data, format, downscale, out: Path, steps: int, warmup_steps: int | None, seed: int,
                         device: str, backend: str, grid_resolution: int, step_size: float, target_samples: int):
    """Warm-up Instant-NGP fit, then a NeuRBF field with kernels placed from it."""
    from .scene_kernels import neurbf_radiance_config, placement_weights

    warm = max(1, min(300, steps // 5)) if warmup_steps is None else warmup_steps
    t0 = time.perf_counter()
    reconstruct(data, format=format, field="ngp", steps=warm, out=out / "warmup", downscale=downscale, device=device,
                seed=seed, eval_views=1, progress=False, backend=backend, grid_resolution=grid_resolution,
                target_samples=target_samples, checkpoint_every=max(warm, 1))
    warm_model, _ = load_scene_run(out / "warmup", device=device)
    torch.manual_seed(seed)
    fld = NGPRadianceField(neurbf_radiance_config(), backend=backend)
    # at least four grid points per kernel
    res = max(48, math.ceil((4 * fld.encoding.n_kernels) ** (1 / 3)))
    pts, weights = placement_weights(warm_model.field, step_size, resolution=res)
    info = fld.encoding.initialize(pts, weights, min_width=1 / res / 200, max_width=0.1, seed=seed)
    info.update(warmup_steps=warm, warmup_seconds=round(time.perf_counter() - t0, 3), n_kernels=fld.encoding.n_kernels)
    return fld, info


def _peak_memory_mb(dev: torch.device) -> float:
    if dev.type == "cuda":
        return round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # whole-process peak RSS
