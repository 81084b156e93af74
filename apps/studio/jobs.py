"""Background jobs for the studio: a bounded queue, a fixed number of worker threads, progress with
ETA, cooperative cancellation and captured errors.

A job is a function ``fn(ctx: JobContext)``. It reports progress through ``ctx.callback``, which
has the shape of the training loop's callback (``(step, record) -> bool|None``) and returns True
once the job has been cancelled, so a fit stops at its next step and keeps its checkpoint
(`TrainingStopped`). Threads rather than processes: the fits run in PyTorch kernels that release
the GIL, and a thread shares the live history with the page without any IPC. Nothing here imports
gradio, so the manager is tested on its own.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fieldstudio.errors import FieldStudioError

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


class QueueFull(FieldStudioError):
    """More jobs were submitted than may run and wait at once."""


class Cancelled(Exception):
    """Raised by `JobContext.check` inside a job that has been cancelled."""


@dataclass
class Job:
    id: str
    kind: str
    label: str
    out: Path | None = None
    total: int | None = None
    status: str = QUEUED
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    phase: str = "waiting in the queue"
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # name -> file the page may show or offer
    info: dict[str, Any] = field(default_factory=dict)  # what a tab caches about the job
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _first_step_at: float | None = field(default=None, repr=False)

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def fraction(self) -> float | None:
        if self.status == DONE:
            return 1.0
        return min(1.0, self.step / self.total) if self.total else None

    @property
    def steps_per_second(self) -> float | None:
        if self._first_step_at is None or self.step < 2:
            return None
        end = self.finished or time.time()
        return (self.step - 1) / max(end - self._first_step_at, 1e-9)

    @property
    def eta_seconds(self) -> float | None:
        rate = self.steps_per_second
        if self.status != RUNNING or not self.total or not rate:
            return None
        return max(0.0, (self.total - self.step) / rate)

    def describe(self) -> str:
        """One line for the page: what it is doing, how far, and how long is left."""
        if self.status == RUNNING and self.total:
            eta = self.eta_seconds
            eta_s = f", ETA {eta:.0f} s" if eta is not None else ""
            return f"{self.label}: {self.phase}, step {self.step}/{self.total} ({100 * (self.fraction or 0):.0f}%{eta_s})"
        if self.status == FAILED:
            return f"{self.label}: failed: {self.error}"
        if self.status in (DONE, CANCELLED):
            return f"{self.label}: {self.status}" + (f": {self.phase}" if self.phase else "")
        return f"{self.label}: {self.phase}"


class JobContext:
    """What a running job sees: its `Job`, a progress callback and a cancellation check."""

    def __init__(self, job: Job):
        self.job = job

    @property
    def cancelled(self) -> bool:
        return self.job.cancel_requested

    def check(self) -> None:
        """Stop here (raise `Cancelled`) if the job has been cancelled; for work between fits."""
        if self.cancelled:
            raise Cancelled()

    def set_phase(self, text: str) -> None:
        self.job.phase = text

    def add_output(self, name: str, path: str | Path) -> None:
        self.job.outputs = {**self.job.outputs, name: str(path)}

    def callback(self, step: int, record: dict[str, float] | None = None) -> bool:
        job = self.job
        if job._first_step_at is None:
            job._first_step_at = time.time()
        job.step = step
        if record is not None:
            job.history.append(record)  # atomic under the GIL; readers copy before they iterate
        return job.cancel_requested


class JobManager:
    """Runs at most ``max_running`` jobs at once and holds at most ``max_queued`` more waiting."""

    def __init__(self, max_running: int = 2, max_queued: int = 8):
        if max_running < 1 or max_queued < 0:
            raise ValueError("max_running must be >= 1 and max_queued >= 0")
        self.max_running, self.max_queued = max_running, max_queued
        self._jobs: dict[str, Job] = {}
        self._fns: dict[str, Callable[[JobContext], Any]] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._workers = [threading.Thread(target=self._work, name=f"fieldstudio-job-{i}", daemon=True)
                         for i in range(max_running)]
        for w in self._workers:
            w.start()

    # --- submitting and controlling ---------------------------------------------------------

    def submit(self, fn: Callable[[JobContext], Any], *, kind: str, label: str, total: int | None = None,
               out: str | Path | None = None) -> Job:
        with self._lock:
            active = [j for j in self._jobs.values() if j.status in (QUEUED, RUNNING)]
            if len(active) >= self.max_running + self.max_queued:
                raise QueueFull(f"the job queue is full ({sum(j.status == RUNNING for j in active)} running, "
                                f"{sum(j.status == QUEUED for j in active)} waiting; at most "
                                f"{self.max_running} + {self.max_queued})",
                                "wait for a job to finish or cancel one, then start again")
            job = Job(id=f"job-{next(self._ids)}", kind=kind, label=label, total=total,
                      out=Path(out) if out is not None else None)
            self._jobs[job.id] = job
            self._fns[job.id] = fn
        self._queue.put(job.id)
        return job

    def cancel(self, job_id: str) -> bool:
        """Ask a job to stop; a queued job never starts. False when it had already finished."""
        job = self._jobs.get(job_id)
        if job is None or job.status in FINISHED:
            return False
        job._cancel.set()
        with self._lock:
            if job.status == QUEUED:
                self._finish(job, CANCELLED, "cancelled before it started")
        return True

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.created)

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job has finished (for tests and scripts); raises TimeoutError."""
        end = None if timeout is None else time.time() + timeout
        job = self._jobs[job_id]
        while job.status not in FINISHED:
            if end is not None and time.time() > end:
                raise TimeoutError(f"{job_id} still {job.status} after {timeout} s")
            time.sleep(0.02)
        return job

    def shutdown(self, cancel: bool = True, timeout: float = 30.0) -> None:
        if cancel:
            for j in self.jobs():
                self.cancel(j.id)
        for _ in self._workers:
            self._queue.put(None)
        for w in self._workers:
            w.join(timeout)

    # --- the workers ------------------------------------------------------------------------

    def _finish(self, job: Job, status: str, phase: str) -> None:
        job.status, job.phase, job.finished = status, phase, time.time()
        self._fns.pop(job.id, None)

    def _work(self) -> None:
        from fieldstudio.apps.training import TrainingStopped

        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._lock:
                job = self._jobs[job_id]
                if job.status != QUEUED:  # cancelled while waiting
                    continue
                fn = self._fns[job_id]
                job.status, job.started, job.phase = RUNNING, time.time(), "starting"
            try:
                result = fn(JobContext(job))
            except TrainingStopped as exc:
                self._finish(job, CANCELLED, f"stopped at step {exc.step}; the checkpoint is kept in {exc.run_dir}")
            except Cancelled:
                self._finish(job, CANCELLED, "stopped; what was saved is kept")
            except FieldStudioError as exc:
                job.error = str(exc)
                self._finish(job, FAILED, "")
            except Exception as exc:  # a bug: keep the traceback for the log, show one line
                job.error = f"{type(exc).__name__}: {exc}"
                job.traceback = traceback.format_exc()
                print(f"fieldstudio app: {job.id} ({job.label}) failed:\n{job.traceback}", file=sys.stderr)
                self._finish(job, FAILED, "")
            else:
                job.result = result
                # a phase the job set last (e.g. "test PSNR 28.6 dB") says more than "finished"
                self._finish(job, DONE, "finished" if job.phase in ("starting", "training") else job.phase)
