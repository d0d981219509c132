"""A full disk: the cache build checks free space first and allocates each shard for real (a
memory map the disk cannot back would end the process with SIGBUS), and a checkpoint that cannot
be written is a CheckpointError that keeps the previous one. ENOSPC is simulated: no test
machine has a small disk to fill."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset

from galaxy_core.cli import EXIT_USER_ERROR, main
from galaxy_core.data.cache import CacheDamaged, PackedDataset, build_cache
from galaxy_core.sources.folder import DatasetError
from galaxy_core.training import checkpoint
from galaxy_core.training.checkpoint import CheckpointError, save_checkpoint

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


# --- a cache on disk is checked against what was written --------------------------------------

def built(small: Path, cache_root: Path) -> Path:
    report = build_cache(small, cache_root=cache_root, shard_size=8)
    return report.cache_dir


def test_a_flipped_byte_in_a_shard_is_an_error_when_it_is_read(small: Path, tmp_path: Path) -> None:
    cache_dir = built(small, tmp_path / "cache")
    shard = cache_dir / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the content hash can tell
    shard.write_bytes(bytes(data))
    dataset = PackedDataset(cache_dir)
    dataset.images(np.flatnonzero(dataset.shard_of == 0))  # an intact shard reads as ever
    with pytest.raises(CacheDamaged, match=r"shard-00001.npy is not the one written\); delete that folder"):
        dataset.images(np.arange(len(dataset)))


@pytest.mark.parametrize("damage", ["truncate", "index", "missing", "meta"])
def test_a_damaged_cache_is_refused_on_opening_and_built_again(small: Path, tmp_path: Path, damage: str) -> None:
    cache_dir = built(small, tmp_path / "cache")
    before = PackedDataset(cache_dir).images(np.arange(3))
    if damage == "truncate":
        with open(cache_dir / "shard-00000.npy", "r+b") as handle:
            handle.truncate(1000)
    elif damage == "index":
        text = (cache_dir / "index.csv").read_text()
        (cache_dir / "index.csv").write_text(text.replace("Spiral", "Ellipt", 1) if "Spiral" in text
                                             else text.replace("Elliptical", "Spiral0000", 1))
    elif damage == "missing":
        (cache_dir / "shard-00000.npy").unlink()
    else:
        (cache_dir / "meta.json").write_text("{not json")
    with pytest.raises(CacheDamaged, match="damaged"):
        PackedDataset(cache_dir)
    report = build_cache(small, cache_root=tmp_path / "cache", shard_size=8)
    assert not report.reused and report.cache_dir == cache_dir
    assert np.array_equal(PackedDataset(cache_dir).images(np.arange(3)), before)


def test_a_shard_of_another_shape_is_refused(small: Path, tmp_path: Path) -> None:
    cache_dir = built(small, tmp_path / "cache")
    meta = json.loads((cache_dir / "meta.json").read_text())
    other = np.zeros((8, 4, 4, 3), np.uint8)
    np.save(cache_dir / "shard-00000.npy", other)
    meta["files"]["shard-00000.npy"] = {"bytes": (cache_dir / "shard-00000.npy").stat().st_size, "sha256": "x"}
    (cache_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CacheDamaged, match="shard-00000.npy holds uint8 .8, 4, 4, 3."):
        PackedDataset(cache_dir)
