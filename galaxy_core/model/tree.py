"""The Galaxy Zoo decision tree as data: questions, their answers (named by the GZ2 column stems)
and which answer leads to which question.

A model card stores the schema its tree head was trained on, so the tree is read from the card,
never from code; ``GZ2_TREE`` is Galaxy Zoo 2's (Willett et al. 2013, t01 to t09). The tree head
predicts, per question, the share of the volunteers asked it who gave each answer; its loss is the
multinomial likelihood of the volunteers' own vote counts, so a question nobody was asked weighs
nothing (zoobot's idea, with a multinomial in place of its Dirichlet-multinomial).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from galaxy_core.base import fields

STEM = re.compile(r"^t\d\d_[a-z0-9_]+_a\d\d_[a-z0-9_]+$")


@dataclass(frozen=True)
class Answer:
    """One answer: its GZ2 column stem (``t02_edgeon_a04_yes``), its words, and the question it
    leads to (None: the volunteer's path ends, or goes on to questions this tree leaves out)."""

    stem: str
    words: str
    leads_to: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"stem": self.stem, "words": self.words, "leads_to": self.leads_to}


@dataclass(frozen=True)
class Question:
    """One question: its id (``t02``), its words, and its answers in column order."""

    id: str
    words: str
    answers: tuple[Answer, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "words": self.words, "answers": [a.to_dict() for a in self.answers]}


@dataclass(frozen=True)
class TreeSchema:
    """A decision tree: questions in order, the first being the one every volunteer is asked."""

    questions: tuple[Question, ...]

    def __post_init__(self) -> None:
        ids = [q.id for q in self.questions]
        if not ids:
            raise fields.FieldError("tree.questions: the tree has no questions")
        if len(set(ids)) != len(ids):
            raise fields.FieldError(f"tree.questions: question ids repeat ({', '.join(ids)})")
        stems = [a.stem for a in self.answers]
        if len(set(stems)) != len(stems):
            raise fields.FieldError("tree.questions: answer stems repeat")
        for q in self.questions:
            if len(q.answers) < 2:
                raise fields.FieldError(f"tree.questions: question {q.id} needs at least two answers")
            for a in q.answers:
                if not STEM.match(a.stem) or not a.stem.startswith(q.id + "_"):
                    raise fields.FieldError(f"tree.questions: answer {fields.shown(a.stem)} of {q.id} is not a "
                                            f"GZ2 column stem ({q.id}_<question>_aNN_<answer>)")
                if a.leads_to is not None and (a.leads_to not in ids or a.leads_to == ids[0]):
                    raise fields.FieldError(f"tree.questions: answer {a.stem} leads to {fields.shown(a.leads_to)}, "
                                            "which is not a question of this tree after the first")
        self.order()  # raises on a loop

    def order(self) -> list[int]:
        """Question indices such that every question comes after each one that leads to it; a
        FieldError when answers lead round in a loop (a volunteer's path must end)."""
        ids = [q.id for q in self.questions]
        parents = {i: {j for j, q in enumerate(self.questions) for a in q.answers if a.leads_to == ids[i]}
                   for i in range(len(ids))}
        done: list[int] = []
        while len(done) < len(ids):
            ready = [i for i in range(len(ids)) if i not in done and parents[i] <= set(done)]
            if not ready:
                raise fields.FieldError("tree.questions: the answers lead round in a loop "
                                        f"({', '.join(ids[i] for i in range(len(ids)) if i not in done)})")
            done.extend(ready)
        return done

    @property
    def answers(self) -> tuple[Answer, ...]:
        return tuple(a for q in self.questions for a in q.answers)

    @property
    def stems(self) -> tuple[str, ...]:
        """Every answer's column stem, in the order of the tree head's outputs."""
        return tuple(a.stem for a in self.answers)

    def slices(self) -> list[slice]:
        """Each question's answers as a slice of the tree head's outputs."""
        out, start = [], 0
        for q in self.questions:
            out.append(slice(start, start + len(q.answers)))
            start += len(q.answers)
        return out

    def index(self, stem: str) -> int:
        return self.stems.index(stem)

    def question(self, question_id: str) -> Question:
        return next(q for q in self.questions if q.id == question_id)

    def reach(self, fractions: np.ndarray) -> np.ndarray:
        """(n, questions): the share of volunteers who would be asked each question, given the
        per-question answer fractions (n, answers): the first question reaches everyone, a later
        one the sum over the answers that lead to it of (reach of their question x answer share)."""
        fractions = np.asarray(fractions, dtype=np.float64)
        ids = [q.id for q in self.questions]
        reach = np.zeros((len(fractions), len(ids)))
        reach[:, 0] = 1.0
        slices = self.slices()
        for qi in self.order():
            q, part = self.questions[qi], slices[qi]
            for k, answer in enumerate(q.answers):
                if answer.leads_to is not None:
                    reach[:, ids.index(answer.leads_to)] += reach[:, qi] * fractions[:, part.start + k]
        return reach

    def to_dict(self) -> dict[str, Any]:
        return {"questions": [q.to_dict() for q in self.questions]}

    @classmethod
    def from_dict(cls, values: Any, path: str = "tree.") -> TreeSchema:
        values = fields.section(values, path.rstrip("."))
        questions = []
        for i, raw in enumerate(fields.rows(values, "questions", path, max_items=100)):
            where = f"{path}questions[{i}]."
            raw = fields.section(raw, where.rstrip("."))
            answers = []
            for j, a in enumerate(fields.rows(raw, "answers", where, max_items=100)):
                a_where = f"{where}answers[{j}]."
                a = fields.section(a, a_where.rstrip("."))
                leads = a.get("leads_to")
                answers.append(Answer(stem=fields.text(a, "stem", a_where, max_length=100),
                                      words=fields.text(a, "words", a_where, max_length=200),
                                      leads_to=None if leads is None else fields.text(a, "leads_to", a_where,
                                                                                      max_length=20)))
            questions.append(Question(id=fields.text(raw, "id", where, max_length=20),
                                      words=fields.text(raw, "words", where, max_length=200),
                                      answers=tuple(answers)))
        return cls(tuple(questions))


def _q(qid: str, words: str, *answers: tuple[str, str, str | None]) -> Question:
    return Question(qid, words, tuple(Answer(stem, said, leads) for stem, said, leads in answers))


GZ2_TREE = TreeSchema((
    _q("t01", "Is the galaxy simply smooth and rounded, with no sign of a disk?",
       ("t01_smooth_or_features_a01_smooth", "smooth", "t07"),
       ("t01_smooth_or_features_a02_features_or_disk", "a disk or features", "t02"),
       ("t01_smooth_or_features_a03_star_or_artifact", "a star or artifact", None)),
    _q("t02", "Could this be a disk viewed edge-on?",
       ("t02_edgeon_a04_yes", "seen edge-on", "t09"),
       ("t02_edgeon_a05_no", "not edge-on", "t03")),
    _q("t03", "Is there a sign of a bar feature through the centre of the galaxy?",
       ("t03_bar_a06_bar", "a bar", "t04"),
       ("t03_bar_a07_no_bar", "no bar", "t04")),
    _q("t04", "Is there any sign of a spiral arm pattern?",
       ("t04_spiral_a08_spiral", "spiral arms", "t05"),
       ("t04_spiral_a09_no_spiral", "no spiral arms", "t05")),
    _q("t05", "How prominent is the central bulge, compared with the rest of the galaxy?",
       ("t05_bulge_prominence_a10_no_bulge", "no bulge", "t06"),
       ("t05_bulge_prominence_a11_just_noticeable", "a just noticeable bulge", "t06"),
       ("t05_bulge_prominence_a12_obvious", "an obvious bulge", "t06"),
       ("t05_bulge_prominence_a13_dominant", "a dominant bulge", "t06")),
    _q("t06", "Is there anything odd?",
       ("t06_odd_a14_yes", "something odd", "t08"),
       ("t06_odd_a15_no", "nothing odd", None)),
    _q("t07", "How rounded is it?",
       ("t07_rounded_a16_completely_round", "completely round", "t06"),
       ("t07_rounded_a17_in_between", "in between round and cigar-shaped", "t06"),
       ("t07_rounded_a18_cigar_shaped", "cigar-shaped", "t06")),
    _q("t08", "Is the odd feature a ring, or is the galaxy disturbed or irregular?",
       ("t08_odd_feature_a19_ring", "a ring", None),
       ("t08_odd_feature_a20_lens_or_arc", "a lens or arc", None),
       ("t08_odd_feature_a21_disturbed", "disturbed", None),
       ("t08_odd_feature_a22_irregular", "irregular", None),
       ("t08_odd_feature_a23_other", "something else odd", None),
       ("t08_odd_feature_a24_merger", "a merger", None),
       ("t08_odd_feature_a38_dust_lane", "a dust lane", None)),
    _q("t09", "Does the galaxy have a bulge at its centre? If so, what shape?",
       ("t09_bulge_shape_a25_rounded", "with a rounded bulge", "t06"),
       ("t09_bulge_shape_a26_boxy", "with a boxy bulge", "t06"),
       ("t09_bulge_shape_a27_no_bulge", "with no bulge", "t06")),
))
"""Galaxy Zoo 2's tree, t01 to t09 (t10/t11, arm winding and count, are left out: the shared
catalogue has no votes for them). t05 leads to t10 in GZ2; here the path goes on to t06."""


def training_tree(tree_weight: float) -> TreeSchema | None:
    """The tree a training run's tree head answers: GZ2's when its loss has any weight."""
    return GZ2_TREE if tree_weight > 0 else None


def tree_fractions(logits: torch.Tensor, tree: TreeSchema) -> torch.Tensor:
    """Tree-head logits (n, answers) -> each question's answer distribution, side by side."""
    return torch.cat([torch.softmax(logits[:, part].float(), dim=1) for part in tree.slices()], dim=1)


def tree_log_probs(logits: torch.Tensor, tree: TreeSchema) -> torch.Tensor:
    return torch.cat([torch.log_softmax(logits[:, part].float(), dim=1) for part in tree.slices()], dim=1)


def tree_loss(logits: torch.Tensor, counts: torch.Tensor, tree: TreeSchema) -> torch.Tensor:
    """Count-weighted multinomial negative log-likelihood of the volunteers' votes, per galaxy,
    scaled by the volunteers who answered the first question: each question weighs by the share
    of them who were asked it, and a question nobody was asked (all counts 0) weighs nothing.
    Galaxies without counts (NaN) weigh nothing at all."""
    counts = torch.nan_to_num(counts.float(), nan=0.0).clamp_min(0)
    first = tree.slices()[0]
    total = counts[:, first].sum(dim=1, keepdim=True).clamp_min(1.0)
    per_galaxy = -(counts / total * tree_log_probs(logits, tree)).sum(dim=1)
    return per_galaxy.mean()


CLASS_RULES = ("class_head", "edge_on_disk")
"""How a card's three classes come about: the class head's probabilities as they are, or those
moved by the tree's edge-on share (``edge_on_disk``, see ``ClassRule``)."""


@dataclass(frozen=True)
class ClassRule:
    """The rule that turns a model's heads into the three classes.

    ``edge_on_disk``: GZ1 counts an edge-on disk as a spiral, but GZ2 volunteers call a small
    edge-on disk "smooth" and then "cigar-shaped", so a class head trained on GZ2's first question
    calls it Elliptical. The tree gives the share of volunteers who would see a disk edge-on or a
    cigar, E = P(features) P(edge-on | features) + P(smooth) P(cigar | smooth); a share
    m = min(1, edge_weight x E) of the Elliptical probability moves to Spiral (Uncertain keeps its own).
    ``edge_weight`` is tuned on validation galaxies and the wide-field development half only.
    """

    name: str = "class_head"
    edge_weight: float = 0.0

    @property
    def words(self) -> str:
        if self.name == "class_head":
            return "the class head's probabilities"
        return (f"edge-on disks count as disks: min(1, {self.edge_weight:g} x the predicted edge-on or cigar-shaped "
                "share) of the Elliptical probability moves to Spiral")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "edge_weight": self.edge_weight}

    @classmethod
    def from_dict(cls, values: Any, path: str = "class_rule.") -> ClassRule:
        values = fields.section(values, path.rstrip("."))
        return cls(name=fields.choice(values, "name", path, options=CLASS_RULES),
                   edge_weight=fields.number(values, "edge_weight", path, low=0, high=100, default=0.0))


EDGE_ON = ("t01_smooth_or_features_a02_features_or_disk", "t02_edgeon_a04_yes")
CIGAR = ("t01_smooth_or_features_a01_smooth", "t07_rounded_a18_cigar_shaped")


def edge_on_share(fractions: np.ndarray, tree: TreeSchema) -> np.ndarray:
    """(n,) the predicted share of volunteers who would see a disk edge-on or a cigar shape."""
    f = np.asarray(fractions, dtype=np.float64)
    pick = lambda pair: f[:, tree.index(pair[0])] * f[:, tree.index(pair[1])]  # noqa: E731
    return pick(EDGE_ON) + pick(CIGAR)


def apply_class_rule(probs: np.ndarray, fractions: np.ndarray | None, tree: TreeSchema | None,
                     rule: ClassRule, spiral: int = 0, elliptical: int = 1) -> np.ndarray:
    """Class probabilities (n, classes) under ``rule``; ``spiral`` and ``elliptical`` are the
    Spiral and Elliptical columns."""
    if rule.name == "class_head" or fractions is None or tree is None or rule.edge_weight == 0:
        return probs
    moved = np.clip(rule.edge_weight * edge_on_share(fractions, tree), 0.0, 1.0) * probs[:, elliptical]
    out = probs.copy()
    out[:, elliptical] -= moved
    out[:, spiral] += moved
    return out.astype(probs.dtype)
