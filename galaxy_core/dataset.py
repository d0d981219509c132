"""Downloaded images + catalogue -> a sharded, memory-mapped uint8 cache; splits; balancing.

The cache is decoded once: training reads batches straight from ``.npy`` shards with ``mmap``, so
memory stays flat however many galaxies there are, and no JPEG is ever decoded twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from .catalogue import CatalogueError, read_catalogue
from .config import CLASSES, ConfigError, DatasetConfig, GalaxyError, default_cache_root
from .images import ImageLoadError, load_image, resize_square

CACHE_FORMAT = 1
DEFAULT_SHARD_SIZE = 10_000
BUILD_LOCK_NAME = ".build.lock"
SOFT_LABEL_TEMPERATURE = 0.04


class DatasetError(GalaxyError):
    """The dataset folder is missing, empty or inconsistent."""


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


def catalogue_path(data_dir: Path) -> Path:
    path = Path(data_dir) / "catalogue.csv"
    if not path.is_file():
        raise DatasetError(f"no catalogue.csv in {data_dir}: run `python -m galaxy_core download` "
                           "first, or point --data at a folder with catalogue.csv and images/")
    return path


def image_path(data_dir: Path, relpath: str) -> Path | None:
    """The image file a catalogue row names, or None if it is missing or outside the folder.

    Containment is judged where the catalogue points, not where a link there leads: a folder
    of symlinks to images kept on another disk is fine, a path climbing out with ../ is not.
    """
    root = Path(os.path.abspath(data_dir))
    path = Path(os.path.normpath(root / relpath))
    return path if path.is_relative_to(root) and path.is_file() else None


def load_catalogue_with_images(data_dir: Path) -> pd.DataFrame:
    """The canonical catalogue restricted to rows whose image file exists."""
    frame = read_catalogue(catalogue_path(data_dir))
    if "image" not in frame.columns:
        raise DatasetError(f"{data_dir}/catalogue.csv has no 'image' column: it does not describe "
                           "downloaded images")
    present = [image_path(data_dir, rel) is not None for rel in frame["image"]]
    frame = frame[np.asarray(present, dtype=bool)].reset_index(drop=True)
    if frame.empty:
        raise DatasetError(f"none of the images listed in {data_dir}/catalogue.csv exist yet")
    return frame


def cache_key(frame: pd.DataFrame, data_dir: Path, image_size: int, shard_size: int) -> str:
    """Keyed by what made the cache: catalogue rows, image files (name, size, mtime), settings."""
    digest = hashlib.sha256(f"v{CACHE_FORMAT}:{image_size}:{shard_size}".encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    for rel in frame["image"]:
        stat = (Path(data_dir) / rel).stat()
        digest.update(f"{rel}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _decode(path: Path, image_size: int) -> np.ndarray | str:
    try:
        return resize_square(load_image(path), image_size)
    except ImageLoadError as exc:
        return str(exc)


def _decode_in_order(paths: Iterable[Path], image_size: int, workers: int,
                     window: int | None = None) -> Iterator[np.ndarray | str]:
    """Decoded images (or failure reasons) in catalogue order, with at most ``window`` decoded or
    in flight at once, so memory stays flat however far writing lags behind decoding."""
    window = window or 16 * workers
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for path in paths:
                pending.append(pool.submit(_decode, path, image_size))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


@contextmanager
def _build_lock(cache_root: Path) -> Iterator[bool]:
    """One builder per cache folder at a time: the processes of a torchrun job (or the CLI beside
    the app) wait for the first to finish, then find its cache and reuse it. Yields whether the
    lock is held.

    A folder where no lock can be taken (read-only, or a file system without locks) is used
    unlocked: builds there are still safe, as a finished cache is renamed into place whole."""
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        handle = open(cache_root / BUILD_LOCK_NAME, "a+")
    except OSError:
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            yield False
            return
        yield True


def build_cache(data_dir: Path, *, image_size: int = 128, shard_size: int = DEFAULT_SHARD_SIZE,
                workers: int | None = None, cache_root: Path | None = None,
                progress: Callable[[BuildProgress], None] | None = None) -> BuildReport:
    """Decode every image once into shards under ``cache_root``; reuse a cache with the same key.

    Concurrent callers take turns, so N processes starting together decode the images once.
    """
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    with _build_lock(cache_root) as locked:
        return _build_cache(data_dir, image_size=image_size, shard_size=shard_size, workers=workers,
                            cache_root=cache_root, progress=progress, sole_builder=locked)


def _build_cache(data_dir: Path, *, image_size: int, shard_size: int, workers: int | None,
                 cache_root: Path, progress: Callable[[BuildProgress], None] | None,
                 sole_builder: bool = False) -> BuildReport:
    data_dir = Path(data_dir)
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    frame = load_catalogue_with_images(data_dir)
    key = cache_key(frame, data_dir, image_size, shard_size)
    final = cache_root / key
    if (final / "meta.json").is_file():
        meta = json.loads((final / "meta.json").read_text())
        return BuildReport(final, meta["galaxies"], meta.get("failed", {}), 0.0, reused=True)
    start = time.monotonic()
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create cache folder {cache_root}: {exc.strerror}") from None
    if sole_builder:  # no one else is building: a temp folder left here is a killed build's
        for stale in cache_root.glob(f".{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_root))
    failed: dict[str, str] = {}
    keep: list[int] = []
    try:
        shard, shard_fill, shard_no, shards = None, 0, 0, []
        paths = (data_dir / rel for rel in frame["image"])
        decoded = _decode_in_order(paths, image_size, workers or min(4, os.cpu_count() or 1))
        with closing(decoded):
            for i, result in enumerate(decoded):
                if isinstance(result, str):
                    failed[str(frame["id"].iat[i])] = result
                else:
                    if shard is None:
                        rows = min(shard_size, len(frame) - i)
                        name = f"shard-{shard_no:05d}.npy"
                        shard = np.lib.format.open_memmap(tmp / name, mode="w+", dtype=np.uint8,
                                                          shape=(rows, image_size, image_size, 3))
                        shards.append([name, 0])
                    shard[shard_fill] = result
                    shard_fill += 1
                    shards[-1][1] = shard_fill
                    keep.append(i)
                    if shard_fill == shard.shape[0]:
                        shard.flush()
                        del shard
                        shard, shard_fill, shard_no = None, 0, shard_no + 1
                if progress is not None and (i % 64 == 0 or i == len(frame) - 1):
                    progress(BuildProgress(i + 1, len(frame), len(failed), time.monotonic() - start))
        if shard is not None:
            shard.flush()
            del shard
        if not keep:
            raise DatasetError(f"no image in {data_dir} could be decoded")
        _finish_partial_shard(tmp, shards, image_size)
        index = frame.iloc[keep].reset_index(drop=True)
        index["shard"] = np.repeat(np.arange(len(shards)), [n for _, n in shards])
        index["offset"] = np.concatenate([np.arange(n) for _, n in shards])
        index.to_csv(tmp / "index.csv", index=False)
        meta = {"format": CACHE_FORMAT, "key": key, "image_size": image_size,
                "galaxies": len(index), "shards": [name for name, _ in shards],
                "shard_size": shard_size, "failed": failed,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():  # not a concurrent builder finishing first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildReport(final, len(keep), failed, time.monotonic() - start, reused=False)


def _finish_partial_shard(tmp: Path, shards: list[list], image_size: int) -> None:
    """A shard sized for rows that then failed to decode is trimmed to the rows it holds,
    copied in slices so that not even one shard has to fit in memory."""
    name, filled = shards[-1]
    array = np.load(tmp / name, mmap_mode="r")
    if array.shape[0] != filled:
        trimmed = np.lib.format.open_memmap(tmp / f"{name}.trim", mode="w+", dtype=np.uint8,
                                            shape=(filled, image_size, image_size, 3))
        for start in range(0, filled, 1024):
            stop = min(start + 1024, filled)
            trimmed[start:stop] = array[start:stop]
        trimmed.flush()
        del trimmed, array
        os.replace(tmp / f"{name}.trim", tmp / name)


def soft_targets(frac_smooth: np.ndarray, frac_features: np.ndarray,
                 temperature: float = SOFT_LABEL_TEMPERATURE) -> np.ndarray:
    """Vote fractions -> class probabilities that soften the hard 0.8 threshold.

    A galaxy with 81% 'smooth' votes is barely Elliptical: the vote fraction itself is uncertain
    by several percent, so its target is split between Elliptical and Uncertain.
    """
    def sigmoid(x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-x))

    p_spiral = sigmoid((np.asarray(frac_features, float) - 0.8) / temperature)
    p_elliptical = sigmoid((np.asarray(frac_smooth, float) - 0.8) / temperature)
    p_uncertain = np.clip(1.0 - p_spiral - p_elliptical, 0.0, 1.0)
    out = np.stack([p_spiral, p_elliptical, p_uncertain], axis=1)
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


class PackedDataset:
    """Read-only view of one cache folder: index table plus memory-mapped image shards."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)
        try:
            self.meta = json.loads((self.cache_dir / "meta.json").read_text())
            self.index = pd.read_csv(self.cache_dir / "index.csv", dtype={"id": str})
            self.shards = [np.load(self.cache_dir / name, mmap_mode="r") for name in self.meta["shards"]]
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(f"cache {self.cache_dir} is unreadable ({exc}); delete it to rebuild") from None
        self.image_size = int(self.meta["image_size"])
        self.labels = self.index["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(np.int64)
        self.shard_of = self.index["shard"].to_numpy(np.int64)
        self.offset_of = self.index["offset"].to_numpy(np.int64)

    @classmethod
    def open(cls, data_dir: Path, image_size: int = 128, **build_kwargs) -> "PackedDataset":
        return cls(build_cache(data_dir, image_size=image_size, **build_kwargs).cache_dir)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def ids(self) -> np.ndarray:
        return self.index["id"].to_numpy(str)

    def images(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (n, H, W, 3) for the given rows, read shard by shard from the memory maps."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.image_size, self.image_size, 3), dtype=np.uint8)
        shards = self.shard_of[rows]
        for shard in np.unique(shards):
            where = np.flatnonzero(shards == shard)
            offsets = self.offset_of[rows[where]]
            order = np.argsort(offsets)
            out[where[order]] = self.shards[shard][offsets[order]]
        return out

    def targets(self, rows: np.ndarray, soft: bool, with_fractions: bool = False) -> np.ndarray:
        """Class targets (n, 3); with ``with_fractions`` two more columns, the smooth and
        features vote fractions, for the auxiliary regression head."""
        rows = np.asarray(rows, dtype=np.int64)
        smooth = self.index["frac_smooth"].to_numpy()[rows]
        features = self.index["frac_features"].to_numpy()[rows]
        if soft:
            out = soft_targets(smooth, features)
        else:
            out = np.eye(len(CLASSES), dtype=np.float32)[self.labels[rows]]
        if with_fractions:
            out = np.concatenate([out, np.stack([smooth, features], 1).astype(np.float32)], axis=1)
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


@dataclass
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_dataset(ids: np.ndarray, labels: np.ndarray, config: DatasetConfig) -> Split:
    """Stratified by class, seeded, by galaxy; independent of the catalogue's row order."""
    config.validate()
    ids, labels = np.asarray(ids).astype(str), np.asarray(labels)
    rng = np.random.default_rng(config.seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for cls in range(len(CLASSES)):
        members = np.flatnonzero(labels == cls)
        members = members[np.argsort(ids[members], kind="stable")]
        members = members[rng.permutation(len(members))]
        n_test = int(round(len(members) * config.test_fraction))
        n_val = int(round(len(members) * config.val_fraction))
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test:n_test + n_val])
        parts["train"].append(members[n_test + n_val:])
    return Split(**{k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()})


@dataclass
class Balanced:
    """Training views: a galaxy row and the number of quarter turns to apply to it."""

    rows: np.ndarray
    rotations: np.ndarray
    counts_before: dict[str, int]
    counts_after: dict[str, int]


def balance(rows: np.ndarray, labels: np.ndarray, seed: int, *, max_views: int = 4,
            target: int | str = "median") -> Balanced:
    """Rotate copies of rare classes (90/180/270 deg, at most ``max_views`` per galaxy) and cull
    common ones, towards ``target`` views per class: a number, the median class count, or the
    largest class count ("max": nothing is culled, every training galaxy is used)."""
    rows = np.asarray(rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    per_class = [rows[labels[rows] == c] for c in range(len(CLASSES))]
    counts = [len(m) for m in per_class]
    empty = [CLASSES[c] for c, n in enumerate(counts) if n == 0]
    if empty:
        raise ConfigError(f"class(es) {', '.join(empty)} have no training examples; "
                          "use more galaxies or turn balancing off")
    if target == "median":
        target = int(np.median(counts))
    elif target == "max":
        target = int(max(counts))
    target = int(target)
    out_rows, out_rot = [], []
    for members in per_class:
        n = len(members)
        if n >= target:
            chosen = np.sort(rng.choice(members, size=target, replace=False))
            out_rows.append(chosen)
            out_rot.append(np.zeros(target, dtype=np.int64))
            continue
        extra = min(target, n * max_views) - n
        order = rng.permutation(members)
        j = np.arange(extra)
        out_rows.append(np.concatenate([members, order[j % n]]))
        out_rot.append(np.concatenate([np.zeros(n, dtype=np.int64), 1 + j // n]))
    result_rows, result_rot = np.concatenate(out_rows), np.concatenate(out_rot)
    after = np.bincount(labels[result_rows], minlength=len(CLASSES))
    return Balanced(result_rows, result_rot,
                    dict(zip(CLASSES, map(int, counts))), dict(zip(CLASSES, map(int, after))))


def dataset_summary(data_dir: Path, config: DatasetConfig = DatasetConfig(),
                    cache_root: Path | None = None) -> dict:
    """Class counts, split sizes and balancing for a dataset folder (used by CLI and app)."""
    dataset = PackedDataset.open(data_dir, cache_root=cache_root)
    split = split_dataset(dataset.ids, dataset.labels, config)
    balanced = balance(split.train, dataset.labels, config.seed)
    return {"galaxies": len(dataset), "cache": str(dataset.cache_dir),
            "class_counts": dict(zip(CLASSES, map(int, np.bincount(dataset.labels, minlength=3)))),
            "split": split.sizes(), "train_before_balancing": balanced.counts_before,
            "train_after_balancing": balanced.counts_after}


__all__ = ["BuildProgress", "BuildReport", "Balanced", "CatalogueError", "DatasetError",
           "ImageRows", "PackedDataset", "Split", "balance", "build_cache", "dataset_summary",
           "soft_targets", "split_dataset"]
