"""Catalogue bytes from a file or an http(s) URL -> a table of strings, refusing what is not a
CSV table (HTML, binary, ragged rows, corrupt or oversized gzip) with a message that says why."""

from __future__ import annotations

import csv
import io
import os
import threading
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import requests

from galaxy_core.base import fields
from galaxy_core.base.config import DownloadConfig, GalaxyError
from galaxy_core.sources.fetch import FetchError, FetchStopped, UrlPolicy, get
from galaxy_core.sources.hosts import HostNotAllowed

# The full GZ1 table 2 (667,944 rows) is about 90 MB of text, GZ2 a few hundred MB; a file, an
# answer or a gzip that expands beyond these is refused as it is read, before it is all held.
MAX_CATALOGUE_BYTES = 512 * 1024**2
MAX_TEXT_BYTES = MAX_CATALOGUE_BYTES
MAX_ROWS = 1_000_000
MAX_COLUMNS = 1_000
# Values held at once: GZ1 is 10.7 million (16 columns), GZ2's full table about 55 million.
MAX_CELLS = 60_000_000
CHUNK_CELLS = 2_000_000
READ_BYTES = 1 << 20
# The whole catalogue answer must arrive within this (about 30 MB for GZ1; a slow link takes minutes);
# each wait within it (connection, headers, a stall in the body) has the fetch's own timeout.
CATALOGUE_DEADLINE_S = 600.0


class CatalogueError(GalaxyError):
    """The catalogue cannot be read or is inconsistent."""


class _TextStream(io.RawIOBase):
    """A catalogue's text as it is read: gzip (every member) inflated on the way, and refused
    with a CatalogueError as soon as it passes ``limit`` bytes, so a gzip bomb costs nothing."""

    def __init__(self, handle: BinaryIO, source: str, limit: int | None = None):
        self.handle, self.source, self.limit, self.size = handle, source, limit or MAX_TEXT_BYTES, 0
        self.pending = handle.read(2)
        self.inflater = zlib.decompressobj(wbits=31) if self.pending == b"\x1f\x8b" else None
        self.front, self.offset = b"", 0

    def readable(self) -> bool:
        return True

    def head(self, n: int) -> bytes:
        """The first ``n`` bytes of text (fewer if it is shorter), still to be read after."""
        while len(self.front) < n:
            data = self._next(READ_BYTES)
            if not data:
                break
            self.front += data
        return self.front[:n]

    def readinto(self, buffer) -> int:  # type: ignore[override]
        # Text is made a megabyte at a time and handed out from there: inflating to the size of
        # each small read would copy the pending input once per read.
        if self.offset >= len(self.front):
            self.front, self.offset = self._next(max(len(buffer), READ_BYTES)), 0
        n = min(len(buffer), len(self.front) - self.offset)
        buffer[:n] = memoryview(self.front)[self.offset:self.offset + n]
        self.offset += n
        return n

    def _next(self, n: int) -> bytes:
        data = self._inflate(n) if self.inflater is not None else self._plain(n)
        self.size += len(data)
        if self.size > self.limit:
            what = "gzip expands beyond" if self.inflater is not None else "the catalogue is larger than"
            raise CatalogueError(f"{self.source}: {what} {self.limit:,} bytes")
        return data

    def _plain(self, n: int) -> bytes:
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        return self.handle.read(n)

    def _inflate(self, n: int) -> bytes:
        try:
            while True:
                inflater = self.inflater
                if inflater.unconsumed_tail:
                    data = inflater.decompress(inflater.unconsumed_tail, n)
                elif inflater.eof:  # another member may follow (zero padding is not one)
                    rest = inflater.unused_data.lstrip(b"\x00")
                    while not rest:
                        more = self.handle.read(READ_BYTES)
                        if not more:
                            return b""
                        rest = more.lstrip(b"\x00")
                    self.inflater = zlib.decompressobj(wbits=31)
                    data = self.inflater.decompress(rest, n)
                else:
                    compressed, self.pending = self.pending + self.handle.read(READ_BYTES), b""
                    if not compressed:
                        raise CatalogueError(f"{self.source}: corrupt gzip file (it ends before its last block)")
                    data = inflater.decompress(compressed, n)
                if data:
                    return data
        except zlib.error as exc:
            raise CatalogueError(f"{self.source}: corrupt gzip file ({exc})") from None


def _ragged_line(stream: io.RawIOBase) -> str:
    """Name the first data line with more fields than the header (pandas only warns about it)."""
    # newline="": the csv module's own rule for line ends, so a bare carriage return is one too.
    text = io.TextIOWrapper(io.BufferedReader(stream), encoding="utf-8-sig", errors="replace", newline="")
    rows = csv.reader(text, skipinitialspace=True)
    header = next(rows, [])
    for number, row in enumerate(rows, start=2):
        if len(row) > len(header) and any(field.strip() for field in row[len(header):]):
            return f"line {number} has {len(row)} fields but the header has {len(header)}"
    return "rows have more fields than the header"


def _check_head(head: bytes, source: str) -> None:
    start = head[:512].lstrip().lower()
    if start.startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
        raise CatalogueError(f"{source}: the answer is HTML/XML, not a CSV catalogue")
    if b"\x00" in head[:4096]:
        raise CatalogueError(f"{source}: binary data, not a CSV catalogue")
    if not head.strip():
        raise CatalogueError(f"{source}: the catalogue is empty")


def read_table(opener: Callable[[], BinaryIO], source: str) -> pd.DataFrame:
    """The CSV table ``opener()`` yields (plain or gzip), read in chunks of rows so that neither
    the text nor the rows beyond ``MAX_TEXT_BYTES`` / ``MAX_ROWS`` are ever held."""
    with opener() as handle:
        stream = _TextStream(handle, source)
        head = stream.head(65536)
        text = io.BufferedReader(stream, buffer_size=READ_BYTES)
        _check_head(head[:4096], source)
        columns = head.split(b"\n", 1)[0].count(b",") + 1
        if columns > MAX_COLUMNS:
            raise CatalogueError(f"{source}: more than {MAX_COLUMNS:,} columns; not a Galaxy Zoo catalogue")
        parts, rows = [], 0
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", pd.errors.ParserWarning)
                # index_col=False: a row with an extra field must not turn the first column into
                # an index and shift every value into the wrong column.
                reader = pd.read_csv(text, skipinitialspace=True, dtype=str, index_col=False,
                                     keep_default_na=False, na_values=[""], skip_blank_lines=False,
                                     chunksize=max(1000, CHUNK_CELLS // columns))
                for part in reader:
                    rows += len(part)
                    if rows > MAX_ROWS or rows * columns > MAX_CELLS:
                        raise CatalogueError(f"{source}: more than {min(MAX_ROWS, MAX_CELLS // columns):,} rows "
                                             f"of {columns} columns; split the catalogue or drop columns")
                    parts.append(part)
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            reason = fields.clip(str(exc).strip().splitlines()[0])
            raise CatalogueError(f"{source}: not a readable CSV ({reason})") from None
        except MemoryError:  # pyarrow's ArrowMemoryError too: the bounds above were not enough here
            parts.clear()
            raise CatalogueError(f"{source}: too large to read in this machine's memory (after {rows:,} rows); "
                                 "split the catalogue or drop columns") from None
    if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
        with opener() as handle:
            raise CatalogueError(f"{source}: not a consistent CSV table ({_ragged_line(_TextStream(handle, source))})")
    if not parts:
        raise CatalogueError(f"{source}: the catalogue has a header but no rows")
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def read_table_bytes(raw: bytes, source: str) -> pd.DataFrame:
    return read_table(lambda: io.BytesIO(raw), source)


def fetch_bytes(url: str, *, timeout_s: float = DownloadConfig.timeout_s, max_bytes: int = MAX_CATALOGUE_BYTES,
                policy: UrlPolicy | None = None, stop: threading.Event | None = None) -> bytes:
    """GET a catalogue over http(s): ``timeout_s`` for each wait (connection, headers, a stall in
    the body), ``CATALOGUE_DEADLINE_S`` for the whole answer; refusing error statuses, oversized
    answers and (with a ``policy``) hosts it does not allow.

    Messages name the URL and the status, never the body: what a server says is not repeated."""
    shown = fields.clip(url, 200)
    try:
        answer = get(url, timeout_s=min(timeout_s, CATALOGUE_DEADLINE_S), total_s=CATALOGUE_DEADLINE_S,
                     max_bytes=max_bytes, policy=policy, stop=stop)
    except (HostNotAllowed, FetchStopped) as exc:
        raise CatalogueError(f"{shown}: {'download stopped' if isinstance(exc, FetchStopped) else exc}") from None
    except FetchError as exc:
        raise CatalogueError(f"{shown}: catalogue {exc}") from None
    except requests.RequestException as exc:
        raise CatalogueError(f"{shown}: download failed ({exc.__class__.__name__})") from None
    if answer.status != 200:
        raise CatalogueError(f"{shown}: server answered HTTP {answer.status}")
    return answer.body


def read_raw_table(source: str | os.PathLike[str], *, policy: UrlPolicy | None = None,
                   stop: threading.Event | None = None,
                   timeout_s: float = DownloadConfig.timeout_s) -> pd.DataFrame:
    """The catalogue at a path or URL as a table of strings, headers stripped; setting ``stop``
    ends a download of it within about a second, and ``timeout_s`` bounds each wait in it."""
    text = str(source)
    if text.startswith(("http://", "https://")):
        raw = fetch_bytes(text, policy=policy, stop=stop, timeout_s=timeout_s)
        frame = read_table_bytes(raw, text)
    else:
        path = Path(text)
        if not path.is_file():
            raise CatalogueError(f"catalogue file not found: {path}")
        try:
            frame = read_table(lambda: open(path, "rb"), text)  # noqa: SIM115 - read_table closes it
        except OSError as exc:
            raise CatalogueError(f"cannot read catalogue {path}: {exc.strerror or exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame
