"""SDF tab: fit a signed distance field to a mesh with `fit_sdf`, view the extracted surface in 3D."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fieldstudio.apps.fit_sdf import MESH_OUT, PREVIEW, export_run_mesh, fit_sdf
from fieldstudio.datasets.meshes import DEFAULT_SHAPE
from fieldstudio.errors import ConfigError
from fieldstudio.fields.sdf import SDF_PRESETS

from . import common
from .jobs import JobContext
from .uploads import MESH_TYPES, check_upload

TITLE = "SDF"
BUNDLED_SHAPES = {"ring, ball and stick (procedural)": DEFAULT_SHAPE}
METRIC_KEYS = ("iou", "chamfer_l1", "normal_consistency", "f_score@0.005", "params", "steps", "seconds")


def sdf_job(ctx: JobContext, *, mesh: str | None, encoder: str, steps: int, resolution: int, samples: int,
            out: Path, **options) -> dict[str, Any]:
    ctx.set_phase("sampling points and training")
    options = {"metric_samples": 50_000, "preview_size": 256, **options}  # quicker than the CLI's defaults
    metrics = fit_sdf(mesh, encoder=encoder, steps=steps, out=out, resolution=resolution, n_samples=samples,
                      progress=False, checkpoint_every=max(50, steps // 4), callback=ctx.callback, **options)
    ctx.set_phase("exporting the mesh")
    ctx.check()
    export_run_mesh(out, out / "mesh.glb", resolution=resolution)  # GLB: what the 3D viewer reads best
    for name in ("mesh.glb", MESH_OUT, PREVIEW, "weights.safetensors", "metrics.json"):
        if (out / name).exists():
            ctx.add_output(name, out / name)
    ctx.set_phase("finished")
    return metrics


def start_fit(studio: common.Studio, upload: str | None, shape: str, encoder: str, steps: Any, resolution: Any,
              samples: Any) -> str:
    steps, resolution, samples = int(steps or 0), int(resolution or 0), int(samples or 0)
    if steps < 1:
        raise ConfigError("steps must be at least 1", "e.g. 200")
    if not 32 <= resolution <= 512:
        raise ConfigError(f"resolution {resolution} is out of range", "use 32 to 512 (128 is quick)")
    if encoder not in SDF_PRESETS:
        raise ConfigError(f"unknown encoder '{encoder}'", f"use one of {', '.join(SDF_PRESETS)}")
    if upload:
        mesh = str(check_upload(upload, MESH_TYPES, studio.max_upload_mb, "mesh"))
        name = Path(mesh).stem
    else:
        mesh, name = BUNDLED_SHAPES.get(shape, DEFAULT_SHAPE), "default-shape"
    out = studio.run_dir("sdf", f"{name}-{encoder}")
    job = studio.manager.submit(
        lambda ctx: sdf_job(ctx, mesh=mesh, encoder=encoder, steps=steps, resolution=resolution, samples=samples,
                            out=out),
        kind="sdf", label=f"SDF {name} ({encoder})", total=steps, out=out)
    return job.id


def build(studio: common.Studio) -> None:
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="mesh (optional: OBJ, PLY, STL, OFF, GLB)", file_types=list(MESH_TYPES),
                             type="filepath", elem_id="sdf-upload")
            shape = gr.Dropdown(list(BUNDLED_SHAPES), value=next(iter(BUNDLED_SHAPES)), label="or a bundled shape")
            encoder = gr.Dropdown(list(SDF_PRESETS), value="hashgrid", label="encoder")
            with gr.Row():
                steps = gr.Number(200, label="steps", precision=0)
                resolution = gr.Number(128, label="marching cubes resolution", precision=0)
                samples = gr.Number(1 << 17, label="training points", precision=0)
            with gr.Row():
                start = gr.Button("Fit", variant="primary", elem_id="sdf-start")
                cancel = gr.Button("Cancel", variant="stop", elem_id="sdf-cancel")
            message = gr.Markdown("", elem_id="sdf-message")
            status = gr.Markdown("No job yet.", elem_id="sdf-status")
        with gr.Column(scale=2):
            model = gr.Model3D(label="extracted surface", height=380, elem_id="sdf-model")
            preview = gr.Image(label="fitted (sphere traced) | ground truth", type="filepath", interactive=False)
            table = gr.Dataframe(headers=["metric", "value"], interactive=False, elem_id="sdf-metrics")
            files = gr.File(label="downloads (GLB, PLY, checkpoint)", file_count="multiple", interactive=False)
    job_id = gr.State(None)
    seen = gr.State(None)
    timer = gr.Timer(1.0)

    def show(job, m):
        return (common.status_lines([job]), job.outputs.get("mesh.glb"), job.outputs.get(PREVIEW),
                common.metric_rows(m, METRIC_KEYS, 5),
                [job.outputs[k] for k in ("mesh.glb", MESH_OUT, "weights.safetensors") if k in job.outputs] or None)

    common.wire_single_job(studio.manager, start=start, cancel=cancel, timer=timer, message=message, job_id=job_id,
                           seen=seen, inputs=[upload, shape, encoder, steps, resolution, samples],
                           launch=lambda *v: start_fit(studio, *v), outputs=[status, model, preview, table, files],
                           show=show)
