"""The one training loop every fitting command shares.

An app supplies ``step_fn(step) -> (loss, psnr_or_None)`` and the loop does the rest: Adam with
tcnn's defaults, a progress bar with live PSNR, periodic atomic checkpoints, resume, and a NaN
guard that stops cleanly and leaves the last good checkpoint in place.

Host synchronisation (``.item()``) happens only every ``log_every`` steps, so on a GPU the loop
does not stall the device each step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from fieldstudio import optim, runs
from fieldstudio.errors import FieldStudioError, InputError, TrainingError

StepFn = Callable[[int], "tuple[torch.Tensor, torch.Tensor | None]"]
#: ``callback(step, record)`` after every step: ``record`` is the new history entry on logged
#: steps and None between them (no host sync); returning True stops training at that step.
Callback = Callable[[int, "dict[str, float] | None"], "bool | None"]


class TrainingStopped(FieldStudioError):
    """A callback asked the loop to stop; the checkpoint at ``step`` is saved and resumable."""

    def __init__(self, step: int, run_dir: Path):
        self.step, self.run_dir = step, run_dir
        super().__init__(f"training stopped at step {step}; its checkpoint is kept in {run_dir}",
                         "continue with --resume")


@dataclass
class TrainState:
    step: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # app state that must survive a resume


#: Adam with tiny-cuda-nn's settings, betas (0.9, 0.99) and eps 1e-15: fused where it can be,
#: lazy where the module has sparse gradients (`fieldstudio.optim.adam`)
make_adam = optim.adam


def encoder_param_groups(fld: torch.nn.Module, lr: float) -> list[dict] | None:
    """Separate rates for the modules that ask for their own (an ``lr_factor`` attribute), else None.

    The field's encoder (``encoding.lr_factor``, e.g. NeuRBF) and any CAM modulation grid (factor 10)
    carry the tag; a module's parameters take the factor of the outermost tagged module holding them.
    """
    factor_of: dict[int, float] = {}
    for _, mod in fld.named_modules():
        factor = getattr(mod, "lr_factor", None)
        if mod is fld or not isinstance(factor, (int, float)):
            continue
        for p in mod.parameters():
            factor_of.setdefault(id(p), float(factor))
    if all(f == 1.0 for f in factor_of.values()):
        return None
    groups: dict[float, list] = {}
    for p in fld.parameters():
        if p.requires_grad:
            groups.setdefault(factor_of.get(id(p), 1.0), []).append(p)
    rest = groups.pop(1.0, [])
    return [{"params": rest}] + [{"params": ps, "lr": lr * f} for f, ps in groups.items()]


def psnr_from_mse(mse: float) -> float:
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def save_checkpoint(run_dir: Path, fld: torch.nn.Module, opt: torch.optim.Optimizer, state: TrainState,
                    config: dict[str, Any]) -> None:
    """Weights, optimiser state and the curve; each file replaced atomically."""
    runs.save_weights(run_dir / runs.WEIGHTS, fld)
    runs.save_torch(run_dir / runs.STATE, {"step": state.step, "seconds": state.seconds,
                                           "optimizer": opt.state_dict(), "history": state.history,
                                           "extra": state.extra})
    runs.atomic_write_json(run_dir / runs.HISTORY, state.history)
    cfg = dict(config)
    cfg["step"] = state.step
    runs.atomic_write_json(run_dir / runs.CONFIG, cfg)


def load_checkpoint(run_dir: Path, fld: torch.nn.Module, opt: torch.optim.Optimizer) -> TrainState:
    from safetensors.torch import load_file

    state_path = run_dir / runs.STATE
    if not state_path.exists() or not (run_dir / runs.WEIGHTS).exists():
        raise InputError(f"nothing to resume in {run_dir}: no checkpoint yet", "start a new run without --resume")
    device = next(fld.parameters()).device
    fld.load_state_dict({k: v.to(device) for k, v in load_file(str(run_dir / runs.WEIGHTS)).items()})
    saved = torch.load(state_path, map_location=device, weights_only=False)
    opt.load_state_dict(saved["optimizer"])
    return TrainState(step=int(saved["step"]), seconds=float(saved["seconds"]), history=list(saved["history"]),
                      extra=dict(saved.get("extra", {})))


def train(fld: torch.nn.Module, step_fn: StepFn, opt: torch.optim.Optimizer, *, steps: int, run_dir: Path,
          config: dict[str, Any], state: TrainState | None = None, checkpoint_every: int = 500,
          log_every: int = 10, progress: bool = True, desc: str = "fit",
          scheduler: Callable[[int], float] | None = None, log: Callable[[str], None] | None = None,
          callback: Callback | None = None) -> TrainState:
    """Run ``steps`` optimisation steps in total (counting those already in ``state``).

    ``callback`` (see `Callback`) lets a caller follow progress and stop early: the loop then
    saves a checkpoint at the current step and raises `TrainingStopped`.
    """
    from tqdm.auto import tqdm

    state = state or TrainState()
    # the un-scheduled rates live in the optimiser's own state, so a resumed run scales the same base
    base_lrs = [g.setdefault("initial_lr", g["lr"]) for g in opt.param_groups]
    bar = tqdm(total=steps, initial=state.step, desc=desc, disable=not progress, dynamic_ncols=True, leave=True)
    last_good = state.step if (run_dir / runs.WEIGHTS).exists() else None
    pending_loss: torch.Tensor | None = None
    pending_psnr: torch.Tensor | None = None
    try:
        while state.step < steps:
            t0 = time.perf_counter()
            if scheduler is not None:
                factor = scheduler(state.step)
                for g, lr in zip(opt.param_groups, base_lrs):
                    g["lr"] = lr * factor
            opt.zero_grad(set_to_none=True)
            loss, psnr = step_fn(state.step)
            loss.backward()
            opt.step()
            state.step += 1
            pending_loss, pending_psnr = loss.detach(), (psnr.detach() if psnr is not None else None)
            check = state.step % log_every == 0 or state.step == steps or state.step % checkpoint_every == 0
            rec = None
            if check:
                loss_v = float(pending_loss)  # the only host sync of the step
                if not math.isfinite(loss_v):
                    where = f"the last good checkpoint (step {last_good}) is kept in {run_dir}" if last_good is not None \
                        else "no checkpoint had been written yet"
                    raise TrainingError(f"training diverged: loss is {loss_v} at step {state.step}; {where}",
                                        "lower the learning rate (--lr) and resume or restart")
                state.seconds += time.perf_counter() - t0
                rec = {"step": state.step, "seconds": round(state.seconds, 4), "loss": loss_v}
                if pending_psnr is not None:
                    rec["psnr"] = round(float(pending_psnr), 3)
                state.history.append(rec)
                bar.set_postfix({k: v for k, v in rec.items() if k in ("loss", "psnr")}, refresh=False)
                bar.update(state.step - bar.n)
            else:
                state.seconds += time.perf_counter() - t0
            if state.step % checkpoint_every == 0 or state.step == steps:
                save_checkpoint(run_dir, fld, opt, state, config)
                last_good = state.step
            if callback is not None and callback(state.step, dict(rec) if rec else None) and state.step < steps:
                if last_good != state.step and math.isfinite(float(pending_loss)):
                    save_checkpoint(run_dir, fld, opt, state, config)
                    last_good = state.step
                raise TrainingStopped(last_good if last_good is not None else state.step, run_dir)
    finally:
        bar.close()
    if log:
        last = state.history[-1] if state.history else {}
        log(f"trained {state.step} steps in {state.seconds:.1f} s; last: {last}")
    return state
