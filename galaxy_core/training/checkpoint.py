"""Checkpoints and the output-folder lock: what makes a stopped run resume to the same result,
and what keeps two jobs from writing to one model folder.

Checkpoints are loaded with ``weights_only=True``: a crafted file is refused, never executed.
A checkpoint records what its run learns from (``data_fingerprint``), and resuming it on other
galaxies, another split or another image cache is refused: it would quietly train on galaxies
the finished model is then tested on.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from galaxy_core.base import fields
from galaxy_core.base.atomic import DISK_FULL, atomic_path, file_lock, remove_stale_parts
from galaxy_core.base.config import ConfigError, GalaxyError, TrainConfig

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_KEYS = frozenset({"model", "optimiser", "scheduler", "epoch", "config", "history"})
LOCK_NAME = ".train.lock"
# Settings that may change between a run and its resumption without changing the result.
RESUMABLE_KEYS = {"data_dir", "out_dir", "cache_dir", "num_threads", "device"}
DATA_KEY = "data"
DATA_PARTS = {"catalogue": "the catalogue's galaxies or their classes",
              "split": "the train/validation/test split",
              "cache": "the image cache (images downloaded or decoded again)"}


class TrainingBusyError(GalaxyError):
    """Another training job is already writing to this output folder."""


class CheckpointError(GalaxyError):
    """A checkpoint file is corrupt, hostile or not one of ours."""


@contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive OS lock on the output folder: one training job per folder, however started."""
    busy = TrainingBusyError(f"another training job is already writing to {out_dir}")
    with file_lock(Path(out_dir) / LOCK_NAME, busy=busy):
        remove_stale_parts(out_dir)  # half-written checkpoints of a job that was killed
        yield


def comparable(config_dict: dict) -> dict:
    """The settings a resumed run must share, with defaults for fields added since it was saved
    and today's names for renamed ones."""
    try:
        config = TrainConfig.from_dict({"data_dir": ".", "out_dir": ".", **config_dict})
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"the checkpoint's settings are not valid ({exc}); delete it or use --restart") from None
    return {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_KEYS}


def _digest(lines: Iterable[object]) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(f"{line}\n".encode())
    return digest.hexdigest()[:16]


def data_fingerprint(ids: Iterable[str], labels: Iterable[int], split: Mapping[str, Iterable[str]],
                     cache_key: str) -> dict[str, str]:
    """What a run learns from, as three short hashes: the galaxies with their classes, the ids of
    each split, and the key of the image cache it reads."""
    return {"catalogue": _digest(f"{i}\t{label}" for i, label in zip(ids, labels, strict=True)),
            "split": _digest(f"{name}\t{i}" for name in sorted(split) for i in split[name]),
            "cache": str(cache_key)}


def _check_data(path: Path, saved: object, data: Mapping[str, str]) -> None:
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} does not record which galaxies it was trained on, so resuming it could "
                              "train on another split; use --restart to start over")
    changed = [what for part, what in DATA_PARTS.items() if saved.get(part) != data.get(part)]
    if changed:
        raise CheckpointError(f"{path.parent} holds a checkpoint of other data: {', '.join(changed)} changed since it "
                              "was saved, and resuming would mix galaxies between training and test; use --restart "
                              "to start over (or a new --out folder)")


def load_checkpoint(path: Path, config: TrainConfig, data: Mapping[str, str] | None = None) -> dict | None:
    """The checkpoint to resume from, or None; refused when its settings differ from ``config``
    or (given ``data``, a ``data_fingerprint``) when it was trained on other data."""
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():  # torch's remarks on a foreign pickle are not for the user
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or hostile file is refused, never executed
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely ({exc.__class__.__name__}); "
                              "delete it or use --restart") from None
    missing = CHECKPOINT_KEYS - set(state) if isinstance(state, dict) else CHECKPOINT_KEYS
    if missing or not isinstance(state["config"], dict):
        raise CheckpointError(f"{path} is not a training checkpoint (missing "
                              f"{', '.join(sorted(missing)) or 'config'}); delete it or use --restart")
    if comparable(state["config"]) != comparable(config.to_dict()):
        saved = comparable(state["config"])
        changed = sorted(k for k, v in comparable(config.to_dict()).items() if saved.get(k) != v)
        raise ConfigError(f"{path.parent} holds a checkpoint trained with different settings "
                          f"({', '.join(changed)}); use a new --out folder or --restart")
    if data is not None:
        _check_data(path, state.get(DATA_KEY), data)
    return state


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a failed write (a full disk) leaves the previous checkpoint as it was."""
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as exc:  # torch reports a failed write as a RuntimeError
        full = getattr(exc, "errno", None) in DISK_FULL or "write" in str(exc).lower()
        reason = "the disk is full or cannot be written" if full else fields.clip(str(exc).splitlines()[0], 200)
        raise CheckpointError(f"cannot save the checkpoint {path}: {reason}; the previous checkpoint is kept, "
                              "free some space and run the same command again to resume") from None


@contextmanager
def no_lock() -> Iterator[None]:
    yield
