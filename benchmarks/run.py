"""Speed of each stage against a straightforward reference, measured side by side in one run.

    python benchmarks/run.py [--quick] [--only download,build,train,predict,scaling]

Prints one ``name: value`` line per figure. Ratios compare runs made in the same process, in
alternating blocks where practical, because absolute times on a shared machine drift with the
load; the load average is printed at the start and the end. Everything is written to a fresh
temporary folder (``--work-dir``) and removed afterwards; the data folder is only read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``galaxy_core`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import default_data_root, run_child  # noqa: E402
from benchmarks.download_bench import bench_download, bench_download_scaling  # noqa: E402
from benchmarks.predict_bench import bench_predict  # noqa: E402
from benchmarks.train_bench import bench_step_options, bench_train, shipped_settings, train_config  # noqa: E402
from galaxy_core.base.config import default_model_dir  # noqa: E402
from galaxy_core.sources.folder import DatasetFolder  # noqa: E402

SECTIONS = ("download", "build", "train", "predict", "scaling")


def plan(quick: bool) -> dict[str, Any]:
    """Sizes: quick mode keeps to a few minutes on two busy cores; full mode uses all galaxies."""
    if quick:
        return {"download_n": 400, "sequential_n": 20, "download_scaling": (500, 2000),
                "train_steps": 3, "train_blocks": 2, "step_repeats": 1,
                "predict_singles": 15, "predict_batch": 32, "epoch_scaling": (300, 1200)}
    return {"download_n": 1500, "sequential_n": 60, "download_scaling": (1000, 6442),
            "train_steps": 6, "train_blocks": 3, "step_repeats": 5,
            "predict_singles": 40, "predict_batch": 128, "epoch_scaling": (1000, 6442)}


def emit(values: dict[str, Any]) -> None:
    for name, value in values.items():
        if isinstance(value, float):
            value = f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"
        print(f"{name}: {value}", flush=True)


def bench_build(data_dir: Path, cache_root: Path) -> dict[str, float]:
    """A fresh cache of every galaxy, built in its own process for a clean peak-memory figure."""
    baseline = run_child(["baseline"])
    built = run_child(["build", "--data", str(data_dir), "--cache-root", str(cache_root)])
    if built["reused"]:
        raise RuntimeError(f"{cache_root} already held a cache: the build was not measured")
    return {"dataset_build_galaxies": built["galaxies"], "dataset_build_s": built["seconds"],
            "build_peak_rss_mb": built["peak_rss_mb"], "import_peak_rss_mb": baseline["peak_rss_mb"]}


def bench_epoch_scaling(data_dir: Path, cache_root: Path, settings: dict[str, Any], sizes: tuple[int, int],
                        threads: int) -> dict[str, float]:
    """A full epoch on two numbers of galaxies, each in its own process; the larger gives the
    training peak memory (every image of its cache is read once per epoch)."""
    out: dict[str, float] = {}
    for size in sizes:
        result = run_child(["train-epoch", "--data", str(data_dir), "--cache-root", str(cache_root),
                            "--galaxies", str(size), "--threads", str(threads),
                            "--settings", json.dumps(settings)])
        out[f"train_epoch_s_{size}"] = result["seconds"]
        out[f"train_epoch_views_{size}"] = result["views"]
        out["train_peak_rss_mb"] = result["peak_rss_mb"]
    small, large = sizes
    out[f"train_epoch_per_galaxy_ratio_{large}_vs_{small}"] = (
        (out[f"train_epoch_s_{large}"] / large) / (out[f"train_epoch_s_{small}"] / small))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a few minutes")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--data", type=Path, default=default_data_root() / "gz2-sdss-128",
                        help="dataset folder (catalogue and images, read only)")
    parser.add_argument("--model-dir", type=Path, default=default_model_dir(),
                        help="model whose architecture and TTA setting are timed")
    parser.add_argument("--work-dir", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for both pipelines (default 1: the machine is shared)")
    parser.add_argument("--reference-workers", type=int, default=0,
                        help="DataLoader worker processes of the JPEG reference")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if not DatasetFolder(args.data).exists():
        parser.error(f"no catalogue in {args.data}; pass --data")
    sizes = plan(args.quick)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="galaxy-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cache_root = work / "cache"
    torch.set_num_threads(args.threads)
    settings = shipped_settings(args.model_dir)
    emit({"mode": "quick" if args.quick else "full", "cpus": os.cpu_count() or 0,
          "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
          "python": platform.python_version(), "load_average_1min_start": os.getloadavg()[0],
          "model_arch": f"{settings['arch']}-w{settings['width']}-d{settings['depth']}",
          "model_input_px": settings["input_size"], "batch_size": settings["batch_size"],
          "model_precision": settings["precision"]})
    start = time.perf_counter()
    steps: dict[str, Callable[[], dict[str, float]]] = {
        "download": lambda: bench_download(args.data, work / "download", n=sizes["download_n"],
                                           sequential_n=sizes["sequential_n"]),
        "build": lambda: bench_build(args.data, cache_root),
        "train": lambda: {**bench_train(args.data, cache_root, settings, steps=sizes["train_steps"],
                                        blocks=sizes["train_blocks"],
                                        reference_workers=args.reference_workers),
                          **bench_step_options(train_config(args.data, cache_root, settings),
                                               repeats=sizes["step_repeats"], threads=(1, 2))},
        "predict": lambda: bench_predict(args.model_dir, args.data, work, settings,
                                         singles=sizes["predict_singles"], batch=sizes["predict_batch"]),
        "scaling": lambda: {**bench_download_scaling(args.data, work / "download-scaling",
                                                     sizes["download_scaling"]),
                            **bench_epoch_scaling(args.data, cache_root, settings, sizes["epoch_scaling"],
                                                  args.threads)},
    }
    try:
        for name in SECTIONS:
            if name in sections:
                section_start = time.perf_counter()
                emit(steps[name]())
                emit({f"section_{name}_s": time.perf_counter() - section_start})
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    emit({"load_average_1min_end": os.getloadavg()[0], "benchmark_wall_s": time.perf_counter() - start})
    return 0


if __name__ == "__main__":
    sys.exit(main())
