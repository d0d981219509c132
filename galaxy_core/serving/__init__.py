"""A trained model answering: inference with test-time views and calibration, evaluate,
predict, Grad-CAM, a tree head's answers in words, and the shipped example galaxies. Training uses
it to measure what it trains.

Imports only ``base``, ``sources``, ``data`` and ``model``.
"""

from galaxy_core.serving.evaluate import EvaluateProgress, evaluate_bundle
from galaxy_core.serving.examples import CREDIT, EXAMPLES_DIR, example_by_id, list_examples
from galaxy_core.serving.gradcam import CAPTION, COLOUR_MAP, colour_scale
from galaxy_core.serving.predict import (
    IMAGE_SUFFIXES,
    Classifier,
    Prediction,
    classify_uploads,
    outline_framing,
    predictions_csv,
    vote_sentence,
)
from galaxy_core.serving.tree_words import TreeReading, read_tree

__all__ = [
    "CAPTION", "COLOUR_MAP", "CREDIT", "Classifier", "EXAMPLES_DIR", "EvaluateProgress", "IMAGE_SUFFIXES",
    "Prediction", "classify_uploads", "colour_scale", "evaluate_bundle", "example_by_id", "list_examples",
    "outline_framing", "predictions_csv", "read_tree", "TreeReading", "vote_sentence",
]
