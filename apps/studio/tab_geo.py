"""Geo tab: fit a location encoder to points on the globe with `fit_geo`; show the world map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fieldstudio.apps.fit_geo import fit_geo
from fieldstudio.errors import ConfigError
from fieldstudio.fields.geo import GEO_ENCODERS, GEO_NETWORKS

from . import common
from .jobs import JobContext
from .uploads import POINT_TYPES, check_upload

TITLE = "Geo"
METRIC_KEYS = ("split", "accuracy", "cross_entropy", "rmse", "mae", "r2", "params", "steps", "seconds")


def geo_job(ctx: JobContext, *, data: str | None, lon: str, lat: str, target: str | None, encoder: str,
            network: str, L: int, steps: int, out: Path) -> dict[str, Any]:
    ctx.set_phase("training")
    metrics = fit_geo(data, lon=lon, lat=lat, target=target, encoder=encoder, network=network, L=L, steps=steps,
                      out=out, progress=False, checkpoint_every=max(50, steps // 4), callback=ctx.callback)
    for name in ("map.png", "weights.safetensors", "metrics.json"):
        if (out / name).exists():
            ctx.add_output(name, out / name)
    ctx.set_phase("finished")
    return metrics


def start_fit(studio: common.Studio, upload: str | None, lon: str, lat: str, target: str, encoder: str,
              network: str, L: Any, steps: Any) -> str:
    steps, L = int(steps or 0), int(L or 0)
    if steps < 1:
        raise ConfigError("steps must be at least 1", "e.g. 500")
    if encoder not in GEO_ENCODERS or network not in GEO_NETWORKS:
        raise ConfigError(f"unknown encoder/network '{encoder}' / '{network}'",
                          f"use one of {', '.join(GEO_ENCODERS)} and {', '.join(GEO_NETWORKS)}")
    data = str(check_upload(upload, POINT_TYPES, studio.max_upload_mb, "points")) if upload else None
    name = Path(data).stem if data else "land-ocean"
    out = studio.run_dir("geo", f"{name}-{encoder}-{network}")
    job = studio.manager.submit(
        lambda ctx: geo_job(ctx, data=data, lon=lon or "lon", lat=lat or "lat", target=(target or None) if data else None,
                            encoder=encoder, network=network, L=L, steps=steps, out=out),
        kind="geo", label=f"geo {name} ({encoder} + {network})", total=steps, out=out)
    return job.id


def build(studio: common.Studio) -> None:
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="points (optional: CSV or GeoJSON)", file_types=list(POINT_TYPES),
                             type="filepath", elem_id="geo-upload")
            gr.Markdown("Without an upload: 5,000 random points labelled land/ocean (offline mask).")
            with gr.Row():
                lon = gr.Textbox("lon", label="longitude column")
                lat = gr.Textbox("lat", label="latitude column")
                target = gr.Textbox("", label="target column (empty: the only other)")
            with gr.Row():
                encoder = gr.Dropdown(list(GEO_ENCODERS), value="sh", label="encoder")
                network = gr.Dropdown(list(GEO_NETWORKS), value="siren", label="network")
            with gr.Row():
                L = gr.Number(10, label="SH bands L", precision=0)
                steps = gr.Number(500, label="steps", precision=0)
            with gr.Row():
                start = gr.Button("Fit", variant="primary", elem_id="geo-start")
                cancel = gr.Button("Cancel", variant="stop", elem_id="geo-cancel")
            message = gr.Markdown("", elem_id="geo-message")
            status = gr.Markdown("No job yet.", elem_id="geo-status")
        with gr.Column(scale=2):
            world = gr.Image(label="world map", type="filepath", interactive=False, elem_id="geo-map")
            table = gr.Dataframe(headers=["metric", "value"], interactive=False)
            files = gr.File(label="downloads", file_count="multiple", interactive=False)
    job_id = gr.State(None)
    seen = gr.State(None)
    timer = gr.Timer(1.0)

    def show(job, m):
        return (common.status_lines([job]), job.outputs.get("map.png"), common.metric_rows(m, METRIC_KEYS, 4),
                [job.outputs[k] for k in ("map.png", "weights.safetensors") if k in job.outputs] or None)

    common.wire_single_job(studio.manager, start=start, cancel=cancel, timer=timer, message=message, job_id=job_id,
                           seen=seen, inputs=[upload, lon, lat, target, encoder, network, L, steps],
                           launch=lambda *v: start_fit(studio, *v), outputs=[status, world, table, files], show=show)
