"""Model bundles: safetensors weights beside a typed card, and the evaluation written with them.

Weights are never unpickled: safetensors holds only tensors, so a crafted model file cannot run
code. A folder is read through ``read_card`` / ``load_bundle``, which turn every kind of damage
(missing files, bad JSON, bytes that are not UTF-8, values out of range) into a ``BundleError``
naming the file and the field.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from galaxy_core.base import fields
from galaxy_core.base.atomic import atomic_path, write_text_atomic
from galaxy_core.base.config import CLASSES, GalaxyError, TrainConfig
from galaxy_core.data.framing import framing_spec
from galaxy_core.data.geometry import InputGeometry
from galaxy_core.data.normalise import ChannelStats
from galaxy_core.model.card import DataSummary, Machine, ModelCard, Provenance
from galaxy_core.model.metrics import Metrics
from galaxy_core.model.network import Architecture, build_model
from galaxy_core.model.precision import inference_precision
from galaxy_core.model.tree import training_tree

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "card.json"
EVALUATION_NAME = "evaluation.json"
MAX_SIDE_FILE_BYTES = 256 * 1024**2
MAX_CARD_BYTES = 1024**2
"""A card is a few kB; the app lists every card on each page, so a huge one is refused unread."""


class BundleError(GalaxyError):
    """A model folder is missing, incomplete or not a model bundle."""


@dataclass
class ModelBundle:
    """A network, its card, and the arithmetic it runs in here (resolved once, when loaded)."""

    model: nn.Module
    card: ModelCard
    precision: str
    path: Path | None = None

    @classmethod
    def ready(cls, model: nn.Module, card: ModelCard, path: Path | None = None) -> ModelBundle:
        """In evaluation mode, channels-last, in the card's precision where this device has it natively."""
        model = model.eval().to(memory_format=torch.channels_last)
        device = next(model.parameters()).device
        return cls(model, card, inference_precision(card.precision, device), path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def geometry(self) -> InputGeometry:
        return self.card.input

    @property
    def stats(self) -> ChannelStats:
        return self.card.normalisation


def new_card(config: TrainConfig, geometry: InputGeometry, stats: ChannelStats, *, command: str | None,
             seconds: float, device: torch.device, world: int, backend: str, data: DataSummary) -> ModelCard:
    """The card of a model a training run has just made (metrics and temperature come later)."""
    machine = Machine(device=str(device), processes=world, backend=backend, threads=torch.get_num_threads(),
                      platform=platform.platform(), torch=torch.__version__)
    provenance = Provenance(config=config, seed=config.seed, trained_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            training_seconds=round(seconds, 1), command=command, machine=machine, data=data)
    tree = training_tree(config.tree_weight)
    return ModelCard(architecture=Architecture(config.arch, config.width, config.depth, config.aux_outputs,
                                               0 if tree is None else len(tree.stems)),
                     input=geometry, normalisation=stats, label_rule=config.label_rule, tta=config.tta,
                     precision=config.precision, provenance=provenance,
                     framing=framing_spec(config.framing), tree=tree,
                     trained_for_greyscale=config.greyscale > 0)


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1))


def save_weights(model: nn.Module, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def save_bundle(out_dir: Path, model: nn.Module, card: ModelCard, evaluation: Mapping[str, Any] | None = None) -> None:
    """Weights first, card last: a folder with a card always has matching weights."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(model, out_dir / WEIGHTS_NAME)
    if evaluation is not None:
        write_json_atomic(out_dir / EVALUATION_NAME, evaluation)
    write_json_atomic(out_dir / CARD_NAME, card.to_dict())


def read_json_file(path: Path, limit: int = MAX_SIDE_FILE_BYTES) -> Any:
    """A small JSON side file, whatever its damage, as data or a BundleError naming the file."""
    try:
        if path.stat().st_size > limit:
            raise BundleError(f"{path} is larger than {limit / 1024**2:g} MB")
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise BundleError(f"{path} is not UTF-8 text") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise BundleError(f"{path} is not valid JSON ({fields.clip(str(exc), 200)})") from None


def read_card(model_dir: Path) -> ModelCard:
    path = Path(model_dir) / CARD_NAME
    if not path.is_file():
        raise BundleError(f"{model_dir} is not a model folder (no {CARD_NAME}); train one with "
                          "`python -m galaxy_core train` or pass --model")
    try:
        return ModelCard.from_dict(read_json_file(path, MAX_CARD_BYTES))
    except fields.FieldError as exc:
        section = exc.field.split(".", 1)[0]
        if section == "architecture":
            raise BundleError(f"{path} describes no buildable model ({exc})") from None
        if section in ("input", "normalisation"):
            raise BundleError(f"{path} has a malformed input or normalisation entry ({exc})") from None
        raise BundleError(f"{path}: {exc}") from None


def load_bundle(model_dir: Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Load weights (safetensors, no pickle) into the architecture the card names."""
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    weights = model_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise BundleError(f"{model_dir} has a card but no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{weights} is not a valid safetensors file ({exc})") from None
    model = build_model(card.architecture)
    _check_tensors(state, model.state_dict(), weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BundleError(f"{weights} does not match architecture {card.architecture.name}: "
                          f"{str(exc).splitlines()[0]}") from None
    return ModelBundle.ready(model.to(device), card, model_dir)


def _check_tensors(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], weights: Path) -> None:
    """Refuse weights that would load and then answer nonsense: ``load_state_dict`` casts any dtype
    (int8 becomes float silently) and copies NaN and infinity as they are."""
    for name, tensor in state.items():
        want = expected.get(name)
        if want is not None and tensor.dtype != want.dtype:
            raise BundleError(f"{weights}: tensor {fields.clip(name, 100)} is "
                              f"{str(tensor.dtype).removeprefix('torch.')}, "
                              f"not the {str(want.dtype).removeprefix('torch.')} this model holds; the file is "
                              "damaged or not this model's")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BundleError(f"{weights}: tensor {fields.clip(name, 100)} holds NaN or infinite values; the model "
                              "is damaged (a diverged training run?): retrain it or restore the file")


@dataclass(frozen=True)
class Evaluation:
    """What training measured on its held-out galaxies, kept beside the weights."""

    metrics: Metrics
    split_ids: dict[str, list[str]]
    misclassified: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics.to_dict(), "split_ids": self.split_ids,
                "misclassified": self.misclassified}

    @classmethod
    def from_dict(cls, values: Any) -> Evaluation:
        values = fields.section(values, "")
        ids = fields.section(values.get("split_ids", {}), "split_ids")
        split_ids = {}
        for name in ("train", "val", "test"):
            items = fields.rows(ids, name, "split_ids.", max_items=10**8, default=[])
            if not all(isinstance(i, str) for i in items):
                raise fields.FieldError(f"split_ids.{name} must be a list of galaxy ids (text)")
            split_ids[name] = items
        rows = []
        for i, row in enumerate(fields.rows(values, "misclassified", default=[], max_items=10**7)):
            p = f"misclassified[{i}]."
            row = fields.section(row, p.rstrip("."))
            rows.append({"id": fields.text(row, "id", p, max_length=500),
                         "image": fields.text(row, "image", p, max_length=4096),
                         "true": fields.choice(row, "true", p, options=CLASSES),
                         "predicted": fields.choice(row, "predicted", p, options=CLASSES),
                         **{f"p_{c.lower()}": fields.number(row, f"p_{c.lower()}", p, low=0, high=1)
                            for c in CLASSES}})
        return cls(Metrics.from_dict(values.get("metrics")), split_ids, rows)


def read_evaluation(model_dir: Path) -> Evaluation | None:
    """The model's evaluation file, or None if it has none; damage is a BundleError."""
    path = Path(model_dir) / EVALUATION_NAME
    if not path.is_file():
        return None
    try:
        return Evaluation.from_dict(read_json_file(path))
    except fields.FieldError as exc:
        raise BundleError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class ModelInfo:
    """A folder under the models root: its card, or why it cannot be used."""

    name: str
    path: Path
    card_mtime: float
    card: ModelCard | None
    error: str | None = None


def list_models(models_root: Path) -> list[ModelInfo]:
    """Every folder with a card.json under ``models_root``; unreadable cards carry their error."""
    root = Path(models_root)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(p for p in root.iterdir() if (p / CARD_NAME).is_file()):
        try:
            mtime = (path / CARD_NAME).stat().st_mtime
            found.append(ModelInfo(path.name, path, mtime, read_card(path)))
        except BundleError as exc:
            found.append(ModelInfo(path.name, path, 0.0, None, str(exc)))
        except OSError as exc:  # unreadable folder or card: listed, never fatal
            found.append(ModelInfo(path.name, path, 0.0, None, f"{path / CARD_NAME} cannot be read ({exc.strerror})"))
    return found
