"""The networks (with D4 group convolutions among them), the decision-tree schema and the class
rule, the typed card (everything a model needs to answer, validated on load), saved bundles,
numeric precision, and the metrics a card records.

Imports only ``base``, ``sources`` and ``data``.
"""

from galaxy_core.model.bundle import (
    CARD_NAME,
    BundleError,
    ModelBundle,
    ModelInfo,
    list_models,
    load_bundle,
    read_card,
    read_evaluation,
)
from galaxy_core.model.card import LABEL_QUESTIONS, EpochRecord, ModelCard
from galaxy_core.model.metrics import Metrics, metric_rows

__all__ = [
    "BundleError", "CARD_NAME", "EpochRecord", "LABEL_QUESTIONS", "Metrics", "ModelBundle", "ModelCard",
    "ModelInfo", "list_models", "load_bundle", "metric_rows", "read_card", "read_evaluation",
]
