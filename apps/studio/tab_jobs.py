"""Jobs tab: every job of every visitor, with progress, ETA and errors; cancel any of them."""

from __future__ import annotations

from . import common
from .jobs import Job

TITLE = "Jobs"
HEADERS = ["id", "kind", "what", "status", "progress", "ETA (s)", "run folder", "message"]


def job_rows(jobs: list[Job]) -> list[list]:
    rows = []
    for j in reversed(jobs):
        frac = j.fraction
        eta = j.eta_seconds
        rows.append([j.id, j.kind, j.label, j.status, "" if frac is None else f"{100 * frac:.0f}%",
                     "" if eta is None else f"{eta:.0f}", str(j.out or ""), j.error or j.phase])
    return rows


def build(studio: common.Studio) -> None:
    import gradio as gr

    m = studio.manager
    gr.Markdown(f"At most {m.max_running} jobs run at once and {m.max_queued} wait; more are refused until one "
                "finishes. Cancelling stops a fit at its next step and keeps its last checkpoint.")
    table = gr.Dataframe(headers=HEADERS, interactive=False, elem_id="jobs-table")
    with gr.Row():
        which = gr.Textbox(label="job id", placeholder="job-3", scale=2)
        cancel = gr.Button("Cancel job", variant="stop", scale=1)
    message = gr.Markdown("")
    timer = gr.Timer(2.0)

    def on_cancel(job_id):
        job_id = (job_id or "").strip()
        if m.get(job_id) is None:
            return f"**Error:** no job '{job_id}' -> copy an id from the table"
        return f"Cancelling {job_id}." if m.cancel(job_id) else f"{job_id} has already finished."

    timer.tick(lambda: job_rows(m.jobs()) or None, None, table)
    cancel.click(on_cancel, which, message)
