"""Command line: ``python -m galaxy_core {download,build,train,evaluate,predict,serve-cutouts}``.

Every default comes from the config dataclasses. User errors (bad files, bad settings,
unreachable servers) print one line and exit non-zero; there is never a traceback for them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from galaxy_core.base.config import (
    ARCHITECTURES,
    BALANCE_CHOICES,
    DEFAULT_CATALOGUE_URL,
    DEVICES,
    LABEL_RULES,
    MODEL_DIR_ENV,
    PRECISIONS,
    TRAIN_SETTINGS,
    DownloadConfig,
    EvaluateConfig,
    GalaxyError,
    PredictConfig,
    SplitConfig,
    TrainConfig,
    default_model_dir,
)

EXIT_USER_ERROR = 2
MODEL_HELP = f"model folder (default: the shipped model, {PredictConfig().model_dir})"
EXIT_PARTIAL_FAILURE = 1
LABELS_HELP = TRAIN_SETTINGS["label_rule"].help


def _add_labels(p: argparse.ArgumentParser, default: str | None, text: str = LABELS_HELP) -> None:
    p.add_argument("--labels", dest="label_rule", choices=list(LABEL_RULES), default=default, help=text)


def _add_download(sub: argparse._SubParsersAction) -> None:
    d = DownloadConfig(out_dir=Path("."))  # its defaults are the CLI's
    p = sub.add_parser("download", help="fetch a Galaxy Zoo catalogue and its SDSS cutouts")
    p.add_argument("--catalogue", default=DEFAULT_CATALOGUE_URL, help="path or http(s) URL")
    p.add_argument("--format", choices=["auto", "gz1", "gz2"], default="auto")
    p.add_argument("--out", required=True, type=Path, help="dataset folder to create or resume")
    p.add_argument("--limit", type=int, help="only the first N galaxies of the catalogue")
    p.add_argument("--cutout-url", default=d.cutout_url)
    p.add_argument("--workers", type=int, default=d.workers, help="requests in flight")
    p.add_argument("--size", type=int, default=d.cutout_size, help="cutout width and height in pixels")
    p.add_argument("--scale", type=float, default=d.pixel_scale, help="arcsec per pixel")
    p.add_argument("--retries", type=int, default=d.retries)
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per request")
    p.add_argument("--max-rate", type=float, help="at most this many requests per second")
    _add_labels(p, TrainConfig.label_rule, "the label rule of the class counts shown (the catalogue keeps both)")


TRAIN_FLAGS = [  # flag, TrainConfig field, type (help and range: TRAIN_SETTINGS)
    ("epochs", "epochs", int), ("batch-size", "batch_size", int), ("lr", "lr", float),
    ("weight-decay", "weight_decay", float), ("label-smoothing", "label_smoothing", float),
    ("aux-weight", "aux_weight", float), ("tree-weight", "tree_weight", float),
    ("greyscale", "greyscale", float), ("colour-jitter", "colour_jitter", float), ("low-res", "low_res", float),
    ("max-zoom", "max_zoom", float),
    ("image-size", "input_size", int), ("crop", "crop", int),
    ("width", "width", int), ("depth", "depth", int), ("seed", "seed", int),
    ("split-seed", "split_seed", int), ("val-fraction", "val_fraction", float),
    ("test-fraction", "test_fraction", float), ("threads", "num_threads", int), ("max-galaxies", "max_galaxies", int),
]
TRAIN_SWITCHES = ["soft_labels", "augment", "jitter", "tta"]  # --x / --no-x


def _add_train(sub: argparse._SubParsersAction) -> None:
    d = TrainConfig(data_dir=Path("."), out_dir=Path("."))  # its defaults are the CLI's
    p = sub.add_parser("train", help="train a CNN on a dataset folder and save a model bundle")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="model folder (resumes if it has a checkpoint)")
    for flag, attr, kind in TRAIN_FLAGS:
        aliases = [f"--{attr.replace('_', '-')}"] if attr.replace("_", "-") != flag else []
        p.add_argument(f"--{flag}", *aliases, type=kind, default=getattr(d, attr), dest=attr,
                       help=TRAIN_SETTINGS[attr].help)
    p.add_argument("--arch", default=d.arch, choices=list(ARCHITECTURES))
    p.add_argument("--device", default=d.device, choices=list(DEVICES))
    p.add_argument("--precision", default=d.precision, choices=list(PRECISIONS),
                   help=TRAIN_SETTINGS["precision"].help)
    p.add_argument("--balance", dest="balance_on", action=argparse.BooleanOptionalAction,
                   default=d.balance != "off", help="rotate/cull to equal class counts")
    p.add_argument("--balance-target", default=d.balance if d.balance != "off" else "median",
                   choices=[c for c in BALANCE_CHOICES if c != "off"],
                   help="views per class when balancing: the median class count (culls the largest "
                        "class) or the largest (culls nothing)")
    for attr in TRAIN_SWITCHES:
        p.add_argument(f"--{attr.replace('_', '-')}", dest=attr, action=argparse.BooleanOptionalAction,
                       default=getattr(d, attr), help=TRAIN_SETTINGS[attr].help)
    p.add_argument("--framing", type=float, default=d.framing, metavar="R90_FRACTION",
                   help=TRAIN_SETTINGS["framing"].help)
    p.add_argument("--no-framing", dest="framing", action="store_const", const=None,
                   help="train on the cutouts as downloaded")
    p.add_argument("--restart", action="store_true", help="discard an existing checkpoint in --out")
    p.add_argument("--init-from", dest="init_from", type=Path, default=None, metavar="MODEL_DIR",
                   help="start from a saved model's weights (same network; new heads start fresh); its "
                        "training galaxies must not be this run's validation or test galaxies")
    _add_labels(p, d.label_rule)
    _add_cache_dir(p)


def _add_cache_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where packed image caches go (default: $GALAXY_CACHE_DIR or ~/.cache)")


def program_name(argv0: str | None = None) -> str:
    """The command as it was called: ``galaxy-classification`` when installed, ``python -m
    galaxy_core`` from a checkout."""
    name = Path(sys.argv[0] if argv0 is None else argv0).name
    return "python -m galaxy_core" if name in ("__main__.py", "", "-c") else name


def model_dir_of(args: argparse.Namespace) -> Path:
    """``--model``, else the default model, which must be there: the error says how to name one."""
    from galaxy_core.model.bundle import CARD_NAME

    if args.model is not None:
        return args.model
    default = default_model_dir()
    if not (default / CARD_NAME).is_file():
        raise GalaxyError(f"no model found at {default}: pass --model MODEL_FOLDER, or set {MODEL_DIR_ENV} "
                          "to a model folder (one with card.json and model.safetensors)")
    return default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program_name(),
                                     description="Galaxy Zoo morphology: Spiral / Elliptical / Uncertain")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_download(sub)
    p = sub.add_parser("build", help="decode a dataset folder into the packed cache and summarise it")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--seed", type=int, default=SplitConfig().seed)
    p.add_argument("--balance", choices=list(BALANCE_CHOICES), default=TrainConfig.balance,
                   help="which balancing the summary's training views use")
    _add_labels(p, TrainConfig.label_rule)
    _add_cache_dir(p)
    _add_train(sub)
    p = sub.add_parser("evaluate", help="metrics of a model on a labelled dataset folder (a Galaxy Zoo "
                                        "catalogue or a plain image,label one)")
    p.add_argument("--model", type=Path, default=None, help=MODEL_HELP)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--json", type=Path, help="also write all metrics to this JSON file")
    p.add_argument("--no-tta", action="store_true", help="single view instead of the card's setting")
    _add_labels(p, None, "score against this label rule (default: the one the model was trained on)")
    _add_cache_dir(p)
    p = sub.add_parser("predict", help="classify image files or folders of images")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--model", type=Path, default=None, help=MODEL_HELP)
    p.add_argument("--out", type=Path, help="CSV file (default: standard output)")
    p.add_argument("--saliency", type=Path, metavar="DIR",
                   help="also write each image's Grad-CAM heat map (for the answer shown, over its 8 views) "
                        "as DIR/NAME.png, and its peak in the image's pixels as saliency_peak_x, _y")
    p = sub.add_parser("serve-cutouts", help="serve a folder of cutouts like SkyServer ImgCutout")
    p.add_argument("--data", required=True, type=Path, help="dataset folder (catalogue and images)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    return parser


def _download(args: argparse.Namespace) -> int:
    from galaxy_core.sources.catalogue import class_counts, has_labels, label_column, read_catalogue
    from galaxy_core.sources.download import download_cutouts

    from .terminal import CountBar

    config = DownloadConfig(out_dir=args.out, cutout_url=args.cutout_url, cutout_size=args.size,
                            pixel_scale=args.scale, workers=args.workers, retries=args.retries,
                            timeout_s=args.timeout, max_requests_per_s=args.max_rate, limit=args.limit)
    print(f"reading catalogue {args.catalogue}", file=sys.stderr)
    catalogue = read_catalogue(args.catalogue, args.format, timeout_s=args.timeout)
    bar = CountBar("download")
    try:
        report = download_cutouts(catalogue, config, bar.download)
    finally:
        bar.close()
    print(f"{report.total} galaxies: {report.downloaded} downloaded, {report.skipped} already present, "
          f"{len(report.failed)} failed, in {report.elapsed_s:.1f} s -> {args.out}", file=sys.stderr)
    if has_labels(catalogue, args.label_rule):
        counts = class_counts(catalogue[label_column(args.label_rule)].iloc[:report.total])
        print(f"classes ({args.label_rule} labels): {counts}", file=sys.stderr)
    for galaxy, reason in list(report.failed.items())[:10]:
        print(f"  failed {galaxy}: {reason}", file=sys.stderr)
    if report.failed:
        print("run the same command again to retry the failures", file=sys.stderr)
        return EXIT_PARTIAL_FAILURE
    return 0


def _build(args: argparse.Namespace) -> int:
    from galaxy_core.data.cache import build_cache
    from galaxy_core.data.dataset import dataset_summary

    from .terminal import CountBar

    bar = CountBar("build cache")
    try:
        report = build_cache(args.data, progress=bar.build, cache_root=args.cache_dir)
    finally:
        bar.close()
    summary = dataset_summary(args.data, SplitConfig(seed=args.seed), args.balance, cache_root=args.cache_dir,
                              label_rule=args.label_rule)
    summary["undecodable"] = report.failed
    print(json.dumps(summary, indent=1))
    return 0


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["balance"] = args.balance_target if args.balance_on else "off"
    return TrainConfig(**{**values, "data_dir": args.data, "out_dir": args.out, "cache_dir": args.cache_dir})


def _train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from galaxy_core.training.train import train

    from .terminal import TrainingDisplay, busy_machine_hint, metrics_text

    config = train_config_from_args(args)
    first_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, the one that speaks and owns --out
    hint = busy_machine_hint(os.getloadavg()[0], os.cpu_count() or 1, config.num_threads)
    if hint and first_rank:
        print(hint, file=sys.stderr)
    display = TrainingDisplay()
    command = "python -m galaxy_core " + " ".join(shlex.quote(a) for a in argv)
    # Under torchrun only rank 0 owns --out, so only it may discard the checkpoint.
    restart = args.restart and first_rank
    try:
        result = train(config, display, command=command, restart=restart)
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to resume from the last checkpoint in {args.out}",
              file=sys.stderr)
        return 130
    finally:
        display.close()
    if result.metrics is None:
        return 0
    print(f"class counts before balancing {result.counts_before}, after {result.counts_after}",
          file=sys.stderr)
    print(metrics_text(result.metrics))
    print(f"model saved to {args.out}", file=sys.stderr)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from galaxy_core.base.atomic import write_text_atomic
    from galaxy_core.serving.evaluate import evaluate_bundle

    from .terminal import CountBar, metrics_text

    config = EvaluateConfig(data_dir=args.data, model_dir=model_dir_of(args),
                            tta=False if args.no_tta else None, label_rule=args.label_rule, cache_dir=args.cache_dir)
    bar = CountBar("evaluate")
    try:
        result = evaluate_bundle(config, bar.evaluate)
    finally:
        bar.close()
    print(f"{config.model_dir}: {result.comparison()}")
    print(metrics_text(result.metrics))
    if args.json:
        write_text_atomic(args.json, json.dumps(result.to_dict(), indent=1))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from galaxy_core.serving.predict import Classifier, expand_inputs, write_predictions_csv

    from .terminal import CountBar

    config = PredictConfig(model_dir=model_dir_of(args))
    classifier = Classifier.load(config)
    paths = expand_inputs(args.inputs)
    if not paths:
        raise GalaxyError("no image files found in the given inputs")
    bar = CountBar("predict")
    try:
        predictions = classifier.predict(paths, names=[str(p) for p in paths], progress=bar.count,
                                         saliency_dir=args.saliency)
    finally:
        bar.close()
    write_predictions_csv(predictions, args.out)
    failed = [p for p in predictions if p.error]
    for p in failed:
        print(f"error: {p.name}: {p.error}", file=sys.stderr)
    if args.out:
        classified = [p for p in predictions if p.classified]
        unclassified = len(predictions) - len(failed) - len(classified)
        warned = sum(p.warning is not None for p in classified)
        apart = f", {unclassified} not classified (no galaxy found)" if unclassified else ""
        print(f"{len(classified)} classified, {len(failed)} failed{apart} -> {args.out} ({warned} with a "
              f"warning; the model answers {classifier.card.question})", file=sys.stderr)
    return EXIT_PARTIAL_FAILURE if failed else 0


def _serve(args: argparse.Namespace) -> int:
    from galaxy_core.sources.cutout_server import CutoutIndex, CutoutServer, ServerOptions

    try:
        index = CutoutIndex.from_catalogue(args.data)
    except (ValueError, KeyError) as exc:  # pandas' complaints about a catalogue without image/ra/dec
        raise GalaxyError(f"the catalogue in {args.data} cannot be served: {str(exc).splitlines()[0]}") from None
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
