"""Prediction latency and throughput through ``Classifier.predict``, preprocessing included."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from galaxy_core.base.config import CLASSES, PredictConfig
from galaxy_core.data.geometry import InputGeometry
from galaxy_core.data.normalise import ChannelStats
from galaxy_core.model.bundle import CARD_NAME, save_bundle
from galaxy_core.model.card import ModelCard
from galaxy_core.model.network import Architecture, build_model
from galaxy_core.serving import inference
from galaxy_core.serving.predict import Classifier
from galaxy_core.sources.folder import DatasetFolder
from galaxy_core.sources.images import load_image


def timing_bundle(model_dir: Path, work_dir: Path, settings: dict[str, Any]) -> tuple[Path, bool]:
    """The shipped model when there is one; else untrained weights of the same shape.

    Speed does not depend on the weights' values, so a freshly initialised network of the shipped
    architecture times the same as a trained one. Returns (folder, is_shipped).
    """
    if (Path(model_dir) / CARD_NAME).is_file():
        return Path(model_dir), True
    torch.manual_seed(settings["seed"])
    arch = Architecture(settings["arch"], settings["width"], settings["depth"],
                        2 if settings.get("aux_weight", 0) > 0 else 0)
    model = build_model(arch)
    card = ModelCard(architecture=arch, input=InputGeometry(crop=settings["crop"], input_size=settings["input_size"]),
                     normalisation=ChannelStats((0.1, 0.1, 0.1), (0.15, 0.15, 0.15)), tta=True,
                     precision=settings.get("precision", "fp32"))
    out = Path(work_dir) / "timing-model"
    save_bundle(out, model.eval(), card)
    return out, False


@contextmanager
def views_per_pass(views: int | None) -> Iterator[None]:
    """Cap CPU forward passes at ``views`` views (None: as shipped)."""
    shipped = inference.CPU_VIEWS_PER_PASS
    inference.CPU_VIEWS_PER_PASS = shipped if views is None else views
    try:
        yield
    finally:
        inference.CPU_VIEWS_PER_PASS = shipped


def sample_images(data_dir: Path, n: int) -> list[Image.Image]:
    """Decoded cutouts, so the timings below start from an image in memory, as in the app."""
    folder = DatasetFolder(data_dir)
    frame = pd.read_csv(folder.catalogue, usecols=["image"], nrows=n)
    return [load_image(folder.root / rel) for rel in frame["image"]]


def bench_predict(model_dir: Path, data_dir: Path, work_dir: Path, settings: dict[str, Any], *,
                  singles: int, batch: int) -> dict[str, float]:
    """Median ms for one image and images/s for a batch, with the card's TTA and without."""
    folder, shipped = timing_bundle(model_dir, work_dir, settings)
    classifiers = {"": Classifier.load(PredictConfig(model_dir=folder)),
                   "_no_tta": Classifier.load(PredictConfig(model_dir=folder, tta=False)),
                   "_fp32": Classifier.load(PredictConfig(model_dir=folder, precision="fp32"))}
    tta_default, precision = classifiers[""].tta, classifiers[""].precision
    images = sample_images(data_dir, max(singles, batch))
    for classifier in classifiers.values():
        classifier.predict(images[:2])
    single: dict[str, list[float]] = {key: [] for key in classifiers}
    change = 0.0
    for image in images[:singles]:
        answers = {}
        for key, classifier in classifiers.items():
            start = time.perf_counter()
            answers[key] = classifier.predict([image])[0]
            single[key].append(time.perf_counter() - start)
            if answers[key].label not in CLASSES:
                raise RuntimeError(f"prediction failed: {answers[key].error}")
        # How far the shipped precision moves the answer from float32 arithmetic.
        change = max(change, *(abs(answers[""].probabilities[c] - answers["_fp32"].probabilities[c])
                               for c in CLASSES))
    # Batches: as shipped, and with TTA in one forward pass per batch (no cap on views per pass).
    many: dict[str, list[float]] = {key: [] for key in (*classifiers, "_one_pass")}
    runs = [("", classifiers[""], None), ("_no_tta", classifiers["_no_tta"], None),
            ("_fp32", classifiers["_fp32"], None), ("_one_pass", classifiers[""], 10**9)]
    for _ in range(2):
        for key, classifier, views in runs:
            with views_per_pass(views):
                start = time.perf_counter()
                classifier.predict(images[:batch])
                many[key].append(time.perf_counter() - start)
    out: dict[str, Any] = {"predict_model_is_shipped": int(shipped), "predict_precision": precision,
                           "predict_tta_default": int(tta_default), "predict_batch_images": batch}
    for key in classifiers:
        out[f"predict_ms_per_image{key}"] = 1000 * float(np.median(single[key]))
    for key in many:
        out[f"predict_images_per_s{key}"] = batch / float(np.min(many[key]))
    out["predict_max_probability_change_vs_fp32"] = change
    return out
