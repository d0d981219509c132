"""Data at scale: sharded caches, bounded decoding, resumable downloads with a manifest, the rate limit."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from galaxy_core.base.config import DownloadConfig
from galaxy_core.data.cache import PackedDataset, _decode, _decode_in_order, build_cache
from galaxy_core.sources.catalogue import read_catalogue
from galaxy_core.sources.cutout_server import ServerOptions
from galaxy_core.sources.download import DownloadError, download_cutouts, is_complete_jpeg
from galaxy_core.sources.folder import MANIFEST_NAME, DatasetFolder


def source_pixels(data_dir: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(data_dir / rel).convert("RGB"))


def test_sharded_cache_reads_back_the_source_pixels(tiny_dataset: Path, tmp_path: Path) -> None:
    catalogue = pd.read_csv(tiny_dataset / "catalogue.csv")
    broken = catalogue["image"].iloc[17]
    (tiny_dataset / broken).write_bytes(b"\xff\xd8 not really a jpeg")
    report = build_cache(tiny_dataset, shard_size=5, cache_root=tmp_path / "cache")
    meta = json.loads((report.cache_dir / "meta.json").read_text())
    assert report.galaxies == 35 and list(report.failed) == [catalogue["id"].iloc[17]]
    assert len(meta["shards"]) == 7
    lengths = [np.load(report.cache_dir / name, mmap_mode="r").shape[0] for name in meta["shards"]]
    assert lengths == [5] * 7
    dataset = PackedDataset(report.cache_dir)
    rows = np.random.default_rng(0).permutation(len(dataset))
    images = dataset.images(rows)
    for image, rel in zip(images, dataset.index["image"].to_numpy()[rows]):
        np.testing.assert_array_equal(image, source_pixels(tiny_dataset, rel))
    assert broken not in set(dataset.index["image"])


def test_partial_last_shard_is_trimmed(tiny_dataset: Path, tmp_path: Path) -> None:
    catalogue = pd.read_csv(tiny_dataset / "catalogue.csv")
    (tiny_dataset / catalogue["image"].iloc[-1]).write_bytes(b"")
    report = build_cache(tiny_dataset, shard_size=10, cache_root=tmp_path / "cache")
    meta = json.loads((report.cache_dir / "meta.json").read_text())
    last = np.load(report.cache_dir / meta["shards"][-1], mmap_mode="r")
    assert last.shape[0] == 5 and len(meta["shards"]) == 4
    dataset = PackedDataset(report.cache_dir)
    rel = dataset.index["image"].iloc[-1]
    np.testing.assert_array_equal(dataset.images([len(dataset) - 1])[0], source_pixels(tiny_dataset, rel))


def test_decoding_holds_a_bounded_window(tiny_dataset: Path) -> None:
    paths = sorted((tiny_dataset / "images").iterdir())
    pulled = 0

    def feed():
        nonlocal pulled
        for path in paths:
            pulled += 1
            yield path

    ahead = []
    results = []
    for result in _decode_in_order(feed(), 128, workers=2, window=4):
        results.append(result)
        ahead.append(pulled - len(results))
    assert len(results) == len(paths) and max(ahead) <= 4
    for path, result in zip(paths[:3], results):
        np.testing.assert_array_equal(result, _decode(path, 128))


def test_concurrent_builders_decode_once(tiny_dataset: Path, tmp_path: Path) -> None:
    reports = []
    threads = [threading.Thread(target=lambda: reports.append(
        build_cache(tiny_dataset, shard_size=8, cache_root=tmp_path / "cache"))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.reused for r in reports) == [False, True, True]
    assert len({r.cache_dir for r in reports}) == 1


def test_symlinked_images_are_accepted_and_escapes_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    """Big image sets live on another disk behind links; a catalogue cannot reach out with ../."""
    linked = tmp_path / "linked"
    (linked / "images").mkdir(parents=True)
    catalogue = pd.read_csv(tiny_dataset / "catalogue.csv")
    for rel in catalogue["image"]:
        (linked / rel).symlink_to(tiny_dataset / rel)
    outside = Path("..") / tiny_dataset.relative_to(tmp_path) / catalogue["image"].iloc[0]
    escape = catalogue.iloc[[0]].assign(id="escape", image=str(outside))
    pd.concat([catalogue, escape]).to_csv(linked / "catalogue.csv", index=False)
    assert (linked / escape["image"].iloc[0]).is_file()
    frame = DatasetFolder(linked).read_catalogue()
    assert len(frame) == len(catalogue) and "escape" not in set(frame["id"])
    dataset = PackedDataset.open(linked, shard_size=16, cache_root=tmp_path / "cache")
    rel = dataset.index["image"].iloc[20]
    np.testing.assert_array_equal(dataset.images([20])[0], source_pixels(tiny_dataset, rel))


def files_on_disk(out: Path) -> int:
    return sum(is_complete_jpeg(p) for p in (out / "images").glob("*.jpg"))


def test_stopped_and_resumed_downloads_keep_an_exact_manifest(tiny_dataset: Path, tmp_path: Path,
                                                              cutout_server_for) -> None:
    catalogue = read_catalogue(tiny_dataset / "catalogue.csv").drop(columns="image")
    out, total = tmp_path / "out", len(catalogue)
    first_two = {f"{r.ra:.4f},{r.dec:.4f}": r.id for r in catalogue.iloc[-2:].itertuples()}

    def manifest() -> dict:
        return json.loads((out / MANIFEST_NAME).read_text())

    with cutout_server_for(tiny_dataset, ServerOptions(fault="error500", fault_ids=set(first_two))) as server:
        config = DownloadConfig(out_dir=out, cutout_url=server.url, workers=2, retries=0, backoff_s=0.01)
        stop = threading.Event()

        def stop_after_five(event) -> None:
            if event.done - event.skipped >= 5:
                stop.set()

        report = download_cutouts(catalogue, config, stop_after_five, stop)
        m = manifest()
        first = report.downloaded
        assert 5 <= first < total and m["present"] == first == files_on_disk(out)
        assert m["missing"] == total - first and not m["complete"] and not m["running"]
        assert m["failed"] == {}

        report = download_cutouts(catalogue, config)  # resumes; the two faulty galaxies fail
        m = manifest()
        assert (report.skipped, report.downloaded) == (first, total - 2 - first)
        assert m["present"] == total - 2 and m["missing"] == 2
        assert set(m["failed"]) == set(first_two.values())
        assert files_on_disk(out) == total - 2

        stop.set()  # a run stopped before it tries anything keeps the earlier failures on record
        download_cutouts(catalogue, config, stop=stop)
        assert set(manifest()["failed"]) == set(first_two.values())

    with cutout_server_for(tiny_dataset) as server:
        report = download_cutouts(catalogue, DownloadConfig(out_dir=out, cutout_url=server.url, workers=2))
        assert (report.downloaded, report.skipped, server.total_requests) == (2, total - 2, 2)
    m = manifest()
    assert m["complete"] and m["failed"] == {} and m["present"] == total == files_on_disk(out)

    with pytest.raises(DownloadError, match="--size 128"):
        download_cutouts(catalogue, DownloadConfig(out_dir=out, cutout_url="http://127.0.0.1:9", cutout_size=64))


def test_rate_limit_holds_on_a_local_server(tiny_dataset: Path, tmp_path: Path, cutout_server_for) -> None:
    """Request starts counted by the server: at most ``rate`` (+1 for the window edge) in any second."""
    catalogue = read_catalogue(tiny_dataset / "catalogue.csv").drop(columns="image")
    rate, n = 12.0, 24
    stamps: list[float] = []
    with cutout_server_for(tiny_dataset) as server:
        count = server._fault_for

        def counted(key: str) -> str:
            stamps.append(time.monotonic())
            return count(key)

        server._fault_for = counted
        free = DownloadConfig(out_dir=tmp_path / "free", cutout_url=server.url, workers=8, limit=n)
        started = time.monotonic()
        download_cutouts(catalogue, free)
        unlimited = time.monotonic() - started
        stamps.clear()
        polite = DownloadConfig(out_dir=tmp_path / "polite", cutout_url=server.url, workers=8, limit=n,
                                max_requests_per_s=rate)
        report = download_cutouts(catalogue, polite)
    assert report.downloaded == n and len(stamps) == n
    times = np.sort(np.asarray(stamps))
    assert times[-1] - times[0] >= 0.9 * (n - 1) / rate > 2 * unlimited
    busiest = max(int(np.searchsorted(times, t + 1.0) - i) for i, t in enumerate(times))
    assert busiest <= rate + 1
