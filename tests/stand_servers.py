"""Stand-in HTTP servers on 127.0.0.1 for the network tests: routes are functions of the handler,
and slow or silent routes wait on events the test sets, so a test ends as soon as its client does."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def jpeg(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (120, 100, 80)).save(buffer, "JPEG")
    return buffer.getvalue()


class QuietServer(ThreadingHTTPServer):
    """A client hanging up mid-answer is what these tests provoke: not an error worth a traceback on
    stderr, where a test reading the CLI's stderr would take it for the CLI's."""

    def handle_error(self, request: object, client_address: object) -> None:
        return


class Stand:
    """A 127.0.0.1 server whose routes are functions of the handler; it records what it saw."""

    def __init__(self, routes: dict[str, Callable[[BaseHTTPRequestHandler], None]]):
        self.routes, self.hits = routes, []
        self.started, self.release = threading.Event(), threading.Event()
        stand = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                stand.hits.append(path)
                route = stand.routes.get(path)
                if route is None:
                    send(self, 404, b"secret body of a 404")
                else:
                    try:
                        route(self)
                    except OSError:  # the client hung up, as it should
                        pass

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self) -> Stand:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


def drip(stand_of: Callable[[], Stand], total: int = 10_000) -> Callable[[BaseHTTPRequestHandler], None]:
    """Headers at once, then one byte every 0.2 s until the client gives up."""
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        stand_of().started.set()
        for _ in range(total):
            handler.wfile.write(b"x")
            handler.wfile.flush()
            if stand_of().release.wait(0.2):
                return
    return route


def silent(stand_of: Callable[[], Stand]) -> Callable[[BaseHTTPRequestHandler], None]:
    """Headers, then nothing at all until the test ends."""
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.flush()
        stand_of().started.set()
        stand_of().release.wait(30)
    return route
