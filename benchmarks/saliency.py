"""Does Grad-CAM point at the galaxy? On the model's own test galaxies, the share whose Grad-CAM
peak lies within the framer's r90 of the galaxy's centre, in the input image's pixels.

    python benchmarks/saliency.py [--model models/default] [--limit N]

Prints ``name: value`` lines: ``saliency_peak_on_galaxy`` for the map of the answer shown (the
8 views, each turned back before averaging, as ``predict --saliency`` and the Classify page draw
it), and ``saliency_peak_on_galaxy_one_view`` for a single view's map, for comparison.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.answers import split_galaxies  # noqa: E402
from benchmarks.common import default_data_root  # noqa: E402
from galaxy_core.base.config import CLASSES, PredictConfig, default_model_dir  # noqa: E402
from galaxy_core.serving.gradcam import grad_cam  # noqa: E402
from galaxy_core.serving.predict import Classifier, peak_in_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_dir())
    parser.add_argument("--data", type=Path, default=default_data_root() / "gz2-sdss-128")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test galaxies")
    args = parser.parse_args()
    classifier = Classifier.load(PredictConfig(model_dir=args.model))
    images, _ = split_galaxies(classifier, args.data, args.limit)
    on = {"tta": [], "one_view": []}
    skipped = 0
    for image in images:
        framing = classifier.frame(image)
        [prediction] = classifier.predict([image])
        if framing.source is None or not prediction.classified:
            skipped += 1
            continue
        framed = Image.fromarray(framing.image)
        index = CLASSES.index(prediction.label)
        for kind, tta in (("tta", classifier.tta), ("one_view", False)):
            heat = grad_cam(classifier.bundle, framed, index, tta=tta)
            x, y = peak_in_image(heat, classifier.bundle.geometry, framing)
            distance = float(np.hypot(x - framing.source.x, y - framing.source.y))
            on[kind].append(distance <= framing.source.r90)
    print(f"saliency_galaxies: {len(on['tta'])} (skipped, no galaxy found: {skipped})")
    print(f"saliency_peak_on_galaxy: {np.mean(on['tta']):.4f}")
    print(f"saliency_peak_on_galaxy_one_view: {np.mean(on['one_view']):.4f}")


if __name__ == "__main__":
    main()
