"""How noisy the three-class labels are, whatever the classifier: the ceiling a model meets.

    python benchmarks/label_noise.py [--data ../shared/data/gz2-sdss-128] [--draws 5]

For each label rule, prints the share of galaxies whose vote fraction lies within 0.1 of the 0.8
threshold, and the share whose class changes when the same number of volunteers (the catalogue's
vote counts for the first question) is drawn again from the galaxy's own fractions (multinomially,
seeded): two equally careful crowds disagree that often, so no model can agree with one of them
much more often than that.

Also prints the share of each rule's Ellipticals that most of the volunteers asked called
cigar-shaped (``t07_rounded_a18_cigar_shaped`` above 0.5): smooth to GZ2's first question, but the
shape Galaxy Zoo 1 volunteers answer "edge-on spiral" to, so the wide-field images' labels count many
such galaxies as Spirals.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.common import default_data_root  # noqa: E402

QUESTION = "t01_smooth_or_features_"
ANSWERS = ("a01_smooth", "a02_features_or_disk", "a03_star_or_artifact")
CIGAR = "t07_rounded_a18_cigar_shaped"
RULES = {"votes": "weighted_fraction", "debiased": "debiased"}


def classes(fractions: np.ndarray) -> np.ndarray:
    """0 Spiral, 1 Elliptical, 2 Uncertain by the 0.8 rule."""
    return np.where(fractions[:, 0] > 0.8, 1, np.where(fractions[:, 1] > 0.8, 0, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_root() / "gz2-sdss-128")
    parser.add_argument("--draws", type=int, default=5)
    args = parser.parse_args()
    table = pd.read_csv(args.data / "catalogue.csv")
    counts = sum(table[f"{QUESTION}{a}_count"] for a in ANSWERS).to_numpy().astype(int)
    print(f"galaxies: {len(table)} (median {int(np.median(counts))} volunteers answered the first question)")
    rng = np.random.default_rng(0)
    for rule, suffix in RULES.items():
        fractions = np.stack([table[f"{QUESTION}{a}_{suffix}"].to_numpy() for a in ANSWERS], 1)
        near = (np.abs(fractions[:, :2] - 0.8) < 0.1).any(axis=1).mean()
        p = np.clip(fractions, 0, None)
        p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
        label = classes(fractions)
        changed = []
        for _ in range(args.draws):
            redrawn = np.array([rng.multinomial(n, q) for n, q in zip(counts, p)]) / np.maximum(counts, 1)[:, None]
            changed.append(float((classes(redrawn) != label).mean()))
        print(f"{rule}_within_0.1_of_threshold: {near:.4f}")
        print(f"{rule}_class_changed_by_a_redrawn_crowd: {np.mean(changed):.4f}")
        ellipticals = label == 1
        cigar = table[f"{CIGAR}_{suffix}"].to_numpy()[ellipticals] > 0.5
        print(f"{rule}_ellipticals_cigar_shaped: {cigar.mean():.4f} ({int(cigar.sum())} of {int(ellipticals.sum())})")


if __name__ == "__main__":
    main()
