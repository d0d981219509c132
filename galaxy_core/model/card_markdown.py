"""A human-readable model card (Markdown) and reliability diagram (PNG) from the typed card."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from galaxy_core.base.atomic import atomic_path, write_text_atomic
from galaxy_core.base.config import CLASS_THRESHOLD, CLASSES
from galaxy_core.model.card import ModelCard
from galaxy_core.model.metrics import Metrics, ReliabilityBin, metric_rows

MODEL_CARD_NAME = "MODEL_CARD.md"
RELIABILITY_NAME = "reliability.png"
PRECISION_WORDS = {"fp32": "float32", "bf16": "bfloat16 autocast (float32 weights; float32 where a "
                                               "processor lacks native bfloat16)"}
LABEL_WORDS = {"votes": "the volunteers' own (weighted) vote fraction", "debiased": "the debiased vote fraction"}


def render_model_card(card: ModelCard, metrics: Metrics) -> str:
    """Markdown summary: what the model is, how it was made, and how well it does."""
    g, arch, prov = card.input, card.architecture, card.provenance
    cfg, data = prov.config, prov.data
    lines = [
        "# Galaxy morphology model card", "",
        f"Answers: {card.question}. Classes: {', '.join(card.classes)}. Input: "
        + (f"the galaxy found in the image and framed so that the radius holding 90% of its light is "
           f"{card.framing.radius_fraction:.0%} of the side, as every training cutout was; then "
           if card.framing else "")
        + f"the central {g.crop} of a "
        f"{g.source_size}-pixel SDSS cutout ({g.pixel_scale:g} arcsec/pixel), resized to "
        f"{g.input_size}x{g.input_size}. Architecture: `{arch.name}` (width {arch.width}, depth {arch.depth}). "
        f"Test-time augmentation over the 8 symmetries of the square: {'on' if card.tta else 'off'}. "
        f"Temperature: {card.temperature:.3f}. Arithmetic: {PRECISION_WORDS[card.precision]}. "
        + ("It also predicts the vote fractions for smooth / features or disk / star or artifact "
           f"(temperature {card.vote_temperature:.3f}). " if arch.aux_outputs == 3 else "")
        + f"An answer whose top probability is below {card.confidence_floor:.0%} carries a low-confidence "
        "warning, as does an image in which no galaxy is found or the galaxy is cut by the edge.",
        "",
        *([] if card.tree is None else [
            f"Decision tree: it also answers every question of the {len(card.tree.questions)}-question Galaxy Zoo "
            f"tree ({', '.join(q.id for q in card.tree.questions)}; {len(card.tree.stems)} answers, the tree is "
            "stored in card.json), trained on the volunteers' vote counts (a count-weighted multinomial "
            "per question, so a question nobody was asked weighs nothing).", ""]),
        f"Classes from: {card.class_rule.words}.", "",
        "Trained for greyscale images: " + ("yes (a share of training views turned to greyscale)."
                                            if card.trained_for_greyscale else "no."), "",
        f"Trained {prov.trained_at} in {prov.training_seconds / 60:.1f} min on {prov.machine.device} "
        f"({prov.machine.processes} process(es), {prov.machine.threads} threads), torch {prov.machine.torch}, "
        f"seed {prov.seed}.", "",
        "Reproduce with:", "", "```", prov.command or "(trained from the Python API)", "```", "",
        "## Data", "",
        f"{data.galaxies} Galaxy Zoo galaxies with SDSS cutouts, split by galaxy (stratified, seed "
        f"{cfg.split.seed}) into {data.split['train']} train / {data.split['val']} validation / "
        f"{data.split['test']} test before any augmentation. Labels: {LABEL_WORDS[card.label_rule]} > "
        f"{CLASS_THRESHOLD:g} for "
        "smooth (Elliptical) or features/disk (Spiral), else Uncertain; trained on "
        f"{'vote-fraction soft labels' if cfg.soft_labels else 'hard labels'}.", "",
        f"Training views before balancing: {data.train_before_balancing}; after: "
        f"{data.train_after_balancing} (balancing: {cfg.balance}).", "",
        f"## Test metrics ({metrics.n} held-out galaxies, natural class mix)", "",
        "| metric | value |", "| --- | --- |",
        *[f"| {row.label} | {row.text('n/a')} |" for row in metric_rows(metrics)[1:]], "",
        "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |",
    ]
    for name, s in metrics.per_class.items():
        lines.append(f"| {name} | {s.precision:.3f} | {s.recall:.3f} | {s.f1:.3f} | {s.support} |")
    lines += ["", "Confusion matrix (rows: true, columns: predicted):", "",
              "| | " + " | ".join(CLASSES) + " |", "| --- |" + " --- |" * len(CLASSES)]
    for name, row in zip(CLASSES, metrics.confusion):
        lines.append(f"| {name} | " + " | ".join(map(str, row)) + " |")
    lines += ["", f"Reliability diagram: [{RELIABILITY_NAME}]({RELIABILITY_NAME}).", "",
              "| confidence bin | galaxies | mean confidence | accuracy |", "| --- | --- | --- | --- |"]
    for b in metrics.reliability:
        lines.append(f"| {b.low:.2f}-{b.high:.2f} | {b.count} | {b.confidence:.3f} | {b.accuracy:.3f} |")
    lines += ["", "Images: Sloan Digital Sky Survey. Labels: Galaxy Zoo (Lintott et al. 2008, 2011; "
              "Willett et al. 2013; Hart et al. 2016).", ""]
    return "\n".join(lines)


def draw_reliability(reliability: list[ReliabilityBin], size: int = 360) -> Image.Image:
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
        left, _ = xy(b.low, 0)
        right, _ = xy(b.high, 0)
        _, top = xy(0, b.accuracy)
        draw.rectangle([left + 1, top, right - 1, size - pad], fill=(70, 110, 200), outline=(30, 60, 140))
        cx, cy = xy(b.confidence, b.accuracy)
        draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=(220, 60, 40))
    draw.text((pad, size - pad + 8), "confidence 0 -> 1", fill="black")
    draw.text((4, pad - 20), "accuracy (bars) vs perfect calibration (grey)", fill="black")
    return image


def write_model_card(model_dir: Path, card: ModelCard, metrics: Metrics) -> None:
    write_text_atomic(Path(model_dir) / MODEL_CARD_NAME, render_model_card(card, metrics))
    with atomic_path(Path(model_dir) / RELIABILITY_NAME) as tmp:
        draw_reliability(metrics.reliability).save(tmp, format="PNG")
