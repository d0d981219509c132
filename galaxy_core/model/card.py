"""The typed model card: the one owner of everything a saved model needs to be used correctly.

Classes, label rule, architecture, input geometry (cutout size, crop, network size, pixel scale),
channel statistics, test-time augmentation, temperature, precision, provenance and metrics live
here and nowhere else. ``from_dict`` validates every field of an untrusted ``card.json`` and
raises an error naming the field; cards of the first format still load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from galaxy_core.base import fields
from galaxy_core.base.config import (
    CLASSES,
    DEFAULT_LABEL_RULE,
    LABEL_RULES,
    LEGACY_LABEL_RULE,
    PIXEL_SCALE,
    PRECISIONS,
    ConfigError,
    TrainConfig,
)
from galaxy_core.data.framing import FramingSpec
from galaxy_core.data.geometry import InputGeometry
from galaxy_core.data.normalise import ChannelStats
from galaxy_core.model.metrics import Metrics
from galaxy_core.model.network import Architecture
from galaxy_core.model.tree import ClassRule, TreeSchema

CARD_VERSION = 3
READABLE_FORMATS = (1, 2, 3)
"""Format 3 added the decision tree, the class rule and ``trained_for_greyscale``; a format-2 card
reads as a model without a tree whose classes are its class head's."""
LABEL_QUESTIONS = {
    "votes": "what Galaxy Zoo volunteers see in this image",
    "debiased": "intrinsic, distance-corrected morphology (Galaxy Zoo's debiased votes)",
}
"""The question a model answers, by the label rule it was trained on."""

DEFAULT_CONFIDENCE_FLOOR = 0.55
"""An answer whose calibrated top probability is below this is flagged "low confidence": with three
classes, a model that is below 55% sure was right on under half of the shipped models' test
galaxies (41% votes, 51% debiased)."""


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: str) -> EpochRecord:
        values = fields.section(values, path.rstrip("."))
        finite = dict(low=0.0, high=1e9)
        return cls(epoch=fields.integer(values, "epoch", path, low=1, high=10**6),
                   train_loss=fields.number(values, "train_loss", path, **finite),
                   train_accuracy=fields.number(values, "train_accuracy", path, low=0, high=1),
                   val_loss=fields.number(values, "val_loss", path, **finite),
                   val_accuracy=fields.number(values, "val_accuracy", path, low=0, high=1),
                   lr=fields.number(values, "lr", path, low=0, high=10),
                   seconds=fields.number(values, "seconds", path, **finite))


@dataclass(frozen=True)
class Machine:
    """Where a model was trained."""

    device: str = "cpu"
    processes: int = 1
    backend: str = "none"
    threads: int = 1
    platform: str = ""
    torch: str = ""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: str = "provenance.machine.") -> Machine:
        values = fields.section(values, path.rstrip("."))
        return cls(device=fields.text(values, "device", path, default="?", max_length=100),
                   processes=fields.integer(values, "processes", path, low=1, high=10**6, default=1),
                   backend=fields.text(values, "backend", path, default="none", max_length=100),
                   threads=fields.integer(values, "threads", path, low=1, high=10**6, default=1),
                   platform=fields.text(values, "platform", path, default="", max_length=500),
                   torch=fields.text(values, "torch", path, default="", max_length=100))


def _counts(values: Mapping[str, Any], key: str, path: str, names: tuple[str, ...]) -> dict[str, int]:
    section = fields.section(values.get(key, {}), f"{path}{key}")
    return {name: fields.integer(section, name, f"{path}{key}.", low=0, high=10**9) for name in names}


@dataclass(frozen=True)
class DataSummary:
    """What the model was trained and tested on."""

    galaxies: int
    cache: str
    split: dict[str, int]
    train_before_balancing: dict[str, int]
    train_after_balancing: dict[str, int]

    @property
    def split_text(self) -> str:
        s = self.split
        return (f"{self.galaxies:,} galaxies: {s['train']:,} train / {s['val']:,} validation / "
                f"{s['test']:,} test")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: str = "provenance.data.") -> DataSummary:
        values = fields.section(values, path.rstrip("."))
        return cls(galaxies=fields.integer(values, "galaxies", path, low=0, high=10**9),
                   cache=fields.text(values, "cache", path, default="", max_length=200),
                   split=_counts(values, "split", path, ("train", "val", "test")),
                   train_before_balancing=_counts(values, "train_before_balancing", path, CLASSES),
                   train_after_balancing=_counts(values, "train_after_balancing", path, CLASSES))


@dataclass(frozen=True)
class Provenance:
    """How the model was made: enough to reproduce it."""

    config: TrainConfig
    seed: int
    trained_at: str
    training_seconds: float
    command: str | None = None
    machine: Machine = field(default_factory=Machine)
    data: DataSummary | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["config"] = _without_rule(self.config.to_dict())
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: str = "provenance.", rule: str | None = None) -> Provenance:
        """``rule``: the card's label rule, which the stored config leaves out."""
        values = fields.section(values, path.rstrip("."))
        try:
            stored = dict(fields.section(values.get("config"), f"{path}config"))
            if rule is not None and "labels" not in stored:
                stored.setdefault("label_rule", rule)
            config = TrainConfig.from_dict(stored)
        except (ConfigError, TypeError) as exc:
            raise fields.FieldError(f"{path}config: {exc}") from None
        command = values.get("command")
        return cls(config=config, seed=fields.integer(values, "seed", path, low=0, high=2**32 - 1),
                   trained_at=fields.text(values, "trained_at", path, default="", max_length=100),
                   training_seconds=fields.number(values, "training_seconds", path, low=0, high=1e9, default=0.0),
                   command=None if command is None else fields.text(values, "command", path),
                   machine=Machine.from_dict(values.get("machine", {}), f"{path}machine."),
                   data=None if values.get("data") is None else DataSummary.from_dict(values["data"], f"{path}data."))


@dataclass(frozen=True)
class ModelCard:
    """Everything a saved model needs to be used correctly, typed and validated."""

    architecture: Architecture
    input: InputGeometry
    normalisation: ChannelStats
    label_rule: str = DEFAULT_LABEL_RULE
    tta: bool = True
    temperature: float = 1.0
    vote_temperature: float = 1.0
    precision: str = "fp32"
    provenance: Provenance | None = None
    metrics: Metrics | None = None
    history: tuple[EpochRecord, ...] = ()
    classes: tuple[str, ...] = CLASSES
    framing: FramingSpec | None = None  # None: images are centre-cropped, not framed
    confidence_floor: float = DEFAULT_CONFIDENCE_FLOOR
    tree: TreeSchema | None = None  # the decision tree its tree head answers (None: no tree head)
    class_rule: ClassRule = field(default_factory=ClassRule)
    trained_for_greyscale: bool = False

    def __post_init__(self) -> None:
        answers = 0 if self.tree is None else len(self.tree.stems)
        if self.architecture.tree_outputs != answers:
            raise fields.FieldError(f"architecture.tree_outputs is {self.architecture.tree_outputs} but the card's "
                                    f"tree has {answers} answers")
        if self.class_rule.name != "class_head" and self.tree is None:
            raise fields.FieldError(f"class_rule {self.class_rule.name} needs a tree, and the card has none")

    @property
    def question(self) -> str:
        return LABEL_QUESTIONS[self.label_rule]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CARD_VERSION, "classes": list(self.classes), "label_rule": self.label_rule,
            "architecture": self.architecture.to_dict(), "input": self.input.to_dict(),
            "normalisation": self.normalisation.to_dict(), "tta": self.tta,
            "temperature": self.temperature, "vote_temperature": self.vote_temperature,
            "precision": self.precision,
            "framing": None if self.framing is None else self.framing.to_dict(),
            "confidence_floor": self.confidence_floor,
            "tree": None if self.tree is None else self.tree.to_dict(),
            "class_rule": self.class_rule.to_dict(), "trained_for_greyscale": self.trained_for_greyscale,
            "provenance": None if self.provenance is None else self.provenance.to_dict(),
            "metrics": None if self.metrics is None else _without_rule(self.metrics.to_dict(reliability=False)),
            "history": [h.to_dict() for h in self.history],
        }

    @classmethod
    def from_dict(cls, values: Any) -> ModelCard:
        values = fields.section(values, "")
        version = values.get("format", 1)
        if version == 1:
            values = _upgrade_format_1(values)
        elif version not in READABLE_FORMATS:
            raise fields.FieldError(f"format {fields.shown(version)} is not a card format this version "
                                    f"reads ({', '.join(map(str, READABLE_FORMATS))})")
        classes = values.get("classes")
        if not isinstance(classes, list) or tuple(classes) != CLASSES:
            raise fields.FieldError(f"classes must be {list(CLASSES)}, got {fields.shown(classes)}")
        history = fields.rows(values, "history", default=[], max_items=100_000)
        # Format 2 cards named the rule "labels"; the metrics and the provenance's config take
        # the card's rule, which is stored once.
        rule = fields.choice(values, "label_rule" if "label_rule" in values else "labels", options=LABEL_RULES)
        provenance = None if values.get("provenance") is None else Provenance.from_dict(values["provenance"], rule=rule)
        metrics = None if values.get("metrics") is None else dataclasses.replace(
            Metrics.from_dict(values["metrics"]), label_rule=rule)
        return cls(
            architecture=Architecture.from_dict(values.get("architecture")),
            input=InputGeometry.from_dict(values.get("input")),
            normalisation=ChannelStats.from_dict(values.get("normalisation")),
            label_rule=rule,
            tta=fields.flag(values, "tta", default=False),
            temperature=fields.number(values, "temperature", low=0.05, high=20, default=1.0),
            vote_temperature=fields.number(values, "vote_temperature", low=0.05, high=20, default=1.0),
            precision=fields.choice(values, "precision", options=PRECISIONS, default="fp32"),
            framing=None if values.get("framing") is None else FramingSpec.from_dict(values["framing"]),
            confidence_floor=fields.number(values, "confidence_floor", low=0, high=1,
                                           default=DEFAULT_CONFIDENCE_FLOOR),
            tree=None if values.get("tree") is None else TreeSchema.from_dict(values["tree"]),
            class_rule=ClassRule() if values.get("class_rule") is None else ClassRule.from_dict(values["class_rule"]),
            trained_for_greyscale=fields.flag(values, "trained_for_greyscale", default=False),
            provenance=provenance, metrics=metrics,
            history=tuple(EpochRecord.from_dict(h, f"history[{i}].") for i, h in enumerate(history)))


def _without_rule(values: dict[str, Any]) -> dict[str, Any]:
    """A config's or metrics' dict without the label rule, which the card stores once."""
    return {k: v for k, v in values.items() if k not in ("label_rule", "labels")}


def _upgrade_format_1(card: Mapping[str, Any]) -> dict[str, Any]:
    """A first-format card (flat architecture and provenance keys, no pixel scale, debiased
    labels, the only rule then) in today's layout; its values are not changed."""
    values = dict(card)
    geometry = fields.section(values.get("input"), "input")
    out = {key: values.get(key) for key in ("classes", "normalisation", "tta", "temperature", "precision",
                                            "metrics", "history")}
    out.update({
        "format": CARD_VERSION, "label_rule": LEGACY_LABEL_RULE,
        "architecture": {"name": values.get("arch"), "width": values.get("width", 32),
                         "depth": values.get("depth", 2), "aux_outputs": values.get("aux_outputs", 0)},
        "input": {"source_size": geometry.get("source_size"), "crop": geometry.get("crop"),
                  "input_size": geometry.get("size"), "pixel_scale": PIXEL_SCALE},
    })
    if values.get("config") is not None:
        out["provenance"] = {key: values.get(key) for key in ("command", "seed", "trained_at",
                                                              "training_seconds", "machine", "data", "config")}
    return {k: v for k, v in out.items() if v is not None}
