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
from email.utils import parsedate_to_datetime
from pathlib import Path

import requests

from galaxy_core.base.config import CUTOUT_SIZE, PIXEL_SCALE, DownloadConfig, GalaxyError
from galaxy_core.sources.fetch import FetchError, FetchStopped, FetchTimeout, UrlPolicy, get, new_session
from galaxy_core.sources.images import ImageLoadError, WrongImageError, check_jpeg

MAX_IMAGE_BYTES = 16 * 1024**2
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 60.0


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

    def __init__(self, config: DownloadConfig, policy: UrlPolicy | None = None):
        self.config = config
        self.policy = policy
        self.local = threading.local()
        self.limiter = RateLimiter(config.max_requests_per_s)
        self.slots = threading.BoundedSemaphore(config.workers)

    def session(self) -> requests.Session:
        session = getattr(self.local, "session", None)
        if session is None:
            session = new_session(self.policy, pool_maxsize=2)
            session.headers["User-Agent"] = "galaxy-classification/1.0 (+Galaxy Zoo cutouts)"
            self.local.session = session
        return session

    def fetch(self, ra: float, dec: float, stop: threading.Event | None = None) -> bytes:
        """Return validated JPEG bytes, retrying transient faults with jittered backoff.

        A server's ``Retry-After`` (HTTP 429/503) is honoured up to ``MAX_RETRY_AFTER_S``; a
        decodable image of the wrong size or kind is a permanent answer and is not asked again.
        Raises ImageLoadError with the last reason, or FetchStopped once ``stop`` is set.
        """
        config = self.config
        reason, attempts, delay = "no attempt", 0, 0.0
        for attempt in range(config.retries + 1):
            if attempt:
                delay = max(delay, config.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))
                if stop is None:
                    time.sleep(delay)
                elif stop.wait(delay):
                    raise FetchStopped("stopped")
            attempts, delay = attempts + 1, 0.0
            try:
                # The rate limiter is passed inside a request slot: waiting on it first would let
                # threads that queued for a slot start their requests in a burst.
                with self.slots:
                    self.limiter.wait()
                    answer = get(config.cutout_url, params=cutout_params(ra, dec, config), timeout_s=config.timeout_s,
                                 max_bytes=MAX_IMAGE_BYTES, session=self.session(), stop=stop, policy=self.policy)
            except (requests.RequestException, FetchTimeout) as exc:
                reason = f"Timeout: {exc}" if isinstance(exc, FetchTimeout) else exc.__class__.__name__
                self.local.session = None
                continue
            except FetchStopped:
                raise
            except FetchError as exc:
                reason = str(exc)
                self.local.session = None
                break
            if answer.status != 200:
                reason = f"HTTP {answer.status}"
                if answer.status in RETRY_STATUSES:
                    delay = retry_after_s(answer.headers.get("Retry-After"), config.timeout_s)
                    continue
                break
            try:
                check_jpeg(answer.body, size=config.cutout_size)
                return answer.body
            except WrongImageError as exc:
                reason = str(exc)
                break
            except ImageLoadError as exc:
                reason = str(exc)
        raise ImageLoadError(f"{reason} (after {attempts} attempt{'s' if attempts > 1 else ''})")


def retry_after_s(value: str | None, deadline_s: float) -> float:
    """Seconds a ``Retry-After`` header asks us to wait (a number or an HTTP date), bounded by
    ``MAX_RETRY_AFTER_S`` and by the request deadline; 0 when absent or unreadable."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return 0.0
    if not math.isfinite(seconds):
        return 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S, deadline_s)


def fetch_cutout(ra: float, dec: float, cutout_url: str, *, size: int = CUTOUT_SIZE,
                 scale: float = PIXEL_SCALE, timeout_s: float = 10.0, retries: int = 1,
                 policy: UrlPolicy | None = None) -> bytes:
    """One validated SDSS JPEG for sky coordinates, as the download step would fetch it; with a
    ``policy`` (the app's allowed hosts) the cutout URL and every redirect must pass it. Each
    attempt has ``timeout_s`` for the whole answer, so a page waits at most about 21 s."""
    if not (math.isfinite(ra) and 0 <= ra < 360):
        raise CutoutError(f"RA must be in [0, 360) degrees, got {ra}")
    if not (math.isfinite(dec) and -90 <= dec <= 90):
        raise CutoutError(f"Dec must be in [-90, 90] degrees, got {dec}")
    # The client reads only the request settings: no folder is written.
    config = DownloadConfig(out_dir=Path("."), cutout_url=cutout_url.strip(), cutout_size=size,
                            pixel_scale=scale, retries=retries, timeout_s=timeout_s, backoff_s=0.3, workers=1)
    try:
        return CutoutClient(config, policy).fetch(ra, dec)
    except (ImageLoadError, FetchError) as exc:
        raise CutoutError(f"no cutout for RA {ra:.5f}, Dec {dec:+.5f} from {config.cutout_url}: "
                          f"{exc}") from None
