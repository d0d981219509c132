"""Fit training settings to what a dataset can give: a folder of plain labels has no vote fractions
to learn from, and a small one has fewer training views than a default batch.

The Train page applies the fit and says what it changed; the command line keeps the user's
settings and its errors say what to change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from galaxy_core.base.config import TrainConfig
from galaxy_core.data.dataset import plan_views
from galaxy_core.sources.catalogue import rule_fractions, rule_labels
from galaxy_core.sources.folder import DatasetFolder

MIN_BATCH = 2
"""The smallest batch a step takes (batch statistics need two images)."""


@dataclass(frozen=True)
class DatasetFacts:
    """What a dataset gives a training run: whether its training galaxies have vote fractions
    under the run's label rule, and how many training views the split and balancing make."""

    has_vote_fractions: bool
    training_views: int


def dataset_facts(config: TrainConfig) -> DatasetFacts:
    """The facts of ``config``'s dataset under its label rule, subset, split and balancing, read
    from the catalogue alone (no image is decoded); raises the plan's error when it cannot train."""
    frame = DatasetFolder(config.data_dir).read_catalogue()
    plan = plan_views(frame["id"].to_numpy(str), rule_labels(frame, config.label_rule), config)
    fractions = rule_fractions(frame, config.label_rule)[plan.split.train, :2]
    return DatasetFacts(has_vote_fractions=bool(len(fractions)) and not bool(np.isnan(fractions).any()),
                        training_views=len(plan.views.rows))


def fit_to_data(config: TrainConfig, facts: DatasetFacts) -> tuple[TrainConfig, list[str]]:
    """``config`` changed only where the data cannot serve it, and each change in words.

    Without vote fractions the model learns the classes alone and gets no vote-fraction head;
    a batch larger than the training views shrinks to them.
    """
    changes: list[str] = []
    if not facts.has_vote_fractions:
        if config.soft_labels:
            config = replace(config, soft_labels=False)
            changes.append("This dataset has classes but no vote fractions, so the model learns the "
                           "classes alone (not how far each galaxy is from a class's threshold).")
        if config.aux_weight > 0:
            config = replace(config, aux_weight=0.0)
            changes.append("Without vote fractions there is nothing for a vote-fraction head to learn: "
                           "the model gives classes only.")
    if config.batch_size > facts.training_views >= MIN_BATCH:
        changes.append(f"The batch holds {facts.training_views} images instead of {config.batch_size}: "
                       f"this dataset gives only {facts.training_views} training views.")
        config = replace(config, batch_size=facts.training_views)
    return config, changes
