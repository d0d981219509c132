"""One HTTP GET without trusting the server: the only place that bounds how long an answer may
take, how much of it is held in memory, where it may come from and where it may redirect to.

``requests``' own timeout limits each socket read, so a server sending a byte a second would
never time out. Here every wait has a deadline: the name lookup, the connection, the status
line and headers together (``timeout_s``), and the body (the whole answer's deadline, and any
stall: a ``timeout_s`` window bringing less than ``STALL_BYTES_PER_S`` a second). A watchdog
thread shuts the socket of a fetch past its deadline or whose stop event is set, so a blocked
read ends within a fraction of a second too.

With a ``UrlPolicy`` the address judged is the address used: the URL is read by the parser the
HTTP client itself uses (and refused where parsers could read it differently), and the socket is
opened to the very addresses the policy resolved and allowed, so a name that resolves to a
public address when checked and to ``127.0.0.1`` when connected (DNS rebinding) gets nowhere.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from galaxy_core.base.config import GalaxyError

MAX_REDIRECTS = 5
WATCH_INTERVAL_S = 0.1
STALL_BYTES_PER_S = 1024
"""A body that brings less than this many bytes a second over a ``timeout_s`` window has stalled."""
# A backslash, space or control character: parsers disagree on where an authority ends at them.
_AMBIGUOUS = re.compile(r"[\x00-\x20\x7f\\]")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")


class FetchError(GalaxyError):
    """An HTTP answer could not be read within its limits (permanent: not worth a retry)."""


class FetchTimeout(FetchError):
    """The answer did not arrive whole within its deadline (a retry may succeed)."""


class FetchStalled(FetchTimeout):
    """The body stopped coming, or came too slowly to ever finish."""


class FetchStopped(FetchError):
    """The caller's stop event was set while the answer was being read."""


class UrlPolicy(Protocol):
    def check(self, url: str, *, resolve: bool = True) -> None:
        """Raise FetchError unless ``url`` may be fetched (``resolve=False``: judge the URL and its
        host name only; the addresses are judged by ``addresses`` when connecting)."""

    def addresses(self, host: str, port: int) -> Sequence[Address]:
        """The addresses ``host`` resolves to, every one allowed; raise FetchError otherwise.
        A connection is opened to one of these, never to a second lookup's answer."""


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, read the same by urllib3 (which the HTTP client
    uses) and by the standard library, or FetchError.

    Refuses what parsers read differently: a backslash, space, control or non-ASCII character,
    a user name or password, a percent sign in the authority, or any other disagreement.
    """
    if not url.isascii() or _AMBIGUOUS.search(url):
        raise FetchError("the URL holds a backslash, a space, a control or a non-ASCII character "
                         "(percent-encode them)")
    try:
        ours, theirs = urlsplit(url), urllib3.util.parse_url(url)
        ours_host, ours_port = (ours.hostname or ""), ours.port
    except ValueError:  # urllib3's LocationParseError is one too
        raise FetchError("the URL is not a valid http(s) address") from None
    if ours.scheme not in ("http", "https") or not ours_host:
        raise FetchError("only http(s) URLs can be fetched")
    if "@" in ours.netloc or theirs.auth:
        raise FetchError("a URL with a user name or password is not fetched")
    if "%" in ours.netloc:
        raise FetchError("a URL with a percent sign in its host is not fetched")
    theirs_host = (theirs.host or "").strip("[]").lower()
    if (ours.scheme, ours_host, ours_port) != ((theirs.scheme or "").lower(), theirs_host, theirs.port):
        raise FetchError("the URL reads differently to different parsers, so it is not fetched")
    return ours.scheme, ours_host, ours_port or (443 if ours.scheme == "https" else 80)


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
    """Shuts every watched socket or answer that is past its deadline or told to stop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watched: dict[int, tuple[float, threading.Event | None, Callable[[], None]]] = {}
        self.thread: threading.Thread | None = None
        self.count = 0

    def watch(self, shut: Callable[[], None], deadline: float, stop: threading.Event | None) -> int:
        with self.lock:
            self.count += 1
            self.watched[self.count] = (deadline, stop, shut)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="fetch-watchdog", daemon=True)
                self.thread.start()
            return self.count

    def forget(self, key: int) -> None:
        with self.lock:
            self.watched.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            with self.lock:
                due = [key for key, (deadline, stop, _) in self.watched.items()
                       if now >= deadline or (stop is not None and stop.is_set())]
                shuts = [self.watched.pop(key)[2] for key in due]
            for shut in shuts:
                with contextlib.suppress(Exception):  # the socket may already be closed
                    shut()


_WATCHDOG = _Watchdog()


class _Exchange(threading.local):
    """This thread's request until its headers are in: its deadline, stop event and watched sockets."""

    deadline: float | None = None
    stop: threading.Event | None = None
    keys: list[int] | None = None


_EXCHANGE = _Exchange()


@contextlib.contextmanager
def _exchange(deadline: float, stop: threading.Event | None) -> Iterator[None]:
    _EXCHANGE.deadline, _EXCHANGE.stop, _EXCHANGE.keys = deadline, stop, []
    try:
        yield
    finally:
        for key in _EXCHANGE.keys or ():
            _WATCHDOG.forget(key)
        _EXCHANGE.deadline, _EXCHANGE.stop, _EXCHANGE.keys = None, None, None


def _watch_socket(sock: socket.socket | None) -> None:
    if sock is None or _EXCHANGE.deadline is None or _EXCHANGE.keys is None:
        return
    _EXCHANGE.keys.append(_WATCHDOG.watch(lambda: sock.shutdown(socket.SHUT_RDWR), _EXCHANGE.deadline,
                                          _EXCHANGE.stop))


def _within(work: Callable[[], T], timeout_s: float, what: str) -> T:
    """``work()`` in a helper thread, given up on after ``timeout_s`` (a name lookup cannot be
    interrupted, so the thread is left to finish on its own)."""
    result: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            result["value"] = work()
        except Exception as exc:  # noqa: BLE001 - handed to the caller's thread, whatever it is
            result["error"] = exc
        done.set()

    threading.Thread(target=run, name="fetch-resolve", daemon=True).start()
    stop = _EXCHANGE.stop
    end = time.monotonic() + timeout_s
    while not done.wait(min(WATCH_INTERVAL_S, max(end - time.monotonic(), 0.0))):
        if stop is not None and stop.is_set():
            raise FetchStopped("stopped")
        if time.monotonic() >= end:
            raise FetchTimeout(f"{what} took longer than {timeout_s:g} s")
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]


def _any_address(host: str, port: int) -> list[Address]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


def _open_socket(conn: HTTPConnection, policy: UrlPolicy | None) -> socket.socket:
    """Resolve once (through ``policy`` when there is one), connect to one of those addresses,
    and put the socket under the request's deadline. TLS still uses ``conn.host`` for SNI and
    the certificate check, and the Host header is the URL's: only the address is pinned."""
    host, port = conn.host, conn.port or 80
    left = (_EXCHANGE.deadline - time.monotonic()) if _EXCHANGE.deadline is not None else 60.0
    look_up = (lambda: policy.addresses(host, port)) if policy is not None else (lambda: _any_address(host, port))
    try:
        addresses = _within(look_up, max(left, 0.05), f"looking up {host}")
    except (socket.gaierror, UnicodeError) as exc:
        raise NewConnectionError(conn, f"cannot resolve {host} ({exc.__class__.__name__})") from None
    error: OSError | None = None
    for address in addresses:
        try:
            sock = _connect(address, port, conn.timeout, conn.source_address, conn.socket_options)
        except TimeoutError:
            raise ConnectTimeoutError(conn, f"connection to {host} timed out") from None
        except OSError as exc:
            error = exc
            continue
        _watch_socket(sock)
        return sock
    raise NewConnectionError(conn, f"Failed to establish a new connection: {error or 'no address'}")


def _connect(address: Address, port: int, timeout: float | None, source_address: tuple[str, int] | None,
             socket_options: Sequence[tuple[int, int, int | bytes]] | None) -> socket.socket:
    """A TCP connection to ``address`` made in short waits, so the request's stop event and
    deadline end it even while the other side never answers the handshake."""
    sock = socket.socket(socket.AF_INET6 if address.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
    try:
        for level, option, value in socket_options or ():
            sock.setsockopt(level, option, value)
        if source_address:
            sock.bind(source_address)
        sock.setblocking(False)
        end = time.monotonic() + (timeout if isinstance(timeout, (int, float)) else 60.0)
        if _EXCHANGE.deadline is not None:
            end = min(end, _EXCHANGE.deadline)
        status = sock.connect_ex((str(address), port))
        with selectors.DefaultSelector() as selector:  # not select(): no limit on descriptor numbers
            selector.register(sock, selectors.EVENT_WRITE)
            while status in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, errno.EINTR):
                if _EXCHANGE.stop is not None and _EXCHANGE.stop.is_set():
                    raise FetchStopped("stopped")
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("connect timed out")
                if selector.select(min(left, WATCH_INTERVAL_S)):
                    status = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if status:
            raise OSError(status, os.strerror(status))
        sock.settimeout(timeout if isinstance(timeout, (int, float)) else None)
        return sock
    except BaseException:
        sock.close()
        raise


def _pool_classes(policy: UrlPolicy | None) -> dict[str, type[HTTPConnectionPool]]:
    """urllib3 pools whose connections open their sockets through ``_open_socket``."""

    class Plain(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _open_socket(self, policy)

        def getresponse(self):  # type: ignore[no-untyped-def]  # a reused connection is watched too
            _watch_socket(self.sock)
            return super().getresponse()

    class Secure(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _open_socket(self, policy)

        def getresponse(self):  # type: ignore[no-untyped-def]
            _watch_socket(self.sock)
            return super().getresponse()

    class PlainPool(HTTPConnectionPool):
        ConnectionCls = Plain

    class SecurePool(HTTPSConnectionPool):
        ConnectionCls = Secure

    return {"http": PlainPool, "https": SecurePool}


class FetchAdapter(HTTPAdapter):
    """requests' adapter with ``_open_socket`` under it: every fetch goes through one of these."""

    def __init__(self, policy: UrlPolicy | None = None, **kwargs: int):
        self.policy = policy
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self.policy)

    def proxy_manager_for(self, proxy, **proxy_kwargs):  # type: ignore[no-untyped-def]
        if self.policy is not None:  # the proxy, not the policy, would pick the address
            raise FetchError("a fetch checked by the host policy does not go through a proxy")
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _pool_classes(None)
        return manager


def new_session(policy: UrlPolicy | None = None, *, pool_maxsize: int = 10) -> requests.Session:
    """A session whose every connection has deadlines and, with ``policy``, is pinned to the
    addresses the policy allowed (environment proxies are then ignored)."""
    session = requests.Session()
    adapter = FetchAdapter(policy, pool_connections=1, pool_maxsize=pool_maxsize)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if policy is not None:
        session.trust_env = False
    return session


def _check_ended(deadline: float, timeout_s: float, stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise FetchStopped("stopped")
    if time.monotonic() >= deadline:
        raise FetchTimeout(f"no complete answer within {timeout_s:g} s")


def read_body(response: requests.Response, max_bytes: int, *, deadline: float | None = None,
              timeout_s: float | None = None, stop: threading.Event | None = None,
              stall_s: float | None = None, chunk_bytes: int = 64 * 1024) -> bytes:
    """The body of a streamed response, refusing to hold more than ``max_bytes`` of it or to take
    past ``deadline`` (a ``time.monotonic()`` value), and ending early when ``stop`` is set or
    when a ``stall_s`` window brings less than ``STALL_BYTES_PER_S`` a second."""
    if deadline is None:
        timeout_s = timeout_s or 60.0
        deadline = time.monotonic() + timeout_s
    timeout_s = timeout_s or max(deadline - time.monotonic(), 0.0)
    stall_s = stall_s or timeout_s
    raw = response.raw
    chunks, size = [], 0
    window_start, window_size = time.monotonic(), 0
    key = _WATCHDOG.watch(raw.shutdown, deadline, stop)
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
                if isinstance(exc, (urllib3.exceptions.ReadTimeoutError, TimeoutError)):
                    raise FetchStalled(f"stalled: no data for {stall_s:g} s") from None
                raise requests.ConnectionError(f"answer cut short ({exc.__class__.__name__})") from None
            if not chunk:
                _check_ended(deadline, timeout_s, stop)
                break
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(f"answer larger than {max_bytes:,} bytes")
            chunks.append(chunk)
            _check_ended(deadline, timeout_s, stop)  # the whole answer's deadline is named first
            now = time.monotonic()
            if now - window_start >= stall_s:
                floor = int(STALL_BYTES_PER_S * stall_s)
                if size - window_size < floor:
                    raise FetchStalled(f"stalled: less than {floor:,} bytes in {stall_s:g} s")
                window_start, window_size = now, size
    finally:
        _WATCHDOG.forget(key)
    return b"".join(chunks)


def get(url: str, *, timeout_s: float, max_bytes: int, params: Mapping[str, str] | None = None,
        session: requests.Session | None = None, stop: threading.Event | None = None,
        policy: UrlPolicy | None = None, read_error_body: bool = False,
        total_s: float | None = None) -> Answer:
    """GET ``url``: ``timeout_s`` bounds the name lookup, the connection, the status line and
    headers of each hop, and any stall in the body; ``total_s`` (default ``timeout_s``) bounds
    the whole answer, redirects included.

    Redirects are followed by hand (at most ``MAX_REDIRECTS``) so that ``policy`` checks every
    address the answer sends us to, not only the first; ``session`` must come from
    ``new_session`` with the same ``policy``. The body of an answer other than 200 is not read
    unless ``read_error_body`` (it would only be echoed into a message).
    Raises FetchError (FetchTimeout, FetchStalled, FetchStopped) or requests.RequestException.
    """
    total_s = total_s or timeout_s
    deadline = time.monotonic() + total_s
    http = session or new_session(policy, pool_maxsize=1)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            if policy is not None:
                policy.check(url, resolve=False)
            prepared = http.prepare_request(requests.Request("GET", url, params=params))
            adapter = http.get_adapter(prepared.url or url)
            if not isinstance(adapter, FetchAdapter) or adapter.policy is not policy:
                raise TypeError("fetch.get needs a session made by fetch.new_session with the same policy")
            if policy is not None and prepared.url != url:
                policy.check(prepared.url or "", resolve=False)
            _check_ended(deadline, total_s, stop)
            hop_deadline = min(deadline, time.monotonic() + timeout_s)
            left = max(hop_deadline - time.monotonic(), 0.05)
            settings = http.merge_environment_settings(prepared.url, {}, True, None, None)
            try:
                with _exchange(hop_deadline, stop):
                    response = http.send(prepared, **{**settings, "stream": True}, allow_redirects=False,
                                         timeout=(left, min(left, timeout_s)))
            except requests.RequestException as exc:
                if stop is not None and stop.is_set():
                    raise FetchStopped("stopped") from None
                if isinstance(exc, requests.Timeout) or time.monotonic() >= hop_deadline:
                    raise FetchTimeout(f"no answer within {min(timeout_s, total_s):g} s") from None
                raise
            with response:
                if response.is_redirect and response.headers.get("location"):
                    url, params = urljoin(response.url, response.headers["location"]), None
                    continue
                body = b""
                if response.status_code == 200 or read_error_body:
                    body = read_body(response, max_bytes, deadline=deadline, timeout_s=total_s, stop=stop,
                                     stall_s=timeout_s)
                return Answer(response.status_code, body, dict(response.headers), response.url)
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")
    finally:
        if session is None:
            http.close()
