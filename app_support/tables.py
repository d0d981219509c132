"""Plain tables and text the pages draw from core results (not a page): chart data, filters,
paging and durations, tested without a browser."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from galaxy_core.base import CLASSES, ConfigError
from galaxy_core.data import PixelStatistics
from galaxy_core.model import EpochRecord, Metrics


def history_frame(history: Sequence[EpochRecord]) -> pd.DataFrame:
    """Per-epoch history -> long table (epoch, metric, split, value) for loss and accuracy curves."""
    rows = []
    for entry in history:
        for metric in ("loss", "accuracy"):
            for split, prefix in (("train", "train_"), ("validation", "val_")):
                rows.append({"epoch": entry.epoch, "metric": metric, "split": split,
                             "value": float(getattr(entry, prefix + metric))})
    return pd.DataFrame(rows, columns=["epoch", "metric", "split", "value"])


def histogram_frame(stats: PixelStatistics) -> pd.DataFrame:
    """Pixel histograms -> long table (value, channel, pixels)."""
    centres = (stats.bin_edges[:-1] + stats.bin_edges[1:]) / 2
    return pd.concat([pd.DataFrame({"value": centres, "channel": channel, "pixels": stats.counts[i]})
                      for i, channel in enumerate(("red", "green", "blue"))], ignore_index=True)


def row_normalise(matrix: np.ndarray | list[list[int]]) -> np.ndarray:
    """Confusion counts -> fraction of each true class (rows with no galaxies stay zero)."""
    m = np.asarray(matrix, dtype=float)
    totals = m.sum(axis=1, keepdims=True)
    return np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)


def per_class_frame(metrics: Metrics | None) -> pd.DataFrame:
    scores = metrics.per_class if metrics is not None else {}
    return pd.DataFrame([{"class": name, "precision": s.precision, "recall": s.recall, "f1": s.f1,
                          "support": s.support} for name, s in scores.items()],
                        columns=["class", "precision", "recall", "f1", "support"])


def reliability_frame(metrics: Metrics) -> pd.DataFrame:
    return pd.DataFrame([vars(b) for b in metrics.reliability],
                        columns=["low", "high", "count", "confidence", "accuracy"])


SortOrder = Literal["most confident first", "least confident first"]


def misclassified_frame(rows: list[Mapping[str, Any]], true: list[str] | None = None,
                        predicted: list[str] | None = None,
                        order: SortOrder = "most confident first") -> pd.DataFrame:
    """Filter wrong predictions by true/predicted class and sort by the winning probability."""
    prob_columns = [f"p_{c.lower()}" for c in CLASSES]
    frame = pd.DataFrame(list(rows), columns=["id", "image", "true", "predicted", *prob_columns])
    frame["confidence"] = frame[prob_columns].max(axis=1) if len(frame) else pd.Series(dtype=float)
    if true:
        frame = frame[frame["true"].isin(true)]
    if predicted:
        frame = frame[frame["predicted"].isin(predicted)]
    ascending = order == "least confident first"
    return frame.sort_values("confidence", ascending=ascending, kind="stable").reset_index(drop=True)


def page_bounds(n: int, page: int, per_page: int) -> tuple[int, int, int]:
    """(start, stop, pages) for 1-based ``page``, clamped to the pages that exist."""
    if per_page < 1:
        raise ConfigError(f"per_page must be at least 1, got {per_page}")
    pages = max(1, math.ceil(n / per_page))
    page = min(max(page, 1), pages)
    start = (page - 1) * per_page
    return start, min(start + per_page, n), pages


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def job_fraction(progress: Any) -> float:
    """How far a background job's latest progress event is, in [0, 1] (0 when it cannot tell):
    training events count batches over all epochs, then the final evaluation's images; a
    download counts galaxies."""
    phase = getattr(progress, "phase", None)
    if phase is None:  # a download
        done, total = getattr(progress, "done", 0), getattr(progress, "total", 0)
        return min(done / total, 1.0) if total else 0.0
    epochs, batches = getattr(progress, "epochs", 0), getattr(progress, "batches", 0)
    if phase == "evaluate":
        return min(progress.batch / batches, 1.0) if batches else 1.0
    if phase == "train" and epochs and batches:
        return min(((progress.epoch - 1) * batches + progress.batch) / (epochs * batches), 1.0)
    return min(progress.epoch / epochs, 1.0) if epochs else 0.0
