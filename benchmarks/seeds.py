"""How far the training seed alone moves a recipe's figures, and what averaging the models buys.

    python benchmarks/seeds.py --model models/first-question --model MODEL_2 [--model MODEL_3 ...]

The models must hold out the same galaxies: train them with the same ``--split-seed`` (and
different ``--seed``s). For each model, and for the mean of their class probabilities (an ensemble,
which costs one network per model on every image), prints one line of the choosing data
(validation 3-class, balanced and Spiral vs Elliptical; wide-field development Spiral vs
Elliptical, balanced, and the edge-on disks called Spiral) and one of the test split (3-class,
balanced, Spiral vs Elliptical). The spread of the single models is the noise any comparison of two
recipes trained once must clear.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.answers import (  # noqa: E402
    probabilities,
    split_galaxies,
    widefield_probabilities,
    widefield_scores,
)
from benchmarks.common import default_data_root, widefield_galaxies  # noqa: E402
from galaxy_core.base.config import PredictConfig  # noqa: E402
from galaxy_core.model.bundle import read_evaluation  # noqa: E402
from galaxy_core.model.metrics import classification_metrics  # noqa: E402
from galaxy_core.serving.predict import Classifier  # noqa: E402

SPLITS = ("val", "test")


def held_out_ids(model: Path) -> dict[str, list[str]]:
    evaluation = read_evaluation(model)
    if evaluation is None:
        raise SystemExit(f"{model} records no held-out galaxies (no evaluation.json)")
    return {split: sorted(evaluation.split_ids.get(split, [])) for split in SPLITS}


def check_one_split(models: list[Path]) -> None:
    """Averaging models is only measured fairly on galaxies none of them trained on."""
    first = held_out_ids(models[0])
    for model in models[1:]:
        if held_out_ids(model) != first:
            raise SystemExit(f"{model} holds out other galaxies than {models[0]}: train both with the same "
                             "--split-seed")


def split_figures(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    metrics = classification_metrics(labels, probs)
    return {"accuracy": metrics.accuracy, "balanced": metrics.balanced_accuracy,
            "spiral_vs_elliptical": metrics.spiral_vs_elliptical_accuracy or float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, action="append", required=True, help="give it twice or more")
    parser.add_argument("--data", type=Path, default=default_data_root() / "gz2-sdss-128")
    parser.add_argument("--widefield", type=Path, default=default_data_root() / "gz1-widefield-423")
    parser.add_argument("--quick", action="store_true", help="a few hundred galaxies per figure")
    args = parser.parse_args()
    if len(args.model) < 2:
        parser.error("give --model at least twice")
    check_one_split(args.model)
    limit = 200 if args.quick else None
    table = widefield_galaxies(args.widefield, "dev", limit)
    probs: dict[str, list[np.ndarray]] = {"val": [], "test": [], "widefield": []}
    labels: dict[str, np.ndarray] = {}
    for model in args.model:
        classifier = Classifier.load(PredictConfig(model_dir=model))
        for split in SPLITS:
            images, labels[split] = split_galaxies(classifier, args.data, limit, split)
            probs[split].append(probabilities(classifier, images)[0])
        probs["widefield"].append(widefield_probabilities(classifier, args.widefield, table))
    rows = [(str(model), {key: views[i] for key, views in probs.items()}) for i, model in enumerate(args.model)]
    rows.append((f"mean of the {len(args.model)}", {key: np.mean(views, axis=0) for key, views in probs.items()}))
    for name, p in rows:
        val, test = split_figures(p["val"], labels["val"]), split_figures(p["test"], labels["test"])
        wide = widefield_scores(p["widefield"], table, "dev")
        balanced = (wide["widefield_dev_spiral_recall"] + wide["widefield_dev_elliptical_recall"]) / 2
        print(f"{name}: choosing data: validation {val['accuracy']:.4f} balanced {val['balanced']:.4f} "
              f"spiral_vs_elliptical {val['spiral_vs_elliptical']:.4f}; wide-field development "
              f"spiral_vs_elliptical {wide['widefield_dev_spiral_vs_elliptical']:.4f} balanced {balanced:.4f} "
              f"edge_on {wide['widefield_dev_edge_on_recall']:.4f}")
        print(f"{name}: test {test['accuracy']:.4f} balanced {test['balanced']:.4f} "
              f"spiral_vs_elliptical {test['spiral_vs_elliptical']:.4f}")


if __name__ == "__main__":
    main()
