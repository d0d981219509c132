"""Catalogue bytes from a file or an http(s) URL -> a table of strings, refusing what is not a
CSV table (HTML, binary, ragged rows, corrupt or oversized gzip) with a message that says why."""

from __future__ import annotations

import csv
import io
import os
import warnings
import zlib
from pathlib import Path

import pandas as pd
import requests

from .config import GalaxyError
from .fetch import FetchError, read_body

MAX_CATALOGUE_BYTES = 2 * 1024**3
# The full GZ1 table 2 is about 100 MB of text; a gzip that expands beyond this is hostile.
MAX_DECOMPRESSED_BYTES = MAX_CATALOGUE_BYTES


class CatalogueError(GalaxyError):
    """The catalogue cannot be read or is inconsistent."""


def _gunzip(raw: bytes, source: str, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """Decompress every gzip member, refusing corrupt data and output beyond ``limit`` bytes."""
    out, size = [], 0
    try:
        while raw:
            inflater = zlib.decompressobj(wbits=31)
            chunk = inflater.decompress(raw, limit + 1 - size)
            size += len(chunk)
            out.append(chunk)
            if size > limit:
                raise CatalogueError(f"{source}: gzip expands beyond {limit:,} bytes")
            if not inflater.eof:
                raise CatalogueError(f"{source}: corrupt gzip file (it ends before its last block)")
            raw = inflater.unused_data.lstrip(b"\x00")
    except zlib.error as exc:
        raise CatalogueError(f"{source}: corrupt gzip file ({exc})") from None
    return b"".join(out)


def _ragged_line(raw: bytes) -> str:
    """Name the first data line with more fields than the header (pandas only warns about it)."""
    # newline="": the csv module's own rule for line ends, so a bare carriage return is one too.
    rows = csv.reader(io.StringIO(raw.decode("utf-8-sig", errors="replace"), newline=""),
                      skipinitialspace=True)
    header = next(rows, [])
    for number, row in enumerate(rows, start=2):
        if len(row) > len(header) and any(field.strip() for field in row[len(header):]):
            return f"line {number} has {len(row)} fields but the header has {len(header)}"
    return "rows have more fields than the header"


def read_table_bytes(raw: bytes, source: str) -> pd.DataFrame:
    if raw[:2] == b"\x1f\x8b":
        raw = _gunzip(raw, source)
    head = raw[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
        raise CatalogueError(f"{source}: the answer is HTML/XML, not a CSV catalogue")
    if b"\x00" in raw[:4096]:
        raise CatalogueError(f"{source}: binary data, not a CSV catalogue")
    if not raw.strip():
        raise CatalogueError(f"{source}: the catalogue is empty")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            # index_col=False: a row with an extra field must not turn the first column into an
            # index and shift every value into the wrong column.
            frame = pd.read_csv(io.BytesIO(raw), skipinitialspace=True, dtype=str, index_col=False,
                                keep_default_na=False, na_values=[""], skip_blank_lines=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise CatalogueError(f"{source}: not a readable CSV ({str(exc).strip().splitlines()[0]})") from None
    if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
        raise CatalogueError(f"{source}: not a consistent CSV table ({_ragged_line(raw)})")
    return frame


def fetch_bytes(url: str, *, timeout_s: float = 60.0, max_bytes: int = MAX_CATALOGUE_BYTES) -> bytes:
    """GET a catalogue over http(s), refusing error statuses and oversized answers."""
    try:
        with requests.get(url, stream=True, timeout=timeout_s) as response:
            if response.status_code != 200:
                raise CatalogueError(f"{url}: server answered HTTP {response.status_code}")
            return read_body(response, max_bytes, chunk_bytes=1 << 20)
    except FetchError as exc:
        raise CatalogueError(f"{url}: catalogue {exc}") from None
    except requests.RequestException as exc:
        raise CatalogueError(f"{url}: download failed ({exc.__class__.__name__}: {exc})") from None


def read_raw_table(source: str | os.PathLike[str]) -> pd.DataFrame:
    """The catalogue at a path or URL as a table of strings, headers stripped."""
    text = str(source)
    if text.startswith(("http://", "https://")):
        raw = fetch_bytes(text)
    else:
        path = Path(text)
        if not path.is_file():
            raise CatalogueError(f"catalogue file not found: {path}")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CatalogueError(f"cannot read catalogue {path}: {exc.strerror or exc}") from None
    frame = read_table_bytes(raw, text)
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame
