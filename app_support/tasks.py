"""The long jobs the dashboard runs in the background: a download and a training run (not a page).

Each is a ``Task`` for ``JobRegistry``: it takes the registry's ``report`` callback and stop event,
the same pair the core's ``download_cutouts`` and ``train`` take. ``training_job`` and
``download_job`` run them in a child process (app_support/child.py), as the app does.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app_support.child import in_child
from app_support.jobs import Task
from galaxy_core.base import DownloadConfig, GalaxyError, TrainConfig, write_bytes_atomic
from galaxy_core.sources import (
    CatalogueFormat,
    DatasetFolder,
    DownloadProgress,
    DownloadReport,
    UrlPolicy,
    download_cutouts,
    read_catalogue,
)
from galaxy_core.training import TrainProgress, TrainResult, train


def download_task(out_dir: Path, catalogue: str | bytes, config: DownloadConfig,
                  fmt: CatalogueFormat = "auto", policy: UrlPolicy | None = None) -> Task:
    """A job that reads a catalogue (URL, path or uploaded bytes) and fetches its cutouts; the
    catalogue URL, the cutout URL and their redirects must pass ``policy`` (the allowed hosts).

    Uploaded bytes are kept in the dataset folder, so the same download can be resumed later
    without uploading the file again. Progress is a string while the catalogue is read, then
    ``DownloadProgress`` events.
    """
    folder = DatasetFolder(out_dir)
    config = dataclasses.replace(config, out_dir=folder.root)

    def run(report: Callable[[Any], None], stop: threading.Event) -> DownloadReport:
        source: str | Path = catalogue if isinstance(catalogue, str) else folder.source_catalogue
        created = not folder.root.exists()
        if isinstance(catalogue, bytes):
            write_bytes_atomic(folder.source_catalogue, catalogue)
        report("reading the uploaded catalogue" if isinstance(catalogue, bytes) else "reading the catalogue")
        try:
            frame = read_catalogue(source, fmt, policy=policy, stop=stop)
        except GalaxyError:
            if created:  # a catalogue that cannot be read leaves nothing behind
                shutil.rmtree(folder.root, ignore_errors=True)
            if stop.is_set():  # stopped while the catalogue was still arriving
                return DownloadReport(total=0, downloaded=0, skipped=0)
            raise
        report(DownloadProgress(0, min(len(frame), config.limit or len(frame)), 0, 0, 0.0))
        return download_cutouts(frame, config, report, stop, policy=policy)

    return run


def uploaded_catalogue(out_dir: Path) -> Path | None:
    """The catalogue file an earlier download into ``out_dir`` was started from, if uploaded."""
    path = DatasetFolder(out_dir).source_catalogue
    return path if path.is_file() else None


def training_task(config: TrainConfig, restart: bool = False) -> Task:
    """A job that trains, keeping the latest per-epoch history on every progress event.

    The core sends ``prepare`` messages without history; the app's charts would blink empty
    between epochs, so each event carries the last history seen.
    """

    def run(report: Callable[[Any], None], stop: threading.Event) -> TrainResult:
        history: list = []

        def progress(event: TrainProgress) -> None:
            nonlocal history
            if event.history:
                history = list(event.history)
            report(dataclasses.replace(event, history=history))

        return train(config, progress, stop, command="streamlit app", restart=restart)

    return run


def training_job(config: TrainConfig, restart: bool = False) -> Task:
    """``training_task`` in a child process: the server keeps answering its visitors meanwhile."""
    return in_child(training_task, config, restart)


def download_job(out_dir: Path, catalogue: str | bytes, config: DownloadConfig,
                 fmt: CatalogueFormat = "auto", policy: UrlPolicy | None = None) -> Task:
    """``download_task`` in a child process."""
    return in_child(download_task, out_dir, catalogue, config, fmt, policy)
