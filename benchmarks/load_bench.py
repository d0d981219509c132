"""Many visitors at once: ``python -m benchmarks.load_bench [--visitors 8] [--training]``.

Starts ``streamlit run app.py`` on a free 127.0.0.1 port with its own folders, then opens N
headless chromium sessions at the same moment, each uploading one photo on the Classify page, and
times each from the upload to its "Predicted:" heading. With ``--training`` a visitor first starts
a training job on the shared GZ2 folder through the Train page, and the classifying visitors
come once it is running. Prints how many answered, the median and slowest answer, the server's
peak memory (the server and its job processes together) and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import REPO, default_data_root, start_streamlit, stop_process

CHROMIUM = Path(os.environ.get("GALAXY_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ANSWER_TIMEOUT_S = 120


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and every process below it, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    family, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in family]
        family.update(children)
        frontier.extend(children)
    return sum(rss.get(p, 0) for p in family)


class PeakSampler:
    """Samples a process tree's memory in a thread until stopped; keeps the peak."""

    def __init__(self, pid: int, every_s: float = 0.25):
        self.pid, self.every_s, self.peak = pid, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Summary:
    asked: int
    answered: int
    median_s: float | None
    slowest_s: float | None

    def line(self) -> str:
        if not self.answered:
            return f"0 of {self.asked} answered"
        return (f"{self.answered} of {self.asked} answered, median {self.median_s:.1f} s, "
                f"slowest {self.slowest_s:.1f} s")


def summarise(times: list[float | None]) -> Summary:
    """Answer times (None: no answer within the timeout) -> counts, median and slowest."""
    answered = sorted(t for t in times if t is not None)
    return Summary(len(times), len(answered), statistics.median(answered) if answered else None,
                   answered[-1] if answered else None)


def start_app(folder: Path, data: Path | None) -> tuple[subprocess.Popen, str]:
    """``streamlit run app.py`` with its own data, models and cache folders; returns it and its URL."""
    models, data_root = folder / "models", folder / "data"
    shutil.copytree(REPO / "models" / "default", models / "default")
    data_root.mkdir()
    if data is not None:
        (data_root / data.name).symlink_to(data, target_is_directory=True)
    env = {**os.environ, "GALAXY_MODELS_ROOT": str(models), "GALAXY_DATA_ROOT": str(data_root),
           "GALAXY_CACHE_DIR": str(folder / "cache")}
    return start_streamlit(env, folder / "streamlit.log", seconds=120)


async def start_training(browser, url: str) -> object:
    """A visitor starts a training run with the form's defaults; returns once it is running."""
    page = await browser.new_page()
    await page.goto(f"{url}/train")
    await page.get_by_role("button", name="Start training").click(timeout=60_000)
    await page.get_by_role("button", name="Stop").wait_for(timeout=120_000)
    return page


async def visitor(browser, url: str, photo: Path, ready: asyncio.Event, go: asyncio.Event) -> float | None:
    """One visitor: open Classify, say it is ready, wait for the signal, upload the photo, time the answer."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{url}/classify")
        upload = page.locator('input[type="file"]').first
        await upload.wait_for(state="attached", timeout=ANSWER_TIMEOUT_S * 1000)
        ready.set()
        await go.wait()
        start = time.perf_counter()
        await upload.set_input_files(str(photo))
        await page.get_by_role("heading", name="Predicted:").first.wait_for(timeout=ANSWER_TIMEOUT_S * 1000)
        return time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - no answer is a result here, counted as such
        print(f"a visitor got no answer: {str(exc).splitlines()[0][:200]}", file=sys.stderr)
        ready.set()
        return None
    finally:
        await context.close()


async def drive(url: str, visitors: int, photo: Path, training: bool) -> list[float | None]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            if training:
                await start_training(browser, url)
            go, ready = asyncio.Event(), [asyncio.Event() for _ in range(visitors)]
            tasks = [asyncio.create_task(visitor(browser, url, photo, r, go)) for r in ready]
            await asyncio.gather(*(r.wait() for r in ready))  # every page open: the uploads go together
            go.set()
            return list(await asyncio.gather(*tasks))
        finally:
            await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load_bench")
    parser.add_argument("--visitors", type=int, default=8)
    parser.add_argument("--training", action="store_true", help="with a training job running")
    parser.add_argument("--data", type=Path, default=default_data_root() / "gz2-sdss-128")
    parser.add_argument("--photo", type=Path, default=None, help="default: a GZ1 wide-field photo")
    args = parser.parse_args()
    photo = args.photo or min((default_data_root() / "gz1-widefield-423" / "images").iterdir())
    with tempfile.TemporaryDirectory() as folder:
        process, url = start_app(Path(folder), args.data if args.training else None)
        try:
            with PeakSampler(process.pid) as sampler:
                times = asyncio.run(drive(url, args.visitors, photo, args.training))
        finally:
            stop_process(process)
    load = os.getloadavg()
    print(f"{'with' if args.training else 'without'} a training job: {summarise(times).line()}; server peak "
          f"memory {sampler.peak / 1024**2:,.0f} MB (server and job processes); photo {photo.name}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
