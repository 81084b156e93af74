"""Image tab: race one to four encoders on a photo with `fit_image`, live curves, results side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fieldstudio.apps.fit_image import fit_image
from fieldstudio.datasets.images import BUNDLED, DEFAULT_IMAGE, load_image
from fieldstudio.errors import ConfigError, InputError
from fieldstudio.fields.image import IMAGE_PRESETS

from . import common
from .jobs import JobContext
from .uploads import IMAGE_TYPES, check_upload

TITLE = "Image"
MAX_ENCODERS = 4
MAX_CURVE_POINTS = 400
CUSTOM = "custom (pasted tcnn JSON)"
#: display names; an encoder added to IMAGE_PRESETS later shows under its own name
LABELS = {"hashgrid": "hash grid", "siren": "SIREN", "frequency": "frequency (NeRF PE)", "neurbf": "NeuRBF",
          "ffn": "FFN", "ffn_cam": "FFN+CAM", "cam": "FFN+CAM"}
TABLE_HEADERS = ["encoder", "status", "params", "step", "steps/s", "train PSNR (dB)", "final PSNR (dB)", "SSIM"]


def encoder_choices() -> list[tuple[str, str]]:
    return [(LABELS.get(name, name), name) for name in IMAGE_PRESETS]


def image_job(ctx: JobContext, *, image: str, encoder: str, steps: int, crop: int | None, budget: int | None,
              out: Path) -> dict[str, Any]:
    ctx.set_phase("training")
    metrics = fit_image(image, encoder=encoder, steps=steps, out=out, crop=crop, budget=budget, progress=False,
                        checkpoint_every=max(50, steps // 4), callback=ctx.callback)
    for name in ("reconstruction.png", "error.png", "psnr.png"):
        if (out / name).exists():
            ctx.add_output(name, out / name)
    ctx.set_phase("packing the downloads")
    ctx.add_output("png", common.named_copy(out / "reconstruction.png", f"{out.name}-reconstruction.png"))
    ctx.add_output("run.zip", common.package_run(out))
    ctx.set_phase(f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}")
    return metrics


def start_race(studio: common.Studio, upload: str | None, bundled: str | None, encoders: list[str],
               custom_json: str, steps: Any, crop: Any, budget: Any) -> list[str]:
    """Check the inputs and submit one job per encoder; returns the job ids (raises on bad input)."""
    chosen = list(encoders or [])
    if custom_json and custom_json.strip():
        try:
            cfg = json.loads(custom_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"the pasted config is not valid JSON ({exc.msg} at line {exc.lineno})",
                              'paste a tcnn encoding, e.g. {"otype": "HashGrid", "n_levels": 16}') from None
        if not isinstance(cfg, dict):
            raise ConfigError("the pasted config must be a JSON object", 'e.g. {"otype": "HashGrid"}')
        chosen.append(CUSTOM)
    if not 1 <= len(chosen) <= MAX_ENCODERS:
        raise ConfigError(f"{len(chosen)} encoders chosen", f"pick one to {MAX_ENCODERS}")
    steps = int(steps or 0)
    if steps < 1:
        raise ConfigError("steps must be at least 1", "e.g. 300")
    crop = int(crop) if crop else None
    budget = int(budget) if budget else None
    if upload:
        path = check_upload(upload, IMAGE_TYPES, studio.max_upload_mb, "image")
        load_image(path)  # a corrupt file is named now, not once per encoder in the jobs
        image = str(path)
    else:
        image = bundled or DEFAULT_IMAGE
    ids = []
    for enc in chosen:
        out = studio.run_dir("image", f"{Path(image).stem}-{enc if enc != CUSTOM else 'custom'}")
        if enc == CUSTOM:
            (out / "encoder.json").write_text(custom_json)
            enc_arg, label = str(out / "encoder.json"), "custom"
        else:
            enc_arg, label = enc, LABELS.get(enc, enc)
        job = studio.manager.submit(
            lambda ctx, e=enc_arg, o=out: image_job(ctx, image=image, encoder=e, steps=steps, crop=crop,
                                                    budget=budget, out=o),
            kind="image", label=label, total=steps, out=out)
        ids.append(job.id)
    return ids


def thin(history: list[dict], keep: int = MAX_CURVE_POINTS) -> list[dict]:
    """At most about ``keep`` records, evenly spaced, always with the latest: a long run logs every 10
    steps, and the page redraws the whole curve every second."""
    if len(history) <= keep:
        return history
    stride = -(-len(history) // keep)
    return history[::stride] + ([history[-1]] if (len(history) - 1) % stride else [])


def race_view(studio: common.Studio, ids: list[str]) -> dict[str, Any]:
    """Everything the tab shows about its jobs, as plain data (curves as rows, table rows, files)."""
    jobs = [j for j in (studio.manager.get(i) for i in ids) if j is not None]
    curve = [{"encoder": j.label, "step": h["step"], "seconds": h["seconds"], "psnr": h["psnr"]}
             for j in jobs for h in thin(list(j.history)) if "psnr" in h]
    rows, gallery, files = [], [], []
    for j in jobs:
        m = common.read_metrics(j.out) if j.status == "done" else {}
        if "params" not in j.info and j.out is not None and (j.out / "config.json").exists():
            j.info["params"] = common.field_params(j.out)  # counted once, while it trains
        last = j.history[-1]["psnr"] if j.history and "psnr" in j.history[-1] else None
        rate = j.steps_per_second
        rows.append([j.label, j.status, m.get("params", j.info.get("params") or ""), j.step, common.fmt(rate, 1),
                     common.fmt(last), common.fmt(m.get("psnr")), common.fmt(m.get("ssim"), 4)])
        if "reconstruction.png" in j.outputs:
            gallery.append((j.outputs["reconstruction.png"], f"{j.label}: reconstruction"))
            gallery.append((j.outputs["error.png"], f"{j.label}: error x10"))
        files += [j.outputs[k] for k in ("png", "run.zip") if k in j.outputs]
    return {"jobs": jobs, "curve": curve, "rows": rows, "gallery": gallery, "files": files}


def build(studio: common.Studio) -> None:
    import gradio as gr
    import pandas as pd

    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="photo (optional)", file_types=list(IMAGE_TYPES), type="filepath",
                             elem_id="image-upload")
            bundled = gr.Dropdown(list(BUNDLED), value=DEFAULT_IMAGE, label="or a bundled photo", elem_id="image-bundled")
            encoders = gr.CheckboxGroup(encoder_choices(), value=["hashgrid", "siren"], label="encoders (1-4)",
                                        elem_id="image-encoders")
            custom = gr.Code(label="tcnn encoding JSON (optional, races as 'custom')", language="json", value="",
                             elem_id="image-custom")
            with gr.Row():
                steps = gr.Number(300, label="steps", precision=0, elem_id="image-steps")
                crop = gr.Number(256, label="crop (px, centre square)", precision=0, elem_id="image-crop")
                budget = gr.Number(None, label="parameter budget (0: each preset's size)", precision=0,
                                   elem_id="image-budget")
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="image-start")
                cancel = gr.Button("Cancel", variant="stop", elem_id="image-cancel")
            message = gr.Markdown("", elem_id="image-message")
            status = gr.Markdown("No jobs yet.", elem_id="image-status")
        with gr.Column(scale=2):
            with gr.Row():
                by_step = gr.LinePlot(x="step", y="psnr", color="encoder", title="PSNR vs step",
                                      y_title="training PSNR (dB)", elem_id="image-curve-step")
                by_time = gr.LinePlot(x="seconds", y="psnr", color="encoder", title="PSNR vs time",
                                      y_title="training PSNR (dB)", elem_id="image-curve-time")
            points = gr.Markdown("curve: 0 points", elem_id="image-curve-points")
            table = gr.Dataframe(headers=TABLE_HEADERS, value=None, interactive=False, elem_id="image-table")
            gallery = gr.Gallery(label="reconstructions and error maps", columns=4, height=320,
                                 elem_id="image-gallery")
            files = gr.File(label="downloads (PNG; the run folder as a zip: checkpoint, config, metrics)", file_count="multiple", interactive=False,
                            elem_id="image-files")
    ids = gr.State([])
    seen = gr.State(None)
    timer = gr.Timer(1.0)

    def on_start(upload, bundled, encoders, custom, steps, crop, budget, ids):
        try:
            new = start_race(studio, upload, bundled, encoders, custom, steps, crop, budget)
        except Exception as exc:  # shown on the page; the jobs already running go on
            return common.error_text(exc), ids
        return f"Started {len(new)} fits.", new

    def on_cancel(ids):
        n = sum(studio.manager.cancel(i) for i in ids)
        return f"Cancelling {n} job(s); each stops at its next step and keeps its checkpoint." if n else "Nothing to cancel."

    def on_tick(ids, seen):
        view = race_view(studio, ids)
        sig = common.signature(view["jobs"])
        if not ids or sig == seen:
            return [gr.skip()] * 7 + [seen]
        df = pd.DataFrame(view["curve"], columns=["encoder", "step", "seconds", "psnr"])
        text = common.status_lines(view["jobs"])
        return (text, df, df, f"curve: {len(df)} points", view["rows"] or None, view["gallery"] or None,
                view["files"] or None, sig)

    start.click(on_start, [upload, bundled, encoders, custom, steps, crop, budget, ids], [message, ids])
    cancel.click(on_cancel, [ids], [message])
    timer.tick(on_tick, [ids, seen], [status, by_step, by_time, points, table, gallery, files, seen])
