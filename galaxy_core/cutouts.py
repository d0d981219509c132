"""One SDSS cutout for sky coordinates: the ImgCutout request, polite retries and validation.

``CutoutClient`` is shared by the concurrent download (one pooled HTTP session per worker
thread, a global rate limit and a bound on requests in flight) and by single fetches such as
the app's "classify by coordinates".
"""

from __future__ import annotations

import math
import random
import threading
import time
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from .config import CUTOUT_SIZE, PIXEL_SCALE, DownloadConfig, GalaxyError
from .fetch import FetchError, read_body
from .images import ImageLoadError, check_jpeg

MAX_IMAGE_BYTES = 16 * 1024**2
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}


class CutoutError(GalaxyError):
    """One cutout could not be fetched for the coordinates given."""


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


def cutout_params(ra: float, dec: float, config: DownloadConfig) -> dict[str, str]:
    return {"ra": f"{ra:.6f}", "dec": f"{dec:.6f}", "scale": f"{config.pixel_scale:g}",
            "width": str(config.cutout_size), "height": str(config.cutout_size)}


class CutoutClient:
    """Fetches one cutout with retries; one pooled HTTP session per worker thread."""

    def __init__(self, config: DownloadConfig):
        self.config = config
        self.local = threading.local()
        self.limiter = RateLimiter(config.max_requests_per_s)
        self.slots = threading.BoundedSemaphore(config.workers)

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
        attempts = 0
        for attempt in range(config.retries + 1):
            if attempt:
                delay = config.backoff_s * 2 ** (attempt - 1)
                time.sleep(delay * (0.5 + random.random()))
            attempts += 1
            try:
                params = cutout_params(ra, dec, config)
                # The rate limiter is passed inside a request slot: waiting on it first would let
                # threads that queued for a slot start their requests in a burst.
                with self.slots:
                    self.limiter.wait()
                    with self.session().get(config.cutout_url, params=params,
                                            timeout=config.timeout_s, stream=True) as response:
                        status = response.status_code
                        data = read_body(response, MAX_IMAGE_BYTES) if status == 200 else b""
            except requests.RequestException as exc:
                reason = f"{exc.__class__.__name__}"
                self.local.session = None
                continue
            except FetchError as exc:
                reason = str(exc)
                self.local.session = None
                break
            if status != 200:
                reason = f"HTTP {status}"
                if status in RETRY_STATUSES:
                    continue
                break
            try:
                check_jpeg(data)
                return data
            except ImageLoadError as exc:
                reason = str(exc)
        raise ImageLoadError(f"{reason} (after {attempts} attempt{'s' if attempts > 1 else ''})")


def fetch_cutout(ra: float, dec: float, cutout_url: str, *, size: int = CUTOUT_SIZE,
                 scale: float = PIXEL_SCALE, timeout_s: float = 20.0, retries: int = 2) -> bytes:
    """One validated SDSS JPEG for sky coordinates, as the download step would fetch it."""
    if not (math.isfinite(ra) and 0 <= ra < 360):
        raise CutoutError(f"RA must be in [0, 360) degrees, got {ra}")
    if not (math.isfinite(dec) and -90 <= dec <= 90):
        raise CutoutError(f"Dec must be in [-90, 90] degrees, got {dec}")
    # The client reads only the request settings: no folder is written.
    config = DownloadConfig(out_dir=Path("."), cutout_url=cutout_url.strip(), cutout_size=size,
                            pixel_scale=scale, retries=retries, timeout_s=timeout_s, backoff_s=0.3, workers=1)
    try:
        return CutoutClient(config).fetch(ra, dec)
    except ImageLoadError as exc:
        raise CutoutError(f"no cutout for RA {ra:.5f}, Dec {dec:+.5f} from {config.cutout_url}: "
                          f"{exc}") from None
