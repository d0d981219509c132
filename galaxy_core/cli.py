"""Command line: ``python -m galaxy_core {download,build,train,evaluate,predict,serve-cutouts}``.

User errors (bad files, bad settings, unreachable servers) print one line and exit non-zero;
there is never a traceback for them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from .config import (
    ARCHITECTURES,
    BALANCE_TARGETS,
    CLASSES,
    DEFAULT_CATALOGUE_URL,
    DEFAULT_CUTOUT_URL,
    PRECISIONS,
    DownloadConfig,
    GalaxyError,
    PredictConfig,
    TrainConfig,
    default_model_dir,
)

EXIT_USER_ERROR = 2
EXIT_PARTIAL_FAILURE = 1


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="fetch a Galaxy Zoo catalogue and its SDSS cutouts")
    p.add_argument("--catalogue", default=DEFAULT_CATALOGUE_URL, help="path or http(s) URL")
    p.add_argument("--format", choices=["auto", "gz1", "gz2"], default="auto")
    p.add_argument("--out", required=True, type=Path, help="dataset folder to create or resume")
    p.add_argument("--limit", type=int, help="only the first N galaxies of the catalogue")
    p.add_argument("--cutout-url", default=DEFAULT_CUTOUT_URL)
    p.add_argument("--workers", type=int, default=16, help="requests in flight")
    p.add_argument("--size", type=int, default=128, help="cutout width and height in pixels")
    p.add_argument("--scale", type=float, default=0.2, help="arcsec per pixel")
    p.add_argument("--retries", type=int, default=4)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--max-rate", type=float, help="at most this many requests per second")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a CNN on a dataset folder and save a model bundle")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="model folder (resumes if it has a checkpoint)")
    defaults = TrainConfig(Path("."), Path("."))
    for name, kind, text in [
        ("epochs", int, "passes over the training views"), ("batch-size", int, "images per step"),
        ("lr", float, "peak learning rate (one-cycle)"), ("weight-decay", float, "AdamW decay"),
        ("label-smoothing", float, ""), ("aux-weight", float, "weight of the vote-fraction regression loss"),
        ("image-size", int, "network input in pixels"),
        ("crop", int, "centre crop of the 128-px cutout, before resizing"),
        ("width", int, "channels of the first stage"), ("depth", int, "residual blocks per stage"),
        ("seed", int, "seeds the split, balancing and training"),
        ("val-fraction", float, ""), ("test-fraction", float, ""),
        ("threads", int, "CPU threads (default: all cores)"),
        ("max-galaxies", int, "use a seeded random subset of this many galaxies"),
    ]:
        attr = {"threads": "num_threads"}.get(name, name.replace("-", "_"))
        p.add_argument(f"--{name}", type=kind, default=getattr(defaults, attr), dest=attr, help=text)
    p.add_argument("--arch", default=defaults.arch, choices=list(ARCHITECTURES))
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default=defaults.precision, choices=list(PRECISIONS),
                   help="bf16: bfloat16 autocast, about twice as fast on CPUs and GPUs with native "
                        "bfloat16 (slower where it is emulated)")
    p.add_argument("--balance-target", default=defaults.balance_target, choices=list(BALANCE_TARGETS),
                   help="views per class when balancing: the median class count (culls the largest "
                        "class) or the largest (culls nothing)")
    for flag, attr, text in [("balance", "balance", "rotate/cull to equal class counts"),
                             ("soft-labels", "soft_labels", "train on vote fractions"),
                             ("augment", "augment", "random rotations and flips"),
                             ("jitter", "jitter", "random any-angle rotation, zoom and shift"),
                             ("tta", "tta", "average the 8 symmetries at test time")]:
        p.add_argument(f"--{flag}", dest=attr, action=argparse.BooleanOptionalAction,
                       default=getattr(defaults, attr), help=text)
    p.add_argument("--restart", action="store_true", help="discard an existing checkpoint in --out")
    _add_cache_dir(p)


def _add_cache_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where packed image caches go (default: $GALAXY_CACHE_DIR or ~/.cache)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m galaxy_core",
                                     description="Galaxy Zoo morphology: Spiral / Elliptical / Uncertain")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_download(sub)
    p = sub.add_parser("build", help="decode a dataset folder into the packed cache and summarise it")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    _add_cache_dir(p)
    _add_train(sub)
    p = sub.add_parser("evaluate", help="metrics of a model on a labelled dataset folder")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--json", type=Path, help="also write all metrics to this JSON file")
    p.add_argument("--no-tta", action="store_true", help="single view instead of the card's setting")
    _add_cache_dir(p)
    p = sub.add_parser("predict", help="classify image files or folders of images")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--out", type=Path, help="CSV file (default: standard output)")
    p = sub.add_parser("serve-cutouts", help="serve a folder of cutouts like SkyServer ImgCutout")
    p.add_argument("--data", required=True, type=Path, help="folder with catalogue.csv and images/")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    return parser


def _download(args: argparse.Namespace) -> int:
    from .catalogue import read_catalogue
    from .download import download_cutouts

    config = DownloadConfig(out_dir=args.out, cutout_url=args.cutout_url, size=args.size, scale=args.scale,
                            workers=args.workers, retries=args.retries, timeout_s=args.timeout,
                            max_requests_per_s=args.max_rate, limit=args.limit)
    config.validate()
    print(f"reading catalogue {args.catalogue}", file=sys.stderr)
    catalogue = read_catalogue(args.catalogue, args.format)
    bar = tqdm(total=min(len(catalogue), args.limit or len(catalogue)), unit="img", desc="download")

    def progress(event) -> None:
        bar.total = event.total
        bar.n = event.done
        bar.set_postfix(failed=event.failed, skipped=event.skipped, refresh=False)
        bar.refresh()

    try:
        report = download_cutouts(catalogue, config, progress)
    finally:
        bar.close()
    print(f"{report.total} galaxies: {report.downloaded} downloaded, {report.skipped} already present, "
          f"{len(report.failed)} failed, in {report.elapsed_s:.1f} s -> {args.out}", file=sys.stderr)
    for galaxy, reason in list(report.failed.items())[:10]:
        print(f"  failed {galaxy}: {reason}", file=sys.stderr)
    if report.failed:
        print("run the same command again to retry the failures", file=sys.stderr)
        return EXIT_PARTIAL_FAILURE
    return 0


def _build(args: argparse.Namespace) -> int:
    from .config import DatasetConfig
    from .dataset import build_cache, dataset_summary

    bar = None  # opened at the first event, so an error is not printed on the end of a bar

    def progress(event) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=event.total, unit="img", desc="build cache")
        bar.total, bar.n = event.total, event.done
        bar.refresh()

    try:
        report = build_cache(args.data, progress=progress, cache_root=args.cache_dir)
    finally:
        if bar is not None:
            bar.close()
    summary = dataset_summary(args.data, DatasetConfig(seed=args.seed), cache_root=args.cache_dir)
    summary["undecodable"] = report.failed
    print(json.dumps(summary, indent=1))
    return 0


def _train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .checkpoint import discard_checkpoint
    from .train import check_data, train

    fields = {k: getattr(args, k) for k in vars(TrainConfig(Path("."), Path("."))) if hasattr(args, k)}
    config = TrainConfig(**{**fields, "data_dir": args.data, "out_dir": args.out})
    config.validate()
    if args.restart and os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 owns --out
        check_data(config)  # settings that cannot train must not cost the old checkpoint
        discard_checkpoint(args.out)
    bar = None

    def progress(event) -> None:
        nonlocal bar
        if event.phase == "train":
            if bar is None or bar.total != event.batches or bar.desc != f"epoch {event.epoch}/{event.epochs}":
                if bar is not None:
                    bar.close()
                bar = tqdm(total=event.batches, desc=f"epoch {event.epoch}/{event.epochs}", unit="batch",
                           leave=False)
            bar.n = event.batch
            bar.set_postfix(loss=f"{event.loss:.3f}", acc=f"{event.accuracy:.3f}",
                            eta=f"{(event.eta_s or 0) / 60:.1f}min", refresh=False)
            bar.refresh()
        elif event.phase == "epoch":
            h = event.history[-1]
            tqdm.write(f"epoch {h['epoch']:3d}/{event.epochs}  train loss {h['train_loss']:.3f} "
                       f"acc {h['train_accuracy']:.3f}  val loss {h['val_loss']:.3f} "
                       f"acc {h['val_accuracy']:.3f}  {h['seconds']:.0f}s", file=sys.stderr)
        else:
            print(event.message, file=sys.stderr)

    command = "python -m galaxy_core " + " ".join(shlex.quote(a) for a in argv)
    try:
        result = train(config, progress, command=command)
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to resume from the last checkpoint in {args.out}",
              file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    if result.metrics is None:
        return 0
    print(f"class counts before balancing {result.counts_before}, after {result.counts_after}",
          file=sys.stderr)
    _print_metrics(result.metrics)
    print(f"model saved to {args.out}", file=sys.stderr)
    return 0


def _print_metrics(metrics: dict) -> None:
    svse = metrics.get("spiral_vs_elliptical_accuracy")
    lines = [f"galaxies evaluated     {metrics['n']} ({metrics.get('split', '')})",
             f"accuracy               {metrics['accuracy']:.4f}",
             f"balanced accuracy      {metrics['balanced_accuracy']:.4f}",
             f"spiral vs elliptical   {svse:.4f}" if svse is not None else "spiral vs elliptical   n/a",
             f"calibration error ECE  {metrics['ece']:.4f}"]
    sym = metrics.get("symmetry_agreement")
    if sym:
        lines.append(f"symmetry agreement     rot90 {sym['rot90']:.4f}  mirror {sym['mirror']:.4f}  "
                     f"all 8 {sym['all_8']:.4f}  (one view)")
    turned = metrics.get("prediction_symmetry_agreement")
    if turned:
        lines.append(f"answer unchanged       rot90 {turned['rot90']:.4f}  mirror {turned['mirror']:.4f}  "
                     f"(turned or mirrored cutout, {'8-view average' if metrics.get('tta', True) else 'one view'})")
    lines.append("per class              precision recall  f1     support")
    for name, s in metrics["per_class"].items():
        lines.append(f"  {name:<20} {s['precision']:.3f}     {s['recall']:.3f}   {s['f1']:.3f}  {s['support']}")
    lines.append("confusion (rows true, columns predicted: " + ", ".join(CLASSES) + ")")
    lines += ["  " + " ".join(f"{v:6d}" for v in row) for row in metrics["confusion"]]
    print("\n".join(lines))


def _evaluate(args: argparse.Namespace) -> int:
    from .atomic import write_text_atomic
    from .evaluate import evaluate_bundle

    metrics = evaluate_bundle(args.model or default_model_dir(), args.data,
                              tta=False if args.no_tta else None, cache_root=args.cache_dir)
    _print_metrics(metrics)
    if args.json:
        write_text_atomic(args.json, json.dumps(metrics, indent=1))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .predict import Classifier, expand_inputs, write_predictions_csv

    classifier = Classifier.load(PredictConfig(model_dir=args.model or default_model_dir()))
    paths = expand_inputs(args.inputs)
    if not paths:
        raise GalaxyError("no image files found in the given inputs")
    predictions = classifier.predict(paths, names=[str(p) for p in paths])
    write_predictions_csv(predictions, args.out)
    failed = [p for p in predictions if p.error]
    for p in failed:
        print(f"error: {p.name}: {p.error}", file=sys.stderr)
    if args.out:
        print(f"{len(predictions) - len(failed)} classified, {len(failed)} failed -> {args.out}",
              file=sys.stderr)
    return EXIT_PARTIAL_FAILURE if failed else 0


def _serve(args: argparse.Namespace) -> int:
    from .cutout_server import CutoutIndex, CutoutServer, ServerOptions

    try:
        index = CutoutIndex.from_catalogue(args.data)
    except (ValueError, KeyError) as exc:  # pandas' complaints about a catalogue without image/ra/dec
        raise GalaxyError(f"{args.data}/catalogue.csv cannot be served: {str(exc).splitlines()[0]}") from None
    with CutoutServer(index, ServerOptions(latency_s=args.latency), port=args.port) as server:
        print(f"serving {len(index.by_key)} cutouts at {server.url}  (Ctrl-C to stop)", file=sys.stderr)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    handlers = {"download": _download, "build": _build, "evaluate": _evaluate, "predict": _predict,
                "serve-cutouts": _serve}
    try:
        if args.command == "train":
            return _train(args, argv)
        return handlers[args.command](args)
    except GalaxyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USER_ERROR
