"""The training-memory estimate against a real run: ``python -m benchmarks.memory_bench``.

Each configuration trains one epoch on a seeded subset of the shared GZ2 folder in its own process
and reports that process's peak RSS beside ``estimate_training_memory`` for the same settings.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import default_data_root, run_child
from galaxy_core.base import TrainConfig
from galaxy_core.sources import DatasetFolder
from galaxy_core.training.memory import estimate_training_memory

CONFIGS = ({"batch_size": 64, "width": 32, "depth": 2, "input_size": 64},
           {"batch_size": 128, "width": 64, "depth": 2, "input_size": 96},
           {"batch_size": 32, "width": 48, "depth": 3, "input_size": 128, "crop": 128})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_bench")
    parser.add_argument("--data", type=Path, default=default_data_root() / "gz2-sdss-128")
    parser.add_argument("--galaxies", type=int, default=300)
    args = parser.parse_args()
    size = sum(1 for _ in (args.data / DatasetFolder(args.data).images.name).iterdir())
    with tempfile.TemporaryDirectory() as cache_root:
        for settings in CONFIGS:
            answer = run_child(["train-run", "--data", str(args.data), "--cache-root", cache_root,
                                "--galaxies", str(args.galaxies), "--settings", json.dumps(settings)])
            estimate = estimate_training_memory(TrainConfig(args.data, Path("."), **settings), size) / 1024**2
            print(f"{json.dumps(settings)}: peak RSS {answer['peak_rss_mb']:,.0f} MB, estimate {estimate:,.0f} MB "
                  f"({estimate / answer['peak_rss_mb']:.2f}x), {answer['seconds']:.0f} s")


if __name__ == "__main__":
    main()
