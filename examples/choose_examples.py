"""How the example galaxies in this folder were chosen (run once; kept to make the choice checkable).

From the Galaxy Zoo 2 sample, 8 galaxies per class by the volunteers' own votes (the 0.8 rule on
what they saw in the image, the rule of the shipped models/default) among the test galaxies of the
seed-0 split under that rule, which the shipped model (trained with --seed 0) never saw: drawn at
random (seed 0) from those the shipped model gets right, plus one per class it gets wrong, so the
demo shows a typical result, not only the easiest galaxies. Without models/default the predictions
come from models/debiased, which split by its own labels and may have trained on some of them.
Run it again whenever the shipped model is retrained.

    .venv/bin/python -m examples.choose_examples ../shared/data/gz2-sdss-128
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from galaxy_core.base.config import CLASSES, LABEL_RULES, PredictConfig, SplitConfig
from galaxy_core.data.dataset import split_dataset
from galaxy_core.model.bundle import read_evaluation
from galaxy_core.serving.predict import Classifier
from galaxy_core.sources.catalogue import label_column, read_catalogue, rule_labels

HERE = Path(__file__).resolve().parent
SHIPPED = [HERE.parent / "models" / name for name in ("default", "debiased")]
PER_CLASS, WRONG_PER_CLASS = 8, 1


def main(source: Path) -> None:
    frame = read_catalogue(source / "catalogue.csv")
    ids = frame["id"].to_numpy(str)
    tests = {rule: set(ids[split_dataset(ids, rule_labels(frame, rule), SplitConfig()).test]) for rule in LABEL_RULES}
    model = next(m for m in SHIPPED if (m / "card.json").is_file())
    classifier = Classifier.load(PredictConfig(model_dir=model))
    assert set(read_evaluation(model).split_ids["test"]) == tests[classifier.card.label_rule]
    test = tests["votes"]
    agree = frame[frame["id"].isin(test)]
    predictions = classifier.predict([source / p for p in agree["image"]])
    agree = agree.assign(predicted=[p.label for p in predictions])
    rng = np.random.default_rng(0)
    chosen = []
    for name in CLASSES:
        mine = agree[agree[label_column("votes")] == name]
        right, wrong = mine[mine["predicted"] == name], mine[mine["predicted"] != name]
        misses = min(WRONG_PER_CLASS, len(wrong))
        print(f"{name}: {len(mine)} held out, {len(wrong)} of them wrong", file=sys.stderr)
        chosen.append(right.iloc[rng.choice(len(right), PER_CLASS - misses, replace=False)])
        chosen.append(wrong.iloc[rng.choice(len(wrong), misses, replace=False)])
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
