"""Fitting training settings to a dataset: plain labels train without vote fractions, a small
folder gets a batch that fits, and nothing changes where the data serves the settings."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from conftest import make_dataset

from galaxy_core.base.config import TrainConfig
from galaxy_core.data.fit import DatasetFacts, dataset_facts, fit_to_data
from galaxy_core.serving.examples import EXAMPLES_DIR


def plain_folder(root: Path) -> Path:
    """The synthetic galaxies with only ``image,label`` columns (no vote fractions)."""
    make_dataset(root, n_per_class=8)
    frame = pd.read_csv(root / "catalogue.csv")
    frame[["image", "label"]].to_csv(root / "catalogue.csv", index=False)
    return root


def test_plain_labels_train_on_classes_without_a_vote_head(tmp_path: Path):
    config = TrainConfig(plain_folder(tmp_path / "plain"), tmp_path / "out", aux_weight=1.0, batch_size=8)
    facts = dataset_facts(config)
    assert facts == DatasetFacts(has_vote_fractions=False, training_views=facts.training_views)
    fitted, changes = fit_to_data(config, facts)
    assert (fitted.soft_labels, fitted.aux_weight, fitted.batch_size) == (False, 0.0, 8)
    assert len(changes) == 2 and all("--" not in text for text in changes)
    assert "no vote fractions" in changes[0]


def test_a_small_folder_gets_a_batch_that_fits(tmp_path: Path):
    config = TrainConfig(make_dataset(tmp_path / "small", n_per_class=6), tmp_path / "out")
    facts = dataset_facts(config)
    assert facts.has_vote_fractions and facts.training_views < config.batch_size
    fitted, changes = fit_to_data(config, facts)
    assert fitted.batch_size == facts.training_views
    assert fitted.soft_labels and changes == [f"The batch holds {facts.training_views} images instead of 64: "
                                              f"this dataset gives only {facts.training_views} training views."]


def test_settings_the_data_serves_are_kept():
    config = TrainConfig(Path("d"), Path("o"), aux_weight=1.0, batch_size=32)
    assert fit_to_data(config, DatasetFacts(True, 500)) == (config, [])


def test_the_shipped_examples_fit(tmp_path: Path):
    config = TrainConfig(EXAMPLES_DIR, tmp_path / "out")
    fitted, changes = fit_to_data(config, dataset_facts(config))
    assert fitted.batch_size <= dataset_facts(fitted).training_views
    assert changes, "the 24 examples give fewer views than a batch of 64"


def test_the_command_line_says_what_to_change_in_its_own_words(tmp_path: Path, capsys) -> None:
    from galaxy_core.cli import EXIT_USER_ERROR, main

    data = plain_folder(tmp_path / "plain")
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "out"), "--epochs", "1",
                 "--batch-size", "4", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "Traceback" not in err
    assert "have a class but no vote fractions" in err and "votes vote" not in err
    assert "--no-soft-labels --aux-weight 0" in err
