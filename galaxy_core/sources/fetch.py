"""One HTTP GET without trusting the server: the only place that bounds how long an answer may
take, how much of it is held in memory, where it may come from and where it may redirect to.

``requests``' own timeout limits each socket read, so a server sending a byte a second would
never time out; here the whole answer has a wall-clock deadline, and a watchdog thread shuts
the socket of any answer past its deadline or whose stop event is set, so a blocked read ends
within a fraction of a second too.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urljoin

import requests
import urllib3

from galaxy_core.base.config import GalaxyError

MAX_REDIRECTS = 5
WATCH_INTERVAL_S = 0.1


class FetchError(GalaxyError):
    """An HTTP answer could not be read within its limits (permanent: not worth a retry)."""


class FetchTimeout(FetchError):
    """The answer did not arrive whole within its deadline (a retry may succeed)."""


class FetchStopped(FetchError):
    """The caller's stop event was set while the answer was being read."""


class UrlPolicy(Protocol):
    def check(self, url: str) -> None:
        """Raise FetchError unless ``url`` may be fetched."""


class AnyEvent:
    """Set when any of its events is: a run's own halt and its caller's stop, seen as one."""

    def __init__(self, *events: threading.Event | None):
        self.events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)

    def wait(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not self.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, WATCH_INTERVAL_S))
        return True


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str]
    url: str


class _Watchdog:
    """Shuts the socket of every watched answer that is past its deadline or told to stop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watched: dict[int, tuple[float, threading.Event | None, urllib3.BaseHTTPResponse]] = {}
        self.thread: threading.Thread | None = None

    def watch(self, raw: urllib3.BaseHTTPResponse, deadline: float, stop: threading.Event | None) -> None:
        with self.lock:
            self.watched[id(raw)] = (deadline, stop, raw)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="fetch-watchdog", daemon=True)
                self.thread.start()

    def forget(self, raw: urllib3.BaseHTTPResponse) -> None:
        with self.lock:
            self.watched.pop(id(raw), None)

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            with self.lock:
                due = [raw for deadline, stop, raw in self.watched.values()
                       if now >= deadline or (stop is not None and stop.is_set())]
                for raw in due:
                    self.watched.pop(id(raw), None)
            for raw in due:
                with contextlib.suppress(Exception):  # the answer may already be closed
                    raw.shutdown()


_WATCHDOG = _Watchdog()


def _check_ended(deadline: float, timeout_s: float, stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise FetchStopped("stopped")
    if time.monotonic() >= deadline:
        raise FetchTimeout(f"no complete answer within {timeout_s:g} s")


def read_body(response: requests.Response, max_bytes: int, *, deadline: float | None = None,
              timeout_s: float | None = None, stop: threading.Event | None = None,
              chunk_bytes: int = 64 * 1024) -> bytes:
    """The body of a streamed response, refusing to hold more than ``max_bytes`` of it or to take
    past ``deadline`` (a ``time.monotonic()`` value), and ending early when ``stop`` is set."""
    if deadline is None:
        timeout_s = timeout_s or 60.0
        deadline = time.monotonic() + timeout_s
    timeout_s = timeout_s or max(deadline - time.monotonic(), 0.0)
    raw = response.raw
    chunks, size = [], 0
    _WATCHDOG.watch(raw, deadline, stop)
    try:
        while True:
            _check_ended(deadline, timeout_s, stop)
            try:
                # read1: whatever one socket read brings, so a trickle is seen as it arrives
                # (urllib3 before 2 has no read1: small reads come close).
                chunk = (raw.read1(chunk_bytes, decode_content=True) if hasattr(raw, "read1")
                         else raw.read(min(chunk_bytes, 1024), decode_content=True))
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                _check_ended(deadline, timeout_s, stop)
                raise requests.ConnectionError(f"answer cut short ({exc.__class__.__name__})") from None
            if not chunk:
                _check_ended(deadline, timeout_s, stop)
                break
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(f"answer larger than {max_bytes:,} bytes")
            chunks.append(chunk)
    finally:
        _WATCHDOG.forget(raw)
    return b"".join(chunks)


def get(url: str, *, timeout_s: float, max_bytes: int, params: Mapping[str, str] | None = None,
        session: requests.Session | None = None, stop: threading.Event | None = None,
        policy: UrlPolicy | None = None, read_error_body: bool = False) -> Answer:
    """GET ``url`` with one deadline for the whole answer, redirects included.

    Redirects are followed by hand (at most ``MAX_REDIRECTS``) so that ``policy`` checks every
    address the answer sends us to, not only the first. The body of an answer other than 200 is
    not read unless ``read_error_body`` (it would only be echoed into a message).
    Raises FetchError (FetchTimeout, FetchStopped) or requests.RequestException.
    """
    deadline = time.monotonic() + timeout_s
    http = session or requests
    for _ in range(MAX_REDIRECTS + 1):
        if policy is not None:
            policy.check(url)
        _check_ended(deadline, timeout_s, stop)
        left = max(deadline - time.monotonic(), 0.05)
        try:
            response = http.get(url, params=params, stream=True, allow_redirects=False,
                                timeout=(min(left, timeout_s), min(left, timeout_s)))
        except requests.Timeout:
            raise FetchTimeout(f"no answer within {timeout_s:g} s") from None
        with response:
            if response.is_redirect and response.headers.get("location"):
                url, params = urljoin(response.url, response.headers["location"]), None
                continue
            body = b""
            if response.status_code == 200 or read_error_body:
                body = read_body(response, max_bytes, deadline=deadline, timeout_s=timeout_s, stop=stop)
            return Answer(response.status_code, body, dict(response.headers), response.url)
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")
