"""What the command line shows while it works and when it is done: progress bars on stderr (so
stdout and CSV stay clean) and the metrics table."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from galaxy_core.base.config import CLASSES
from galaxy_core.data.cache import BuildProgress
from galaxy_core.model.metrics import MetricRow, Metrics, metric_rows
from galaxy_core.serving.evaluate import EvaluateProgress
from galaxy_core.sources.download import DownloadProgress
from galaxy_core.training.train import TrainProgress


class CountBar:
    """A bar over a count of items, opened at the first event, so an error raised before any
    work is not printed on the end of an empty bar."""

    def __init__(self, desc: str, unit: str = "img"):
        self.desc, self.unit = desc, unit
        self.bar: tqdm | None = None

    def update(self, done: int, total: int, **postfix: Any) -> None:
        if self.bar is None:  # work done before the first event (a cached step) is not in the rate
            self.bar = tqdm(total=total, initial=done, unit=self.unit, desc=self.desc, file=sys.stderr)
        self.bar.total, self.bar.n = total, done
        if postfix:
            self.bar.set_postfix(refresh=False, **postfix)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def download(self, event: DownloadProgress) -> None:
        self.update(event.done, event.total, failed=event.failed, skipped=event.skipped)

    def build(self, event: BuildProgress) -> None:
        self.update(event.done, event.total)

    def evaluate(self, event: EvaluateProgress) -> None:
        self.update(event.done, event.total)

    def count(self, done: int, total: int) -> None:
        self.update(done, total)


class TrainingDisplay:
    """A bar per epoch, one line per finished epoch, a bar for the final evaluation, and the
    job's own messages."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.evaluating = CountBar("evaluate")

    def __call__(self, event: TrainProgress) -> None:
        if event.phase == "evaluate":
            if self.bar is not None:  # the last epoch's bar goes first, so the two never nest
                self.bar.close()
                self.bar = None
            self.evaluating.update(event.batch, event.batches)
            return
        self.evaluating.close()
        if event.phase == "train":
            desc = f"epoch {event.epoch}/{event.epochs}"
            if self.bar is None or self.bar.total != event.batches or self.bar.desc != desc:
                self.close()
                self.bar = tqdm(total=event.batches, desc=desc, unit="batch", leave=False, file=sys.stderr)
            self.bar.n = event.batch
            self.bar.set_postfix(loss=f"{event.loss:.3f}", acc=f"{event.accuracy:.3f}",
                                 eta=f"{(event.eta_s or 0) / 60:.1f}min", refresh=False)
            self.bar.refresh()
        elif event.phase == "epoch":
            h = event.history[-1]
            tqdm.write(f"epoch {h.epoch:3d}/{event.epochs}  train loss {h.train_loss:.3f} "
                       f"acc {h.train_accuracy:.3f}  val loss {h.val_loss:.3f} "
                       f"acc {h.val_accuracy:.3f}  {h.seconds:.0f}s", file=sys.stderr)
        else:
            print(event.message, file=sys.stderr)

    def close(self) -> None:
        self.evaluating.close()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def terminal_value(row: MetricRow) -> str:
    if row.value is None:
        return "n/a"
    return f"{row.value:,}" if row.kind == "count" else f"{row.value:.4f}"


def metrics_text(metrics: Metrics) -> str:
    """The headline rows, per-class scores and the confusion matrix as fixed-width text."""
    lines = [f"{row.label:<56} {terminal_value(row)}" for row in metric_rows(metrics)]
    lines.append("per class              precision recall  f1     support")
    for name, s in metrics.per_class.items():
        lines.append(f"  {name:<20} {s.precision:.3f}     {s.recall:.3f}   {s.f1:.3f}  {s.support}")
    lines.append("confusion (rows true, columns predicted: " + ", ".join(CLASSES) + ")")
    lines += ["  " + " ".join(f"{v:6d}" for v in row) for row in metrics.confusion]
    return "\n".join(lines)


def busy_machine_hint(load: float, cores: int, threads: int | None) -> str | None:
    """Advice when training starts on a machine already busy: a process whose intra-op threads
    meet at the end of every operation waits for the slowest of them, so with other jobs on the
    cores two threads ran a step several times slower than one (benchmarks/README.md, Threads).
    None when the threads were chosen, or the machine is not busy."""
    if threads is not None or cores < 2 or load < cores:
        return None
    return (f"the machine is busy (load {load:.1f} on {cores} cores): training uses every core, and beside "
            f"other jobs that can run several times slower than one thread; --threads 1 avoids it")
