"""How the example galaxies in this folder were chosen (run once; kept to make the choice checkable).

From the shipped model's held-out test galaxies in the Galaxy Zoo 2 sample, 8 per class whose class
is the same under both label rules (the volunteers' own votes and Galaxy Zoo's debiased fractions):
drawn at random (seed 0) from those the shipped model gets right, plus one per class it gets wrong,
so the demo shows a typical result, not only the easiest galaxies.

    .venv/bin/python -m examples.choose_examples ../shared/data/gz2-sdss-128
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from galaxy_core.bundle import read_evaluation
from galaxy_core.catalogue import label_column, read_catalogue
from galaxy_core.config import CLASSES
from galaxy_core.predict import Classifier

HERE = Path(__file__).resolve().parent
PER_CLASS, WRONG_PER_CLASS = 8, 1


def main(source: Path) -> None:
    frame = read_catalogue(source / "catalogue.csv")
    classifier = Classifier.load()
    test = set(read_evaluation(classifier.bundle.path).split_ids["test"])
    agree = frame[(frame[label_column("votes")] == frame[label_column("debiased")]) & frame["id"].isin(test)]
    predictions = classifier.predict([source / p for p in agree["image"]])
    agree = agree.assign(predicted=[p.label for p in predictions])
    rng = np.random.default_rng(0)
    chosen = []
    for name in CLASSES:
        mine = agree[agree[label_column("votes")] == name]
        right, wrong = mine[mine["predicted"] == name], mine[mine["predicted"] != name]
        chosen.append(right.iloc[rng.choice(len(right), PER_CLASS - WRONG_PER_CLASS, replace=False)])
        chosen.append(wrong.iloc[rng.choice(len(wrong), WRONG_PER_CLASS, replace=False)])
    picked = pd.concat(chosen)
    (HERE / "images").mkdir(exist_ok=True)
    for rel in picked["image"]:
        shutil.copyfile(source / rel, HERE / rel)
    pd.DataFrame({"image": picked["image"], "label": picked[label_column("votes")],
                  "ra": picked["ra"].round(5), "dec": picked["dec"].round(5),
                  "volunteers_smooth": picked["votes_smooth"].round(3),
                  "volunteers_features": picked["votes_features"].round(3),
                  "volunteers_artifact": picked["votes_artifact"].round(3)}).to_csv(HERE / "catalogue.csv", index=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
