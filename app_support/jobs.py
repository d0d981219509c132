"""Background jobs for the app: one long task per kind (training, downloading) per process.

A page starts a job and returns at once; every later rerun, from any browser tab, reads a
snapshot of the job's latest progress.  The task gets a ``report`` callback and a stop
``threading.Event`` (the same pair the core's ``train`` and ``download_cutouts`` take), and an
exception it raises becomes a message on the snapshot instead of killing the server thread.
"""

from __future__ import annotations

import itertools
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from galaxy_core.base import GalaxyError

JobState = Literal["running", "done", "stopped", "failed"]
Task = Callable[[Callable[[Any], None], threading.Event], Any]


class JobBusyError(GalaxyError):
    """A job of the same kind is still running."""


class NotYourJobError(GalaxyError):
    """A visitor tried to stop or replace a job another browser session started."""


@dataclass(frozen=True)
class JobSnapshot:
    """What a page draws: a consistent copy of a job's state at one moment."""

    id: int
    kind: str
    label: str
    state: JobState
    progress: Any
    result: Any
    error: str | None
    started_at: float
    finished_at: float | None
    stop_requested: bool
    owner: str | None = None

    def owned_by(self, owner: str | None) -> bool:
        """Whether ``owner`` (a browser session) started this job; a job without an owner is everyone's."""
        return self.owner is None or self.owner == owner

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def elapsed_s(self) -> float:
        return (self.finished_at or time.time()) - self.started_at


def describe_error(exc: BaseException) -> str:
    """A user error's own message; anything else names its type so a bug is still reportable."""
    if isinstance(exc, GalaxyError):
        return str(exc)
    text = str(exc).strip() or "no details"
    return f"unexpected {exc.__class__.__name__}: {text}"


class Job:
    """One task running in a daemon thread; all reads go through ``snapshot``."""

    _ids = itertools.count(1)

    def __init__(self, kind: str, label: str, task: Task, stopped: Callable[[Any], bool] | None = None,
                 owner: str | None = None):
        self.id = next(self._ids)
        self.kind, self.label, self.owner = kind, label, owner
        self.stop_event = threading.Event()
        self._task = task
        self._stopped = stopped
        self._lock = threading.Lock()
        self._state: JobState = "running"
        self._progress: Any = None
        self._result: Any = None
        self._error: str | None = None
        self.traceback: str | None = None
        self._started = time.time()
        self._finished: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"job-{kind}-{self.id}", daemon=True)

    def start(self) -> Job:
        self._thread.start()
        return self

    def report(self, progress: Any) -> None:
        with self._lock:
            self._progress = progress

    def _run(self) -> None:
        state: JobState
        try:
            result = self._task(self.report, self.stop_event)
            was_stopped = self._stopped(result) if self._stopped else self.stop_event.is_set()
            error, state = None, ("stopped" if was_stopped else "done")
        except BaseException as exc:  # noqa: BLE001 - the thread must always record an outcome
            result, error, state = None, describe_error(exc), "failed"
            if not isinstance(exc, GalaxyError):
                self.traceback = traceback.format_exc()
        with self._lock:
            self._result, self._error, self._state = result, error, state
            self._finished = time.time()

    def stop(self) -> None:
        """Ask the task to stop at its next check; it keeps whatever it has saved."""
        self.stop_event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the task ends; True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return JobSnapshot(self.id, self.kind, self.label, self._state, self._progress, self._result,
                               self._error, self._started, self._finished, self.stop_event.is_set(), self.owner)


class JobRegistry:
    """At most one running job per kind; the last job of each kind stays readable when it ends.

    The app keeps one registry per server process, so two browser tabs see (and cannot
    duplicate) the same training job. A job started with an ``owner`` (the browser session) is
    stopped only by that owner; others learn that the server is busy.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}

    def start(self, kind: str, label: str, task: Task,
              stopped: Callable[[Any], bool] | None = None, owner: str | None = None) -> Job:
        """Run ``task(report, stop)`` in the background; ``stopped(result)`` tells a stop from a finish."""
        with self._lock:
            current = self._jobs.get(kind)
            if current is not None and current.snapshot().running:
                if current.owner is not None and current.owner != owner:
                    raise JobBusyError(f"the server is busy with another visitor's {kind} job; try again later")
                raise JobBusyError(f"a {kind} job is already running ({current.label}); "
                                   "wait for it to finish or stop it first")
            job = Job(kind, label, task, stopped, owner)
            self._jobs[kind] = job
        return job.start()

    def get(self, kind: str) -> Job | None:
        with self._lock:
            return self._jobs.get(kind)

    def snapshot(self, kind: str) -> JobSnapshot | None:
        job = self.get(kind)
        return None if job is None else job.snapshot()

    def stop(self, kind: str, owner: str | None = None) -> bool:
        """Ask the running job of ``kind`` to stop; False if none is running. Only the session that
        started a job may stop it."""
        job = self.get(kind)
        if job is None or not job.snapshot().running:
            return False
        if job.owner is not None and job.owner != owner:
            raise NotYourJobError(f"this {kind} job was started by another visitor; only they can stop it")
        job.stop()
        return True
