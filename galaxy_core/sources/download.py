"""Download a catalogue's SDSS cutouts: concurrent, polite, resumable, validated and atomic.

Every image is checked to be a complete JPEG and written to a temporary file that is renamed
into place, so a file under ``images/`` is always whole: a resumed run trusts what it finds.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from galaxy_core.base.atomic import file_lock, remove_stale_parts, write_bytes_atomic
from galaxy_core.base.config import DownloadConfig, GalaxyError
from galaxy_core.sources.catalogue import write_catalogue
from galaxy_core.sources.cutouts import CutoutClient
from galaxy_core.sources.fetch import AnyEvent, FetchStopped, UrlPolicy
from galaxy_core.sources.folder import IMAGES_DIR, DatasetFolder
from galaxy_core.sources.images import ImageLoadError

# A killed run (power cut, SIGKILL) leaves a manifest at most this old; the files are the truth.
MANIFEST_EVERY_S = 30.0
# Galaxies queued per pool thread: enough to keep every thread busy, few enough that the full
# catalogue never becomes 667,944 futures in memory.
QUEUED_PER_THREAD = 4
LOCK_NAME = ".download.lock"
# Pool threads per request in flight: spare threads keep every request slot busy while others
# sleep before a retry, so a few transient faults cost their retries, not the pool's throughput.
THREADS_PER_REQUEST_SLOT = 2


class DownloadError(GalaxyError):
    """The download could not start (bad settings or output folder)."""


class DownloadBusyError(DownloadError):
    """Another download is already writing to this output folder."""


@dataclass
class DownloadProgress:
    """Sent to the progress callback after every galaxy."""

    done: int
    total: int
    failed: int
    skipped: int
    elapsed_s: float


@dataclass
class DownloadReport:
    total: int
    downloaded: int
    skipped: int
    failed: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def _id_digest(galaxy_id: str) -> str:
    return hashlib.sha256(str(galaxy_id).encode("utf-8", "surrogatepass")).hexdigest()[:12]


def image_relpath(galaxy_id: str) -> str:
    """A file name inside ``images/`` for any id: no separators, no ``..``, never too long."""
    safe = "".join(ch if ch.isalnum() or ch in "._+-" else "_" for ch in str(galaxy_id))
    if not safe.strip("."):
        safe = "galaxy"
    if len(safe.encode()) > 100:
        safe = f"{safe[:40]}-{_id_digest(galaxy_id)}"
    return f"{IMAGES_DIR}/{safe}.jpg"


def unique_relpaths(ids: list[str]) -> list[str]:
    """``image_relpath`` for every id, except that ids which would share a file (``a/b`` and
    ``a_b``, ``.`` and ``..``, or names equal but for case on macOS and Windows) do not: the
    first id that names its file exactly keeps it, the others get a hash of the id appended."""
    paths = [image_relpath(i) for i in ids]
    groups = Counter(p.lower() for p in paths)
    kept: set[str] = set()
    out = []
    for galaxy_id, path in zip(ids, paths):
        key = path.lower()
        exact = path == f"{IMAGES_DIR}/{galaxy_id}.jpg"
        if groups[key] > 1 and (key in kept or not exact):
            path = f"{path[:-4]}-{_id_digest(galaxy_id)}.jpg"
        elif groups[key] > 1:
            kept.add(key)
        out.append(path)
    return out


def is_complete_jpeg(path: Path) -> bool:
    """Cheap check of a file already on disk: JPEG start and end markers, nothing read between."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 64))
            tail = handle.read()
    except OSError:
        return False
    return head == b"\xff\xd8" and tail.rstrip(b"\x00").endswith(b"\xff\xd9")


def read_manifest(out_dir: Path) -> dict:
    """The manifest of the last run into ``out_dir``; empty for a new folder or an unreadable file."""
    try:
        manifest = json.loads(DatasetFolder(out_dir).manifest.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(manifest, dict):
        return {}
    # A hand-edited manifest is a hint, never a crash: keep only the entries of the right type.
    failed = manifest.get("failed")
    manifest["failed"] = ({str(k): str(v)[:500] for k, v in failed.items()} if isinstance(failed, dict) else {})
    return manifest


def _check_resumable(out_dir: Path, previous: dict, config: DownloadConfig) -> None:
    """A resumed run trusts the files it finds, so they must be cutouts of the same kind."""
    if not previous.get("present"):
        return
    for key, value in (("size", config.cutout_size), ("scale", config.pixel_scale)):
        if key in previous and previous[key] != value:
            raise DownloadError(f"{out_dir} holds cutouts made with --{key} {previous[key]}, not {value}: "
                                f"resume with --{key} {previous[key]} or use a new --out folder")


def _write_manifest(out_dir: Path, report: DownloadReport, config: DownloadConfig,
                    failed: dict[str, str], running: bool) -> None:
    """What is done and what is not: ``failed`` holds the missing galaxies whose last attempt,
    in this run or an earlier one, failed; the rest of ``missing`` were not tried yet."""
    present = report.skipped + report.downloaded
    manifest = {
        "cutout_url": config.cutout_url, "size": config.cutout_size, "scale": config.pixel_scale,
        "total": report.total, "present": present, "missing": report.total - present,
        "complete": present == report.total, "failed": failed, "running": running,
        "downloaded_this_run": report.downloaded, "seconds_this_run": round(report.elapsed_s, 1),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_bytes_atomic(DatasetFolder(out_dir).manifest, json.dumps(manifest, indent=1).encode())


def download_cutouts(catalogue: pd.DataFrame, config: DownloadConfig,
                     progress: Callable[[DownloadProgress], None] | None = None,
                     stop: threading.Event | None = None, policy: UrlPolicy | None = None) -> DownloadReport:
    """Fetch every galaxy's cutout into ``out_dir/images``; skip files already present.

    Setting ``stop`` ends the run within about a second, even mid-answer from a slow server;
    ``policy`` (the app's allowed hosts) is checked for the cutout URL and every redirect."""
    out_dir = Path(config.out_dir)
    try:
        DatasetFolder(out_dir).images.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create output folder {out_dir}: {exc.strerror}") from None
    busy = DownloadBusyError(f"another download is already writing to {out_dir}")
    with file_lock(out_dir / LOCK_NAME, busy=busy):
        remove_stale_parts(out_dir)
        remove_stale_parts(DatasetFolder(out_dir).images)
        return _download_locked(catalogue, config, out_dir, progress, stop, policy)


def _download_locked(catalogue: pd.DataFrame, config: DownloadConfig, out_dir: Path,
                     progress: Callable[[DownloadProgress], None] | None,
                     stop: threading.Event | None, policy: UrlPolicy | None) -> DownloadReport:
    previous = read_manifest(out_dir)
    _check_resumable(out_dir, previous, config)
    rows = catalogue if config.limit is None else catalogue.iloc[: config.limit]
    rows = rows.assign(image=unique_relpaths([str(i) for i in rows["id"]]))
    write_catalogue(rows.reset_index(drop=True), DatasetFolder(out_dir).catalogue)
    run = _DownloadRun(rows, config, out_dir, previous, CutoutClient(config, policy), progress, stop)
    run.fetch_all()
    return run.report


class _DownloadRun:
    """One run over a written catalogue: which galaxies are missing, a bounded queue of them on a
    thread pool, the report and the manifest kept up to date as answers arrive."""

    def __init__(self, rows: pd.DataFrame, config: DownloadConfig, out_dir: Path, previous: dict | None,
                 client: CutoutClient, progress: Callable[[DownloadProgress], None] | None,
                 stop: threading.Event | None):
        self.config, self.out_dir, self.client, self.progress, self.stop = config, out_dir, client, progress, stop
        self.start = time.monotonic()
        self.images, self.ids = rows["image"].tolist(), [str(i) for i in rows["id"]]
        self.ras, self.decs = rows["ra"].to_numpy(float), rows["dec"].to_numpy(float)
        # A file that is there but not a whole JPEG (copied in, or cut short by a crash of the
        # machine) is fetched again rather than trusted.
        self.todo = [i for i, rel in enumerate(self.images) if not is_complete_jpeg(out_dir / rel)]
        self.report = DownloadReport(total=len(rows), downloaded=0, skipped=len(rows) - len(self.todo))
        # Earlier runs' failures stay on record until this run tries those galaxies again.
        missing = {self.ids[i] for i in self.todo}
        self.earlier = {k: v for k, v in previous["failed"].items() if k in missing} if previous else {}
        self.halt = threading.Event()
        self.either = AnyEvent(self.halt, stop)

    def stopped(self) -> bool:
        return self.halt.is_set() or (self.stop is not None and self.stop.is_set())

    def fetch_one(self, i: int) -> None:
        if self.stopped():
            raise InterruptedError("stopped")
        image = self.client.fetch(float(self.ras[i]), float(self.decs[i]), self.either)
        write_bytes_atomic(self.out_dir / self.images[i], image)

    def settle(self, future: Future, i: int) -> None:
        try:
            future.result()
            self.report.downloaded += 1
        except (InterruptedError, CancelledError, FetchStopped):
            return
        except (ImageLoadError, OSError) as exc:
            self.report.failed[self.ids[i]] = str(exc)
        self.earlier.pop(self.ids[i], None)

    def save(self, running: bool) -> None:
        self.report.elapsed_s = time.monotonic() - self.start
        _write_manifest(self.out_dir, self.report, self.config, {**self.earlier, **self.report.failed}, running)

    def notify(self) -> None:
        if self.progress is not None:
            report = self.report
            self.progress(DownloadProgress(done=report.downloaded + report.skipped + len(report.failed),
                                           total=report.total, failed=len(report.failed),
                                           skipped=report.skipped, elapsed_s=time.monotonic() - self.start))

    def fetch_all(self) -> None:
        """Keep the pool fed from the queue until it is empty or the run is stopped; the manifest
        is saved every MANIFEST_EVERY_S and once more at the end, whatever ends the run."""
        self.notify()
        threads = self.config.workers * THREADS_PER_REQUEST_SLOT
        queue, pending, saved_at = iter(self.todo), {}, time.monotonic()
        try:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cutout") as pool:
                try:
                    while True:
                        while len(pending) < QUEUED_PER_THREAD * threads and not self.stopped():
                            i = next(queue, None)
                            if i is None:
                                break
                            pending[pool.submit(self.fetch_one, i)] = i
                        if not pending:
                            break
                        done, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            self.settle(future, pending.pop(future))
                            self.notify()
                        if time.monotonic() - saved_at > MANIFEST_EVERY_S:
                            self.save(running=True)
                            saved_at = time.monotonic()
                except BaseException:
                    self.halt.set()
                    for future in pending:
                        future.cancel()
                    raise
        finally:
            for future, i in pending.items():  # requests that finished while the pool shut down
                if future.done():
                    self.settle(future, i)
            self.save(running=False)
