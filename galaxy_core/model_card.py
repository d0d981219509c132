"""A human-readable model card (Markdown) and reliability diagram (PNG) from a bundle's JSON."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from .atomic import atomic_path, write_text_atomic
from .config import CLASSES

MODEL_CARD_NAME = "MODEL_CARD.md"
PRECISION_WORDS = {"fp32": "float32", "bf16": "bfloat16 autocast (float32 weights; float32 where a "
                                               "processor lacks native bfloat16)"}
RELIABILITY_NAME = "reliability.png"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def render_model_card(card: dict, metrics: dict) -> str:
    """Markdown summary: what the model is, how it was made, and how well it does."""
    cfg, data = card["config"], card["data"]
    sym = metrics.get("symmetry_agreement", {})
    turned = metrics.get("prediction_symmetry_agreement", {})
    lines = [
        "# Galaxy morphology model card", "",
        f"Classes: {', '.join(card['classes'])}. Input: the central {card['input']['crop']} of a "
        f"{card['input']['source_size']}-pixel SDSS cutout (0.2 arcsec/pixel), resized to "
        f"{card['input']['size']}x{card['input']['size']}. Architecture: `{card['arch']}` "
        f"(width {card['width']}, depth {card['depth']}). Test-time augmentation over the 8 symmetries "
        f"of the square: {'on' if card.get('tta') else 'off'}. Temperature: {card.get('temperature', 1.0):.3f}. "
        f"Arithmetic: {PRECISION_WORDS[card.get('precision', 'fp32')]}.",
        "",
        f"Trained {card['trained_at']} in {card['training_seconds'] / 60:.1f} min on "
        f"{card['machine']['device']} ({card['machine']['processes']} process(es), "
        f"{card['machine']['threads']} threads), torch {card['machine']['torch']}, seed {card['seed']}.", "",
        "Reproduce with:", "", "```", card.get("command") or "(trained from the Python API)", "```", "",
        "## Data", "",
        f"{data['galaxies']} Galaxy Zoo 2 galaxies with SDSS cutouts, split by galaxy (stratified, seed "
        f"{card['seed']}) into {data['split']['train']} train / {data['split']['val']} validation / "
        f"{data['split']['test']} test before any augmentation. Labels: debiased vote fraction > 0.8 for "
        "smooth (Elliptical) or features/disk (Spiral), else Uncertain; trained on "
        f"{'vote-fraction soft labels' if cfg['soft_labels'] else 'hard labels'}.", "",
        f"Training views before balancing: {data['train_before_balancing']}; after: "
        f"{data['train_after_balancing']} (balancing {'on' if cfg['balance'] else 'off'}).", "",
        f"## Test metrics ({metrics['n']} held-out galaxies, natural class mix)", "",
        "| metric | value |", "| --- | --- |",
        f"| 3-class accuracy | {_pct(metrics['accuracy'])} |",
        f"| balanced accuracy | {_pct(metrics['balanced_accuracy'])} |",
        f"| Spiral vs Elliptical (on galaxies labelled either) | {_pct(metrics['spiral_vs_elliptical_accuracy'])} |",
        f"| expected calibration error | {metrics['ece']:.3f} |",
        f"| log loss | {metrics['log_loss']:.3f} |",
        f"| agreement with 90-degree rotated copy (single view) | {_pct(sym.get('rot90'))} |",
        f"| agreement with mirrored copy (single view) | {_pct(sym.get('mirror'))} |",
        f"| all 8 symmetric views agree (single view) | {_pct(sym.get('all_8'))} |",
        f"| same answer for the cutout turned by 90 degrees (as predicted) | {_pct(turned.get('rot90'))} |",
        f"| same answer for the mirrored cutout (as predicted) | {_pct(turned.get('mirror'))} |", "",
        "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |",
    ]
    for name, s in metrics["per_class"].items():
        lines.append(f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |")
    lines += ["", "Confusion matrix (rows: true, columns: predicted):", "",
              "| | " + " | ".join(CLASSES) + " |", "| --- |" + " --- |" * len(CLASSES)]
    for name, row in zip(CLASSES, metrics["confusion"]):
        lines.append(f"| {name} | " + " | ".join(map(str, row)) + " |")
    lines += ["", f"Reliability diagram: [{RELIABILITY_NAME}]({RELIABILITY_NAME}).", "",
              "| confidence bin | galaxies | mean confidence | accuracy |", "| --- | --- | --- | --- |"]
    for b in metrics.get("reliability", []):
        lines.append(f"| {b['low']:.2f}-{b['high']:.2f} | {b['count']} | {b['confidence']:.3f} | {b['accuracy']:.3f} |")
    lines += ["", "Images: Sloan Digital Sky Survey. Labels: Galaxy Zoo (Lintott et al. 2008, 2011; "
              "Willett et al. 2013; Hart et al. 2016).", ""]
    return "\n".join(lines)


def draw_reliability(reliability: list[dict], size: int = 360) -> Image.Image:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    pad = 40
    span = size - 2 * pad

    def xy(conf: float, acc: float) -> tuple[float, float]:
        return pad + conf * span, size - pad - acc * span

    draw.rectangle([pad, pad, size - pad, size - pad], outline="black")
    draw.line([xy(0, 0), xy(1, 1)], fill=(150, 150, 150), width=1)
    for b in reliability:
        left, _ = xy(b["low"], 0)
        right, _ = xy(b["high"], 0)
        _, top = xy(0, b["accuracy"])
        draw.rectangle([left + 1, top, right - 1, size - pad], fill=(70, 110, 200), outline=(30, 60, 140))
        cx, cy = xy(b["confidence"], b["accuracy"])
        draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=(220, 60, 40))
    draw.text((pad, size - pad + 8), "confidence 0 -> 1", fill="black")
    draw.text((4, pad - 20), "accuracy (bars) vs perfect calibration (grey)", fill="black")
    return image


def write_model_card(model_dir: Path, card: dict, metrics: dict) -> None:
    write_text_atomic(Path(model_dir) / MODEL_CARD_NAME, render_model_card(card, metrics))
    with atomic_path(Path(model_dir) / RELIABILITY_NAME) as tmp:
        draw_reliability(metrics.get("reliability", [])).save(tmp, format="PNG")
