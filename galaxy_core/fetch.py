"""Reading an HTTP answer's body without trusting the server: the one place that bounds how much
of it is held in memory."""

from __future__ import annotations

import requests

from .config import GalaxyError


class FetchError(GalaxyError):
    """An HTTP answer could not be read within its limits."""


def read_body(response: requests.Response, max_bytes: int, chunk_bytes: int = 64 * 1024) -> bytes:
    """The body of a streamed response, refusing to hold more than ``max_bytes`` of it."""
    chunks, size = [], 0
    for chunk in response.iter_content(chunk_bytes):
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"answer larger than {max_bytes:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
