"""Downloader against one-request-at-a-time fetching, both served by the local stand-in server.

The server sleeps ``latency_s`` per request (SkyServer answers a cutout in about 100 ms) and
serves at most ``max_concurrent`` requests at once, so its own limit is
``max_concurrent / latency_s`` images per second: the best any client can do.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import requests

from galaxy_core.base.config import DownloadConfig
from galaxy_core.sources import download
from galaxy_core.sources.catalogue import read_catalogue
from galaxy_core.sources.cutout_server import CutoutIndex, CutoutServer, ServerOptions
from galaxy_core.sources.cutouts import cutout_params
from galaxy_core.sources.download import download_cutouts
from galaxy_core.sources.folder import DatasetFolder


def load_rows(data_dir: Path) -> tuple[pd.DataFrame, CutoutIndex]:
    """The catalogue to request (without image paths) and the server's coordinate index."""
    catalogue = read_catalogue(DatasetFolder(data_dir).catalogue).drop(columns="image")
    return catalogue, CutoutIndex.from_catalogue(Path(data_dir))


def sequential_download(rows: pd.DataFrame, url: str, out_dir: Path) -> int:
    """The reference: one ``requests.get`` after another, each answer written to a file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = DownloadConfig(out_dir=out_dir, cutout_url=url)
    written = 0
    with requests.Session() as session:
        for row in rows.itertuples():
            response = session.get(url, params=cutout_params(row.ra, row.dec, config), timeout=30)
            if response.status_code == 200:
                (out_dir / f"{row.id}.jpg").write_bytes(response.content)
                written += 1
    return written


def ours(rows: pd.DataFrame, url: str, out_dir: Path, workers: int) -> tuple[float, Any]:
    config = DownloadConfig(out_dir=out_dir, cutout_url=url, workers=workers)
    start = time.perf_counter()
    report = download_cutouts(rows, config)
    return time.perf_counter() - start, report


@contextmanager
def threads_per_slot(threads: int) -> Iterator[None]:
    """Run the downloader with ``threads`` pool threads per request slot (1: no spare threads)."""
    shipped = download.THREADS_PER_REQUEST_SLOT
    download.THREADS_PER_REQUEST_SLOT = threads
    try:
        yield
    finally:
        download.THREADS_PER_REQUEST_SLOT = shipped


def fault_keys(rows: pd.DataFrame, every: int) -> set[str]:
    """The server's keys for every ``every``-th galaxy, as it formats the request's coordinates."""
    config = DownloadConfig(out_dir=Path("."))
    keys = set()
    for row in rows.iloc[::every].itertuples():
        params = cutout_params(row.ra, row.dec, config)
        keys.add(f"{float(params['ra']):.4f},{float(params['dec']):.4f}")
    return keys


def bench_download(data_dir: Path, work_dir: Path, *, n: int, sequential_n: int, latency_s: float = 0.1,
                   max_concurrent: int = 32, workers: int = 32, fault_every: int = 10) -> dict[str, float]:
    """Images/s of ``download_cutouts`` and of the sequential reference, same server, same run."""
    catalogue, index = load_rows(data_dir)
    options = ServerOptions(latency_s=latency_s, max_concurrent=max_concurrent)
    limit = max_concurrent / latency_s if latency_s else float("inf")
    out: dict[str, float] = {"download_latency_ms": latency_s * 1000,
                             "download_server_max_concurrent": max_concurrent,
                             "download_workers": workers,
                             "download_server_limit_images_per_s": limit}
    ours_rows = catalogue.iloc[:n]
    seq_rows = catalogue.iloc[n:n + sequential_n]
    if len(seq_rows) < sequential_n:
        seq_rows = catalogue.iloc[:sequential_n]
    half = len(seq_rows) // 2
    with CutoutServer(index, options) as server:
        # Reference, ours (without and with spare threads), reference: the reference's two
        # halves bracket our runs in time.
        seq_s, seq_ok = 0.0, 0
        t, ok = _timed_sequential(seq_rows.iloc[:half], server.url, work_dir / "seq-a")
        seq_s, seq_ok = seq_s + t, seq_ok + ok
        with threads_per_slot(1):
            single_s, single = ours(ours_rows, server.url, work_dir / "ours-single", workers)
        ours_s, report = ours(ours_rows, server.url, work_dir / "ours", workers)
        t, ok = _timed_sequential(seq_rows.iloc[half:], server.url, work_dir / "seq-b")
        seq_s, seq_ok = seq_s + t, seq_ok + ok
        before = server.total_requests
        resume_s, resumed = ours(ours_rows, server.url, work_dir / "ours", workers)
        resume_requests = server.total_requests - before
    if report.failed or seq_ok != len(seq_rows):
        raise RuntimeError(f"download benchmark lost images: {len(report.failed)} failed in ours, "
                           f"{len(seq_rows) - seq_ok} in the reference")
    ours_rate = report.downloaded / ours_s
    seq_rate = seq_ok / seq_s
    out.update({
        "download_images": report.downloaded,
        "download_images_per_s": ours_rate,
        "download_sequential_images": seq_ok,
        "download_sequential_images_per_s": seq_rate,
        "download_speedup_vs_sequential": ours_rate / seq_rate,
        "download_fraction_of_server_limit": ours_rate / limit,
        "download_images_per_s_one_thread_per_slot": single.downloaded / single_s,
        "download_resume_s": resume_s,
        "download_resume_requests": resume_requests,
        "download_resume_skipped": resumed.skipped,
    })
    out.update(_bench_with_faults(catalogue.iloc[:n], index, options, work_dir, workers, fault_every))
    shutil.rmtree(work_dir, ignore_errors=True)
    return out


def _timed_sequential(rows: pd.DataFrame, url: str, out_dir: Path) -> tuple[float, int]:
    start = time.perf_counter()
    ok = sequential_download(rows, url, out_dir)
    return time.perf_counter() - start, ok


def _bench_with_faults(rows: pd.DataFrame, index: CutoutIndex, options: ServerOptions, work_dir: Path,
                       workers: int, every: int) -> dict[str, float]:
    """Every ``every``-th galaxy fails once with HTTP 500: retries should cost little throughput.

    Run twice, alternately: as shipped, and with one pool thread per request slot (every worker
    that sleeps before its retry then leaves a slot idle), to show what the spare threads buy.
    """
    faulty = ServerOptions(latency_s=options.latency_s, max_concurrent=options.max_concurrent,
                           fault="error500", fault_first_n=1, fault_ids=fault_keys(rows, every))
    out: dict[str, float] = {}
    for label, threads in (("_one_thread_per_slot", 1), ("", download.THREADS_PER_REQUEST_SLOT)):
        with threads_per_slot(threads), CutoutServer(index, faulty) as server:
            seconds, report = ours(rows, server.url, work_dir / f"faults-{threads}", workers)
            requests_made = server.total_requests
        if report.failed:
            raise RuntimeError(f"{len(report.failed)} galaxies failed despite retries")
        out[f"download_images_per_s_with_retries{label}"] = report.downloaded / seconds
        out["download_retry_fraction"] = (requests_made - len(rows)) / len(rows)
    return out


def bench_download_scaling(data_dir: Path, work_dir: Path, sizes: tuple[int, int], *, latency_s: float = 0.1,
                           max_concurrent: int = 32, workers: int = 32) -> dict[str, float]:
    """Seconds to fetch two numbers of galaxies into fresh folders: time should grow linearly."""
    catalogue, index = load_rows(data_dir)
    options = ServerOptions(latency_s=latency_s, max_concurrent=max_concurrent)
    out: dict[str, float] = {}
    small, large = sizes
    with CutoutServer(index, options) as server:
        for size in sizes:
            seconds, report = ours(catalogue.iloc[:size], server.url, work_dir / f"scale-{size}", workers)
            if report.failed or report.downloaded != size:
                raise RuntimeError(f"scaling download of {size} galaxies lost images")
            out[f"download_s_{size}"] = seconds
    out[f"download_per_galaxy_ratio_{large}_vs_{small}"] = (
        (out[f"download_s_{large}"] / large) / (out[f"download_s_{small}"] / small))
    shutil.rmtree(work_dir, ignore_errors=True)
    return out
