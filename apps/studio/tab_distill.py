"""Distill tab: convert a finished scene run into another field type with `distill_run` (PVD)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fieldstudio import runs
from fieldstudio.apps.distill import STUDENTS, distill_run
from fieldstudio.errors import ConfigError, InputError
from fieldstudio.renderers.distill import STAGE_NAMES

from . import common
from .jobs import JobContext

TITLE = "Distill"
METRIC_KEYS = ("psnr", "ssim", "psnr_vs_teacher_last", "params", "steps", "seconds")


def distill_job(ctx: JobContext, *, teacher: str, to: str, steps: int, out: Path, **options) -> dict[str, Any]:
    def callback(step, record):
        if record is not None:
            ctx.set_phase(f"stage {record['stage']} ({STAGE_NAMES[record['stage']]}): "
                          f"{record['psnr']:.2f} dB against the teacher")
        return ctx.callback(step, record)

    ctx.set_phase("loading the teacher")
    metrics = distill_run(teacher, to, out=out, steps=steps, progress=False, callback=callback,
                          checkpoint_every=max(50, steps // 4), **options)
    ctx.check()
    test = sorted(out.glob("test_*.png"))
    if test:
        ctx.add_output("preview", test[0])
    for name in ("weights.safetensors", "metrics.json"):
        if (out / name).exists():
            ctx.add_output(name, out / name)
    ctx.set_phase("finished" + (f": test PSNR {metrics['psnr']:.2f} dB" if "psnr" in metrics else ""))
    return metrics


def start_distill(studio: common.Studio, teacher: str, to: str, steps: Any) -> str:
    steps = int(steps or 0)
    if steps < 1:
        raise ConfigError("steps must be at least 1", "e.g. 500")
    if to not in STUDENTS:
        raise ConfigError(f"unknown student type '{to}'", f"use one of: {', '.join(STUDENTS)}")
    path = Path(str(teacher or "").strip())
    if not str(path) or not (path / runs.CONFIG).exists():
        raise InputError(f"teacher run not found: '{teacher}'", "give the folder of a finished scene run")
    out = studio.run_dir("distill", f"{path.name}-{to}")
    job = studio.manager.submit(lambda ctx: distill_job(ctx, teacher=str(path), to=to, steps=steps, out=out),
                                kind="distill", label=f"distill {path.name} -> {to}", total=steps, out=out)
    return job.id


def build(studio: common.Studio) -> None:
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=1):
            teacher = gr.Textbox(label="teacher run folder (a finished scene run)", elem_id="distill-teacher")
            with gr.Row():
                to = gr.Dropdown(list(STUDENTS), value="mlp", label="student type")
                steps = gr.Number(500, label="steps", precision=0)
            with gr.Row():
                start = gr.Button("Distill", variant="primary", elem_id="distill-start")
                cancel = gr.Button("Cancel", variant="stop", elem_id="distill-cancel")
            message = gr.Markdown("", elem_id="distill-message")
            status = gr.Markdown("No job yet.", elem_id="distill-status")
        with gr.Column(scale=2):
            preview = gr.Image(label="test view: student | truth | depth", type="filepath", interactive=False)
            table = gr.Dataframe(headers=["metric", "value"], interactive=False, elem_id="distill-metrics")
            files = gr.File(label="downloads", file_count="multiple", interactive=False)
    job_id = gr.State(None)
    seen = gr.State(None)
    timer = gr.Timer(1.0)

    def show(job, m):
        return (common.status_lines([job]), job.outputs.get("preview"), common.metric_rows(m, METRIC_KEYS, 3),
                [job.outputs[k] for k in ("weights.safetensors", "metrics.json") if k in job.outputs] or None)

    common.wire_single_job(studio.manager, start=start, cancel=cancel, timer=timer, message=message, job_id=job_id,
                           seen=seen, inputs=[teacher, to, steps], launch=lambda *v: start_distill(studio, *v),
                           outputs=[status, preview, table, files], show=show)
