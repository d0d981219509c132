"""How far a model's answers can be trusted outside its own cutouts, and how fast one comes.

    python benchmarks/answers.py [--model models/default] [--quick]

Prints one ``name: value`` line per figure:
- ``widefield_*``: Spiral vs Elliptical on the wide-field Galaxy Zoo 1 images (423 px, the galaxy
  small and surrounded by sky; labelled by the plurality of GZ1 votes): p_spiral > p_elliptical
  for the galaxies labelled Spiral, below it for those labelled Elliptical.
- ``widefield_edge_on_recall``: of those labelled Spiral, the edge-on disks (GZ1 plurality
  "edge-on") called Spiral rather than Elliptical; ``--half dev|test`` takes one half of the images
  (``benchmarks.common.widefield_half``: models are tuned and chosen on ``dev`` only).
- ``validation_accuracy``, ``validation_spiral_vs_elliptical``: on the model's validation galaxies
  (choosing data, like the development half).
- ``greyscale_copy_agreement``: the share of the model's own test galaxies whose greyscale copy gets
  the class their colour image gets.
- ``framing_accuracy_*``: 3-class accuracy on the model's own test galaxies as downloaded, shrunk
  2x and 3x into a wider synthetic sky, enlarged 1.5x, and shifted 15% of the side off centre.
- ``warned_*``: the share of real test galaxies that get any warning (and by kind), and whether
  each kind of image without a galaxy (blank, noise, star field, a photo of something else) does.
- ``right_when_low_confidence`` / ``right_when_confident``: 3-class accuracy of the test answers
  that carry the low-confidence warning, and of the others: what the warning is worth.
- ``classify_ms_per_upload``: one decoded upload through ``Classifier.predict``, framing included
  (median, warm, one thread per core as the app runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import (  # noqa: E402
    EDGE_ON_CLASS,
    WIDEFIELD_HALVES,
    default_data_root,
    spiral_and_elliptical_recall,
    widefield_galaxies,
)
from galaxy_core.base.config import CLASSES, PredictConfig, default_model_dir  # noqa: E402
from galaxy_core.data.framing import NO_GALAXY  # noqa: E402
from galaxy_core.model.bundle import read_evaluation  # noqa: E402
from galaxy_core.serving.predict import Classifier  # noqa: E402
from galaxy_core.sources.catalogue import rule_labels  # noqa: E402
from galaxy_core.sources.folder import DatasetFolder  # noqa: E402
from galaxy_core.sources.images import load_image  # noqa: E402

SPIRAL, ELLIPTICAL = CLASSES.index("Spiral"), CLASSES.index("Elliptical")


def probabilities(classifier: Classifier, images: list[Image.Image]) -> tuple[np.ndarray, list[str | None]]:
    predictions = classifier.predict(images)
    # An image with no galaxy in it has no answer: NaN probabilities (its warning says why).
    return (np.array([[p.probabilities[c] for c in CLASSES] if p.probabilities else [np.nan] * len(CLASSES)
                      for p in predictions]),
            [p.warning for p in predictions])


def spiral_vs_elliptical(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    either = np.isin(labels, (SPIRAL, ELLIPTICAL))
    says_spiral, is_spiral = probs[either, SPIRAL] > probs[either, ELLIPTICAL], labels[either] == SPIRAL
    spiral_recall, elliptical_recall = spiral_and_elliptical_recall(says_spiral, is_spiral)
    return {"spiral_vs_elliptical": float((says_spiral == is_spiral).mean()) if either.any() else 0.0,
            "spiral_recall": spiral_recall, "elliptical_recall": elliptical_recall, "galaxies": int(either.sum())}


def widefield_probabilities(classifier: Classifier, folder: Path, table: pd.DataFrame) -> np.ndarray:
    probs = []
    for start in range(0, len(table), 256):  # decoded a batch at a time
        images = [load_image(folder / rel) for rel in table["image"].iloc[start:start + 256]]
        probs.append(probabilities(classifier, images)[0])
    return np.concatenate(probs)


def widefield_scores(probs: np.ndarray, table: pd.DataFrame, half: str = "all") -> dict[str, float]:
    """Spiral vs Elliptical (and each recall) of ``table``'s galaxies, and the share of its edge-on
    disks called Spiral, named ``widefield_[half_]...``."""
    out = spiral_vs_elliptical(probs, table["label"].map(CLASSES.index).to_numpy())
    edge = (table["gz1_plurality_class"] == EDGE_ON_CLASS).to_numpy()
    says_spiral = probs[edge, SPIRAL] > probs[edge, ELLIPTICAL]
    out["edge_on_recall"] = float(says_spiral.mean()) if edge.any() else float("nan")
    out["edge_on_galaxies"] = int(edge.sum())
    return {f"widefield_{half + '_' if half != 'all' else ''}{k}": v for k, v in out.items()}


def bench_widefield(classifier: Classifier, folder: Path, limit: int | None, half: str = "all") -> dict[str, float]:
    table = widefield_galaxies(folder, half, limit)
    return widefield_scores(widefield_probabilities(classifier, folder, table), table, half)


def greyscale_agreement(classifier: Classifier, images: list[Image.Image], colour: np.ndarray) -> float:
    """How often a greyscale copy of an image gets the class its colour original gets."""
    grey = probabilities(classifier, [im.convert("L") for im in images])[0]
    return float((grey.argmax(1) == colour.argmax(1)).mean())


def sky_like(image: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Sky of the cutout's own colour and noise (from its darkest corners)."""
    k = max(4, image.shape[0] // 8)
    corners = sorted([image[:k, :k], image[:k, -k:], image[-k:, :k], image[-k:, -k:]], key=lambda c: c.mean())[:2]
    pixels = np.concatenate([c.reshape(-1, 3) for c in corners]).astype(np.float64)
    return rng.normal(pixels.mean(0), pixels.std(0) + 0.5, (*shape, 3))


def reframed(image: Image.Image, how: str, rng: np.random.Generator) -> Image.Image:
    array = np.asarray(image, dtype=np.float64)
    side = array.shape[0]
    if how == "native":
        return image
    if how.startswith("shrink"):
        k = int(how[-1])
        canvas = sky_like(array, (side, side), rng)
        small = np.asarray(image.resize((side // k, side // k), Image.Resampling.BOX), dtype=np.float64)
        at = (side - side // k) // 2
        canvas[at:at + side // k, at:at + side // k] = small
        return Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8))
    if how == "enlarge1.5":
        big = image.resize((round(side * 1.5),) * 2, Image.Resampling.BICUBIC)
        at = (big.size[0] - side) // 2
        return big.crop((at, at, at + side, at + side))
    if how == "shift15":
        dx, dy = (round(0.15 * side * v) for v in rng.choice([-1, 1], 2))
        canvas = sky_like(array, (side, side), rng)
        ys, xs = slice(max(dy, 0), side + min(dy, 0)), slice(max(dx, 0), side + min(dx, 0))
        canvas[ys, xs] = array[max(-dy, 0):side - max(dy, 0), max(-dx, 0):side - max(dx, 0)]
        return Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8))
    raise ValueError(how)


def split_galaxies(classifier: Classifier, data_dir: Path, limit: int | None,
                   split: str = "test") -> tuple[list[Image.Image], np.ndarray]:
    """The images and labels (under the model's rule) of one split the model's evaluation records."""
    folder = DatasetFolder(data_dir)
    table = folder.read_catalogue()
    evaluation = read_evaluation(classifier.bundle.path)
    ids = set(evaluation.split_ids.get(split, [])) if evaluation else set()
    if not ids:
        raise SystemExit(f"{classifier.bundle.path} records no {split} split for {data_dir}")
    table = table[table["id"].astype(str).isin(ids)]
    if limit:
        table = table.iloc[:limit]
    labels = rule_labels(table, classifier.card.label_rule)
    return [load_image(folder.root / rel) for rel in table["image"]], labels


def answers_of(probs: np.ndarray) -> np.ndarray:
    """The class index of each answer; -1 where there is none (no galaxy, unreadable)."""
    return np.where(np.isnan(probs).any(axis=1), -1, np.nan_to_num(probs).argmax(axis=1))


def no_galaxy_images(rng: np.random.Generator) -> dict[str, Image.Image]:
    yy, xx = np.mgrid[:300, :400]
    stars = rng.normal(14, 4, (400, 400, 3))
    sy, sx = np.mgrid[:400, :400]
    for _ in range(60):
        cx, cy = rng.uniform(0, 400, 2)
        stars += rng.uniform(60, 230) * np.exp(-((sx - cx) ** 2 + (sy - cy) ** 2) / (2 * 1.4**2))[..., None]
    photo = np.stack([np.linspace(60, 240, 400)[None].repeat(300, 0), 120 + 60 * np.sin(yy / 20.0),
                      150 + 50 * np.cos(xx / 30.0)], axis=2) + rng.normal(0, 8, (300, 400, 3))
    arrays = {"blank": np.zeros((256, 256, 3)), "blank_grey": np.full((256, 256, 3), 35.0),
              "noise": rng.integers(0, 256, (256, 256, 3)), "dark_noise": rng.normal(20, 8, (256, 256, 3)),
              "star_field": stars, "photo": photo}
    return {k: Image.fromarray(np.clip(np.round(v), 0, 255).astype(np.uint8)) for k, v in arrays.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=default_model_dir())
    parser.add_argument("--data", type=Path, default=default_data_root() / "gz2-sdss-128")
    parser.add_argument("--widefield", type=Path, default=default_data_root() / "gz1-widefield-423")
    parser.add_argument("--quick", action="store_true", help="a few hundred galaxies per figure")
    parser.add_argument("--half", choices=WIDEFIELD_HALVES, default="all",
                        help="wide-field images: the development half (tuning), the test half, or all")
    args = parser.parse_args()
    limit = 200 if args.quick else None
    classifier = Classifier.load(PredictConfig(model_dir=args.model))
    print(f"model: {args.model} (labels {classifier.card.label_rule}, framing "
          f"{classifier.card.framing.radius_fraction if classifier.card.framing else 'off'})")
    started = time.perf_counter()
    for name, value in bench_widefield(classifier, args.widefield, limit, args.half).items():
        print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")
    val_images, val_labels = split_galaxies(classifier, args.data, limit, "val")
    val_probs = probabilities(classifier, val_images)[0]
    print(f"validation_accuracy: {float((answers_of(val_probs) == val_labels).mean()):.4f}")
    print(f"validation_spiral_vs_elliptical: {spiral_vs_elliptical(val_probs, val_labels)['spiral_vs_elliptical']:.4f}")
    images, labels = split_galaxies(classifier, args.data, limit)
    rng = np.random.default_rng(0)
    for how in ("native", "shrink2", "shrink3", "enlarge1.5", "shift15"):
        probs, warnings = probabilities(classifier, [reframed(im, how, rng) for im in images])
        answers = answers_of(probs)
        print(f"framing_accuracy_{how}: {float((answers == labels).mean()):.4f}")
        if how == "native":
            print(f"greyscale_copy_agreement: {greyscale_agreement(classifier, images, probs):.4f}")
            kinds = Counter((w or "").split(":")[0] for w in warnings if w)
            print(f"warned_real_test_galaxies: {sum(w is not None for w in warnings) / len(warnings):.4f} "
                  f"({len(warnings)} galaxies)")
            for kind, n in sorted(kinds.items()):
                print(f"warned_real_test_galaxies_{kind.replace(' ', '_')}: {n / len(warnings):.4f}")
            unsure = np.array([bool(w) and w.startswith("low confidence") for w in warnings])
            for name, group in (("low_confidence", unsure), ("confident", ~unsure & (answers >= 0))):
                if group.any():
                    print(f"right_when_{name}: {float((answers[group] == labels[group]).mean()):.4f} "
                          f"({int(group.sum())} galaxies)")
    for name, image in no_galaxy_images(rng).items():
        warning = classifier.predict([image])[0].warning or ""
        print(f"warned_no_galaxy_{name}: {int(warning.startswith(NO_GALAXY))} ({warning or 'no warning'})")
    singles = images[:60]
    classifier.predict(singles[:3])
    times = []
    for image in singles:
        start = time.perf_counter()
        classifier.predict([image])
        times.append(time.perf_counter() - start)
    wide = [load_image(p) for p in sorted((args.widefield / "images").iterdir())[:30]]
    wide_times = []
    for image in wide:
        start = time.perf_counter()
        classifier.predict([image])
        wide_times.append(time.perf_counter() - start)
    print(f"classify_ms_per_upload: {1000 * float(np.median(times)):.1f} (128-px cutouts)")
    print(f"classify_ms_per_upload_widefield: {1000 * float(np.median(wide_times)):.1f} (423-px images)")
    print(f"wall_s: {time.perf_counter() - started:.0f}")


if __name__ == "__main__":
    main()
