"""Data-parallel training under torchrun on CPU (gloo), launched as users launch it.

Global batches are the same for any number of processes, so a network without BatchNorm or
dropout must train to the same weights on 2 processes as on 1, and a checkpoint must resume
exactly under a different number of processes.  The shipped ResNet (BatchNorm statistics and
dropout masks are per process) must land within noise of a 1-process run.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import REPO, make_dataset

from galaxy_core.base.config import TrainConfig
from galaxy_core.data.geometry import InputGeometry
from galaxy_core.data.normalise import ChannelStats
from galaxy_core.model import network as model_module
from galaxy_core.model.bundle import load_bundle, read_card
from galaxy_core.training.batches import BatchSource
from galaxy_core.training.checkpoint import CHECKPOINT_NAME, LOCK_NAME
from galaxy_core.training.distributed import Distributed
from galaxy_core.training.train import open_training_data, train

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="this PyTorch build has no torch.distributed with gloo")

EPOCHS = 4
SETTINGS = dict(epochs=EPOCHS, batch_size=16, lr=5e-3, input_size=32, crop=96, width=8, depth=1,
                tta=False, seed=3)
TORCHRUN_TIMEOUT_S = 240
# Runs `python -m galaxy_core` with the plain CNN's dropout turned off, so the only difference
# left between process counts is floating-point summation order.
DETERMINISTIC_LAUNCHER = """\
import functools, runpy
import galaxy_core.model.network as m
m.NETWORKS["plain_cnn"] = functools.partial(m.PlainCNN, dropout=0.0)
runpy.run_module("galaxy_core", run_name="__main__", alter_sys=True)
"""


def config_for(data: Path, out: Path, arch: str) -> TrainConfig:
    return TrainConfig(data_dir=data, out_dir=out, num_threads=1, device="cpu", arch=arch,
                       cache_dir=data.parent / "cache", **SETTINGS)


def torchrun(nproc: int, config: TrainConfig, launcher: Path | None = None) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node N -m galaxy_core train ...`` as a user runs it."""
    flags = ["train", "--data", str(config.data_dir), "--out", str(config.out_dir), "--threads", "1",
             "--device", "cpu", "--no-tta", "--arch", config.arch, "--cache-dir", str(config.cache_dir)]
    for name, value in SETTINGS.items():
        if name != "tta":
            flags += [f"--{name.replace('_', '-')}", str(value)]
    program = [str(launcher)] if launcher else ["-m", "galaxy_core"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(nproc), *program, *flags]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    try:
        output, _ = process.communicate(timeout=TORCHRUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"torchrun did not finish in {TORCHRUN_TIMEOUT_S} s:\n{output[-3000:]}")
    return output


def in_process(config: TrainConfig, **kwargs):
    """A 1-process run inside pytest, restoring the thread count it changes."""
    threads = torch.get_num_threads()
    try:
        return train(config, **kwargs)
    finally:
        torch.set_num_threads(threads)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_bundle(out).model.state_dict()


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ddp-data") / "data", n_per_class=40, seed=5)


@pytest.fixture(scope="module")
def plain(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Dropout-free plain CNN: a 1-process reference run and a 2-process torchrun run, whose
    first checkpoint is copied as it appears so that a single process can resume it later."""
    root = tmp_path_factory.mktemp("ddp-plain")
    launcher = root / "launch.py"
    launcher.write_text(DETERMINISTIC_LAUNCHER)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(model_module.NETWORKS, "plain_cnn",
                      functools.partial(model_module.PlainCNN, dropout=0.0))
        in_process(config_for(data, root / "one", "plain_cnn"))
    process = torchrun(2, config_for(data, root / "two", "plain_cnn"), launcher)
    checkpoint, early = root / "two" / CHECKPOINT_NAME, root / "two-early"
    while process.poll() is None and not early.exists():
        if checkpoint.is_file():
            early.mkdir()
            shutil.copy2(checkpoint, early / CHECKPOINT_NAME)  # replaced atomically, so whole
        time.sleep(0.005)
    log = finish(process)
    assert process.returncode == 0, log[-3000:]
    return {"root": root, "data": data, "launcher": launcher, "one": root / "one",
            "two": root / "two", "two_early": early}


def test_two_processes_train_the_same_weights_as_one(plain: dict[str, Path]) -> None:
    assert read_card(plain["two"]).provenance.machine.processes == 2
    assert_same_weights(plain["one"], plain["two"])
    one, two = read_card(plain["one"]), read_card(plain["two"])
    assert one.metrics.accuracy == two.metrics.accuracy
    for a, b in zip(one.history, two.history):
        assert a.train_loss == pytest.approx(b.train_loss, abs=1e-4)
        assert a.val_accuracy == b.val_accuracy


def test_two_process_checkpoint_resumes_on_one(plain: dict[str, Path]) -> None:
    early = plain["two_early"]
    state = torch.load(early / CHECKPOINT_NAME, weights_only=True)
    assert 1 <= state["epoch"] < EPOCHS, "the 2-process run's first checkpoint was not caught in time"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(model_module.NETWORKS, "plain_cnn",
                      functools.partial(model_module.PlainCNN, dropout=0.0))
        result = in_process(config_for(plain["data"], early, "plain_cnn"))
    assert not result.stopped and result.epochs_done == EPOCHS
    card = read_card(early)
    assert card.provenance.machine.processes == 1
    assert [h.epoch for h in card.history] == list(range(1, EPOCHS + 1))
    assert_same_weights(plain["one"], early)


def test_one_process_checkpoint_resumes_on_two(plain: dict[str, Path]) -> None:
    config, stop = config_for(plain["data"], plain["root"] / "one-then-two", "plain_cnn"), threading.Event()

    def stop_after_first_epoch(event) -> None:
        if event.phase == "epoch":
            stop.set()

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(model_module.NETWORKS, "plain_cnn",
                      functools.partial(model_module.PlainCNN, dropout=0.0))
        stopped = in_process(config, progress=stop_after_first_epoch, stop=stop)
    assert stopped.stopped and stopped.epochs_done == 1
    log = finish(torchrun(2, config, plain["launcher"]))
    assert "resuming from epoch 1" in log, log[-3000:]
    assert read_card(config.out_dir).provenance.machine.processes == 2
    assert_same_weights(plain["one"], config.out_dir)


@pytest.fixture(scope="module")
def resnet(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped architecture, with BatchNorm and dropout, on 1 process and under torchrun."""
    root = tmp_path_factory.mktemp("ddp-resnet")
    in_process(config_for(data, root / "one", "resnet_small"))
    process = torchrun(2, config_for(data, root / "two", "resnet_small"))
    log = finish(process)
    assert process.returncode == 0, log[-3000:]
    return {"one": root / "one", "two": root / "two", "log": log}


def test_resnet_on_two_processes_matches_one_within_noise(resnet: dict) -> None:
    one, two = read_card(resnet["one"]), read_card(resnet["two"])
    assert (one.provenance.machine.processes, two.provenance.machine.processes) == (1, 2)
    assert two.provenance.machine.backend == "gloo"
    assert one.provenance.data == two.provenance.data  # the same split and balanced views
    # 12 test galaxies: one galaxy is 0.083 of accuracy.
    assert two.metrics.accuracy >= 0.75
    assert abs(one.metrics.accuracy - two.metrics.accuracy) <= 0.17
    for a, b in zip(one.history, two.history):
        assert abs(a.train_loss - b.train_loss) < 0.1
        assert a.lr == pytest.approx(b.lr)


def test_log_states_world_size_and_only_rank_zero_writes(resnet: dict) -> None:
    log = resnet["log"]
    assert log.count("training on 2 processes (gloo)") == 1
    assert log.count("model saved to") == 1
    assert sorted(p.name for p in resnet["two"].iterdir()) == sorted(p.name for p in resnet["one"].iterdir())


def test_failure_on_one_rank_ends_the_job(plain: dict[str, Path]) -> None:
    """Rank 0 cannot take the output lock and stops; rank 1 must not wait for it forever."""
    config = config_for(plain["data"], plain["root"] / "busy", "plain_cnn")
    config.out_dir.mkdir()
    with open(config.out_dir / LOCK_NAME, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        process = torchrun(2, config)
        log = finish(process)
    assert process.returncode != 0
    assert "another training job is already writing to" in log
    assert not (config.out_dir / CHECKPOINT_NAME).exists()


def test_ranks_split_every_global_batch(tiny_dataset: Path, tmp_path: Path) -> None:
    """Concatenating the ranks' shares gives back the 1-process batch, for any world size."""
    config = TrainConfig(data_dir=tiny_dataset, out_dir=tmp_path, batch_size=12, input_size=32)
    dataset, plan = open_training_data(config, world=1)
    stats = ChannelStats(mean=(0.1, 0.1, 0.1), std=(0.2, 0.2, 0.2))
    geometry = InputGeometry(source_size=dataset.source_size, crop=config.crop, input_size=config.input_size)
    source = BatchSource(dataset, plan.views, stats, geometry, config)
    whole = list(source.batches(1, Distributed()))
    assert len(whole) == source.steps_per_epoch() > 1
    for world in (2, 3):
        shares = [list(source.batches(1, Distributed(world=world, rank=r))) for r in range(world)]
        order = np.concatenate([np.arange(12)[r::world] for r in range(world)])
        for step, (x, y) in enumerate(whole):
            assert torch.equal(torch.cat([shares[r][step][0] for r in range(world)]), x[order])
            assert torch.equal(torch.cat([shares[r][step][1] for r in range(world)]), y[order])
