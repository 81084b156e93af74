"""One compression session: train a video into a `VideoLibrary`'s field, prune, fine-tune, quantise.

With ``capacity`` < 1 the session trains WSN scores (PFNR): its mask is the top ``capacity`` of
each tensor's scores. With ``capacity`` = 1 it trains the whole network (NeRV). Either way the
weights earlier sessions used are frozen (their gradients are zeroed after every backward pass,
and Adam, created fresh per session, then never moves them), and may be reused.

After training, magnitude pruning drops the ``prune`` fraction of smallest *new* weights of each
tensor (reused frozen weights stay), the remaining ones are fine-tuned with the mask fixed, and
`VideoLibrary.add_session` quantises and encodes them.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch

from fieldstudio.codecs.fsv import VideoLibrary
from fieldstudio.codecs.quality import frame_metrics, summarize, to_uint8, video_loss
from fieldstudio.errors import FieldStudioError, TrainingError

from .training import Callback
from fieldstudio.fields.subnet import masked_tensors, set_mode
from fieldstudio.fields.video import VideoField


def _reinit_free(field: VideoField, used: dict[str, torch.Tensor], seed: int) -> None:
    """Fresh initial values (and scores) for the weights no session has used yet."""
    torch.manual_seed(seed)
    fresh = VideoField({**field.config, "heads": 1}).to(next(field.parameters()).device)
    fresh_tensors = {n: (layer, a) for n, layer, a in masked_tensors(fresh)}
    with torch.no_grad():
        for name, layer, attr in masked_tensors(field):
            flayer, fattr = fresh_tensors[name]
            p, u = getattr(layer, attr), used[name].to(getattr(layer, attr).device)
            p.copy_(torch.where(u, p, getattr(flayer, fattr)))
            getattr(layer, f"score_{attr}").copy_(getattr(flayer, f"score_{fattr}"))


def _cosine(step: int, total: int, warmup: float = 0.1) -> float:
    w = max(1, int(warmup * total))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


class SessionStopped(FieldStudioError):
    """A callback asked a compression session to stop; nothing is written (a session has no checkpoint)."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"compression stopped at step {step}; no file was written", "start it again")


def _fit(field, head: int, frames: torch.Tensor, steps: int, lr: float, batch: int, frozen: dict, params: list,
         seed: int, desc: str, progress: bool, log: list, callback: Callback | None = None, offset: int = 0) -> None:
    from tqdm.auto import tqdm

    n = frames.shape[0]
    # params: tensors, or groups with an "lr_factor" (a multiple of the network's rate)
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(seed)
    tensors = [(getattr(layer, attr), frozen[name].to(frames.device)) for name, layer, attr in masked_tensors(field)]
    t_all = torch.arange(n, dtype=torch.float32, device=frames.device) / n
    perm = torch.randperm(n, generator=gen)
    cursor = 0
    bar = tqdm(total=steps, desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_factor", 1.0) * _cosine(step, steps)
        if cursor + batch > n:  # one pass over the frames per epoch, in a new order
            perm, cursor = torch.randperm(n, generator=gen), 0
        idx = perm[cursor:cursor + batch].to(frames.device)
        cursor += batch
        pred = field(t_all[idx], head)
        loss = video_loss(pred, frames[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p, fz in tensors:
            if p.grad is not None:
                p.grad[fz] = 0
        opt.step()
        if (step + 1) % 25 == 0 or step + 1 == steps:
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise TrainingError(f"training diverged: loss is {lv} at step {step + 1}",
                                    "lower the learning rate (--lr) and run again")
            mse = float(((pred.detach() - frames[idx]) ** 2).mean())
            log.append({"phase": desc, "step": step + 1, "loss": round(lv, 5),
                        "psnr": round(-10 * math.log10(max(mse, 1e-12)), 3)})
            bar.set_postfix(loss=f"{lv:.4f}", psnr=log[-1]["psnr"], refresh=False)
            rec = log[-1]
        else:
            rec = None
        bar.update(1)
        if callback is not None and callback(offset + step + 1, dict(rec) if rec else None):
            bar.close()
            raise SessionStopped(offset + step + 1)
    bar.close()


def prune_new(field, masks: dict[str, torch.Tensor], used: dict[str, torch.Tensor], prune: float) -> dict[str, torch.Tensor]:
    """Drop the ``prune`` fraction of smallest-magnitude new weights of each tensor from ``masks``."""
    out = {}
    for name, layer, attr in masked_tensors(field):
        m = masks[name].clone()
        new = m & ~used[name]
        k = int(round(prune * int(new.sum())))
        if k > 0:
            mag = getattr(layer, attr).detach().abs().cpu().flatten()
            mag = torch.where(new.flatten(), mag, torch.full_like(mag, float("inf")))
            drop = torch.topk(mag, k, largest=False).indices
            flat = m.flatten()
            flat[drop] = False
            m = flat.view_as(m)
        out[name] = m
    return out


def _groups(field: VideoField, s: int, shared: list) -> list[dict]:
    """Adam groups: the shared tensors and video s's head at the base rate, its CAM grids at theirs."""
    groups = [{"params": shared + list(field.heads[s].parameters())}]
    if field.cams is not None:
        for cam in field.cams[s]:
            groups.append({"params": list(cam.parameters()), "lr_factor": cam.lr_factor})
    return groups


def train_session(lib: VideoLibrary, frames_u8: np.ndarray, *, name: str, fps: float = 24.0, steps: int = 1000,
                  capacity: float = 1.0, prune: float = 0.2, finetune: float = 0.2, lr: float = 1e-2, batch: int = 2,
                  seed: int = 0, device: str | torch.device = "cpu", progress: bool = True,
                  log: Callable[[str], None] | None = None, callback: Callback | None = None) -> dict[str, Any]:
    """Add ``frames_u8`` [T, H, W, 3] as a new session of ``lib``; returns its metrics and timings.

    ``callback(step, record)`` as in `fieldstudio.apps.training.train`, with ``step`` counted over
    training and fine-tuning together (1..``steps``); returning True stops with `SessionStopped`.
    """
    field = lib.field
    s = len(lib.videos)
    if s > 0 and s >= len(field.heads):
        field.add_head()
    used = lib.used()
    _reinit_free(field, used, seed + 1000 * s)
    torch.manual_seed(seed + 1000 * s + 1)
    with torch.no_grad():  # a fresh head for this video
        ref = torch.nn.Conv2d(field.heads[s].in_channels, 3, 1)
        field.heads[s].weight.copy_(ref.weight)
        field.heads[s].bias.copy_(ref.bias)
        if field.cams is not None:  # identity modulation to start: gamma 1, beta 0
            for cam in field.cams[s]:
                cam.grid[:, 0] = 1.0
                cam.grid[:, 1] = 0.0
    frames = torch.from_numpy(frames_u8).to(device).permute(0, 3, 1, 2).float() / 255
    field.train()
    history: list[dict] = []
    t0 = time.perf_counter()
    scores = capacity < 1.0
    set_mode(field, "score" if scores else "dense", capacity)
    shared = [p for _, p in field.shared_parameters()]
    score_params = [getattr(layer, f"score_{a}") for _, layer, a in masked_tensors(field)] if scores else []
    train_steps = max(1, int(round(steps * (1 - finetune)))) if prune > 0 else steps
    _fit(field, s, frames, train_steps, lr, batch, used, _groups(field, s, shared + score_params),
         seed, f"video {s + 1}", progress, history, callback)
    masks = {key: layer.current_mask(attr).cpu() for key, layer, attr in masked_tensors(field)}
    if prune > 0:
        masks = prune_new(field, masks, used, prune)
        set_mode(field, "fixed")
        for key, layer, attr in masked_tensors(field):
            getattr(layer, f"mask_{attr}").copy_(masks[key].to(getattr(layer, attr).device))
        ft_steps = steps - train_steps
        if ft_steps > 0:
            _fit(field, s, frames, ft_steps, lr * 0.5, batch, used, _groups(field, s, shared),
                 seed + 7, f"video {s + 1} fine-tune", progress, history, callback, offset=train_steps)
    train_seconds = time.perf_counter() - t0
    meta = {"name": name, "frames": int(frames_u8.shape[0]), "height": int(frames_u8.shape[1]),
            "width": int(frames_u8.shape[2]), "fps": float(fps)}
    lib.add_session(masks, meta)
    t1 = time.perf_counter()
    decoded = to_uint8(lib.decode(s))
    decode_seconds = time.perf_counter() - t1
    per_frame = frame_metrics(decoded, frames_u8)
    avg = summarize(per_frame)
    pixels = frames_u8.shape[0] * frames_u8.shape[1] * frames_u8.shape[2]
    new_weights = sum(int((masks[n] & ~used[n]).sum()) for n in masks)
    reused = sum(int((masks[n] & used[n]).sum()) for n in masks)
    metrics = {"psnr": round(avg["psnr"], 4), "ms_ssim": round(avg["ms_ssim"], 5),
               "bpp": round(lib.videos[s]["bytes"] * 8 / pixels, 5), "new_weights": new_weights,
               "reused_weights": reused, "train_seconds": round(train_seconds, 2),
               "decode_seconds": round(decode_seconds, 3)}
    lib.videos[s]["metrics"] = metrics
    return {**metrics, "per_frame": per_frame, "history": history, "decoded": decoded}
