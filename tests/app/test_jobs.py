"""Background jobs: outcomes, stop requests, one running job per kind, and a real training run."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app_support.jobs import Job, JobBusyError, JobRegistry, describe_error
from app_support.tasks import training_task
from galaxy_core.base.config import ConfigError, TrainConfig


def finished(job: Job, timeout: float = 30.0) -> Job:
    assert job.wait(timeout), "job did not finish in time"
    return job


def test_a_job_records_its_progress_and_result():
    def task(report, stop):
        for i in range(3):
            report(i)
        return "answer"

    snap = finished(JobRegistry().start("demo", "three steps", task)).snapshot()
    assert (snap.state, snap.result, snap.progress, snap.error) == ("done", "answer", 2, None)
    assert snap.finished_at is not None and snap.finished_at >= snap.started_at
    assert not snap.running


def test_a_user_error_keeps_its_message_and_a_bug_names_its_type():
    def user_error(report, stop):
        raise ConfigError("batch size 9 is larger than the 4 training views")

    def bug(report, stop):
        return {}["missing"]

    registry = JobRegistry()
    snap = finished(registry.start("a", "user", user_error)).snapshot()
    assert snap.state == "failed"
    assert snap.error == "batch size 9 is larger than the 4 training views"
    job = finished(registry.start("b", "bug", bug))
    assert job.snapshot().error == "unexpected KeyError: 'missing'"
    assert "Traceback" in job.traceback
    assert describe_error(RuntimeError("")) == "unexpected RuntimeError: no details"


def test_stop_sets_the_event_the_task_watches():
    started = threading.Event()

    def task(report, stop):
        started.set()
        while not stop.wait(0.01):
            report("working")
        return "partial"

    registry = JobRegistry()
    job = registry.start("loop", "until stopped", task)
    assert started.wait(5)
    assert registry.snapshot("loop").running
    assert registry.stop("loop")
    snap = finished(job).snapshot()
    assert snap.state == "stopped" and snap.result == "partial" and snap.stop_requested
    assert not registry.stop("loop"), "nothing left to stop"


def test_the_stopped_callback_tells_a_stop_from_a_finish():
    def task(report, stop):
        stop.set()  # asked to stop, but the task completed anyway
        return {"stopped": False}

    snap = finished(JobRegistry().start("x", "x", task, stopped=lambda r: r["stopped"])).snapshot()
    assert snap.state == "done"


def test_one_running_job_per_kind_however_many_callers():
    gate = threading.Event()

    def task(report, stop):
        gate.wait(10)
        return "ok"

    registry = JobRegistry()
    outcomes: list[str] = []
    lock = threading.Lock()

    def caller() -> None:
        try:
            registry.start("train", "tab", task)
            result = "started"
        except JobBusyError:
            result = "busy"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["busy"] * 7 + ["started"]
    other = registry.start("download", "another kind runs beside it", lambda r, s: "fine")
    assert finished(other).snapshot().state == "done"
    with pytest.raises(JobBusyError, match="a train job is already running"):
        registry.start("train", "second", task)
    gate.set()
    finished(registry.get("train"))
    again = registry.start("train", "after the first ended", lambda r, s: "ok")
    assert finished(again).snapshot().result == "ok"


def test_snapshot_of_an_unknown_kind_is_none():
    registry = JobRegistry()
    assert registry.snapshot("nothing") is None and registry.get("nothing") is None


def test_training_stops_mid_run_and_resumes_from_its_checkpoint(tiny_dataset: Path, tmp_path: Path):
    config = TrainConfig(data_dir=tiny_dataset, out_dir=tmp_path / "model", epochs=2, batch_size=8,
                         input_size=32, crop=96, width=8, depth=1)
    inner = training_task(config)
    events = []

    def stop_in_second_epoch(report, stop):
        def watch(event):
            events.append(event)
            report(event)
            if event.phase == "train" and event.epoch == 2:
                stop.set()
        return inner(watch, stop)

    registry = JobRegistry()
    job = registry.start("train", "tiny", stop_in_second_epoch, stopped=lambda r: r.stopped)
    snap = finished(job, 120).snapshot()
    assert snap.state == "stopped", snap.error
    assert snap.result.epochs_done == 1 and len(snap.result.history) == 1
    assert (tmp_path / "model" / "checkpoint.pt").is_file()
    assert not (tmp_path / "model" / "card.json").exists()
    # Every event after the first epoch carries that epoch's history, whatever its phase.
    first_epoch = next(i for i, e in enumerate(events) if e.phase == "epoch")
    assert {e.phase for e in events[first_epoch:]} >= {"epoch", "train", "stopped"}
    assert all(len(e.history) == 1 for e in events[first_epoch:])

    messages = []
    resumed = registry.start("train", "tiny", lambda r, s: inner(
        lambda e: (messages.append(e.message), r(e)), s), stopped=lambda r: r.stopped)
    snap = finished(resumed, 120).snapshot()
    assert snap.state == "done", snap.error
    assert "resuming from epoch 1" in messages
    assert [h.epoch for h in snap.result.history] == [1, 2]
    assert (tmp_path / "model" / "card.json").is_file()
