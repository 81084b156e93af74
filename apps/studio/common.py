"""What every tab shares: the job manager, the folder runs are written to, the upload limit, and
small helpers that turn jobs into what the page shows."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fieldstudio.errors import FieldStudioError

from .jobs import FINISHED, Job, JobManager


@dataclass
class Studio:
    manager: JobManager
    workdir: Path
    max_upload_mb: float = 200.0

    def run_dir(self, kind: str, job_hint: str) -> Path:
        """A fresh folder under ``workdir/kind`` (never one that already holds a run)."""
        base = self.workdir / kind
        base.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", job_hint).strip("-")[:40] or "run"
        for i in range(1, 100_000):
            p = base / f"{i:03d}-{slug}"
            try:
                p.mkdir()
                return p
            except FileExistsError:
                continue
        raise FieldStudioError(f"no free run folder under {base}", "clean up old runs")


def error_text(exc: BaseException) -> str:
    """One line for the status box, as the CLI would print it."""
    return f"**Error:** {exc}" if isinstance(exc, FieldStudioError) else f"**Error:** {type(exc).__name__}: {exc}"


def status_lines(jobs: list[Job]) -> str:
    if not jobs:
        return "No jobs yet."
    return "\n".join(f"- {j.describe()}" for j in jobs)


def all_finished(jobs: list[Job]) -> bool:
    return all(j.status in FINISHED for j in jobs)


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def changed_job(manager, job_id: str | None, seen) -> tuple[Any, Any]:
    """``(job, signature)`` when the job exists and changed since ``seen``, else ``(None, seen)``:
    a tick then skips its updates."""
    job = manager.get(job_id) if job_id else None
    sig = signature([job]) if job else None
    return (None, seen) if job is None or sig == seen else (job, sig)


def metric_rows(metrics: dict[str, Any], keys, digits: int) -> list[list[Any]] | None:
    """``[[name, value]]`` for the ``keys`` present in ``metrics``, floats rounded for display."""
    rows = [[k, fmt(metrics[k], digits) if isinstance(metrics[k], float) else metrics[k]] for k in keys if k in metrics]
    return rows or None


def cancel_message(manager, job_id: str | None, kept: str = "the last checkpoint is kept") -> str:
    """Cancel one job (if any) and say what happens to its results."""
    return f"Cancelling; {kept}." if job_id and manager.cancel(job_id) else "Nothing to cancel."


def read_metrics(out: Path | None) -> dict[str, Any]:
    p = None if out is None else out / "metrics.json"
    if p is None or not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def named_copy(path: Path, name: str) -> Path:
    """``path`` under a telling name in ``path.parent/downloads`` (a hard link where possible): every run
    has a reconstruction.png, and a browser saving five of them should not call them all that."""
    import shutil

    dest = path.parent / "downloads" / name
    dest.parent.mkdir(exist_ok=True)
    dest.unlink(missing_ok=True)
    try:
        dest.hardlink_to(path)
    except OSError:
        shutil.copyfile(path, dest)
    return dest


def package_run(out: Path) -> Path:
    """The run folder as ``downloads/<folder>.zip``: what `fieldstudio.load_run` and ``--resume`` read."""
    import zipfile

    dest = out / "downloads" / f"{out.name}.zip"
    dest.parent.mkdir(exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(out.iterdir()):
            if f.is_file():
                zf.write(f, f"{out.name}/{f.name}")
    tmp.replace(dest)
    return dest


def field_params(out: Path | None) -> int | None:
    """Parameters of the field a run folder's config.json describes (counted without allocating)."""
    cfg = None if out is None else out / "config.json"
    if cfg is None or not cfg.exists():
        return None
    try:
        import torch

        from fieldstudio.runs import build_field

        with torch.device("meta"):
            fld = build_field(json.loads(cfg.read_text())["field"], backend="torch")
        return sum(p.numel() for p in fld.parameters())
    except Exception:  # a half-written or foreign config: the table just leaves the cell empty
        return None


def signature(jobs: list[Job]) -> tuple:
    """Changes whenever something the page shows about these jobs changes."""
    return tuple((j.id, j.status, j.step, len(j.history), tuple(sorted(j.outputs)), j.phase) for j in jobs)


def wire_single_job(manager, *, start, cancel, timer, message, job_id, seen, inputs, launch, outputs, show) -> None:
    """Connect a tab that runs one job at a time.

    ``start`` calls ``launch(*inputs)`` (a new job id, or an error message and the old id);
    ``cancel`` stops the job; each ``timer`` tick refreshes ``outputs`` with ``show(job, metrics)``
    (metrics once the job is done), and only when the job changed, so an idle tab sends nothing.
    """
    import gradio as gr

    def on_start(*args):
        *values, current = args
        try:
            return "Started.", launch(*values)
        except Exception as exc:
            return error_text(exc), current

    def on_cancel(jid):
        return cancel_message(manager, jid)

    def on_tick(jid, last):
        job, sig = changed_job(manager, jid, last)
        if job is None:
            return [gr.skip()] * len(outputs) + [last]
        m = read_metrics(job.out) if job.status == "done" else {}
        return (*show(job, m), sig)

    start.click(on_start, [*inputs, job_id], [message, job_id])
    cancel.click(on_cancel, [job_id], [message])
    timer.tick(on_tick, [job_id, seen], [*outputs, seen])
