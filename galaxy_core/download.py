"""SDSS SkyServer ImgCutout client: concurrent, polite, resumable, validated and atomic.

Every image is checked to be a complete JPEG and written to a temporary file that is renamed
into place, so a file under ``images/`` is always whole: a resumed run trusts what it finds.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import requests
from requests.adapters import HTTPAdapter

from .atomic import write_bytes_atomic
from .catalogue import write_catalogue
from .config import DownloadConfig, GalaxyError
from .images import ImageLoadError, check_jpeg

IMAGES_DIR = "images"
MANIFEST_NAME = "download-manifest.json"
MAX_IMAGE_BYTES = 16 * 1024**2
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(GalaxyError):
    """The download could not start (bad settings or output folder)."""


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


class RateLimiter:
    """A shared token bucket: at most ``rate`` request starts per second across all workers."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self.next_time = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_time)
            self.next_time = start + self.interval
        if start > now:
            time.sleep(start - now)


def image_relpath(galaxy_id: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "._+-" else "_" for ch in str(galaxy_id))
    if not safe.strip("."):
        safe = "galaxy"
    return f"{IMAGES_DIR}/{safe}.jpg"


def cutout_params(ra: float, dec: float, config: DownloadConfig) -> dict[str, str]:
    return {"ra": f"{ra:.6f}", "dec": f"{dec:.6f}", "scale": f"{config.scale:g}",
            "width": str(config.size), "height": str(config.size)}


class CutoutClient:
    """Fetches one cutout with retries; one pooled HTTP session per worker thread."""

    def __init__(self, config: DownloadConfig):
        self.config = config
        self.local = threading.local()
        self.limiter = RateLimiter(config.max_requests_per_s)

    def session(self) -> requests.Session:
        session = getattr(self.local, "session", None)
        if session is None:
            session = requests.Session()
            session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=2))
            session.mount("https://", HTTPAdapter(pool_connections=1, pool_maxsize=2))
            session.headers["User-Agent"] = "galaxy-classification/1.0 (+Galaxy Zoo cutouts)"
            self.local.session = session
        return session

    def fetch(self, ra: float, dec: float) -> bytes:
        """Return validated JPEG bytes, retrying transient faults with jittered backoff."""
        config = self.config
        reason = "no attempt"
        for attempt in range(config.retries + 1):
            if attempt:
                delay = config.backoff_s * 2 ** (attempt - 1)
                time.sleep(delay * (0.5 + random.random()))
            self.limiter.wait()
            try:
                response = self.session().get(config.cutout_url, params=cutout_params(ra, dec, config),
                                              timeout=config.timeout_s)
                data = response.content
            except requests.RequestException as exc:
                reason = f"{exc.__class__.__name__}"
                self.local.session = None
                continue
            if response.status_code != 200:
                reason = f"HTTP {response.status_code}"
                if response.status_code in RETRY_STATUSES:
                    continue
                break
            if len(data) > MAX_IMAGE_BYTES:
                reason = f"answer too large ({len(data)} bytes)"
                break
            try:
                check_jpeg(data)
                return data
            except ImageLoadError as exc:
                reason = str(exc)
        raise ImageLoadError(reason)


def _write_manifest(out_dir: Path, report: DownloadReport, config: DownloadConfig) -> None:
    manifest = {
        "cutout_url": config.cutout_url, "size": config.size, "scale": config.scale,
        "total": report.total, "present": report.skipped + report.downloaded,
        "downloaded_this_run": report.downloaded, "failed": report.failed,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_bytes_atomic(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=1).encode())


def download_cutouts(catalogue: pd.DataFrame, config: DownloadConfig,
                     progress: Callable[[DownloadProgress], None] | None = None,
                     stop: threading.Event | None = None) -> DownloadReport:
    """Fetch every galaxy's cutout into ``out_dir/images``; skip files already present."""
    config.validate()
    out_dir = Path(config.out_dir)
    try:
        (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create output folder {out_dir}: {exc.strerror}") from None
    rows = catalogue if config.limit is None else catalogue.iloc[: config.limit]
    rows = rows.assign(image=[image_relpath(i) for i in rows["id"]])
    write_catalogue(rows.reset_index(drop=True), out_dir / "catalogue.csv")

    start = time.monotonic()
    todo = [(r.image, r.ra, r.dec, r.id) for r in rows.itertuples() if not (out_dir / r.image).is_file()]
    report = DownloadReport(total=len(rows), downloaded=0, skipped=len(rows) - len(todo))
    client = CutoutClient(config)

    def one(item: tuple[str, float, float, str]) -> None:
        relpath, ra, dec, _ = item
        if stop is not None and stop.is_set():
            raise InterruptedError("stopped")
        write_bytes_atomic(out_dir / relpath, client.fetch(ra, dec))

    def notify() -> None:
        if progress is not None:
            progress(DownloadProgress(done=report.downloaded + report.skipped + len(report.failed),
                                      total=report.total, failed=len(report.failed),
                                      skipped=report.skipped, elapsed_s=time.monotonic() - start))

    notify()
    with ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="cutout") as pool:
        futures = {pool.submit(one, item): item for item in todo}
        try:
            for future in as_completed(futures):
                item = futures[future]
                try:
                    future.result()
                    report.downloaded += 1
                except InterruptedError:
                    continue
                except (ImageLoadError, OSError) as exc:
                    report.failed[str(item[3])] = str(exc)
                notify()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            report.elapsed_s = time.monotonic() - start
            _write_manifest(out_dir, report, config)
    return report
