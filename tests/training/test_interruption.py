"""Interrupted work: a download killed outright, training stopped from the app or by Ctrl-C, and a
second job started on a folder already in use. Nothing finished is lost and nothing half-made is
left behind; the next run finishes the rest, to the same result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_dataset

from galaxy_core.base.config import DownloadConfig, TrainConfig
from galaxy_core.cli import EXIT_USER_ERROR, main
from galaxy_core.model.bundle import load_bundle
from galaxy_core.sources.catalogue import read_catalogue
from galaxy_core.sources.cutout_server import ServerOptions
from galaxy_core.sources.download import download_cutouts
from galaxy_core.sources.folder import IMAGES_DIR
from galaxy_core.sources.images import check_jpeg
from galaxy_core.training.checkpoint import CHECKPOINT_NAME, TrainingBusyError, output_lock
from galaxy_core.training.train import train


def wait_for(condition, timeout_s: float = 90.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


# --- download ----------------------------------------------------------------------------------

def test_download_killed_midway_resumes_without_corruption(tmp_path: Path, cutout_server_for) -> None:
    source = make_dataset(tmp_path / "src", n_per_class=8)
    catalogue = read_catalogue(source / "catalogue.csv")
    out = tmp_path / "out"
    with cutout_server_for(source, ServerOptions(latency_s=0.15)) as server:
        child = subprocess.Popen(
            [sys.executable, "-m", "galaxy_core", "download", "--catalogue", str(source / "catalogue.csv"),
             "--out", str(out), "--cutout-url", server.url, "--workers", "2", "--timeout", "5"],
            cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: len(list((out / IMAGES_DIR).glob("*.jpg"))) >= 4, what="4 images")
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        present = {p.name for p in (out / IMAGES_DIR).glob("*.jpg")}
        assert 4 <= len(present) < len(catalogue), "the download was not cut short"
        for path in (out / IMAGES_DIR).glob("*.jpg"):
            check_jpeg(path.read_bytes())  # a kill never leaves a half image under its final name
        # What a kill in the middle of a write leaves: an orphaned temporary file.
        (out / IMAGES_DIR / ".syn2_0007.jpg.k1ll3d.part").write_bytes(b"\xff\xd8 half a picture")

        assert server.wait_idle(30)  # requests the killed child left in flight reach the server's count
        before = dict(server.requests)
        report = download_cutouts(catalogue, DownloadConfig(out_dir=out, cutout_url=server.url, workers=4,
                                                             backoff_s=0.01, timeout_s=5))
        for row in catalogue.itertuples():
            key = f"{row.ra:.4f},{row.dec:.4f}"
            fetched = server.requests[key] - before.get(key, 0)
            assert fetched == (0 if f"{row.id}.jpg" in present else 1), row.id
    assert report.ok and report.skipped == len(present) and report.downloaded == len(catalogue) - len(present)
    files = sorted(p.name for p in (out / IMAGES_DIR).iterdir())
    assert files == sorted(f"{galaxy}.jpg" for galaxy in catalogue["id"])  # no duplicates, no leftovers
    for row in catalogue.itertuples():
        assert (out / IMAGES_DIR / f"{row.id}.jpg").read_bytes() == (source / row.image).read_bytes()
    assert not list(out.rglob("*.part"))


def test_a_second_download_into_the_same_folder_is_refused(
        tiny_dataset: Path, cutout_server_for, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    catalogue = read_catalogue(tiny_dataset / "catalogue.csv")
    out = tmp_path / "out"
    started, results = threading.Event(), {}

    def first_progress(event) -> None:
        started.set()
        time.sleep(0.05)

    with cutout_server_for(tiny_dataset, ServerOptions(latency_s=0.05)) as server:
        config = DownloadConfig(out_dir=out, cutout_url=server.url, workers=2, backoff_s=0.01, timeout_s=5)
        worker = threading.Thread(target=lambda: results.update(first=download_cutouts(catalogue, config,
                                                                                        first_progress)))
        worker.start()
        assert started.wait(30)
        code = main(["download", "--catalogue", str(tiny_dataset / "catalogue.csv"), "--out", str(out),
                     "--cutout-url", server.url])
        worker.join(60)
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "another download is already writing" in err and "Traceback" not in err
    assert results["first"].ok and results["first"].downloaded == len(catalogue)


# --- training ----------------------------------------------------------------------------------

SETTINGS = dict(epochs=3, batch_size=8, lr=5e-3, input_size=32, crop=96, width=8, depth=1, num_threads=1,
                tta=False)


@pytest.fixture
def one_thread():
    """Runs compared bit for bit use one CPU thread; the session's setting is put back after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """An uninterrupted run: the result every interrupted one must reproduce."""
    root = tmp_path_factory.mktemp("interrupt")
    data = make_dataset(root / "data", n_per_class=10)
    threads = torch.get_num_threads()
    try:
        train(TrainConfig(data_dir=data, out_dir=root / "full", cache_dir=root / "cache", **SETTINGS))
    finally:
        torch.set_num_threads(threads)
    return data, root / "cache", load_bundle(root / "full").model.state_dict()


def assert_same_weights(model_dir: Path, expected: dict[str, torch.Tensor]) -> None:
    state = load_bundle(model_dir).model.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("epoch, batch", [(1, 2), (3, 1)], ids=["before-first-checkpoint", "in-last-epoch"])
def test_stop_event_then_resume_matches_uninterrupted_run(reference, tmp_path: Path, one_thread,
                                                          epoch: int, batch: int) -> None:
    data, cache, expected = reference
    config = TrainConfig(data_dir=data, out_dir=tmp_path / "model", cache_dir=cache, **SETTINGS)
    stop = threading.Event()

    def stop_at(event) -> None:
        if event.phase == "train" and event.epoch == epoch and event.batch == batch:
            stop.set()

    stopped = train(config, stop_at, stop)
    assert stopped.stopped and stopped.epochs_done == epoch - 1
    assert not (tmp_path / "model" / "card.json").exists()
    assert (tmp_path / "model" / CHECKPOINT_NAME).exists() == (epoch > 1)
    resumed = train(config)
    assert not resumed.stopped and len(resumed.history) == SETTINGS["epochs"]
    assert_same_weights(tmp_path / "model", expected)


# The child reports, by a marker file, that the first checkpoint is written and the second epoch
# has begun, then waits in its training loop (the main thread, where Ctrl-C lands) until the
# signal comes: the parent synchronises on that event, never on time, however busy the machine.
WAITING_TRAIN = """
import signal, sys, time
from pathlib import Path
# Ctrl-C raises KeyboardInterrupt, as in a terminal's foreground job, even when the tests run as a
# background job (whose children start with SIGINT ignored, so Python installs no handler).
signal.signal(signal.SIGINT, signal.default_int_handler)
import galaxy_core.training.train
core = sys.modules["galaxy_core.training.train"]
marker = Path(sys.argv.pop(1))
one_epoch = core.train_one_epoch
def waiting(model, source, optimiser, scheduler, epoch, device, dist_info, on_batch, stop):
    def report(batch, batches, loss, acc):
        on_batch(batch, batches, loss, acc)
        if epoch == 1 and batch == 1:
            marker.write_text("in epoch 2")
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                time.sleep(0.05)
    return one_epoch(model, source, optimiser, scheduler, epoch, device, dist_info, report, stop)
core.train_one_epoch = waiting
from galaxy_core.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_then_rerun_matches_uninterrupted_run_and_blocks_a_second_job(
        reference, tmp_path: Path, one_thread, capsys: pytest.CaptureFixture) -> None:
    data, cache, expected = reference
    out = tmp_path / "model"
    args = ["train", "--data", str(data), "--out", str(out), "--cache-dir", str(cache), "--epochs", "3",
            "--batch-size", "8", "--lr", "0.005", "--image-size", "32", "--crop", "96", "--width", "8",
            "--depth", "1", "--threads", "1", "--no-tta"]
    log, marker = tmp_path / "child.log", tmp_path / "in-epoch-2"
    with log.open("w") as stderr:
        child = subprocess.Popen([sys.executable, "-c", WAITING_TRAIN, str(marker), *args], cwd=REPO,
                                 env=child_env(), stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(lambda: marker.exists() or child.poll() is not None, timeout_s=600,
                 what="the child to start its second epoch")
        assert marker.exists(), log.read_text()
        checkpoint = (out / CHECKPOINT_NAME).read_bytes()

        # While it runs, no second job may start on the folder, or wipe its checkpoint.
        config = TrainConfig(data_dir=data, out_dir=out, cache_dir=cache, **SETTINGS)
        with pytest.raises(TrainingBusyError, match="already writing"):
            train(config)
        with pytest.raises(TrainingBusyError):
            train(config, restart=True)  # what the app's "start over" does
        assert main([*args, "--restart"]) == EXIT_USER_ERROR
        assert "another training job is already writing" in capsys.readouterr().err
        assert (out / CHECKPOINT_NAME).read_bytes() == checkpoint

        child.send_signal(signal.SIGINT)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    err = log.read_text()
    assert child.returncode == 130, err
    assert "interrupted: run the same command again to resume" in err and "Traceback" not in err
    assert not (out / "card.json").exists() and not list(out.glob("*.part"))
    assert torch.load(out / CHECKPOINT_NAME, weights_only=True)["epoch"] == 1

    resumed = train(config)
    assert not resumed.stopped and len(resumed.history) == 3
    assert_same_weights(out, expected)


def test_a_second_training_job_on_the_same_folder_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    config = TrainConfig(data_dir=tiny_dataset, out_dir=out, cache_dir=tmp_path / "cache", **SETTINGS)
    with output_lock(out):  # what a running job holds, from another thread or process
        with pytest.raises(TrainingBusyError, match=str(out)):
            train(config)
    assert not (out / CHECKPOINT_NAME).exists()
