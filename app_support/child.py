"""Run a job's task in a child process, so a training run or a download never starves the server
(not a page).

The child is started with the 'spawn' context (a fresh interpreter, no copy of the server's
threads), lowers its priority and uses one thread for torch, and sends its progress over a
queue. A stop request is passed on and, if the child has not ended ``STOP_GRACE_S`` later, the
child is terminated; a child that crashes or is killed becomes a failed job with a one-line
message, never a dead server.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from app_support.jobs import Task, describe_error
from galaxy_core.base import GalaxyError

CHILD_NICE = 10
STOP_GRACE_S = 1.0
POLL_S = 0.1
_CONTEXT = multiprocessing.get_context("spawn")


class ChildError(GalaxyError):
    """The child process running a job ended without an answer (crashed or killed)."""


class ChildStopped:
    """The answer of a child that was terminated after a stop request, before it could answer."""

    stopped = True


def _child_main(make_task: Callable[..., Task], args: tuple, messages: Any, stop: Any) -> None:
    """The child's whole life: be polite, run the task, send every progress event and the outcome."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        os.nice(CHILD_NICE)
    except OSError:  # an operator may forbid it; the job still runs
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the server is the server's to handle
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(1)
    try:
        result = make_task(*args)(lambda event: messages.put(("progress", event)), stop)
    except BaseException as exc:  # noqa: BLE001 - every outcome goes back to the server
        messages.put(("error", describe_error(exc)))
    else:
        messages.put(("result", result))


def in_child(make_task: Callable[..., Task], *args: Any) -> Task:
    """A task that runs ``make_task(*args)`` in a child process; ``make_task`` must be importable
    by name (a module-level function) and its arguments picklable."""

    def run(report: Callable[[Any], None], stop: threading.Event) -> Any:
        messages = _CONTEXT.Queue()
        child_stop = _CONTEXT.Event()
        process = _CONTEXT.Process(target=_child_main, args=(make_task, args, messages, child_stop),
                                   name="galaxy-job", daemon=True)
        process.start()
        kill_at: float | None = None
        try:
            while True:
                # Checked before every message, not only when the queue is quiet: a job that reports
                # every batch would otherwise never hear its stop.
                if stop.is_set():
                    child_stop.set()
                    kill_at = kill_at or time.monotonic() + STOP_GRACE_S
                    if time.monotonic() >= kill_at:
                        process.terminate()
                try:
                    kind, value = messages.get(timeout=POLL_S)
                except queue.Empty:
                    if not process.is_alive():
                        break
                    continue
                if kind == "progress":
                    report(value)
                elif kind == "result":
                    return value
                else:
                    raise ChildError(value)
            if stop.is_set():
                return ChildStopped()
            code = process.exitcode
            why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise ChildError(f"the job's process ended without an answer ({why}); the server is fine, "
                             "try again with smaller settings")
        finally:
            if process.is_alive():
                process.terminate()
            process.join(5)
            messages.close()

    return run
