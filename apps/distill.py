"""``fieldstudio distill TEACHER_RUN --to TYPE --out RUN``: convert a scene run into another field type (PVD).

The student is trained by `fieldstudio.renderers.distill.distill` on random virtual cameras (no
images needed), marching through the teacher's occupancy grid, which the student run keeps. The
result is an ordinary scene run (same config layout as `reconstruct`), so `render`, `export-mesh`
and the app open it. When the teacher's images are at hand, the run is also scored on the test
views and may be fine-tuned on the training images (``finetune_steps``).

Student types are the builders in `STUDENTS`; a new radiance field with the channel contract is
one more entry there.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from fieldstudio import __version__, runs
from fieldstudio.device import pick_device
from fieldstudio.errors import ConfigError, InputError, TrainingError
from fieldstudio.fields.radiance import NGP_CAM, NGP_ENCODING, NGPRadianceField, VanillaNeRF, ngp_per_level_scale
from fieldstudio.fields.radiance_grids import TensoRFField, VoxelField
from fieldstudio.renderers.distill import (STAGE_NAMES, DistillSchedule, LossWeights, check_channels,
                                           cosine_lr_factor, distill, has_feature)
from fieldstudio.renderers.virtual_views import VirtualCameras

from .training import encoder_param_groups, make_adam

#: PVD's log-density range, applied to teacher and student
CLIP = [-2.0, 7.0]

#: field otypes a teacher run may hold
TEACHER_TYPES = ("NGPRadianceField", "VanillaNeRF", "TensoRFField", "VoxelField")


def _mlp(teacher, backend, seed, fit_box=True, config=None):
    return VanillaNeRF({"log_density_clip": CLIP, **(config or {})}, backend=backend)


def _hashgrid(teacher, backend, seed, fit_box=True, config=None):
    # the CPU-sized grid `reconstruct` uses for images up to 400 px (T = 2^17, N_max = 512)
    enc = {**NGP_ENCODING, "log2_hashmap_size": 17, "per_level_scale": round(ngp_per_level_scale(512, 16, 16), 6)}
    return NGPRadianceField({"encoding": enc, "log_density_clip": CLIP, **(config or {})}, backend=backend)


def _neurbf(teacher, backend, seed, fit_box=True, config=None):
    """Instant-NGP with NeuRBF in place of the hash grid (`reconstruct --encoder neurbf`), with the
    kernels placed from the teacher itself instead of a warm-up fit."""
    from .scene_kernels import neurbf_radiance_config, placement_weights

    cfg = {**neurbf_radiance_config(), "log_density_clip": CLIP, **(config or {})}
    fld = NGPRadianceField(cfg, backend=backend)
    res = max(48, math.ceil((4 * fld.encoding.n_kernels) ** (1 / 3)))
    pts, w = placement_weights(teacher.field, teacher.render_step_size, resolution=res)
    fld.encoding.initialize(pts, w, min_width=1 / res / 200, max_width=0.1, seed=seed)
    return fld


def _cam(teacher, backend, seed, fit_box=True, config=None):
    """The hash-grid student with CAM on its density MLP (`reconstruct --cam`): a 10 x 3 view-direction
    grid; its density and feature depend on the direction, so every stage evaluates them with one."""
    return _hashgrid(teacher, backend, seed, config={"cam": NGP_CAM, **(config or {})})


def _tensorf(teacher, backend, seed, fit_box=True, config=None):
    return TensoRFField({"log_density_clip": CLIP, "bounds": teacher.occupied_bounds() if fit_box else None,
                         **(config or {})}, backend=backend)


def _voxels(teacher, backend, seed, fit_box=True, config=None):
    """PVD's 128^3 dense grid, finer than `reconstruct`'s 96^3: the teacher supervises every sample,
    so the finer grid pays (lego, 330 s: 30.88 against 30.32 dB at 96^3), while from images alone in
    that time it trails (28.90 against 29.93 dB). Finer still pays little in the same time: 160^3
    gave 31.15 against 30.99 dB for twice the memory and checkpoint, 192^3 30.82 dB (each vertex
    sees fewer samples a step, so it converges more slowly)."""
    return VoxelField({"resolution": 128, "log_density_clip": CLIP,
                       "bounds": teacher.occupied_bounds() if fit_box else None, **(config or {})}, backend=backend)


#: student type -> (builder(teacher SceneModel, backend, seed, fit_box, config) -> field, learning rate);
#: ``fit_box``: a grid student spans only the teacher's occupied box
#: (`SceneModel.occupied_bounds`), others ignore it; ``config``: entries that replace the
#: builder's own in the field's config (its top level)
STUDENTS: dict[str, tuple[Callable[..., torch.nn.Module], float]] = {
    "mlp": (_mlp, 1e-3),  # PVD: x0.1 for MLPs
    "hashgrid": (_hashgrid, 1e-2),
    "tensorf": (_tensorf, 1e-2),
    "voxels": (_voxels, 1e-1),
    "neurbf": (_neurbf, 1e-2),
    "cam": (_cam, 1e-2),
}


#: the --student-config example the help and errors show
STUDENT_CONFIG_EXAMPLE = '{"resolution": 160}'


def load_teacher(path: str | Path, device: str = "auto"):
    """The teacher's SceneModel and run config, with a clear error for anything that is not a scene run."""
    from .reconstruct import load_scene_run

    path = Path(path)
    if not (path / runs.CONFIG).exists():
        raise InputError(f"teacher run not found: {path} has no {runs.CONFIG}",
                         "pass the --out folder of `fieldstudio reconstruct` (or of another distill)")
    cfg = runs.read_json(path / runs.CONFIG, "run config")
    otype = str(cfg.get("field", {}).get("otype", "?"))
    if cfg.get("kind") != "scene" or otype not in TEACHER_TYPES:
        raise InputError(f"{path} is a '{cfg.get('kind')}' run with a '{otype}' field, not a radiance field teacher",
                         f"teachers are scene runs of: {', '.join(TEACHER_TYPES)}")
    model, cfg = load_scene_run(path, device=device)
    model.field.cfg["log_density_clip"] = list(CLIP)
    return model, cfg


def virtual_cameras_for(cfg: dict[str, Any], aabb: torch.Tensor, dataset=None) -> VirtualCameras:
    """Cameras like the teacher's training views when its images are at hand, else a sphere around the box."""
    center = ((aabb[0] + aabb[1]) / 2).tolist()
    if dataset is not None and not dataset.forward_facing:
        train = dataset.split("train").cpu()
        cams = dataset.cameras
        fov = math.degrees(2 * math.atan(0.5 * dataset.width / float(cams.fx[train].mean())))
        return VirtualCameras.from_poses(cams.c2w[train].cpu(), center, fov)
    half = float((aabb[1] - aabb[0]).norm()) / 2
    summary = cfg.get("scene", {}).get("summary", {})
    fx, width = summary.get("fx", [None])[0], summary.get("width")
    fov = math.degrees(2 * math.atan(0.5 * width / fx)) if fx and width else 40.0
    return VirtualCameras(center, 1.6 * half, fov_deg=fov)


def _open_dataset(cfg: dict[str, Any], data: str | None, device):
    from fieldstudio.datasets.scene import load_scene

    s = cfg["scene"]
    src = data or s.get("data")
    if src is None:  # a run of the bundled procedural scene
        return load_scene(None).to(device)
    if not src or not Path(src).exists():
        return None
    return load_scene(src, format=s.get("format", "auto") if not data else "auto", downscale=s.get("downscale", 1)).to(device)


def _finetune(model, dataset, steps: int | None, lr: float, seed: int, progress: bool = False,
              time_budget: float | None = None, target_samples: int | None = None,
              lr_final: float = 0.03) -> tuple[int, float]:
    """Steps on the real training images (PVD's optional last stage), ending after ``steps`` (None:
    no limit) or ``time_budget`` seconds, whichever comes first; returns (steps taken, seconds spent).

    Rays are drawn as `reconstruct` draws them, the count adapting so each step renders about
    ``target_samples`` samples (2^15 on a CPU, 2^16 on a GPU); the rate restarts at the student's
    ``lr`` and decays (cosine, as in distillation, along the larger of the step and time fractions)
    to ``lr * lr_final``. A fixed tenth of
    the rate on 2,048 rays, measured on lego, left a distilled TensoRF 0.3 dB lower after 60 s.
    """
    from tqdm.auto import tqdm

    from .reconstruct import next_ray_count, random_training_rays, target_samples_for

    t0 = time.perf_counter()
    opt = make_adam(model.field, lr, encoder_param_groups(model.field, lr))
    base = [g["lr"] for g in opt.param_groups]
    train_idx = dataset.split("train")
    target_samples = target_samples or target_samples_for(dataset.device)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(total=steps, desc="fine-tune", disable=not progress, leave=False)
    done, n = 0, 1024
    while True:
        elapsed = time.perf_counter() - t0
        frac = max(done / steps if steps else 0.0, elapsed / time_budget if time_budget else 0.0)
        if frac >= 1.0:
            break
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * cosine_lr_factor(frac, lr_final)
        rays, target, bg = random_training_rays(dataset, train_idx, n, gen)
        rgb, _, _, n_samples = model.render_rays(rays, bg, stratified=True)
        loss = torch.mean((rgb - target) ** 2)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tuning diverged: loss {float(loss)} at fine-tune step {done}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
        n = next_ray_count(n, n_samples, target_samples)
        bar.update()
    bar.close()
    return done, time.perf_counter() - t0


def distill_run(teacher: str | Path, to: str, *, out: str | Path, steps: int = 2000, n_rays: int = 1024,
                lr: float | None = None, seed: int = 0, device: str = "auto", backend: str = "auto",
                feature_steps: int | None = None, point_steps: int | None = None, time_budget: float | None = None,
                data: str | None = None, eval_views: int | None = None, finetune_steps: int = 0,
                finetune_time: float | None = None, resume: bool = False, checkpoint_every: int = 500, progress: bool = True,
                callback=None, student: torch.nn.Module | None = None, fit_box: bool = True,
                weights: LossWeights | None = None, student_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Distil the scene run ``teacher`` into a ``to`` field written as the scene run ``out``.

    ``student`` (a field module with the channel contract) overrides the builder of ``to``, which
    then only names the run. ``finetune_steps`` / ``finetune_time`` (seconds): a last stage on the
    real training images, ending at whichever limit is given first (a time alone means as many steps
    as fit). ``fit_box``: a grid student (tensorf, voxels) spans only the teacher's occupied box
    (`SceneModel.occupied_bounds`); False: the whole scene box. ``weights``: the loss weights
    (default `LossWeights()`; a resumed run keeps its own). ``student_config``: entries that replace
    the ``to`` builder's own in the student field's config, e.g. ``{"resolution": 160}`` for voxels or
    NeRF's ``{"n_neurons": 256, "n_hidden_layers": 8, "skips": [4]}`` for the MLP (a resumed run
    keeps its own field). Returns the metrics written to metrics.json.
    """
    from .reconstruct import SceneModel, build_scene_model, evaluate_views

    out = Path(out)
    if student is None and to not in STUDENTS:
        raise ConfigError(f"unknown student type '{to}'", f"use --to one of: {', '.join(STUDENTS)}")
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}", "e.g. --steps 2000")
    if student_config and student is not None:
        raise ConfigError("a student module and a student config were both given", "configure the module itself")
    if (student_config or {}).get("log_density_clip", CLIP) != CLIP:
        # the losses compare clamped log-densities: the student's range must be the teacher's
        raise ConfigError(f"the student's log_density_clip is PVD's {CLIP}, shared with the teacher",
                          "leave log_density_clip out of the student config")
    if (out / runs.STATE).exists() and not resume:
        raise InputError(f"{out} already holds a run", "pass --resume to continue it, or choose another --out")
    dev = pick_device(device)
    tmodel, tcfg = load_teacher(teacher, device=str(dev))
    aabb = tmodel.aabb.detach().cpu()
    step_size = tmodel.render_step_size
    if resume:
        old = runs.read_json(out / runs.CONFIG, "run config")
        model = build_scene_model(old["field"], old["scene"]["grid"], old["scene"]["aabb"], step_size).to(dev)
        lr = old["train"]["lr"]
        if weights is None:  # a run resumes with its own loss; one written before visible_color had the plain mean
            weights = LossWeights(**{"visible_color": False, **old["train"].get("distill", {}).get("loss_weights", {})})
    else:
        torch.manual_seed(seed)
        if student is None:
            build, default_lr = STUDENTS[to]
            student = build(tmodel, backend, seed, fit_box=fit_box, config=student_config)
        else:
            default_lr = 1e-2
        lr = default_lr if lr is None else lr
        model = SceneModel(student, copy.deepcopy(tmodel.grid), aabb, step_size).to(dev)
    try:
        check_channels(model.field, f"the '{to}' student", device=dev)
    except ValueError as exc:
        raise ConfigError(f"{exc}: it cannot be distilled into",
                          f"use a field with channels(x, d) -> log_density, rgb (and feature); or --to one of: "
                          f"{', '.join(STUDENTS)}") from exc
    if not hasattr(model.field, "config"):
        raise ConfigError(f"the '{to}' student has no config, so its run could not be reopened",
                          "give the field a `config` property and register it in fieldstudio.fields.registry")
    dataset = _open_dataset(tcfg, data, dev)
    if (finetune_steps or finetune_time) and dataset is None:
        raise InputError("fine-tuning needs the teacher's training images, which were not found",
                         "pass --data with the teacher's scene folder, or drop --finetune-steps / --finetune-time")
    cams = virtual_cameras_for(tcfg, aabb, dataset)
    sched = DistillSchedule(feature_steps if feature_steps is not None else DistillSchedule.for_steps(steps).feature_steps,
                            point_steps if point_steps is not None else DistillSchedule.for_steps(steps).point_steps)
    weights = weights or LossWeights()
    config = copy.deepcopy(tcfg)
    config.update({"format_version": runs.FORMAT_VERSION, "fieldstudio": __version__, "kind": "scene",
                   "field": model.field.config, "weights_prefix": "field."})
    config.pop("step", None)
    config["train"] = {
        "field": to, "lr": lr, "seed": seed, "steps": steps,
        "distill": {"teacher": str(Path(teacher).resolve()), "teacher_field": tcfg["field"]["otype"],
                    "method": "PVD (progressive volume distillation)", "n_rays": n_rays,
                    "schedule": {"feature_steps": sched.feature_steps, "point_steps": sched.point_steps,
                                 "feature_stage": has_feature(tmodel.field) and has_feature(model.field)},
                    "loss_weights": weights.__dict__, "log_density_clip": CLIP, "time_budget": time_budget,
                    "virtual_cameras": cams.config(), "finetune_steps": finetune_steps,
                    "finetune_time": finetune_time,
                    "finetune_schedule": "rate restarts at lr, cosine to 3 %; rays adapt to reconstruct's samples per step"},
        "optimizer": {"otype": "Adam", "beta1": 0.9, "beta2": 0.99, "epsilon": 1e-15},
        "schedule": "cosine decay to 3 % of lr",
    }
    out.mkdir(parents=True, exist_ok=True)
    opt = make_adam(model.field, lr, encoder_param_groups(model.field, lr))
    start, history = 0, []
    if resume:
        from .training import load_checkpoint

        st = load_checkpoint(out, model, opt)
        start, history = st.step, st.history
    else:
        runs.atomic_write_json(out / runs.CONFIG, config)

    def save(step, optimizer):
        runs.save_weights(out / runs.WEIGHTS, model)
        runs.save_torch(out / runs.STATE, {"step": step, "seconds": 0.0, "optimizer": optimizer.state_dict(),
                                           "history": history, "extra": {}})
        runs.atomic_write_json(out / runs.HISTORY, history)
        runs.atomic_write_json(out / runs.CONFIG, {**config, "step": step})

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, desc=f"distill -> {to}", disable=not progress, dynamic_ncols=True)

    def on_step(step, rec):
        if rec is not None:
            history.append(rec)
            bar.set_description(f"distill -> {to} [stage {rec['stage']}: {STAGE_NAMES[rec['stage']]}]", refresh=False)
            bar.set_postfix({"psnr_vs_teacher": rec["psnr"], "loss": f"{rec['loss']:.3g}"}, refresh=False)
            bar.update(step - bar.n)
        return callback(step, rec) if callback is not None else None

    try:
        res = distill(tmodel.field, model.field, aabb=aabb.to(dev), grid=tmodel.grid, render_step_size=step_size,
                      cameras=cams, steps=steps, schedule=sched, weights=weights, n_rays=n_rays, optimizer=opt,
                      time_budget=time_budget, start_step=start, seed=seed, callback=on_step,
                      checkpoint_every=checkpoint_every, on_checkpoint=save)
    except FloatingPointError as exc:
        raise TrainingError(f"{exc}; the last good checkpoint is kept in {out}", "lower the learning rate (--lr)") from exc
    finally:
        bar.close()
    metrics: dict[str, Any] = {"student": to, "teacher": str(teacher), "steps": res.steps,
                               "seconds": round(res.seconds, 2), "stage_starts": res.stage_starts,
                               "params": sum(p.numel() for p in model.field.parameters()),
                               "psnr_vs_teacher_last": history[-1]["psnr"] if history else None, "device": str(dev)}
    if finetune_steps or finetune_time:
        try:
            done, secs = _finetune(model, dataset, finetune_steps or None, lr, seed, progress, time_budget=finetune_time)
        except FloatingPointError as exc:
            raise TrainingError(f"{exc}; the distilled student is kept in {out}", "lower the learning rate (--lr)") from exc
        metrics.update(finetune_steps=done, finetune_seconds=round(secs, 2))
        runs.save_weights(out / runs.WEIGHTS, model)
    if dataset is not None:
        model.eval()
        test_idx = dataset.split("test")
        test_idx = test_idx[:eval_views] if eval_views else test_idx
        q = evaluate_views(model, dataset, test_idx, out_dir=out, progress=progress)
        metrics.update(psnr=q["psnr"], ssim=q["ssim"], test_views=q["views"], psnr_per_view=q["psnr_per_view"])
    runs.atomic_write_json(out / runs.METRICS, metrics)
    with open(out / runs.LOG, "a") as f:
        f.write(f"distill {teacher} -> {to}: {res.steps} steps, {res.seconds:.1f} s"
                + (f", test PSNR {metrics['psnr']:.2f} dB\n" if "psnr" in metrics else "\n"))
    return metrics


def _cmd_distill(args) -> int:
    from .config_files import read_config_arg

    student_config = read_config_arg(args.student_config, "--student-config", STUDENT_CONFIG_EXAMPLE) \
        if args.student_config else None
    m = distill_run(args.teacher, args.to, out=args.out, steps=args.steps, n_rays=args.rays, lr=args.lr,
                    seed=args.seed, device=args.device, data=args.data, eval_views=args.eval_views,
                    finetune_steps=args.finetune_steps, finetune_time=args.finetune_time, resume=args.resume,
                    checkpoint_every=args.checkpoint_every, progress=not args.quiet, time_budget=args.time_budget,
                    fit_box=not args.full_box, student_config=student_config)
    score = f"test PSNR {m['psnr']:.2f} dB over {m['test_views']} views  " if "psnr" in m else ""
    print(f"{score}student vs teacher {m['psnr_vs_teacher_last']} dB  {m['steps']} steps in {m['seconds']:.1f} s  "
          f"->  {args.out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("distill", help="convert a scene run into another field type (PVD distillation)",
                       description="Distil a trained scene run into another radiance field type, on random virtual "
                                   "cameras; the result is a scene run that render / export-mesh / app open.")
    p.add_argument("teacher", help="the teacher's run folder (from `reconstruct` or `distill`)")
    p.add_argument("--to", required=True, help=f"student type: {' | '.join(STUDENTS)}")
    p.add_argument("--steps", type=int, default=2000, help="distillation steps (stages at 1/15 and 1/6 of them)")
    p.add_argument("--out", default="runs/distilled", help="run folder to write")
    p.add_argument("--rays", type=int, default=1024, help="virtual rays per step")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default per student type)")
    p.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds (stages follow the time)")
    p.add_argument("--data", default=None, help="the teacher's scene data, for scoring and --finetune-steps "
                                                "(default: the path its run records, when present)")
    p.add_argument("--eval-views", type=int, default=None, help="score only the first N test views")
    p.add_argument("--finetune-steps", type=int, default=0, help="fine-tune on the real training images afterwards")
    p.add_argument("--finetune-time", type=float, default=None,
                   help="seconds of that fine-tuning (alone: as many steps as fit; with --finetune-steps: whichever ends first)")
    p.add_argument("--student-config", default=None, metavar="JSON",
                   help="entries replacing the student's own field config, inline or a .json file, e.g. "
                        f"'{STUDENT_CONFIG_EXAMPLE}' (voxels) or NeRF's 8 x 256 trunk for mlp: "
                        "'{\"n_neurons\": 256, \"n_hidden_layers\": 8, \"skips\": [4]}'")
    p.add_argument("--full-box", action="store_true",
                   help="a tensorf / voxels student spans the whole scene box (default: the teacher's occupied box)")
    from .cli import _add_training_flags

    _add_training_flags(p, checkpoint_every=500)
    p.set_defaults(func=_cmd_distill)
