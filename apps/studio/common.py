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


def read_metrics(out: Path | None) -> dict[str, Any]:
    p = None if out is None else out / "metrics.json"
    if p is None or not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def signature(jobs: list[Job]) -> tuple:
    """Changes whenever something the page shows about these jobs changes."""
    return tuple((j.id, j.status, j.step, len(j.history), tuple(sorted(j.outputs)), j.phase) for j in jobs)
