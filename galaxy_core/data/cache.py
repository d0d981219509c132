"""Downloaded images + catalogue -> a sharded, memory-mapped uint8 cache, decoded once.

Training reads batches straight from ``.npy`` shards with ``mmap``, so memory stays flat however
many galaxies there are, and no JPEG is ever decoded twice. A cache is keyed by what made it
(catalogue rows, image files, settings), so a changed dataset gets a new one.

A cache on disk is not trusted either: ``meta.json`` records the size and SHA-256 of the index and
of every shard. Sizes, the index and the shards' shapes are checked whenever a cache is opened (a
damaged one met by ``build_cache`` is built again); a shard's content is hashed the first time it
is read, so a flipped byte is an error, never a silently wrong image.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from galaxy_core.base.atomic import DISK_FULL, allocate, file_lock, free_bytes
from galaxy_core.base.config import CUTOUT_SIZE, LABEL_RULES, TrainConfig, default_cache_root
from galaxy_core.data.framing import FRAMER_VERSION, FramingSpec, frame_image
from galaxy_core.sources.catalogue import fraction_columns, label_column, rule_fractions, rule_labels
from galaxy_core.sources.folder import DatasetError, DatasetFolder
from galaxy_core.sources.images import ImageLoadError, load_image, resize_square

CACHE_FORMAT = 2
DEFAULT_SHARD_SIZE = 10_000
BUILD_LOCK_NAME = ".build.lock"
META_NAME = "meta.json"
INDEX_NAME = "index.csv"
BLANK_RANGE = 2
"""An image whose pixels all lie within this many grey levels carries no signal (a black cutout)."""


class CacheDamaged(DatasetError):
    """A cache folder's files are not the ones written when it was built."""


@dataclass
class BuildProgress:
    done: int
    total: int
    failed: int
    elapsed_s: float


@dataclass
class BuildReport:
    cache_dir: Path
    galaxies: int
    failed: dict[str, str]
    elapsed_s: float
    reused: bool


def cache_key(table: pd.DataFrame, data_dir: Path, source_size: int, shard_size: int,
              framing: FramingSpec | None = None) -> str:
    """Keyed by what made the cache: catalogue rows, image files (name, size, mtime), settings."""
    framed = "" if framing is None else f":framed{FRAMER_VERSION}:{framing.radius_fraction!r}"
    digest = hashlib.sha256(f"v{CACHE_FORMAT}:{source_size}:{shard_size}{framed}".encode())
    digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    for rel in table["image"]:
        stat = (Path(data_dir) / rel).stat()
        digest.update(f"{rel}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _decode(path: Path, source_size: int, framing: FramingSpec | None = None) -> np.ndarray | str:
    try:
        image = load_image(path)
        return resize_square(image, source_size) if framing is None else frame_image(image, framing, source_size).image
    except ImageLoadError as exc:
        return str(exc)


def _decode_in_order(paths: Iterable[Path], source_size: int, workers: int, window: int | None = None,
                     framing: FramingSpec | None = None) -> Iterator[np.ndarray | str]:
    """Decoded images (or failure reasons) in catalogue order, with at most ``window`` decoded or
    in flight at once, so memory stays flat however far writing lags behind decoding."""
    window = window or 16 * workers
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for path in paths:
                pending.append(pool.submit(_decode, path, source_size, framing))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def build_cache(data_dir: Path, *, source_size: int = CUTOUT_SIZE, shard_size: int = DEFAULT_SHARD_SIZE,
                workers: int | None = None, cache_root: Path | None = None,
                progress: Callable[[BuildProgress], None] | None = None,
                catalogue: pd.DataFrame | None = None, framing: FramingSpec | None = None) -> BuildReport:
    """Decode every image once into shards under ``cache_root``; reuse a cache with the same key.

    ``catalogue``, the folder's catalogue already read by the caller, saves reading it again.
    With ``framing`` each image is stored framed as the model that asks for it was trained.
    Processes sharing a cache folder take turns through a lock on it (one that no collective
    call times out), so N processes starting together decode the images once.
    """
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    folder = DatasetFolder(data_dir)
    table = folder.read_catalogue() if catalogue is None else catalogue
    with file_lock(cache_root / BUILD_LOCK_NAME) as sole_builder:
        return _build_cache(folder, table, source_size=source_size, shard_size=shard_size, workers=workers,
                            cache_root=cache_root, progress=progress, sole_builder=sole_builder, framing=framing)


def _build_cache(folder: DatasetFolder, frame: pd.DataFrame, *, source_size: int, shard_size: int,
                 workers: int | None, cache_root: Path, progress: Callable[[BuildProgress], None] | None,
                 sole_builder: bool, framing: FramingSpec | None) -> BuildReport:
    data_dir = folder.root
    key = cache_key(frame, data_dir, source_size, shard_size, framing)
    final = cache_root / key
    if (final / META_NAME).is_file():
        try:
            meta = check_cache(final)
            return BuildReport(final, meta["galaxies"], meta.get("failed", {}), 0.0, reused=True)
        except CacheDamaged:  # built again below, under the same build lock
            shutil.rmtree(final, ignore_errors=True)
    start = time.monotonic()
    tmp = _new_build_folder(cache_root, key, sole_builder, len(frame) * source_size**2 * 3)
    try:
        written = _write_shards(tmp, frame, data_dir, source_size=source_size, shard_size=shard_size,
                                workers=workers or min(4, os.cpu_count() or 1), framing=framing,
                                progress=progress, start=start)
        _check_signal(written, data_dir)
        _finish_partial_shard(tmp, written.shards, source_size)
        _write_index_and_meta(tmp, frame, written, key=key, source_size=source_size, shard_size=shard_size,
                              framing=framing)
        _publish(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in DISK_FULL:
            raise DatasetError(f"the disk holding the image cache {cache_root} is full ({exc.strerror}); nothing "
                               f"was kept: free some space, or give another disk with --cache-dir or "
                               f"GALAXY_CACHE_DIR") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildReport(final, len(written.keep), written.failed, time.monotonic() - start, reused=False)


@dataclass
class _Written:
    """What a build wrote into its temporary folder: the rows kept, in shard order, and why the
    others failed."""

    keep: list[int] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    shards: list[list] = field(default_factory=list)  # [file name, rows filled]
    blank: int = 0  # images of a single flat colour


def _new_build_folder(cache_root: Path, key: str, sole_builder: bool, pixels: int) -> Path:
    """A fresh temporary folder beside the final one, once the disk is known to hold it."""
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create cache folder {cache_root}: {exc.strerror}") from None
    if sole_builder:  # no one else is building: a temp folder left here is a killed build's
        for stale in cache_root.glob(f".{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
    _check_free_space(cache_root, pixels)
    return Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_root))


def _write_shards(tmp: Path, frame: pd.DataFrame, data_dir: Path, *, source_size: int, shard_size: int,
                  workers: int, framing: FramingSpec | None, progress: Callable[[BuildProgress], None] | None,
                  start: float) -> _Written:
    """Decode every image in catalogue order into shards of ``shard_size`` rows."""
    written = _Written()
    shard, fill = None, 0
    paths = (data_dir / rel for rel in frame["image"])
    decoded = _decode_in_order(paths, source_size, workers, framing=framing)
    with closing(decoded):
        for i, result in enumerate(decoded):
            if isinstance(result, str):
                written.failed[str(frame["id"].iat[i])] = result
            else:
                if shard is None:
                    name = f"shard-{len(written.shards):05d}.npy"
                    shard = _new_shard(tmp / name, (min(shard_size, len(frame) - i), source_size, source_size, 3))
                    written.shards.append([name, 0])
                shard[fill] = result
                written.blank += int(result.max()) - int(result.min()) <= BLANK_RANGE
                fill += 1
                written.shards[-1][1] = fill
                written.keep.append(i)
                if fill == shard.shape[0]:
                    shard.flush()
                    del shard
                    shard, fill = None, 0
            if progress is not None and (i % 64 == 0 or i == len(frame) - 1):
                progress(BuildProgress(i + 1, len(frame), len(written.failed), time.monotonic() - start))
    if shard is not None:
        shard.flush()
        del shard
    return written


def _check_signal(written: _Written, data_dir: Path) -> None:
    if not written.keep:
        raise DatasetError(f"no image in {data_dir} could be decoded")
    if written.blank == len(written.keep):
        raise DatasetError(f"no signal: every one of the {len(written.keep):,} images in {data_dir} is a single "
                           "flat colour (all black?), so no model can learn from them; SDSS answers black cutouts "
                           "outside its footprint: check the catalogue's coordinates and --cutout-url")


def _write_index_and_meta(tmp: Path, frame: pd.DataFrame, written: _Written, *, key: str, source_size: int,
                          shard_size: int, framing: FramingSpec | None) -> None:
    """The index (each kept row's shard and offset) and meta.json, whose presence marks a whole cache."""
    index = frame.iloc[written.keep].reset_index(drop=True)
    index["shard"] = np.repeat(np.arange(len(written.shards)), [n for _, n in written.shards])
    index["offset"] = np.concatenate([np.arange(n) for _, n in written.shards])
    index.to_csv(tmp / INDEX_NAME, index=False)
    files = {name: _file_check(tmp / name) for name in [INDEX_NAME, *(name for name, _ in written.shards)]}
    meta = {"format": CACHE_FORMAT, "key": key, "image_size": source_size, "files": files,
            "framing": None if framing is None else framing.to_dict(),
            "galaxies": len(index), "shards": [name for name, _ in written.shards],
            "shard_size": shard_size, "failed": written.failed,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (tmp / META_NAME).write_text(json.dumps(meta, indent=1))


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished build into place; a concurrent builder that finished first wins."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not (final / META_NAME).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _check_free_space(cache_root: Path, pixels: int) -> None:
    """Refuse before decoding anything when the cache cannot fit (pixels plus 5% for the rest)."""
    need, free = int(pixels * 1.05) + (1 << 20), free_bytes(cache_root)
    if free < need:
        raise DatasetError(f"not enough free disk space for the image cache in {cache_root}: it needs about "
                           f"{need / 1024**3:.2f} GB and {free / 1024**3:.2f} GB are free; free some space, or "
                           f"give another disk with --cache-dir or GALAXY_CACHE_DIR")


def _new_shard(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A shard file with every block allocated on disk before it is mapped and written."""
    shard = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    allocate(path, shard.offset + shard.nbytes)
    return shard


def _finish_partial_shard(tmp: Path, shards: list[list], source_size: int) -> None:
    """A shard sized for rows that then failed to decode is trimmed to the rows it holds,
    copied in slices so that not even one shard has to fit in memory."""
    name, filled = shards[-1]
    array = np.load(tmp / name, mmap_mode="r")
    if array.shape[0] != filled:
        trimmed = _new_shard(tmp / f"{name}.trim", (filled, source_size, source_size, 3))
        for start in range(0, filled, 1024):
            stop = min(start + 1024, filled)
            trimmed[start:stop] = array[start:stop]
        trimmed.flush()
        del trimmed, array
        os.replace(tmp / f"{name}.trim", tmp / name)


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _file_check(path: Path) -> dict[str, int | str]:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _damaged(cache_dir: Path, what: str) -> CacheDamaged:
    return CacheDamaged(f"the image cache {cache_dir} is damaged ({what}); delete that folder and it is built again")


def check_cache(cache_dir: Path) -> dict:
    """The cache's meta after the cheap checks: every file of the size it was written with, the
    index's own hash, and each shard's array shape. Raises CacheDamaged (a DatasetError)."""
    try:
        meta = json.loads((cache_dir / META_NAME).read_text())
        files = meta["files"]
        names = [INDEX_NAME, *meta["shards"]]
        for name in names:
            size = (cache_dir / name).stat().st_size
            if size != files[name]["bytes"]:
                raise _damaged(cache_dir, f"{name} is {size:,} bytes, {files[name]['bytes']:,} when written")
    except FileNotFoundError as exc:
        raise _damaged(cache_dir, f"{Path(exc.filename or '?').name} is missing") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _damaged(cache_dir, f"{META_NAME} is unreadable: {exc.__class__.__name__}") from None
    if _sha256(cache_dir / INDEX_NAME) != files[INDEX_NAME]["sha256"]:
        raise _damaged(cache_dir, f"{INDEX_NAME} is not the one written")
    return meta


class PackedDataset:
    """Read-only view of one cache folder: index table plus memory-mapped image shards, with the
    classes and vote fractions of one label rule (the cache itself serves both rules)."""

    def __init__(self, cache_dir: Path, label_rule: str = TrainConfig.label_rule):
        self.cache_dir = Path(cache_dir)
        self.meta = check_cache(self.cache_dir)
        try:
            self.index = pd.read_csv(self.cache_dir / INDEX_NAME, dtype={"id": str, **{
                label_column(rule): str for rule in LABEL_RULES}}, keep_default_na=False,
                na_values={column: [""] for column in self.fraction_names()})
            self.shards = [np.load(self.cache_dir / name, mmap_mode="r") for name in self.meta["shards"]]
        except (OSError, ValueError, KeyError) as exc:
            raise _damaged(self.cache_dir, f"unreadable: {exc.__class__.__name__}") from None
        self.source_size = int(self.meta["image_size"])
        self.rule = label_rule
        self.shard_of = self.index["shard"].to_numpy(np.int64)
        self.offset_of = self.index["offset"].to_numpy(np.int64)
        self._check_shapes()
        self._verified: set[int] = set()
        self._verify_lock = threading.Lock()

    def _check_shapes(self) -> None:
        side = self.source_size
        rows = np.bincount(self.shard_of, minlength=len(self.shards)) if len(self.shard_of) else []
        for number, (shard, name) in enumerate(zip(self.shards, self.meta["shards"])):
            if shard.dtype != np.uint8 or shard.shape[1:] != (side, side, 3) or shard.shape[0] != rows[number]:
                raise _damaged(self.cache_dir, f"{name} holds {shard.dtype} {shard.shape}, not the index's "
                                               f"{rows[number]} images of {side}x{side}")
        if len(self.shard_of) and (self.shard_of.max() >= len(self.shards) or self.offset_of.min() < 0):
            raise _damaged(self.cache_dir, f"{INDEX_NAME} points outside the shards")

    def verify_shard(self, number: int) -> None:
        """Hash a shard against the build's record, once per dataset (at its first read)."""
        with self._verify_lock:
            if number in self._verified:
                return
            name = self.meta["shards"][number]
            if _sha256(self.cache_dir / name) != self.meta["files"][name]["sha256"]:
                raise _damaged(self.cache_dir, f"{name} is not the one written")
            self._verified.add(number)

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """Class indices under the label rule (read on first use: pixels alone need no labels)."""
        return rule_labels(self.index, self.rule)

    @staticmethod
    def fraction_names() -> list[str]:
        return [c for rule in LABEL_RULES for c in fraction_columns(rule)]

    @classmethod
    def open(cls, data_dir: Path, source_size: int = CUTOUT_SIZE, label_rule: str = TrainConfig.label_rule,
             **build_kwargs) -> PackedDataset:
        return cls(build_cache(data_dir, source_size=source_size, **build_kwargs).cache_dir, label_rule)

    def fractions(self, rows: np.ndarray) -> np.ndarray:
        """(n, 3) vote fractions of these rows under the label rule (smooth, features, artifact)."""
        return rule_fractions(self.index, self.rule)[np.asarray(rows, dtype=np.int64)]

    def tree_answers(self, rows: np.ndarray, stems: Sequence[str], kind: str = "count") -> np.ndarray:
        """(n, answers) float: each answer's vote ``count`` or ``weighted_fraction`` (TREE_KINDS)
        for these rows, in ``stems`` order; NaN where the catalogue had no such column."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.full((len(rows), len(stems)), np.nan)
        for k, stem in enumerate(stems):
            column = f"{stem}_{kind}"
            if column in self.index.columns:
                out[:, k] = pd.to_numeric(self.index[column], errors="coerce").to_numpy(float)[rows]
        return out

    def has_tree(self, stems: Sequence[str]) -> bool:
        """Whether every answer of a tree has vote counts here."""
        return all(f"{stem}_count" in self.index.columns for stem in stems)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def ids(self) -> np.ndarray:
        return self.index["id"].to_numpy(str)

    def images(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (n, H, W, 3) for the given rows, read shard by shard from the memory maps."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.source_size, self.source_size, 3), dtype=np.uint8)
        shards = self.shard_of[rows]
        for shard in np.unique(shards):
            self.verify_shard(int(shard))
            where = np.flatnonzero(shards == shard)
            offsets = self.offset_of[rows[where]]
            order = np.argsort(offsets)
            out[where[order]] = self.shards[shard][offsets[order]]
        return out


class ImageRows:
    """A lazy, sliceable view of some rows' images: code that walks a split in batches
    (``predict_probs``, ``view_log_probs``) then reads one batch at a time, not the split."""

    def __init__(self, dataset: PackedDataset, rows: np.ndarray):
        self.dataset = dataset
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, part: slice) -> np.ndarray:
        return self.dataset.images(self.rows[part])


