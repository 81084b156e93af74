"""Scene tab: posed photos -> camera preview -> `reconstruct` in the background with periodic test-view
renders -> orbit video (`render_video`) and mesh (`export_scene_mesh`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fieldstudio.apps.cameras import camera_preview, format_summary
from fieldstudio.apps.reconstruct import FIELDS, reconstruct
from fieldstudio.apps.render_scene import export_scene_mesh, render_video
from fieldstudio.errors import ConfigError, InputError

from . import common
from .jobs import JobContext
from .uploads import SCENE_TYPES, check_upload, extract_zip

TITLE = "Scene"
BUNDLED_SCENE = "procedural scene (sphere, box, torus)"


def resolve_scene(studio: common.Studio, upload: str | None) -> str | None:
    """None for the bundled scene, else the folder the uploaded zip unpacks to."""
    if not upload:
        return None
    path = check_upload(upload, SCENE_TYPES, studio.max_upload_mb, "scene archive")
    dest = studio.run_dir("uploads", path.stem)
    return str(extract_zip(path, dest, studio.max_upload_mb))


def preview_cameras(studio: common.Studio, data: str | None) -> tuple[str, str]:
    out = studio.run_dir("cameras", Path(data).name if data else "bundled") / "cameras.png"
    summary = camera_preview(data, out=out)
    return str(out), format_summary(summary)


def scene_job(ctx: JobContext, *, data: str | None, field: str, steps: int, target_samples: int, eval_views: int,
              preview_every: int, out: Path, **options) -> dict[str, Any]:
    def callback(step: int, record):
        stop = ctx.callback(step, record)
        # checkpoints land on multiples of preview_every, so the run on disk is this very step
        if not stop and step % preview_every == 0 and step < steps:
            ctx.set_phase(f"rendering a preview at step {step}")
            info = render_video(out, path="test", frames=1, out=out / "previews" / f"step{step:06d}", depth=False,
                                progress=False)
            ctx.add_output("preview", Path(info["outputs"][0]) / "0000.png")
            ctx.set_phase("training")
        return stop

    ctx.set_phase("loading the scene and training")
    metrics = reconstruct(data, field=field, steps=steps, out=out, target_samples=target_samples,
                          eval_views=eval_views, checkpoint_every=preview_every, progress=False, callback=callback,
                          **options)
    test = sorted(out.glob("test_*.png"))
    if test:
        ctx.add_output("preview", test[0])
    ctx.add_output("weights.safetensors", out / "weights.safetensors")
    ctx.set_phase(f"test PSNR {metrics['psnr']:.2f} dB over {metrics['test_views']} views")
    return metrics


def video_job(ctx: JobContext, *, run: Path, frames: int) -> dict[str, Any]:
    ctx.set_phase(f"rendering {frames} orbit frames")
    try:  # mp4 needs ffmpeg (the video extra); a GIF needs nothing
        import imageio_ffmpeg  # noqa: F401
        name = "orbit.mp4"
    except ImportError:
        name = "orbit.gif"
    info = render_video(run, path="orbit", frames=frames, out=run / name, fps=24, depth=False, progress=False)
    ctx.add_output("video", info["outputs"][0])
    ctx.set_phase("video written")
    return info


def mesh_job(ctx: JobContext, *, run: Path, resolution: int, threshold: float) -> dict[str, Any]:
    ctx.set_phase(f"marching cubes at {resolution}^3")
    info = export_scene_mesh(run, resolution=resolution, out=run / "mesh.glb", threshold=threshold)
    ply = export_scene_mesh(run, resolution=resolution, out=run / "mesh.ply", threshold=threshold)
    ctx.add_output("mesh.glb", info["out"])
    ctx.add_output("mesh.ply", ply["out"])
    ctx.set_phase(f"{info['vertices']:,} vertices, {info['faces']:,} faces")
    return info


def _finished_run(studio: common.Studio, job_id: str | None) -> Path:
    job = studio.manager.get(job_id) if job_id else None
    if job is None or job.out is None or not (job.out / "weights.safetensors").exists():
        raise InputError("no trained scene yet", "train one first (a cancelled run with a checkpoint also works)")
    if job.status in ("queued", "running"):
        raise InputError("the scene is still training", "wait for it to finish or cancel it")
    return job.out


def build(studio: common.Studio) -> None:
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="scene zip (optional: Blender, transforms.json, LLFF or COLMAP)",
                             file_types=list(SCENE_TYPES), type="filepath", elem_id="scene-upload")
            gr.Markdown(f"Without an upload: the bundled {BUNDLED_SCENE}.")
            show_cams = gr.Button("Preview cameras", elem_id="scene-cameras")
            with gr.Row():
                field = gr.Dropdown(list(FIELDS), value="ngp", label="radiance field")
                steps = gr.Number(500, label="steps", precision=0)
                samples = gr.Number(1 << 15, label="samples per step", precision=0)
            with gr.Row():
                start = gr.Button("Train", variant="primary", elem_id="scene-start")
                cancel = gr.Button("Cancel", variant="stop", elem_id="scene-cancel")
            with gr.Row():
                frames = gr.Number(36, label="orbit frames", precision=0)
                video_btn = gr.Button("Render orbit video")
            with gr.Row():
                mesh_res = gr.Number(128, label="mesh resolution", precision=0)
                threshold = gr.Number(10.0, label="density threshold")
                mesh_btn = gr.Button("Export mesh")
            message = gr.Markdown("", elem_id="scene-message")
            status = gr.Markdown("No job yet.", elem_id="scene-status")
        with gr.Column(scale=2):
            cams = gr.Image(label="cameras", type="filepath", interactive=False)
            cam_text = gr.Textbox(label="scene summary", lines=6, interactive=False)
            preview = gr.Image(label="test view (training: the latest checkpoint; at the end: prediction | truth | depth)", type="filepath",
                               interactive=False)
            video = gr.Video(label="orbit", interactive=False)
            model = gr.Model3D(label="mesh", height=320)
            files = gr.File(label="downloads", file_count="multiple", interactive=False)
    jobs = gr.State({})
    seen = gr.State(None)
    timer = gr.Timer(1.0)

    def on_cameras(upload):
        try:
            img, text = preview_cameras(studio, resolve_scene(studio, upload))
            return "", img, text
        except Exception as exc:
            return common.error_text(exc), None, ""

    def on_start(upload, field, steps, samples, jobs):
        try:
            steps, samples = int(steps or 0), int(samples or 0)
            if steps < 1 or samples < 1024:
                raise ConfigError("steps must be >= 1 and samples per step >= 1024", "e.g. 500 steps, 32768 samples")
            data = resolve_scene(studio, upload)
            out = studio.run_dir("scene", f"{Path(data).name if data else 'bundled'}-{field}")
            every = max(50, steps // 5)
            job = studio.manager.submit(
                lambda ctx: scene_job(ctx, data=data, field=field, steps=steps, target_samples=samples,
                                      eval_views=4, preview_every=every, out=out),
                kind="scene", label=f"scene {Path(data).name if data else 'bundled'} ({field})", total=steps, out=out)
        except Exception as exc:
            return common.error_text(exc), jobs
        return "Training started.", {"train": job.id}

    def _submit(jobs, key, make):
        try:
            run = _finished_run(studio, jobs.get("train"))
            job = studio.manager.submit(make(run), kind=f"scene-{key}", label=f"scene {key}", out=run)
        except Exception as exc:
            return common.error_text(exc), jobs
        return f"Started: {key}.", {**jobs, key: job.id}

    def on_video(frames, jobs):
        n = max(2, int(frames or 36))
        return _submit(jobs, "video", lambda run: (lambda ctx: video_job(ctx, run=run, frames=n)))

    def on_mesh(res, thr, jobs):
        r, t = int(res or 128), float(thr if thr is not None else 10.0)
        return _submit(jobs, "mesh", lambda run: (lambda ctx: mesh_job(ctx, run=run, resolution=r, threshold=t)))

    def on_cancel(jobs):
        n = sum(studio.manager.cancel(i) for i in jobs.values())
        return "Cancelling; the last checkpoint is kept." if n else "Nothing to cancel."

    def on_tick(jobs, seen):
        js = [j for j in (studio.manager.get(i) for i in jobs.values()) if j is not None]
        sig = common.signature(js)
        if not js or sig == seen:
            return [gr.skip()] * 5 + [seen]
        outs = {k: v for j in js for k, v in j.outputs.items()}
        files = [outs[k] for k in ("weights.safetensors", "video", "mesh.ply", "mesh.glb") if k in outs]
        video = outs.get("video", "")
        if video.endswith(".gif"):  # the video player wants mp4; a GIF plays in the image view
            outs["preview"] = video
        return (common.status_lines(js), outs.get("preview", gr.skip()),
                video if video.endswith(".mp4") else gr.skip(),
                outs.get("mesh.glb", gr.skip()), files or None, sig)

    show_cams.click(on_cameras, [upload], [message, cams, cam_text])
    start.click(on_start, [upload, field, steps, samples, jobs], [message, jobs])
    video_btn.click(on_video, [frames, jobs], [message, jobs])
    mesh_btn.click(on_mesh, [mesh_res, threshold, jobs], [message, jobs])
    cancel.click(on_cancel, [jobs], [message])
    timer.tick(on_tick, [jobs, seen], [status, preview, video, model, files, seen])
