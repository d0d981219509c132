"""One measured job per process, so each reports its own peak memory: ``python -m benchmarks.child``.

Prints one JSON line; ``run_child`` in ``benchmarks.common`` starts it and reads the answer.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import peak_rss_mb


def build(args: argparse.Namespace) -> dict:
    from galaxy_core.data.cache import build_cache

    start = time.perf_counter()
    report = build_cache(args.data, cache_root=args.cache_root)
    return {"seconds": time.perf_counter() - start, "galaxies": report.galaxies,
            "failed": len(report.failed), "reused": report.reused}


def train_epoch(args: argparse.Namespace) -> dict:
    import torch

    from benchmarks.train_bench import epoch_seconds

    torch.set_num_threads(args.threads)
    return epoch_seconds(args.data, args.cache_root, json.loads(args.settings), args.galaxies)


def train_run(args: argparse.Namespace) -> dict:
    """A real one-epoch training run of ``--settings``, for the memory estimate's check."""
    import tempfile

    import torch

    from galaxy_core.base import TrainConfig
    from galaxy_core.training import train

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(data_dir=args.data, out_dir=Path(out), cache_dir=args.cache_root, epochs=1,
                             max_galaxies=args.galaxies, **json.loads(args.settings))
        start = time.perf_counter()
        train(config, command="benchmark")
    return {"seconds": time.perf_counter() - start}


def baseline(args: argparse.Namespace) -> dict:
    """The interpreter with torch and galaxy_core imported: the floor under every other figure."""
    import galaxy_core.training.train  # noqa: F401

    return {}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.child")
    parser.add_argument("job", choices=["build", "train-epoch", "train-run", "baseline"])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--cache-root", type=Path)
    parser.add_argument("--galaxies", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--settings", default="{}")
    args = parser.parse_args()
    jobs = {"build": build, "train-epoch": train_epoch, "train-run": train_run, "baseline": baseline}
    answer = jobs[args.job](args)
    answer["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
