"""A full disk: the cache build checks free space first and allocates each shard for real (a
memory map the disk cannot back would end the process with SIGBUS), and a checkpoint that cannot
be written is a CheckpointError that keeps the previous one. ENOSPC is simulated: no test
machine has a small disk to fill."""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from conftest import make_dataset

from galaxy_core.training import checkpoint
from galaxy_core.data.cache import build_cache
from galaxy_core.training.checkpoint import CheckpointError, save_checkpoint
from galaxy_core.cli import EXIT_USER_ERROR, main
from galaxy_core.sources.folder import DatasetError

Usage = namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("disk") / "d", n_per_class=3)


def leftovers(cache_root: Path) -> list[str]:
    return sorted(p.name for p in cache_root.iterdir() if not p.name.endswith(".lock")) if cache_root.is_dir() else []


def test_a_disk_that_fills_while_the_cache_is_built_is_a_clear_error_and_leaves_nothing(
        small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(DatasetError, match="disk holding the image cache .* is full .*nothing was kept"):
        build_cache(small, cache_root=tmp_path / "cache")
    assert leftovers(tmp_path / "cache") == []


def test_too_little_free_space_is_refused_before_any_decoding(small: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(DatasetError, match=r"needs about 0\.00 GB and 0\.00 GB are free"):
        build_cache(small, cache_root=tmp_path / "cache")
    assert leftovers(tmp_path / "cache") == []
    code = main(["build", "--data", str(small), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "not enough free disk space" in err and "Traceback" not in err


def test_the_shard_is_allocated_on_disk_before_it_is_written(small: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, off, n: (calls.append(n), real(fd, off, n))[1])
    report = build_cache(small, cache_root=tmp_path / "cache")
    assert report.galaxies == 9 and calls and calls[0] >= 9 * 128 * 128 * 3


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})
    before = path.read_bytes()

    def failing_save(state, target) -> None:
        Path(target).write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(CheckpointError, match="disk is full or cannot be written; the previous checkpoint is kept"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.setattr(checkpoint.torch, "save", lambda state, target: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(CheckpointError, match="disk is full"):
        save_checkpoint(path, {"epoch": 2})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert torch.load(path, weights_only=True) == {"epoch": 1}
