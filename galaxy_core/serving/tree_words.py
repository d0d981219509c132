"""A tree head's answers in words: the volunteers' most likely path through the decision tree,
each step with its predicted share, and every answer's share for a table.

The words come from the card's tree schema, so a model trained on another tree reads out its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from galaxy_core.model.tree import TreeSchema


@dataclass(frozen=True)
class AnswerShare:
    """One answer: its question, its words, its column stem, the predicted share of the volunteers
    asked that question who would give it, and the share of all volunteers asked that question."""

    question: str
    question_words: str
    stem: str
    words: str
    fraction: float
    reach: float


@dataclass(frozen=True)
class TreeReading:
    sentence: str  # "A disk or features (91%), seen edge-on (78%), with a rounded bulge (55%), nothing odd (88%)."
    path: tuple[AnswerShare, ...]  # the answers of the sentence, in order
    answers: tuple[AnswerShare, ...]  # every answer, in tree order


def read_tree(fractions: Mapping[str, float] | np.ndarray, tree: TreeSchema) -> TreeReading:
    """The most likely path through ``tree`` given each answer's predicted share (by stem, or an
    array in the tree's order): from the first question, the most popular answer, then the
    question it leads to, until a path ends."""
    values = (np.array([float(fractions[s]) for s in tree.stems]) if isinstance(fractions, Mapping)
              else np.asarray(fractions, dtype=float))
    reach = tree.reach(values[None, :])[0]
    slices = tree.slices()
    answers = tuple(AnswerShare(q.id, q.words, a.stem, a.words, float(values[part.start + k]), float(reach[qi]))
                    for qi, (q, part) in enumerate(zip(tree.questions, slices)) for k, a in enumerate(q.answers))
    path: list[AnswerShare] = []
    qi: int | None = 0
    while qi is not None and len(path) < len(tree.questions):
        part = slices[qi]
        k = int(np.argmax(values[part]))
        path.append(answers[part.start + k])
        leads = tree.questions[qi].answers[k].leads_to
        qi = None if leads is None else [q.id for q in tree.questions].index(leads)
    text = ", ".join(f"{a.words} ({a.fraction:.0%})" for a in path)
    return TreeReading(text[:1].upper() + text[1:] + ".", tuple(path), answers)
