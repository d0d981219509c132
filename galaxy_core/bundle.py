"""Model bundles: safetensors weights plus a JSON card that carries everything needed to use them.

Weights are never unpickled: safetensors holds only tensors, so a crafted model file cannot run
code.  The card holds classes, input geometry, normalisation statistics, config and metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_path, write_text_atomic
from .config import CLASSES, ConfigError, GalaxyError, check_precision
from .model import build_model
from .normalise import ChannelStats, InputGeometry
from .precision import inference_precision

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "card.json"
EVALUATION_NAME = "evaluation.json"
CARD_FORMAT = 1


class BundleError(GalaxyError):
    """A model folder is missing, incomplete or not a model bundle."""


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1))


def save_weights(model: nn.Module, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


@dataclass
class ModelBundle:
    model: nn.Module
    card: dict[str, Any]
    path: Path

    @property
    def stats(self) -> ChannelStats:
        return ChannelStats.from_dict(self.card["normalisation"])

    @property
    def geometry(self) -> InputGeometry:
        g = self.card["input"]
        return InputGeometry(source_size=g["source_size"], crop=g["crop"], size=g["size"])

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def tta(self) -> bool:
        return bool(self.card.get("tta", False))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def precision(self) -> str:
        """The arithmetic predictions use: the training precision where this device has it natively."""
        return inference_precision(self.card.get("precision", "fp32"), self.device)


def save_bundle(out_dir: Path, model: nn.Module, card: dict[str, Any],
                evaluation: dict[str, Any] | None = None) -> None:
    """Weights first, card last: a folder with a card always has matching weights."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(model, out_dir / WEIGHTS_NAME)
    if evaluation is not None:
        write_json_atomic(out_dir / EVALUATION_NAME, evaluation)
    write_json_atomic(out_dir / CARD_NAME, {"format": CARD_FORMAT, **card})


def read_card(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / CARD_NAME
    if not path.is_file():
        raise BundleError(f"{model_dir} is not a model folder (no {CARD_NAME}); train one with "
                          "`python -m galaxy_core train` or pass --model")
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc})") from None
    missing = [k for k in ("classes", "arch", "input", "normalisation") if k not in card]
    if missing:
        raise BundleError(f"{path} lacks {', '.join(missing)}")
    if list(card["classes"]) != list(CLASSES):
        raise BundleError(f"{path}: classes {card['classes']} differ from {list(CLASSES)}")
    try:
        check_precision(card.get("precision", "fp32"))
    except ConfigError as exc:
        raise BundleError(f"{path}: {exc}") from None
    return card


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
    try:
        model = build_model(card["arch"], len(card["classes"]), int(card.get("width", 32)),
                            int(card.get("depth", 2)), int(card.get("aux_outputs", 0)))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{model_dir / CARD_NAME} describes no buildable model ({exc})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BundleError(f"{weights} does not match architecture {card['arch']}: "
                          f"{str(exc).splitlines()[0]}") from None
    model.to(device).eval()
    bundle = ModelBundle(model.to(memory_format=torch.channels_last), card, model_dir)
    try:  # read now, so a malformed card fails here with its name, not later inside a prediction
        bundle.geometry, bundle.stats
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{model_dir / CARD_NAME} has a malformed input or normalisation entry "
                          f"({exc.__class__.__name__}: {exc})") from None
    return bundle


def read_evaluation(model_dir: Path) -> dict[str, Any] | None:
    path = Path(model_dir) / EVALUATION_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text())
