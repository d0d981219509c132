"""Scaling: memory and time of the sharded cache and of training as the data grows.

    python -m benchmarks.scaling                     # 1x and 4x the shared data, shards of 2,000
    python -m benchmarks.scaling --factors 1 2 4 --shard-size 2000 --work /tmp/galaxy-scaling

An Nx dataset repeats the shared 6,442 GZ2 galaxies N times under new ids, each image a symlink
to the shared JPEG, so no image is copied. For each size it measures, in a fresh interpreter so
the figures belong to that job alone: building the cache, and one training epoch (a small
network, as the data path and not the model is what should stay flat). Then it measures the
default network's training speed, the downloader at a polite rate against the local stand-in
server, and the resume scan, and works out what the full Galaxy Zoo 1 table would cost.

Memory is reported twice: peak RSS (what ``top`` shows, which includes pages of memory-mapped
shards that the kernel drops whenever it needs the room) and peak anonymous RSS (heap and
arrays: memory that cannot be dropped). The second is the one that must stay flat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FULL_GZ1 = 667_944
FULL_GZ2 = 240_000  # about: Hart et al. (2016) main sample


def shared_gz2() -> Path:
    root = Path(os.environ.get("GALAXY_SHARED_DATA", REPO.parent / "shared" / "data"))
    return root / "gz2-sdss-128"


class MemorySampler:
    """Peak VmRSS and RssAnon of this process, sampled every few milliseconds in a thread."""

    def __init__(self, every_s: float = 0.005):
        self.every_s = every_s
        self.peak = {"VmRSS": 0, "RssAnon": 0}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        with open("/proc/self/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(value.split()[0]))

    def _run(self) -> None:
        while not self.done.is_set():
            self._sample()
            time.sleep(self.every_s)

    def __enter__(self) -> MemorySampler:
        self._sample()
        self.start = dict(self.peak)  # after imports: the interpreter, torch, pandas
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        self._sample()

    def result(self) -> dict[str, float]:
        return {"peak_rss_mb": self.peak["VmRSS"] / 1024, "peak_anon_mb": self.peak["RssAnon"] / 1024,
                "start_anon_mb": self.start["RssAnon"] / 1024}


def anon_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


def make_scaled_dataset(source: Path, factor: int, out: Path) -> Path:
    """``factor`` copies of the shared catalogue under new ids, images as symlinks."""
    import pandas as pd

    from galaxy_core.sources.catalogue import read_catalogue, write_catalogue
    from galaxy_core.sources.folder import IMAGES_DIR, DatasetFolder

    source, target = DatasetFolder(source), DatasetFolder(out)
    if target.exists():
        return out
    base = read_catalogue(source.catalogue)
    target.images.mkdir(parents=True, exist_ok=True)
    copies = []
    for k in range(factor):
        copy = base.copy()
        copy["id"] = copy["id"] + f"~{k}"
        copy["image"] = [f"{IMAGES_DIR}/{i}.jpg" for i in copy["id"]]
        for rel, original in zip(copy["image"], base["image"]):
            (target.root / rel).symlink_to((source.root / original).resolve())
        copies.append(copy)
    write_catalogue(pd.concat(copies, ignore_index=True), target.catalogue)
    return out


def child_build(data: Path, cache: Path, shard_size: int, workers: int) -> dict[str, Any]:
    from galaxy_core.data.cache import INDEX_NAME, META_NAME, build_cache

    with MemorySampler() as memory:
        start = time.perf_counter()
        report = build_cache(data, shard_size=shard_size, cache_root=cache, workers=workers)
        seconds = time.perf_counter() - start
    meta = json.loads((report.cache_dir / META_NAME).read_text())
    shard_bytes = sum((report.cache_dir / name).stat().st_size for name in meta["shards"])
    index_bytes = (report.cache_dir / INDEX_NAME).stat().st_size
    return {"galaxies": report.galaxies, "seconds": seconds, "shards": len(meta["shards"]),
            "shard_bytes": shard_bytes, "index_bytes": index_bytes, "reused": report.reused,
            **memory.result()}


def child_train(data: Path, cache: Path, out: Path, model: str, threads: int,
                max_galaxies: int | None) -> dict[str, Any]:
    import torch

    from galaxy_core.base.config import TrainConfig
    from galaxy_core.training.train import train

    sizes = {"small": dict(input_size=32, width=8, depth=1, tta=False),
             "default": dict()}[model]
    config = TrainConfig(data_dir=data, out_dir=out, epochs=1, num_threads=threads, device="cpu",
                         cache_dir=cache, max_galaxies=max_galaxies, **sizes)
    stamps: list[tuple[float, int]] = []
    prepared: list[float] = []

    def progress(event) -> None:
        if event.phase == "train":
            stamps.append((time.perf_counter(), event.batch))
        elif event.message.startswith("training on"):
            prepared.append(anon_mb())  # index, split and views held; no batch in memory yet

    with MemorySampler() as memory:
        start = time.perf_counter()
        result = train(config, progress)
        seconds = time.perf_counter() - start
    (t0, b0), (t1, b1) = stamps[0], stamps[-1]
    return {"seconds": seconds, "views": int(sum(result.counts_after.values())),
            "galaxies": sum(result.split_sizes.values()), "batch_size": config.batch_size,
            "train_images_per_s": (b1 - b0) * config.batch_size / (t1 - t0),
            "test_accuracy": result.metrics["accuracy"], "threads": torch.get_num_threads(),
            "prepared_anon_mb": prepared[0], **memory.result()}


def run_child(*args: str) -> dict[str, Any]:
    """This module in a fresh interpreter, so peak memory is that job's alone."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.scaling", "child", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_download(source: Path, work: Path, n: int, rate: float, workers: int,
                     latency_s: float) -> dict[str, Any]:
    """The downloader at ``--max-rate`` against the stand-in server with SkyServer-like latency."""
    from galaxy_core.base.config import DownloadConfig
    from galaxy_core.sources.catalogue import read_catalogue
    from galaxy_core.sources.cutout_server import CutoutIndex, CutoutServer, ServerOptions
    from galaxy_core.sources.download import download_cutouts
    from galaxy_core.sources.folder import DatasetFolder

    catalogue = read_catalogue(DatasetFolder(source).catalogue).drop(columns="image").head(n)
    out = work / "download"
    shutil.rmtree(out, ignore_errors=True)
    with CutoutServer(CutoutIndex.from_catalogue(source), ServerOptions(latency_s=latency_s)) as server:
        config = DownloadConfig(out_dir=out, cutout_url=server.url, workers=workers,
                                max_requests_per_s=rate)
        start = time.perf_counter()
        report = download_cutouts(catalogue, config)
        seconds = time.perf_counter() - start
    jpeg_bytes = sum(p.stat().st_size for p in DatasetFolder(out).images.glob("*.jpg"))
    return {"images": report.downloaded, "seconds": seconds, "rate": rate, "workers": workers,
            "latency_s": latency_s, "seconds_per_image": seconds / max(report.downloaded, 1),
            "jpeg_bytes_per_image": jpeg_bytes / max(report.downloaded, 1)}


def measure_resume_scan(source: Path) -> dict[str, Any]:
    """What a resumed download spends checking the files it already has (warm page cache)."""
    from galaxy_core.sources.download import is_complete_jpeg
    from galaxy_core.sources.folder import DatasetFolder

    paths = sorted(DatasetFolder(source).images.glob("*.jpg"))
    start = time.perf_counter()
    whole = sum(is_complete_jpeg(p) for p in paths)
    seconds = time.perf_counter() - start
    return {"files": len(paths), "whole": whole, "seconds_per_file": seconds / len(paths)}


def memory_cell(r: dict[str, float]) -> str:
    held = f" {r['prepared_anon_mb']:.0f}" if "prepared_anon_mb" in r else ""
    return f"{r['peak_rss_mb']:.0f} / {r['peak_anon_mb']:.0f} ({r['start_anon_mb']:.0f}{held})"


def estimate(per: dict[str, float], galaxies: int) -> list[str]:
    """The arithmetic from measured per-image costs to ``galaxies``, line by line."""
    lines = []

    def line(what: str, unit_value: float, unit: str, scale: float, result_unit: str) -> None:
        lines.append(f"  {what:<34} {galaxies:,} x {unit_value:.4g} {unit} = "
                     f"{galaxies * unit_value / scale:,.1f} {result_unit}")

    line("download at the measured rate", per["download_s"], "s", 3600, "h")
    line("JPEG files on disk", per["jpeg_bytes"], "B", 1e9, "GB")
    line("resume scan of present files", per["scan_s"], "s", 60, "min")
    line("cache build (decode + write)", per["build_s"], "s", 60, "min")
    line("packed cache on disk", per["cache_bytes"], "B", 1e9, "GB")
    line("cache index (index.csv)", per["index_bytes"], "B", 1e6, "MB")
    line(f"one epoch ({per['views_per_galaxy']:.2f} views/galaxy)", per["train_s"], "s", 3600, "h")
    for phase, held in per.get("memory", {}).items():
        total = held["mb"] + (galaxies - held["galaxies"]) * held["kb"] / 1024 + held["transient_mb"]
        lines.append(f"  {'peak anonymous memory, ' + phase:<34} {held['mb']:.0f} MB + ({galaxies:,} - "
                     f"{held['galaxies']:,}) x {held['kb']:.2f} KB + {held['transient_mb']:.0f} MB = "
                     f"{total:,.0f} MB")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=shared_gz2(), help="the shared gz2-sdss-128 folder")
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--shard-size", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="decoding threads for the cache build")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    parser.add_argument("--speed-galaxies", type=int, default=2000,
                        help="galaxies in the default-network speed run (a seeded subset of 1x)")
    parser.add_argument("--download-images", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="--max-rate of the download run")
    parser.add_argument("--latency", type=float, default=0.1, help="stand-in server seconds per request")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    from galaxy_core.sources.folder import DatasetFolder

    if not DatasetFolder(args.data).exists():
        print(f"no catalogue in {args.data}: point --data at the gz2-sdss-128 folder", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="galaxy-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"scratch folder {work}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
          file=sys.stderr)

    results: dict[str, Any] = {"factors": {}, "shard_size": args.shard_size}
    for factor in args.factors:
        data = make_scaled_dataset(args.data, factor, work / f"gz2x{factor}")
        cache = work / f"cache-x{factor}"
        shutil.rmtree(cache, ignore_errors=True)
        print(f"{factor}x: building the cache", file=sys.stderr)
        build = run_child("build", str(data), str(cache), str(args.shard_size), str(args.workers))
        print(f"{factor}x: one training epoch (small network)", file=sys.stderr)
        shutil.rmtree(work / f"model-x{factor}", ignore_errors=True)
        epoch = run_child("train", str(data), str(cache), str(work / f"model-x{factor}"), "small",
                          str(args.threads), "0")
        results["factors"][factor] = {"build": build, "epoch": epoch}

    print("default network speed", file=sys.stderr)
    shutil.rmtree(work / "model-speed", ignore_errors=True)
    speed = run_child("train", str(make_scaled_dataset(args.data, 1, work / "gz2x1")), str(work / "cache-x1"),
                      str(work / "model-speed"), "default", str(args.threads), str(args.speed_galaxies))
    print(f"download of {args.download_images} images at --max-rate {args.rate:g}", file=sys.stderr)
    download = measure_download(args.data, work, args.download_images, args.rate, 8, args.latency)
    scan = measure_resume_scan(args.data)
    results.update(speed=speed, download=download, resume_scan=scan, load_average=os.getloadavg()[0])

    print(f"\nshards of {args.shard_size:,} galaxies; times on {os.cpu_count()} CPUs "
          f"(load average {results['load_average']:.1f} at the end)")
    print("memory in MB: peak RSS / peak anonymous RSS (anonymous RSS after imports; for training, "
          "also once the data is prepared)")
    print(f"{'data':>5} {'galaxies':>9} {'shards':>6} {'build s':>8} {'ms/img':>7} {'build memory':>18} | "
          f"{'views':>6} {'epoch s':>8} {'img/s':>6} {'epoch memory':>22}")
    for factor, r in results["factors"].items():
        b, e = r["build"], r["epoch"]
        print(f"{factor:>4}x {b['galaxies']:>9,} {b['shards']:>6} {b['seconds']:>8.1f} "
              f"{1000 * b['seconds'] / b['galaxies']:>7.3f} {memory_cell(b):>18} | "
              f"{e['views']:>6,} {e['seconds']:>8.1f} {e['train_images_per_s']:>6.0f} {memory_cell(e):>22}")
    # Per-image costs from the largest dataset measured: nearest to the full table.
    largest = results["factors"][max(args.factors)]
    build = largest["build"]
    views_per_galaxy = largest["epoch"]["views"] / largest["epoch"]["galaxies"]
    per = {"download_s": download["seconds_per_image"], "jpeg_bytes": download["jpeg_bytes_per_image"],
           "scan_s": scan["seconds_per_file"], "build_s": build["seconds"] / build["galaxies"],
           "cache_bytes": build["shard_bytes"] / build["galaxies"],
           "index_bytes": build["index_bytes"] / build["galaxies"],
           # An epoch is the balanced training views: the 80 % train split, rotated and culled
           # towards the median class, measured here as views per galaxy.
           "views_per_galaxy": views_per_galaxy,
           "train_s": views_per_galaxy / speed["train_images_per_s"]}
    results["per_image"] = per
    print(f"\ndefault network ({speed['threads']} threads, batch {speed['batch_size']}): "
          f"{speed['train_images_per_s']:.0f} training images/s")
    print(f"download: {download['images']} images in {download['seconds']:.1f} s at --max-rate "
          f"{download['rate']:g}, --workers {download['workers']}, server latency {download['latency_s']} s "
          f"= {download['seconds_per_image']:.4f} s/image, {download['jpeg_bytes_per_image']:.0f} B/JPEG")
    print(f"resume scan: {scan['files']:,} files, {1e6 * scan['seconds_per_file']:.0f} us/file")
    # What grows with the data is the metadata held per galaxy: for the build, its peak; for
    # training, the memory once the index, split and views are loaded, before any batch. The
    # rest of a training peak is batch buffers of fixed size, taken at the largest dataset.
    small = results["factors"][min(args.factors)]
    held_at = {"build": "peak_anon_mb", "training": "prepared_anon_mb"}
    per["memory"] = {}
    for phase, key in held_at.items():
        name = "build" if phase == "build" else "epoch"
        extra = largest[name]["galaxies"] - small[name]["galaxies"]
        if extra > 0:
            kb = 1024 * (largest[name][key] - small[name][key]) / extra
            transient = largest[name]["peak_anon_mb"] - largest[name][key]
            per["memory"][phase] = {"mb": small[name][key], "galaxies": small[name]["galaxies"],
                                    "kb": kb, "transient_mb": transient}
            print(f"{phase}: memory held grows {kb:.2f} KB per extra galaxy (a cached image is "
                  f"{build['shard_bytes'] / build['galaxies'] / 1024:.0f} KB); batch buffers add "
                  f"{transient:.0f} MB at {largest[name]['galaxies']:,} galaxies")
    for name, galaxies in (("Galaxy Zoo 1", FULL_GZ1), ("Galaxy Zoo 2 (about)", FULL_GZ2)):
        print(f"\n{name}, {galaxies:,} galaxies, from the per-image figures above:")
        print("\n".join(estimate(per, galaxies)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def child_main(argv: list[str]) -> int:
    kind = argv[0]
    if kind == "build":
        data, cache, shard_size, workers = argv[1:5]
        out = child_build(Path(data), Path(cache), int(shard_size), int(workers))
    elif kind == "train":
        data, cache, model_dir, model, threads, galaxies = argv[1:7]
        out = child_train(Path(data), Path(cache), Path(model_dir), model, int(threads),
                          int(galaxies) or None)
    else:
        raise SystemExit(f"unknown child job {kind}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        sys.exit(child_main(sys.argv[2:]))
    sys.exit(main())
