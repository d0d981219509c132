"""The packed image caches kept within a size cap, least recently used removed first (not a page).

Every dataset a visitor looks at leaves a decoded cache behind; without a bound they only grow.
A cache the app uses is marked (``USED_NAME``); when the caches together pass the cap, the ones
used longest ago go. A cache being built is never touched: trimming waits for no one and is
skipped while a build holds the cache folder's lock. A removed cache is rebuilt when asked for;
a process that has its shards mapped keeps reading them (Linux frees a removed file's blocks
when its last map closes).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from galaxy_core.base import file_lock
from galaxy_core.data import BUILD_LOCK_NAME, META_NAME

USED_NAME = ".used"


class _Busy(Exception):
    """A cache is being built: trim another time."""


def mark_used(cache_dir: Path) -> None:
    """Record that ``cache_dir`` was just used (its place in the least-recently-used order)."""
    try:
        (Path(cache_dir) / USED_NAME).touch()
    except OSError:  # a read-only cache still serves; it just keeps its old place
        pass


def _size(folder: Path) -> int:
    total = 0
    for path, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(path, name)).st_size
            except OSError:
                pass
    return total


def _last_used(folder: Path) -> float:
    for name in (USED_NAME, META_NAME):
        try:
            return (folder / name).stat().st_mtime
        except OSError:
            continue
    return 0.0


def trim_caches(cache_root: Path, max_bytes: int, keep: Iterable[Path] = ()) -> list[Path]:
    """Remove finished caches under ``cache_root``, least recently used first, until they fit in
    ``max_bytes`` (those in ``keep`` stay); returns what was removed."""
    root = Path(cache_root)
    if not root.is_dir():
        return []
    keep = {Path(k).resolve() for k in keep}
    removed: list[Path] = []
    try:
        with file_lock(root / BUILD_LOCK_NAME, busy=_Busy()):
            caches = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                      and (p / META_NAME).is_file()]
            sizes = {p: _size(p) for p in caches}
            total = sum(sizes.values())
            for cache in sorted(caches, key=_last_used):
                if total <= max_bytes:
                    break
                if cache.resolve() in keep:
                    continue
                shutil.rmtree(cache, ignore_errors=True)
                total -= sizes[cache]
                removed.append(cache)
    except (_Busy, OSError):
        return removed
    return removed
