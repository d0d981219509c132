"""A local stand-in for the SkyServer ImgCutout ``getjpeg`` endpoint.

Serves images from a folder of cutouts by coordinates (``ra``/``dec`` matched to a catalogue),
with optional latency, a concurrency limit and injected faults.  Tests, benchmarks and offline
demos point ``--cutout-url`` at it; it binds to 127.0.0.1 only, serves only files that really lie
inside its folder (a symbolic link out of it is not followed), and drops a connection that sends
nothing for ``idle_timeout_s``, so silent clients cannot hold its threads.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
from PIL import Image


@dataclass
class ServerOptions:
    """Behaviour of the stand-in: latency per request, capacity, and faults to inject."""

    latency_s: float = 0.0
    max_concurrent: int | None = None
    fault: str = "none"
    fault_first_n: int = 0
    fault_ids: set[str] | None = None
    synthesize_missing: bool = False
    timeout_sleep_s: float = 3.0
    idle_timeout_s: float = 10.0
    extra_files: dict[str, bytes] = field(default_factory=dict)


def synthetic_galaxy_jpeg(ra: float, dec: float, size: int = 128) -> bytes:
    """A deterministic blob-like JPEG for coordinates that have no real image."""
    rng = np.random.default_rng(abs(hash((round(ra, 5), round(dec, 5)))) % 2**32)
    y, x = np.mgrid[:size, :size] - size / 2
    angle = rng.uniform(0, np.pi)
    a, b = rng.uniform(4, 20), rng.uniform(3, 12)
    xr = x * np.cos(angle) + y * np.sin(angle)
    yr = -x * np.sin(angle) + y * np.cos(angle)
    blob = np.exp(-((xr / a) ** 2 + (yr / b) ** 2))
    noise = rng.normal(0, 0.03, (size, size, 3))
    rgb = np.clip(blob[..., None] * np.array([1.0, 0.9, 0.7]) + noise, 0, 1)
    buffer = io.BytesIO()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class CutoutIndex:
    """Maps rounded coordinates to image files (their real paths, links resolved)."""

    def __init__(self, entries: list[tuple[float, float, Path]]):
        self.by_key = {self.key(ra, dec): Path(path).resolve() for ra, dec, path in entries}

    @staticmethod
    def key(ra: float, dec: float) -> tuple[int, int]:
        return round(ra * 1e4), round(dec * 1e4)

    def find(self, ra: float, dec: float) -> Path | None:
        kr, kd = self.key(ra, dec)
        for dr in (0, -1, 1):
            for dd in (0, -1, 1):
                path = self.by_key.get((kr + dr, kd + dd))
                if path is not None:
                    # A file replaced by a link since the index was made is not followed.
                    return path if path.resolve() == path else None
        return None

    @classmethod
    def from_catalogue(cls, root: Path, catalogue: Path | None = None) -> CutoutIndex:
        import pandas as pd

        from galaxy_core.sources.folder import DatasetFolder

        folder = DatasetFolder(root)
        frame = pd.read_csv(catalogue or folder.catalogue, usecols=["image", "ra", "dec"])
        # Only files really inside the folder: neither a catalogue path nor a link in the folder
        # can make the server read anything else.
        entries = [(float(r.ra), float(r.dec), folder.served_image(str(r.image))) for r in frame.itertuples()]
        return cls([(ra, dec, path) for ra, dec, path in entries if path is not None])


class CutoutServer:
    """Run with ``with CutoutServer(index) as server: server.url``."""

    def __init__(self, index: CutoutIndex, options: ServerOptions | None = None, port: int = 0):
        self.index = index
        self.options = options or ServerOptions()
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.in_flight = 0  # cutout requests being answered now
        self.idle = threading.Condition(self.lock)
        self.slots = threading.BoundedSemaphore(self.options.max_concurrent or 10_000)
        handler = self._make_handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 256
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/getjpeg"

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no cutout request is being answered (those of a client that was killed
        mid-request included); False if some still are after ``timeout_s``."""
        with self.idle:
            return self.idle.wait_for(lambda: self.in_flight == 0, timeout=timeout_s)

    def __enter__(self) -> CutoutServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _fault_for(self, key: str) -> str:
        options = self.options
        with self.lock:
            self.requests[key] += 1
            count = self.requests[key]
        if options.fault == "none":
            return "none"
        if options.fault_ids is not None and key not in options.fault_ids:
            return "none"
        if options.fault_first_n and count > options.fault_first_n:
            return "none"
        return options.fault

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = server.options.idle_timeout_s  # a socket timeout: a silent client is dropped

            def log_message(self, *args: object) -> None:
                return

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                parsed = urlparse(self.path)
                if parsed.path in server.options.extra_files:
                    self._send(200, server.options.extra_files[parsed.path], "text/csv")
                    return
                if not parsed.path.endswith("/getjpeg"):
                    self._send(404, b"not found", "text/plain")
                    return
                query = parse_qs(parsed.query)
                try:
                    ra, dec = float(query["ra"][0]), float(query["dec"][0])
                except (KeyError, ValueError, IndexError):
                    ra = dec = math.nan
                if not (math.isfinite(ra) and math.isfinite(dec)):  # nan, inf, 1e400
                    self._send(400, b"ra and dec must be finite numbers", "text/plain")
                    return
                with server.lock:
                    server.in_flight += 1
                try:
                    with server.slots:
                        if server.options.latency_s:
                            time.sleep(server.options.latency_s)
                        self._answer(ra, dec)
                finally:
                    with server.idle:
                        server.in_flight -= 1
                        server.idle.notify_all()

            def _answer(self, ra: float, dec: float) -> None:
                path = server.index.find(ra, dec)
                key = f"{ra:.4f},{dec:.4f}"
                fault = server._fault_for(key)
                if path is not None:
                    body = path.read_bytes()
                elif server.options.synthesize_missing:
                    body = synthetic_galaxy_jpeg(ra, dec)
                else:
                    self._send(404, b"<html><body>No image here</body></html>", "text/html")
                    return
                if fault == "error500":
                    self._send(500, b"<html>Internal Server Error</html>", "text/html")
                elif fault == "html200":
                    self._send(200, b"<!DOCTYPE html><html><body>Error: service busy</body></html>",
                               "text/html")
                elif fault == "timeout":
                    time.sleep(server.options.timeout_sleep_s)
                    self._send(200, body, "image/jpeg")
                elif fault == "truncate":
                    self._send(200, body[: len(body) // 2], "image/jpeg")
                elif fault == "reset":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.close()
                else:
                    self._send(200, body, "image/jpeg")

        return Handler
