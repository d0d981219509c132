"""Classification metrics from labels and probabilities (numpy only, no model needed)."""

from __future__ import annotations

import numpy as np

from .config import CLASSES

SPIRAL, ELLIPTICAL, UNCERTAIN = range(3)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int = len(CLASSES)) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def per_class_scores(matrix: np.ndarray) -> dict[str, dict[str, float]]:
    scores = {}
    for i, name in enumerate(CLASSES[: len(matrix)]):
        tp = matrix[i, i]
        predicted, actual = matrix[:, i].sum(), matrix[i].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                        "support": int(actual)}
    return scores


def calibration(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict:
    """Expected calibration error of the top-class confidence, with the reliability table."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
        ece += mask.mean() * abs(acc - conf)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(mask.sum()),
                      "confidence": conf, "accuracy": acc})
    return {"ece": float(ece), "bins": table}


def spiral_vs_elliptical_accuracy(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """On galaxies labelled Spiral or Elliptical, the larger of those two probabilities decides."""
    mask = np.isin(y_true, (SPIRAL, ELLIPTICAL))
    if not mask.any():
        return None
    pred = np.where(probs[mask, SPIRAL] >= probs[mask, ELLIPTICAL], SPIRAL, ELLIPTICAL)
    return float((pred == y_true[mask]).mean())


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, balanced accuracy, per-class P/R/F1, confusion matrix, calibration."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if len(y_true) == 0:
        raise ValueError("no examples to evaluate")
    y_pred = probs.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, probs.shape[1])
    scores = per_class_scores(matrix)
    recalls = [s["recall"] for s in scores.values() if s["support"]]
    calib = calibration(y_true, probs)
    nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1))))
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()),
        "balanced_accuracy": float(np.mean(recalls)),
        "spiral_vs_elliptical_accuracy": spiral_vs_elliptical_accuracy(y_true, probs),
        "log_loss": nll,
        "ece": calib["ece"],
        "reliability": calib["bins"],
        "per_class": scores,
        "confusion": matrix.tolist(),
        "classes": list(CLASSES),
    }


def misclassified(ids: np.ndarray, images: np.ndarray, y_true: np.ndarray,
                  probs: np.ndarray) -> list[dict]:
    """Wrong predictions, most confident first: the first places to look for label noise."""
    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    wrong = wrong[np.argsort(-probs[wrong].max(axis=1), kind="stable")]
    return [{"id": str(ids[i]), "image": str(images[i]), "true": CLASSES[y_true[i]],
             "predicted": CLASSES[y_pred[i]],
             **{f"p_{c.lower()}": float(probs[i, k]) for k, c in enumerate(CLASSES)}}
            for i in wrong]
