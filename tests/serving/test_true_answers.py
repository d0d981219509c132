"""Answers that tell the truth: greyscale and 16-bit images, the upload's own size and a framing
box on the picture, what an evaluation compares, and progress that counts what it says."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import synthetic_galaxy
from PIL import Image

from galaxy_core.base.config import CLASSES, PredictConfig
from galaxy_core.data.framing import Framing
from galaxy_core.serving.evaluate import EvaluationResult, ProgressTally
from galaxy_core.serving.predict import (
    GREYSCALE_WARNING,
    Classified,
    Classifier,
    Prediction,
    classify_uploads,
    colour_warning,
    outline_framing,
)
from galaxy_core.sources.images import is_greyscale, load_image, source_size
from galaxy_core.terminal import CountBar


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def colour_galaxy() -> Image.Image:
    return Image.fromarray(synthetic_galaxy(1, np.random.default_rng(3)))


def test_16_bit_greyscale_is_scaled_by_its_own_range():
    grey = np.asarray(colour_galaxy().convert("L"), dtype=np.float64)
    faint = (1000 + grey * 4).astype(np.uint16)  # a 16-bit export using a sliver of its range
    image = load_image(png(Image.fromarray(faint)))
    values = np.asarray(image)[..., 0]
    assert values.min() == 0 and values.max() == 255
    stretched = (grey - grey.min()) / (grey.max() - grey.min()) * 255
    assert np.abs(values - stretched).max() <= 1


def test_greyscale_images_are_warned_unless_the_model_was_trained_for_them():
    colour = colour_galaxy()
    assert not is_greyscale(load_image(png(colour)))
    card = SimpleNamespace(trained_for_greyscale=False)
    for grey in (colour.convert("L"), Image.fromarray(np.asarray(colour.convert("L"), np.uint16) * 257),
                 colour.convert("L").convert("RGB")):
        loaded = load_image(png(grey))
        assert is_greyscale(loaded)
        assert colour_warning(loaded, card) == GREYSCALE_WARNING
        assert colour_warning(loaded, SimpleNamespace(trained_for_greyscale=True)) is None
    assert colour_warning(load_image(png(colour)), card) is None


def test_a_greyscale_upload_keeps_its_answer_and_is_warned(trained_tiny_model: Path):
    classifier = Classifier.load(PredictConfig(model_dir=trained_tiny_model))
    colour, grey = classifier.predict([png(colour_galaxy()), png(colour_galaxy().convert("L"))])
    assert colour.classified and GREYSCALE_WARNING not in (colour.warning or "")
    assert grey.classified and grey.label in CLASSES and GREYSCALE_WARNING in grey.warning


def test_the_caption_gives_the_files_size_not_the_decoded_one(trained_tiny_model: Path):
    classifier = Classifier.load(PredictConfig(model_dir=trained_tiny_model))
    photo = colour_galaxy().resize((4000, 3000))
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=80)
    decoded = load_image(out.getvalue(), max_side=1024)
    assert max(decoded.size) <= 1024 and source_size(decoded) == (4000, 3000)
    [item] = classify_uploads(classifier, [("photo.jpg", out.getvalue())])
    assert item.caption.startswith("uploaded (4000×3000)")


def framing_at(box: tuple[float, float, float]) -> Framing:
    return Framing(np.zeros((8, 8, 3), np.uint8), box, None, None, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("box", [(-50, -50, 400), (10, 10, 20), (200, 150, 400), (-5, 40, 60)])
def test_the_framing_box_is_always_drawn_on_the_picture(box):
    preview = Image.new("RGB", (256, 192), (0, 0, 0))
    drawn = np.asarray(outline_framing(preview, framing_at(box), (256, 192)))
    assert (drawn == (80, 220, 255)).all(axis=2).sum() > 20, box


def test_the_caption_says_when_the_square_runs_past_the_image():
    inside = Classified(Prediction("a"), None, (256, 192), framing_at((10, 10, 50)), (256, 192))
    past = Classified(Prediction("a"), None, (256, 192), framing_at((-10, 10, 250)), (256, 192))
    assert inside.caption == "uploaded (256×192); the box is what the model reads"
    assert "sky added" in past.caption


def result(rule: str, from_votes: bool, model_rule: str = "votes") -> EvaluationResult:
    from dataclasses import replace

    from galaxy_core.model.metrics import classification_metrics
    metrics = replace(classification_metrics(np.array([0, 1]), np.eye(3)[[0, 1]]), label_rule=rule)
    return EvaluationResult(metrics, [], "what Galaxy Zoo volunteers see in this image", model_rule, from_votes)


def test_an_evaluation_says_which_rules_it_compares():
    same = result("votes", True).comparison()
    assert "(votes labels)" in same and "vote fractions were labelled by the same rule" in same
    other = result("debiased", True).comparison()
    assert "debiased vote fractions" in other and "not trained to answer" in other
    plain = result("votes", False).comparison()
    assert "no vote fractions" in plain and "assume its labels follow the votes rule" in plain


def test_evaluation_progress_counts_galaxies_not_passes():
    heard = []
    tally = ProgressTally(3 * 24, heard.append, items=24)
    for _ in range(3 * 3):
        tally.read(8)
    tally.finish()
    assert heard[-1].done == heard[-1].total == 24 and max(e.done for e in heard) == 24


def test_a_cached_step_shows_no_rate(capsys: pytest.CaptureFixture):
    bar = CountBar("build cache")
    bar.update(6442, 6442)
    bar.close()
    err = capsys.readouterr().err
    assert "6442/6442" in err and "?img/s" in err
