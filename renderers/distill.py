"""Progressive volume distillation (PVD, Fang et al., AAAI 2023): any radiance field -> any other.

Both fields only need the channel contract ``channels(x, d=None) -> {"log_density", "rgb"
(with d), "feature" (optional, 16-d)}`` on points ``x`` in [0, 1]^3 (the box ``aabb`` mapped to the
unit cube) and unit view directions ``d``. Training is progressive:

1. **features** (steps ``[0, feature_steps)``): only the volume feature of the student is pulled
   to the teacher's. Skipped when either side has no ``feature`` channel (a voxel grid);
2. **points** (until ``point_steps``): + the clamped log-density and the point colour, with the
   feature weight now decaying by ``feature_decay`` per step;
3. **render**: + the colour the student renders against the teacher's rendering of the same rays.

Teacher and student see the *same* samples: the rays come from random virtual cameras around the
scene (`VirtualCameras`, new poses every ``epoch_steps``), are marched through the teacher's
occupancy grid with the teacher's transmittance for early termination, and both fields are
evaluated at those points -- no training image is needed. Log-densities are clamped to
``log_density_clip`` (PVD: [-2, 7]) on both sides before any loss or rendering, so the densities
compared span a bounded range instead of many orders of magnitude.

Losses are mean squared errors (PVD uses the batch L2 norm, whose scale changes with the batch).
The point colour is a mean over the samples weighted by the teacher's rendering weight
(``LossWeights.visible_color``): a colour no camera sees does not matter, and the plain mean over
every sample, about half of them nearly transparent, made the point colour 7x the rendered-colour
term at the end of a TensoRF run on lego, steering the student's shared appearance parameters
towards colours in empty space. Weighted, on lego's test views after 330 s: TensoRF 32.63 against
32.45 dB, NeuRBF 32.90 against 32.52 dB (`benchmarks/distill_color_loss.py`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from fieldstudio.optim import adam

from .volume import accumulate_along_rays, march, render_weight_from_density
from .virtual_views import VirtualCameras

STAGE_NAMES = {1: "features", 2: "points", 3: "render"}


@dataclass
class DistillSchedule:
    """Stage 1 is ``[0, feature_steps)``, stage 2 ``[feature_steps, point_steps)``, stage 3 after."""

    feature_steps: int
    point_steps: int

    def __post_init__(self):
        if not 0 <= self.feature_steps <= self.point_steps:
            raise ValueError(f"DistillSchedule: need 0 <= feature_steps ({self.feature_steps}) <= point_steps "
                             f"({self.point_steps})")

    @classmethod
    def for_steps(cls, steps: int) -> "DistillSchedule":
        """PVD's proportions: 2k feature and 3k point steps out of 30k."""
        return cls(round(steps * 2 / 30), round(steps * 5 / 30))

    def stage(self, step: int, with_features: bool = True) -> int:
        if with_features and step < self.feature_steps:
            return 1
        return 2 if step < self.point_steps else 3


@dataclass
class LossWeights:
    rgb: float = 1.0
    color: float = 0.1
    log_density: float = 1e-3
    feature: float = 1.0
    #: the feature weight is multiplied by this every step after stage 1 (PVD: 0.995)
    feature_decay: float = 0.995
    #: the point colour error as a mean weighted by the teacher's rendering weight at each sample
    #: (False: the plain mean over all samples, PVD's)
    visible_color: bool = True


@dataclass
class DistillResult:
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    stage_starts: dict[int, int] = field(default_factory=dict)


def has_feature(fld: nn.Module) -> bool:
    """Whether a field exposes a volume feature (PVD stage 1 needs one on both sides)."""
    flag = getattr(fld, "has_feature", None)
    if flag is not None:
        return bool(flag)
    names = getattr(fld, "channel_names", None)
    return names is None or "feature" in names


def check_channels(fld: nn.Module, what: str, device=None) -> None:
    """Raise ValueError naming what is missing unless ``fld.channels`` gives log_density and rgb."""
    ch = getattr(fld, "channels", None)
    if ch is None:
        raise ValueError(f"{what} has no channels(x, d) method")
    x = torch.full((2, 3), 0.5, device=device)
    d = torch.nn.functional.normalize(torch.ones(2, 3, device=device), dim=-1)
    with torch.no_grad():
        out = ch(x, d)
    missing = [k for k in ("log_density", "rgb") if k not in out]
    if missing:
        raise ValueError(f"{what}'s channels lack {', '.join(missing)}")


def cosine_lr_factor(frac: float, final: float) -> float:
    """The learning-rate factor at ``frac`` of training: 1 at the start, ``final`` at the end."""
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * frac))


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mean((a.float() - b.float()) ** 2)


def _color_loss(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The squared colour error averaged over the samples, each counted by ``weight`` (None: equally)."""
    if weight is None:
        return _mse(a, b)
    err = torch.mean((a.float() - b.float()) ** 2, dim=-1)
    return torch.sum(weight * err) / weight.sum().clamp_min(1e-8)


def distill(teacher: nn.Module, student: nn.Module, *, aabb, grid, render_step_size: float,
            cameras: VirtualCameras, steps: int, schedule: DistillSchedule | None = None,
            weights: LossWeights | None = None, n_rays: int = 1024, lr: float = 1e-2, lr_final: float = 0.03,
            optimizer: torch.optim.Optimizer | None = None, log_density_clip: tuple[float, float] = (-2.0, 7.0),
            epoch_steps: int = 100, time_budget: float | None = None, start_step: int = 0, seed: int = 0,
            log_every: int = 10, callback: Callable[[int, dict | None], Any] | None = None,
            checkpoint_every: int = 0, on_checkpoint: Callable[[int, torch.optim.Optimizer], None] | None = None,
            ) -> DistillResult:
    """Distil ``teacher`` into ``student`` (both field modules, see the module doc) in place.

    ``grid``: the teacher's occupancy grid (an `OccupancyGrid` over ``aabb``); ``render_step_size``
    in the units of ``aabb``. ``steps`` optimisation steps (with ``time_budget`` seconds, training
    also ends when that time is spent, and stages and learning rate follow the fraction of the
    budget used instead of the step count). `fieldstudio.optim.adam` (0.9, 0.99, eps 1e-15) at ``lr`` with a cosine
    decay to ``lr * lr_final`` unless ``optimizer`` is given. ``callback(step, record)`` gets a
    record (step, stage, loss, psnr of the student's rendering against the teacher's, seconds)
    every ``log_every`` steps and None otherwise; returning True stops. ``on_checkpoint(step,
    optimizer)`` is called every ``checkpoint_every`` steps and at the end; ``start_step`` resumes.
    """
    schedule = schedule or DistillSchedule.for_steps(steps)
    w = weights or LossWeights()
    with_features = has_feature(teacher) and has_feature(student)
    box = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
    dev = next(student.parameters()).device
    box = box.to(dev)
    lo, hi = log_density_clip
    opt = optimizer or adam(student, lr)
    base = [g.setdefault("initial_lr", g["lr"]) for g in opt.param_groups]
    teacher.eval()
    student.train()

    def to_unit(p):
        return (p - box[0]) / (box[1] - box[0])

    def teacher_sigma(x):
        return torch.exp(teacher.channels(to_unit(x))["log_density"].clamp(lo, hi))

    result = DistillResult(steps=start_step, seconds=0.0)
    t0 = time.perf_counter()
    step = start_step
    gen = torch.Generator().manual_seed(seed)
    epoch = -1
    while step < steps:
        elapsed = time.perf_counter() - t0
        frac = step / steps if time_budget is None else max(step / steps, elapsed / time_budget)
        if frac >= 1.0:
            break
        eff = int(frac * steps)  # the step the schedule sees (== step without a time budget)
        stage = schedule.stage(eff, with_features)
        result.stage_starts.setdefault(stage, step)
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * cosine_lr_factor(frac, lr_final)
        if step // epoch_steps != epoch:  # a new epoch: new virtual poses
            epoch = step // epoch_steps
            gen.manual_seed(seed * 1_000_003 + epoch)
            cameras.regenerate(gen)
        gen.manual_seed(seed * 7_919 + step)
        rays = cameras.rays(n_rays, box, generator=gen, device=dev)
        o, d, v = rays.origins, rays.directions, rays.viewdirs
        t_max = torch.where(rays.hit, rays.t_far, rays.t_near - 1.0)
        with torch.no_grad():
            ri, ts, te = march(o, d, grid=grid, render_step_size=render_step_size, t_min=rays.t_near, t_max=t_max,
                               sigma_fn=lambda a, b, r: teacher_sigma(o[r] + d[r] * ((a + b) * 0.5)[:, None]),
                               early_stop_eps=1e-4, stratified=True)
            x = to_unit(o[ri] + d[ri] * ((ts + te) * 0.5)[:, None])
            vd = v[ri]
            ct = teacher.channels(x, vd)
            log_t = ct["log_density"].clamp(lo, hi)
            wt, _, _ = render_weight_from_density(ts, te, torch.exp(log_t), ri, n_rays)
            bg = torch.rand(n_rays, 3, generator=gen).to(dev)  # random background, as PVD for RGBA scenes
            op_t = accumulate_along_rays(wt, None, ri, n_rays)
            img_t = accumulate_along_rays(wt, ct["rgb"], ri, n_rays) + bg * (1 - op_t)

        # stage 1 aligns features only, which need no direction, except where the density MLP
        # itself is modulated by it (CAM)
        cs = student.channels(x, vd if stage > 1 or getattr(student, "view_dependent_density", False) else None)
        # no sample drawn: no loss, no step (a zero loss through every parameter would also make a
        # sparse gradient dense)
        loss = torch.zeros((), device=dev)
        fw = w.feature * (w.feature_decay ** max(0, eff - schedule.feature_steps) if stage > 1 else 1.0)
        if with_features and ri.numel() and fw > 1e-8:
            loss = loss + fw * _mse(cs["feature"], ct["feature"])
        img_s = None
        if stage >= 2 and ri.numel():
            log_s = cs["log_density"].clamp(lo, hi)
            loss = loss + w.log_density * _mse(log_s, log_t) + w.color * _color_loss(cs["rgb"], ct["rgb"],
                                                                                     wt if w.visible_color else None)
            if stage == 3:
                ws, _, _ = render_weight_from_density(ts, te, torch.exp(log_s), ri, n_rays)
                op_s = accumulate_along_rays(ws, None, ri, n_rays)
                img_s = accumulate_along_rays(ws, cs["rgb"], ri, n_rays) + bg * (1 - op_s)
                loss = loss + w.rgb * _mse(img_s, img_t)
        if loss.requires_grad:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step += 1
        rec = None
        if step % log_every == 0 or step == steps:
            loss_v = float(loss.detach())
            if not math.isfinite(loss_v):
                raise FloatingPointError(f"distillation diverged: loss {loss_v} at step {step}")
            if img_s is None:
                with torch.no_grad():
                    c2 = student.channels(x, vd)
                    ws, _, _ = render_weight_from_density(ts, te, torch.exp(c2["log_density"].clamp(lo, hi)), ri, n_rays)
                    img_s = accumulate_along_rays(ws, c2["rgb"], ri, n_rays) + bg * (1 - accumulate_along_rays(ws, None, ri, n_rays))
            mse = float(_mse(img_s.detach(), img_t))
            rec = {"step": step, "stage": stage, "loss": loss_v, "psnr": round(-10 * math.log10(max(mse, 1e-12)), 3),
                   "seconds": round(time.perf_counter() - t0, 3), "samples": int(ri.numel())}
            result.history.append(rec)
        if on_checkpoint is not None and checkpoint_every and step % checkpoint_every == 0:
            on_checkpoint(step, opt)
        if callback is not None and callback(step, rec):
            break
    result.steps = step
    result.seconds = time.perf_counter() - t0
    if on_checkpoint is not None:
        on_checkpoint(step, opt)
    return result


def weights_dict(w: LossWeights) -> dict[str, float]:
    return asdict(w)
