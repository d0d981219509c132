"""Does a model read the edge of the synthetic sky as a sign of a spiral?

    python benchmarks/edge_cue.py [--model models/default] [--keep 0.6]

Framing a GZ2 cutout so that r90 is 0.3 of the side runs past the 128-px cutout for most large
galaxies, and the framer fills the rest with synthetic sky: a square edge that 96% of the GZ2
Spirals show and 42% of the Ellipticals, but almost no wide-field photo (the script measures both
first, on ``--sample`` GZ2 galaxies and on the wide-field ones). The fill is drawn at the image's
own pixel scale so it has the real sky's grain (``fill_grain``, whose median the script prints:
1.0 is a fill as grainy as the sky beside it; 2.66 before framer version 2). Each wide-field
development galaxy (Spiral or Elliptical) is classified as given, and cropped to ``--keep`` of its
frame's side around the galaxy, so that its frame runs past the crop and gets that edge. A model
that learnt "an edge means Spiral" calls more of the cropped galaxies Spiral. A crop to 0.6 also
removes the light beyond about r90, so the galaxy is framed tighter; one to 0.8 leaves the frame
within 2% of the uncropped one and tests the edge alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import default_data_root, spiral_and_elliptical_recall, widefield_galaxies  # noqa: E402
from galaxy_core.base.config import CLASSES, PredictConfig, default_model_dir  # noqa: E402
from galaxy_core.data.framing import Framing, runs_past  # noqa: E402
from galaxy_core.serving.predict import Classifier  # noqa: E402
from galaxy_core.sources.catalogue import rule_labels  # noqa: E402
from galaxy_core.sources.folder import DatasetFolder  # noqa: E402
from galaxy_core.sources.images import load_image  # noqa: E402

KEEP = 0.6  # the crop's side, as a share of the frame's side


def inside_its_frame(image: Image.Image, framing: Framing, keep: float = KEEP) -> Image.Image:
    """The square ``keep`` times the frame's side, centred on the frame: the frame runs past it."""
    left, top, side = framing.box
    cx, cy, half = left + side / 2, top + side / 2, keep * side / 2
    return image.crop((round(cx - half), round(cy - half), round(cx + half), round(cy + half)))


def input_position(box: tuple[float, float, float], out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where in the input image the centre of each pixel cut from ``box`` at ``out_size`` lies (x, y)."""
    left, top, side = box
    yy, xx = np.mgrid[:out_size, :out_size]
    return left + (xx + 0.5) * side / out_size, top + (yy + 0.5) * side / out_size


def neighbour_pairs(mask: np.ndarray) -> np.ndarray:
    """Where a pixel and its right-hand neighbour both lie in ``mask``."""
    return mask[:, 1:] & mask[:, :-1]


def mean_step(grey: np.ndarray, mask: np.ndarray) -> float:
    """The grain of ``grey`` within ``mask``: the mean absolute step between horizontal neighbours."""
    return float(np.abs(np.diff(grey, axis=1))[neighbour_pairs(mask)].mean())


def fill_grain(framing: Framing, size: tuple[int, int]) -> float | None:
    """How grainy the filled-in sky of a framed image is next to its real sky: ``mean_step`` in the
    fill over that in the real sky (pixels at most 2 sigma above the sky level, 3 input pixels clear
    of the seam); None with fewer than 50 neighbouring pairs of either."""
    sx, sy = input_position(framing.box, framing.image.shape[0])
    margin = 3 * framing.box[2] / framing.image.shape[0]
    filled = (sx < -margin) | (sy < -margin) | (sx > size[0] + margin) | (sy > size[1] + margin)
    grey = framing.image.astype(float).mean(axis=2)
    real = ((sx > margin) & (sy > margin) & (sx < size[0] - margin) & (sy < size[1] - margin)
            & (grey < framing.sky.level + 2 * max(framing.sky.noise, 0.5)))
    if neighbour_pairs(filled).sum() < 50 or neighbour_pairs(real).sum() < 50:
        return None
    return mean_step(grey, filled) / max(mean_step(grey, real), 1e-6)


def share_with_an_edge(classifier: Classifier, data: Path, n: int) -> tuple[dict[str, float], float]:
    """Of ``n`` GZ2 galaxies (a seeded sample), the share of each class whose frame has the edge,
    and the median ``fill_grain`` of those frames."""
    folder = DatasetFolder(data)
    table = folder.read_catalogue().sample(n, random_state=0)
    labels = rule_labels(table, classifier.card.label_rule)
    edge, grains = [], []
    for image in (load_image(folder.root / rel) for rel in table["image"]):
        framing = classifier.frame(image)
        edge.append(runs_past(framing.box, image.size))
        if edge[-1] and (grain := fill_grain(framing, image.size)) is not None:
            grains.append(grain)
    edged = np.array(edge)
    shares = {name: float(edged[labels == k].mean()) for k, name in enumerate(CLASSES) if (labels == k).any()}
    return shares, float(np.median(grains))


def says_spiral(classifier: Classifier, images: list[Image.Image]) -> list[bool | None]:
    """Spiral over Elliptical for each image; None where there is no answer."""
    out: list[bool | None] = []
    for p in classifier.predict(images):
        out.append(None if p.probabilities is None else p.probabilities["Spiral"] > p.probabilities["Elliptical"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=default_model_dir())
    parser.add_argument("--data", type=Path, default=default_data_root() / "gz2-sdss-128")
    parser.add_argument("--widefield", type=Path, default=default_data_root() / "gz1-widefield-423")
    parser.add_argument("--sample", type=int, default=1500, help="GZ2 galaxies whose frames are checked")
    parser.add_argument("--keep", type=float, default=KEEP, help="the crop's side, as a share of the frame's side")
    args = parser.parse_args()
    classifier = Classifier.load(PredictConfig(model_dir=args.model))
    shares, grain = share_with_an_edge(classifier, args.data, args.sample)
    for name, share in shares.items():
        print(f"gz2_{name.lower()}_frame_runs_past_the_cutout: {share:.3f}")
    print(f"gz2_fill_grain_over_real_sky_grain_median: {grain:.2f}")
    table = widefield_galaxies(args.widefield, "dev")
    rows, edges = [], []
    for rel, label in zip(table["image"], table["label"]):
        image = load_image(args.widefield / rel)
        framing = classifier.frame(image)
        if framing.source is None:
            continue
        edges.append(runs_past(framing.box, image.size))
        plain, cropped = says_spiral(classifier, [image, inside_its_frame(image, framing, args.keep)])
        if plain is not None and cropped is not None:
            rows.append((label == "Spiral", plain, cropped))
    spiral, plain, cropped = (np.array(column) for column in zip(*rows))
    print(f"model: {args.model}; {spiral.sum()} spirals, {(~spiral).sum()} ellipticals (wide-field development half)")
    print(f"widefield_frame_runs_past_the_image: {np.mean(edges):.3f}")
    for name, says in (("as_given", plain), ("cropped_inside_its_frame", cropped)):
        spiral_recall, elliptical_recall = spiral_and_elliptical_recall(says, spiral)
        print(f"{name}_spiral_recall: {spiral_recall:.3f}")
        print(f"{name}_elliptical_recall: {elliptical_recall:.3f}")


if __name__ == "__main__":
    main()
