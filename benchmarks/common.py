"""Helpers shared by the benchmarks: data location, timing, peak memory of child processes."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    import numpy as np

REPO = Path(__file__).resolve().parents[1]


def default_data_root() -> Path:
    """The shared Galaxy Zoo data beside the repo, or GALAXY_SHARED_DATA (as in the tests)."""
    return Path(os.environ.get("GALAXY_SHARED_DATA", REPO.parent / "shared" / "data"))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(args: list[str], timeout_s: float = 1800) -> dict[str, Any]:
    """Run ``python -m benchmarks.child ARGS`` in a fresh process; return its JSON answer.

    Each measurement gets its own interpreter, so the peak memory it reports belongs to that
    job alone and not to whatever ran before it in the benchmark.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "benchmarks.child", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child {args[0]} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


WIDEFIELD_HALVES = ("dev", "test", "all")
EDGE_ON_CLASS = 3
"""``gz1_plurality_class`` of the wide-field images whose volunteers mostly said "edge-on" (labelled Spiral)."""


def spiral_and_elliptical_recall(says_spiral: np.ndarray, is_spiral: np.ndarray) -> tuple[float, float]:
    """Of galaxies labelled Spiral or Elliptical: the share of the spirals called Spiral, and of the
    ellipticals not called Spiral."""
    return float(says_spiral[is_spiral].mean()), float((~says_spiral[~is_spiral]).mean())


def widefield_half(table: pd.DataFrame, half: str) -> pd.DataFrame:
    """The wide-field GZ1 images split once, by objid, into a development half (for tuning and
    choosing models) and a test half (for reporting only); ``all`` is both."""
    import numpy as np

    if half not in WIDEFIELD_HALVES:
        raise ValueError(f"half must be one of {WIDEFIELD_HALVES}, got {half!r}")
    if half == "all":
        return table
    ordered = table.sort_values("objid", kind="stable")
    order = np.random.default_rng(2026).permutation(len(ordered))
    first = np.sort(order[: len(ordered) // 2])
    rows = first if half == "dev" else np.sort(order[len(ordered) // 2:])
    return ordered.iloc[rows]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, seconds: float = 90.0) -> None:
    """Return once the Streamlit server at ``url`` answers its health check; raise with the tail of
    its log if it exits or stays silent for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"streamlit did not become healthy in {seconds:.0f} s:\n{log.read_text()[-3000:]}")


def start_streamlit(env: dict[str, str], log: Path, seconds: float = 90.0) -> tuple[subprocess.Popen, str]:
    """``streamlit run app.py`` headless on a free 127.0.0.1 port with ``env``, its output in
    ``log``; returns it and its URL once it answers (stopped again if it never does)."""
    port = free_port()
    with open(log, "w") as out:  # the server keeps its own copy of the handle
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1",
             "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log, seconds)
    except RuntimeError:
        stop_process(process)
        raise
    return process, url


def stop_process(process: subprocess.Popen) -> None:
    """Ask ``process`` to end; kill it if it has not within 10 s."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def widefield_galaxies(folder: Path, half: str = "all", limit: int | None = None) -> pd.DataFrame:
    """The wide-field images labelled Spiral or Elliptical in one half of ``folder``'s catalogue
    (a seeded sample of ``limit`` of them)."""
    table = widefield_half(pd.read_csv(folder / "catalogue.csv"), half)
    table = table[table["label"].isin(["Spiral", "Elliptical"])]
    return table.sample(n=min(limit, len(table)), random_state=0) if limit else table
