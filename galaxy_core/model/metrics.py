"""Classification metrics from labels and probabilities (numpy only, no model needed), as one typed
``Metrics`` object, and the one list of rows that the CLI, the Markdown card and the app format
each for its own medium."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from galaxy_core.base import fields
from galaxy_core.base.config import ANSWERS, CLASSES
from galaxy_core.model.tree import GZ2_TREE, TreeSchema

QUESTION_WORDS = {q.id: q.words for q in GZ2_TREE.questions}

SPIRAL, ELLIPTICAL, UNCERTAIN = range(3)


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ReliabilityBin:
    """Galaxies whose top-class probability fell in [low, high): their mean confidence and accuracy."""

    low: float
    high: float
    count: int
    confidence: float
    accuracy: float


@dataclass(frozen=True)
class ViewAgreement:
    """How often one view's answer survives a 90-degree turn, a mirror, and all 8 symmetries."""

    rot90: float
    mirror: float
    all_8: float


@dataclass(frozen=True)
class TurnedAgreement:
    """How often the answer a user gets is unchanged when the cutout itself is turned or mirrored."""

    rot90: float
    mirror: float
    rot90_max_probability_change: float
    mirror_max_probability_change: float


@dataclass(frozen=True)
class Metrics:
    n: int
    accuracy: float
    balanced_accuracy: float
    spiral_vs_elliptical_accuracy: float | None
    log_loss: float
    ece: float
    per_class: dict[str, ClassScores]
    confusion: list[list[int]]
    reliability: list[ReliabilityBin] = field(default_factory=list)
    symmetry_agreement: ViewAgreement | None = None
    prediction_symmetry_agreement: TurnedAgreement | None = None
    split: str = ""
    tta: bool | None = None
    vote_rmse: dict[str, float] | None = None  # per answer and "all": predicted vs observed fractions
    tree_rmse: dict[str, float] | None = None  # per tree question and "mean" over every answer
    label_rule: str = ""  # the label rule the galaxies were scored against

    def to_dict(self, reliability: bool = True) -> dict[str, Any]:
        out = asdict(self)
        out["classes"] = list(CLASSES)
        if not reliability:
            del out["reliability"]
        return {k: v for k, v in out.items() if v is not None or k == "spiral_vs_elliptical_accuracy"}

    def without_reliability(self) -> Metrics:
        return replace(self, reliability=[])

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: str = "metrics.") -> Metrics:
        """Validated: a hand-edited card or evaluation file gives an error naming the field."""
        values = fields.section(values, path.rstrip("."))
        frac = dict(low=0.0, high=1.0)
        n = fields.integer(values, "n", path, low=1, high=10**9)
        per_class_in = fields.section(values.get("per_class", {}), f"{path}per_class")
        per_class = {}
        for name in CLASSES:
            if name in per_class_in:
                p = f"{path}per_class.{name}."
                s = fields.section(per_class_in[name], p.rstrip("."))
                per_class[name] = ClassScores(fields.number(s, "precision", p, **frac),
                                              fields.number(s, "recall", p, **frac),
                                              fields.number(s, "f1", p, **frac),
                                              fields.integer(s, "support", p, low=0, high=n))
        confusion = fields.rows(values, "confusion", path, max_items=len(CLASSES))
        if len(confusion) != len(CLASSES) or not all(
                isinstance(row, list) and len(row) == len(CLASSES)
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= n for v in row)
                for row in confusion):
            raise fields.FieldError(f"{path}confusion must be a {len(CLASSES)}x{len(CLASSES)} table of counts, "
                                    f"got {fields.shown(confusion)}")
        bins = []
        for i, b in enumerate(fields.rows(values, "reliability", path, max_items=1000, default=[])):
            p = f"{path}reliability[{i}]."
            b = fields.section(b, p.rstrip("."))
            bins.append(ReliabilityBin(fields.number(b, "low", p, **frac), fields.number(b, "high", p, **frac),
                                       fields.integer(b, "count", p, low=0, high=n),
                                       fields.number(b, "confidence", p, **frac),
                                       fields.number(b, "accuracy", p, **frac)))
        sym = values.get("symmetry_agreement")
        if sym is not None:
            p = f"{path}symmetry_agreement."
            sym = fields.section(sym, p.rstrip("."))
            sym = ViewAgreement(*(fields.number(sym, k, p, **frac) for k in ("rot90", "mirror", "all_8")))
        turned = values.get("prediction_symmetry_agreement")
        if turned is not None:
            p = f"{path}prediction_symmetry_agreement."
            turned = fields.section(turned, p.rstrip("."))
            turned = TurnedAgreement(*(fields.number(turned, k, p, **frac) for k in (
                "rot90", "mirror", "rot90_max_probability_change", "mirror_max_probability_change")))
        svse = values.get("spiral_vs_elliptical_accuracy")
        rmse = values.get("vote_rmse")
        if rmse is not None:
            p = f"{path}vote_rmse."
            rmse = fields.section(rmse, p.rstrip("."))
            rmse = {k: fields.number(rmse, k, p, low=0, high=1) for k in (*ANSWERS, "all")}
        tree = values.get("tree_rmse")
        if tree is not None:
            p = f"{path}tree_rmse."
            tree = fields.section(tree, p.rstrip("."))
            tree = {str(k): fields.number(tree, k, p, low=0, high=1) for k in list(tree)[:100]}
        return cls(
            n=n, accuracy=fields.number(values, "accuracy", path, **frac),
            balanced_accuracy=fields.number(values, "balanced_accuracy", path, **frac),
            spiral_vs_elliptical_accuracy=None if svse is None else fields.number(
                values, "spiral_vs_elliptical_accuracy", path, **frac),
            log_loss=fields.number(values, "log_loss", path, low=0, high=1e6),
            ece=fields.number(values, "ece", path, **frac), per_class=per_class, confusion=confusion,
            reliability=bins, symmetry_agreement=sym, prediction_symmetry_agreement=turned,
            split=fields.text(values, "split", path, default="", max_length=200),
            tta=values["tta"] if isinstance(values.get("tta"), bool) else None, vote_rmse=rmse, tree_rmse=tree,
            label_rule=fields.text(values, "label_rule" if "label_rule" in values else "labels", path, default="",
                                  max_length=20))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int = len(CLASSES)) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def per_class_scores(matrix: np.ndarray) -> dict[str, ClassScores]:
    scores = {}
    for i, name in enumerate(CLASSES[: len(matrix)]):
        tp = matrix[i, i]
        predicted, actual = matrix[:, i].sum(), matrix[i].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[name] = ClassScores(float(precision), float(recall), float(f1), int(actual))
    return scores


def calibration(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> tuple[float, list[ReliabilityBin]]:
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
        table.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), int(mask.sum()), conf, acc))
    return float(ece), table


def spiral_vs_elliptical_accuracy(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """On galaxies labelled Spiral or Elliptical, the larger of those two probabilities decides."""
    mask = np.isin(y_true, (SPIRAL, ELLIPTICAL))
    if not mask.any():
        return None
    pred = np.where(probs[mask, SPIRAL] >= probs[mask, ELLIPTICAL], SPIRAL, ELLIPTICAL)
    return float((pred == y_true[mask]).mean())


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> Metrics:
    """Accuracy, balanced accuracy, per-class P/R/F1, confusion matrix, calibration."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if len(y_true) == 0:
        raise ValueError("no examples to evaluate")
    y_pred = probs.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, probs.shape[1])
    scores = per_class_scores(matrix)
    recalls = [s.recall for s in scores.values() if s.support]
    ece, table = calibration(y_true, probs)
    nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1))))
    return Metrics(n=int(len(y_true)), accuracy=float((y_pred == y_true).mean()),
                   balanced_accuracy=float(np.mean(recalls)),
                   spiral_vs_elliptical_accuracy=spiral_vs_elliptical_accuracy(y_true, probs),
                   log_loss=nll, ece=ece, per_class=scores, confusion=matrix.tolist(), reliability=table)


def vote_rmse(predicted: np.ndarray, observed: np.ndarray) -> dict[str, float] | None:
    """Root-mean-square error of predicted vote fractions, per answer and over all three, on
    the galaxies that have observed fractions."""
    known = ~np.isnan(observed).any(axis=1)
    if not known.any():
        return None
    error = (np.asarray(predicted, float)[known] - np.asarray(observed, float)[known]) ** 2
    out = {answer: float(np.sqrt(error[:, i].mean())) for i, answer in enumerate(ANSWERS)}
    out["all"] = float(np.sqrt(error.mean()))
    return out


def tree_rmse(predicted: np.ndarray, observed: np.ndarray, tree: TreeSchema) -> dict[str, float] | None:
    """RMSE of the tree head's answers against the volunteers' weighted fractions (n, answers),
    per question over the galaxies where it was asked (its observed fractions sum above zero; NaN:
    unknown), and ``mean``, the mean over every answer of that answer's RMSE."""
    predicted, observed = np.asarray(predicted, float), np.asarray(observed, float)
    out: dict[str, float] = {}
    per_answer: list[float] = []
    for question, part in zip(tree.questions, tree.slices()):
        seen = observed[:, part]
        asked = ~np.isnan(seen).any(axis=1) & (np.nan_to_num(seen).sum(axis=1) > 0)
        if not asked.any():
            continue
        error = (predicted[asked, part] - seen[asked]) ** 2
        out[question.id] = float(np.sqrt(error.mean()))
        per_answer += [float(v) for v in np.sqrt(error.mean(axis=0))]
    if not per_answer:
        return None
    out["mean"] = float(np.mean(per_answer))
    return out


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


RowKind = Literal["fraction", "number", "count"]


@dataclass(frozen=True)
class MetricRow:
    """One headline figure: what it is, its value, and how to read it."""

    key: str
    label: str
    value: float | None
    kind: RowKind = "fraction"
    help: str = ""

    def text(self, missing: str = "–") -> str:
        """The value as a reader expects it: a percentage, a count or a plain number."""
        if self.value is None:
            return missing
        if self.kind == "fraction":
            return f"{self.value:.1%}"
        return f"{self.value:,}" if self.kind == "count" else f"{self.value:.3f}"


def metric_rows(metrics: Metrics) -> list[MetricRow]:
    """The headline figures of an evaluation, in the order every medium shows them."""
    rows = [
        MetricRow("n", f"galaxies evaluated ({metrics.split or 'held out'}"
                       f"{f', {metrics.label_rule} labels' if metrics.label_rule else ''})", metrics.n, "count"),
        MetricRow("accuracy", "3-class accuracy", metrics.accuracy),
        MetricRow("balanced_accuracy", "balanced accuracy", metrics.balanced_accuracy,
                  help="mean recall over the three classes: not flattered by the common class"),
        MetricRow("spiral_vs_elliptical", "Spiral vs Elliptical", metrics.spiral_vs_elliptical_accuracy,
                  help="on galaxies labelled either; the larger of the two probabilities decides"),
        MetricRow("ece", "calibration error (ECE)", metrics.ece, "number",
                  help="expected calibration error of the top-class probability (0 is perfect)"),
        MetricRow("log_loss", "log loss", metrics.log_loss, "number"),
    ]
    sym = metrics.symmetry_agreement
    if sym is not None:
        rows += [MetricRow("view_rot90", "one view: same answer turned 90 degrees", sym.rot90),
                 MetricRow("view_mirror", "one view: same answer mirrored", sym.mirror),
                 MetricRow("view_all_8", "one view: all 8 symmetries agree", sym.all_8)]
    if metrics.vote_rmse is not None:
        rows.append(MetricRow("vote_rmse", "vote-fraction RMSE (smooth, features, artifact)",
                              metrics.vote_rmse["all"], "number",
                              help="predicted against the volunteers' fractions, root-mean-square"))
    if metrics.tree_rmse is not None:
        for key, value in metrics.tree_rmse.items():
            if key == "mean":
                rows.append(MetricRow("tree_rmse_mean", "decision tree: mean RMSE over every answer", value, "number",
                                      help="each answer's predicted share against the volunteers' weighted "
                                           "fraction, where its question was asked; the mean over answers"))
            else:
                rows.append(MetricRow(f"tree_rmse_{key}", f"decision tree {key}: vote RMSE where asked", value,
                                      "number", help=QUESTION_WORDS.get(key, "")))
    turned = metrics.prediction_symmetry_agreement
    if turned is not None:
        how = "8-view average" if metrics.tta in (True, None) else "one view"
        rows += [MetricRow("answer_rot90", f"answer unchanged, cutout turned 90 degrees ({how})", turned.rot90),
                 MetricRow("answer_mirror", f"answer unchanged, cutout mirrored ({how})", turned.mirror)]
    return rows
