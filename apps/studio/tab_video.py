"""Video tab: compress a clip to a neural .fsv file with `fieldstudio video compress`'s functions; compare
it with x264 / x265 at the same bpp, show decoded frames beside the originals, offer the .fsv and an mp4."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fieldstudio import runs
from fieldstudio.apps.video import DEFAULT_CLIP, compress, load_frames, parse_size
from fieldstudio.apps.video_train import SessionStopped
from fieldstudio.errors import ConfigError

from . import common
from .jobs import Cancelled, JobContext
from .uploads import VIDEO_TYPES, check_upload

TITLE = "Video"
BASELINES = ("x264", "x265")
SHOWN_FRAMES = 3
TABLE_HEADERS = ["codec", "bpp", "PSNR (dB)", "MS-SSIM", "file size (bytes)", "train / encode seconds"]


def _side_by_side(original: np.ndarray, decoded: np.ndarray, path: Path) -> Path:
    from PIL import Image

    gap = np.full((original.shape[0], 4, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([original, gap, decoded], axis=1)).save(path)
    return path


def video_job(ctx: JobContext, *, video: str | None, bpp: float | None, size: str | None, steps: int,
              frames: int | None, fso: bool, compare: bool, out: Path) -> dict[str, Any]:
    from fieldstudio.codecs import fsv
    from fieldstudio.codecs.quality import to_uint8
    from fieldstudio.datasets.videos import write_frames

    name = Path(video).stem if video else "clip"
    fsv_path = out / f"{name}.fsv"
    ctx.set_phase("training")
    try:
        # the baselines are coded below rather than by compress(compare=True), so Cancel is heard between them
        result = compress(video, out=str(fsv_path), size=size, bpp=bpp, steps=steps, max_frames=frames, fso=fso,
                          compare=False, progress=False, device="cpu", callback=ctx.callback)
    except SessionStopped:
        raise Cancelled() from None
    ctx.add_output("fsv", fsv_path)
    metrics_path = fsv_path.with_name(fsv_path.stem + ".metrics.json")
    originals, _, _ = load_frames(video, frames)
    if compare:
        from fieldstudio.codecs.baseline import at_bpp

        result["baselines"] = {}
        for codec in BASELINES:
            ctx.check()
            ctx.set_phase(f"coding with {codec} at {result['bpp']:.4f} bpp")
            result["baselines"][codec] = at_bpp(originals, codec, result["bpp"])
        runs.atomic_write_json(metrics_path, result)
    ctx.add_output("metrics.json", metrics_path)
    ctx.check()
    ctx.set_phase("decoding")
    lib = fsv.load(fsv_path, "cpu")
    decoded = to_uint8(lib.decode(0))
    mp4 = write_frames(decoded, out / f"{name}-decoded.mp4", lib.videos[0].get("fps", 24.0))[0]
    ctx.add_output("mp4", mp4)
    (out / "frames").mkdir(exist_ok=True)
    picks = sorted({int(round(i)) for i in np.linspace(0, len(decoded) - 1, SHOWN_FRAMES)})
    for i in picks:
        ctx.add_output(f"frame {i + 1}", _side_by_side(originals[i], decoded[i], out / "frames" / f"frame_{i + 1:04d}.png"))
    ctx.set_phase(f"{result['bytes']:,} bytes, {result['bpp']:.4f} bpp, PSNR {result['psnr']:.2f} dB, "
                  f"MS-SSIM {result['ms_ssim']:.4f}")
    return result


def start_compress(studio: common.Studio, upload: str | None, bpp: Any, size: str | None, steps: Any, frames: Any,
                   fso: bool, compare: bool) -> str:
    """Check the inputs and submit the job; returns its id (raises on bad input)."""
    steps = int(steps or 0)
    if steps < 1:
        raise ConfigError("steps must be at least 1", "e.g. 300")
    frames = int(frames) if frames else None
    size = (size or "").strip() or None
    if size is not None:
        parse_size(size)
        bpp = None
    else:
        bpp = float(bpp) if bpp not in (None, "") else 0.3
        if not bpp > 0:
            raise ConfigError(f"bpp {bpp:g} must be positive", "e.g. 0.3")
    video = None
    if upload:
        video = str(check_upload(upload, VIDEO_TYPES, studio.max_upload_mb, "video"))
        load_frames(video, 1)  # a corrupt file is named now, with the pipeline's own message
    name = Path(video).stem if video else "clip"
    out = studio.run_dir("video", name)
    target = f"{size}" if size else f"{bpp:g} bpp"
    job = studio.manager.submit(
        lambda ctx: video_job(ctx, video=video, bpp=bpp, size=size, steps=steps, frames=frames, fso=bool(fso),
                              compare=bool(compare), out=out),
        kind="video", label=f"video {name} ({target}{', FSO' if fso else ''})", total=steps, out=out)
    return job.id


def result_view(job) -> dict[str, Any]:
    """The finished job as plain data: PSNR-vs-bpp points, table rows, frame pairs and downloads."""
    r = job.result if job is not None and job.status == "done" else None
    if not r:
        return {"points": [], "rows": [], "gallery": [], "files": []}
    points = [{"codec": "fieldstudio (.fsv)", "bpp": r["bpp"], "psnr": r["psnr"]}]
    rows = [["fieldstudio (.fsv)", common.fmt(r["bpp"], 4), common.fmt(r["psnr"]), common.fmt(r["ms_ssim"], 4),
             r["bytes"], common.fmt(r["train_seconds"], 1)]]
    for codec, b in r.get("baselines", {}).items():
        points.append({"codec": f"{codec} (crf {b['crf']:g})", "bpp": b["bpp"], "psnr": b["psnr"]})
        rows.append([f"{codec} (crf {b['crf']:g})", common.fmt(b["bpp"], 4), common.fmt(b["psnr"]),
                     common.fmt(b["ms_ssim"], 4), b["bytes"], common.fmt(b["search_seconds"], 1)])
    gallery = [(p, f"{k}: original | decoded") for k, p in job.outputs.items() if k.startswith("frame ")]
    files = [job.outputs[k] for k in ("fsv", "mp4", "metrics.json") if k in job.outputs]
    return {"points": points, "rows": rows, "gallery": gallery, "files": files}


def build(studio: common.Studio) -> None:
    import gradio as gr
    import pandas as pd

    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="video (optional)", file_types=list(VIDEO_TYPES), type="filepath",
                             elem_id="video-upload")
            gr.Markdown(f"Without an upload: a generated {DEFAULT_CLIP['frames']}-frame "
                        f"{DEFAULT_CLIP['width']}x{DEFAULT_CLIP['height']} clip.")
            with gr.Row():
                bpp = gr.Number(0.3, label="target bpp", elem_id="video-bpp")
                size = gr.Textbox("", label="or target size (e.g. 200kB)", elem_id="video-size")
            with gr.Row():
                steps = gr.Number(1500, label="steps", precision=0, elem_id="video-steps")
                frames = gr.Number(24, label="frames (first N; 0: all)", precision=0, elem_id="video-frames")
            with gr.Row():
                fso = gr.Checkbox(False, label="FSO (Fourier subneural operator)", elem_id="video-fso")
                compare = gr.Checkbox(True, label="compare with x264 / x265", elem_id="video-compare")
            with gr.Row():
                start = gr.Button("Compress", variant="primary", elem_id="video-start")
                cancel = gr.Button("Cancel", variant="stop", elem_id="video-cancel")
            message = gr.Markdown("", elem_id="video-message")
            status = gr.Markdown("No job yet.", elem_id="video-status")
        with gr.Column(scale=2):
            plot = gr.ScatterPlot(x="bpp", y="psnr", color="codec", title="PSNR vs bpp", y_title="PSNR (dB)",
                                  elem_id="video-plot")
            table = gr.Dataframe(headers=TABLE_HEADERS, value=None, interactive=False, elem_id="video-table")
            gallery = gr.Gallery(label="original | decoded", columns=3, height=260, elem_id="video-gallery")
            files = gr.File(label="downloads (.fsv, decoded mp4, metrics)", file_count="multiple", interactive=False,
                            elem_id="video-files")
    job_id = gr.State(None)
    seen = gr.State(None)
    timer = gr.Timer(1.0)

    def on_start(upload, bpp, size, steps, frames, fso, compare, current):
        try:
            return "Started.", start_compress(studio, upload, bpp, size, steps, frames, fso, compare)
        except Exception as exc:  # shown on the page; a job already running goes on
            return common.error_text(exc), current

    def on_cancel(job_id):
        return common.cancel_message(studio.manager, job_id, kept="no file is written")

    def on_tick(job_id, seen):
        job, sig = common.changed_job(studio.manager, job_id, seen)
        if job is None:
            return [gr.skip()] * 5 + [seen]
        view = result_view(job)
        df = pd.DataFrame(view["points"], columns=["codec", "bpp", "psnr"])
        return (common.status_lines([job]), df, view["rows"] or None, view["gallery"] or None,
                view["files"] or None, sig)

    start.click(on_start, [upload, bpp, size, steps, frames, fso, compare, job_id], [message, job_id])
    cancel.click(on_cancel, [job_id], [message])
    timer.tick(on_tick, [job_id, seen], [status, plot, table, gallery, files, seen])
