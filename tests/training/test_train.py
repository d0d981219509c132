"""Training loop, checkpoints, bundles, evaluation and prediction on small synthetic data."""

from __future__ import annotations

import importlib
import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_dataset, synthetic_galaxy
from PIL import Image

from galaxy_core.base.config import CLASSES, ConfigError, EvaluateConfig, PredictConfig, TrainConfig
from galaxy_core.cli import main
from galaxy_core.data.geometry import InputGeometry
from galaxy_core.model.bundle import load_bundle, read_card
from galaxy_core.model.metrics import classification_metrics
from galaxy_core.model.network import Architecture, build_model
from galaxy_core.serving.evaluate import evaluate_bundle
from galaxy_core.serving.inference import TurnedImages
from galaxy_core.serving.predict import Classifier, predictions_csv
from galaxy_core.training.checkpoint import CHECKPOINT_NAME, CheckpointError
from galaxy_core.training.train import TrainingDiverged, train

train_module = importlib.import_module("galaxy_core.training.train")  # the package exports the function by that name


def small_config(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(epochs=6, batch_size=16, lr=5e-3, input_size=32, crop=96, width=8, depth=1,
                  num_threads=2, tta=False)
    values.update(overrides)
    return TrainConfig(data_dir=data, out_dir=out, **values)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list]:
    root = tmp_path_factory.mktemp("train")
    data = make_dataset(root / "data", n_per_class=40, seed=1)
    events: list = []
    result = train(small_config(data, root / "model", tta=True), events.append)
    assert not result.stopped
    return data, root / "model", events


def test_training_learns_and_reports_progress(trained) -> None:
    _, model_dir, events = trained
    phases = {e.phase for e in events}
    assert {"prepare", "train", "epoch", "done"} <= phases
    batches = [e for e in events if e.phase == "train"]
    assert batches[0].eta_s is not None and batches[-1].batch == batches[-1].batches
    card = read_card(model_dir)
    history = card.history
    assert len(history) == 6 and history[-1].train_loss < history[0].train_loss
    assert card.metrics.accuracy >= 0.75, card.metrics
    assert card.provenance.data.train_after_balancing == {"Spiral": 32, "Elliptical": 32, "Uncertain": 32}


def test_bundle_card_carries_everything_needed(trained) -> None:
    _, model_dir, _ = trained
    card = read_card(model_dir)
    assert card.classes == CLASSES
    assert card.input == InputGeometry(source_size=128, crop=96, input_size=32, pixel_scale=0.2)
    assert len(card.normalisation.mean) == 3 and card.provenance.seed == 0
    evaluation = json.loads((model_dir / "evaluation.json").read_text())
    test_ids = set(evaluation["split_ids"]["test"])
    assert test_ids.isdisjoint(evaluation["split_ids"]["train"])
    assert len(test_ids) == card.provenance.data.split["test"] == 12
    assert (model_dir / CHECKPOINT_NAME).is_file()


def test_same_seed_same_weights(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", n_per_class=10)
    weights = []
    for run in ("a", "b"):
        train(small_config(data, tmp_path / run, epochs=2, batch_size=8))
        bundle = load_bundle(tmp_path / run)
        weights.append(torch.cat([p.flatten() for p in bundle.model.state_dict().values() if p.is_floating_point()]))
    assert torch.equal(weights[0], weights[1])


def test_stop_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", n_per_class=10)
    train(small_config(data, tmp_path / "full", epochs=2, batch_size=8))
    stop = threading.Event()

    def stop_in_epoch_two(event) -> None:
        if event.phase == "train" and event.epoch == 2 and event.batch == 2:
            stop.set()

    stopped = train(small_config(data, tmp_path / "resumed", epochs=2, batch_size=8), stop_in_epoch_two, stop)
    assert stopped.stopped and stopped.epochs_done == 1
    assert not (tmp_path / "resumed" / "card.json").exists()
    resumed = train(small_config(data, tmp_path / "resumed", epochs=2, batch_size=8))
    assert not resumed.stopped
    a, b = load_bundle(tmp_path / "full").model.state_dict(), load_bundle(tmp_path / "resumed").model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_resume_refuses_changed_settings(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", n_per_class=10)
    train(small_config(data, tmp_path / "m", epochs=1, batch_size=8))
    with pytest.raises(ConfigError, match="lr"):
        train(small_config(data, tmp_path / "m", epochs=1, batch_size=8, lr=0.01))


def stopped_after_one_epoch(config: TrainConfig) -> None:
    """Train ``config`` for its first epoch only: a checkpoint a rerun of it resumes from."""
    stop = threading.Event()
    result = train(config, lambda e: stop.set() if e.phase == "epoch" else None, stop)
    assert result.stopped and torch.load(config.out_dir / CHECKPOINT_NAME, weights_only=True)["epoch"] == 1


def test_resume_refuses_a_changed_or_truncated_catalogue(tmp_path: Path) -> None:
    """A truncated catalogue plans another split: resuming on it would train on the galaxies the
    model is then tested on (and report their accuracy as if they were held out)."""
    data = make_dataset(tmp_path / "d", n_per_class=10)
    config = small_config(data, tmp_path / "m", epochs=2, batch_size=8, cache_dir=tmp_path / "cache")
    stopped_after_one_epoch(config)
    catalogue = pd.read_csv(data / "catalogue.csv")
    catalogue.iloc[:-4].to_csv(data / "catalogue.csv", index=False)
    with pytest.raises(CheckpointError, match="the catalogue's galaxies or their classes, the train/validation/test "
                                              "split, the image cache .* use --restart"):
        train(config)
    assert torch.load(tmp_path / "m" / CHECKPOINT_NAME, weights_only=True)["epoch"] == 1
    assert train(config, restart=True).epochs_done == 2


def test_resume_refuses_a_checkpoint_that_does_not_say_what_it_trained_on(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", n_per_class=10)
    config = small_config(data, tmp_path / "m", epochs=2, batch_size=8, cache_dir=tmp_path / "cache")
    stopped_after_one_epoch(config)
    state = torch.load(tmp_path / "m" / CHECKPOINT_NAME, weights_only=True)
    del state["data"]
    torch.save(state, tmp_path / "m" / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="does not record which galaxies"):
        train(config)


def poisoned_loss(monkeypatch: pytest.MonkeyPatch, poison: threading.Event) -> None:
    """Once ``poison`` is set the training loss is NaN, as a diverging run's becomes."""
    real = train_module.training_loss

    def loss(*args, **kwargs):  # type: ignore[no-untyped-def]
        value, logits = real(*args, **kwargs)
        return (value * float("nan") if poison.is_set() else value), logits

    monkeypatch.setattr(train_module, "training_loss", loss)


def test_a_diverged_run_stops_naming_the_epoch_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_dataset(tmp_path / "d", n_per_class=10)
    config = small_config(data, tmp_path / "m", epochs=3, batch_size=8, cache_dir=tmp_path / "cache")
    poison = threading.Event()
    poisoned_loss(monkeypatch, poison)
    with pytest.raises(TrainingDiverged, match="diverged in epoch 2 .*the checkpoint of epoch 1 is kept"):
        train(config, lambda e: poison.set() if e.phase == "epoch" else None)
    assert torch.load(tmp_path / "m" / CHECKPOINT_NAME, weights_only=True)["epoch"] == 1
    assert not (tmp_path / "m" / "card.json").exists()


def test_cli_train_exits_non_zero_with_one_line_when_the_loss_diverges(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    data = make_dataset(tmp_path / "d", n_per_class=10)
    poison = threading.Event()
    poison.set()
    poisoned_loss(monkeypatch, poison)
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "m"), "--epochs", "2", "--batch-size", "8",
                 "--image-size", "32", "--width", "8", "--depth", "1", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and "training diverged in epoch 1" in err[-1] and "no checkpoint was saved" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "m" / CHECKPOINT_NAME).exists() and not (tmp_path / "m" / "card.json").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"epochs": 0}, "epochs"), ({"batch_size": 500}, "larger than"), ({"input_size": 4}, "image size"),
    ({"arch": "vgg99"}, "unknown architecture"),
])
def test_bad_settings_fail_before_work(tmp_path: Path, overrides: dict, message: str) -> None:
    data = make_dataset(tmp_path / "d", n_per_class=10)
    with pytest.raises(ConfigError, match=message):
        train(small_config(data, tmp_path / "m", **overrides))
    assert not (tmp_path / "m" / CHECKPOINT_NAME).exists()


def test_evaluate_uses_held_out_galaxies(trained) -> None:
    data, model_dir, _ = trained
    result = evaluate_bundle(EvaluateConfig(data_dir=data, model_dir=model_dir))
    metrics = result.metrics
    card = read_card(model_dir)
    assert metrics.split == "test" and metrics.n == 12
    assert metrics.accuracy == pytest.approx(card.metrics.accuracy)
    assert set(vars(metrics.symmetry_agreement)) == {"rot90", "mirror", "all_8"}
    for item in result.misclassified:
        assert item["true"] != item["predicted"]
    # With the 8-view average, turning or mirroring the cutout itself changes nothing but rounding:
    # the centred crop and the resize commute with the square's symmetries.
    turned = metrics.prediction_symmetry_agreement
    assert turned.rot90 == turned.mirror == 1.0
    assert turned.rot90_max_probability_change < 1e-4 and turned.mirror_max_probability_change < 1e-4
    assert card.metrics.prediction_symmetry_agreement.rot90 == 1.0
    single = evaluate_bundle(EvaluateConfig(data_dir=data, model_dir=model_dir, tta=False))
    assert single.metrics.prediction_symmetry_agreement.rot90_max_probability_change > 1e-3  # one view is not invariant


def test_turned_images_are_the_cutouts_turned_or_mirrored() -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 5, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(TurnedImages(images, "rot90")[0:2], np.rot90(images[:2], 1, axes=(1, 2)))
    np.testing.assert_array_equal(TurnedImages(images, "mirror")[1:3], images[1:3, :, ::-1])
    assert len(TurnedImages(images, "mirror")) == 3
    with pytest.raises(ValueError, match="unknown symmetry"):
        TurnedImages(images, "rot45")


def test_predict_images_and_csv(trained) -> None:
    _, model_dir, _ = trained
    classifier = Classifier.load(PredictConfig(model_dir=model_dir))
    rng = np.random.default_rng(9)
    images = [Image.fromarray(synthetic_galaxy(kind, rng)) for kind in (0, 1, 2)]
    images.append(Image.fromarray(synthetic_galaxy(1, rng)).resize((300, 300)))
    results = classifier.predict(images + [b"garbage", images[0].convert("L")])
    assert [r.label for r in results[:3]] == list(CLASSES)
    assert results[3].label == "Elliptical"
    assert results[4].label is None and "not an image" in results[4].error
    assert results[5].label in CLASSES
    for r in results[:4]:
        assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    lines = predictions_csv(results).splitlines()
    assert lines[0] == ("path,label,p_spiral,p_elliptical,p_uncertain,error,"
                        "vote_smooth,vote_features,vote_artifact,warning,saliency_peak_x,saliency_peak_y") \
        and len(lines) == 7


def test_grad_cam_highlights_the_galaxy(trained) -> None:
    _, model_dir, _ = trained
    classifier = Classifier.load(PredictConfig(model_dir=model_dir))
    image = Image.fromarray(synthetic_galaxy(1, np.random.default_rng(3)))
    heat = classifier.grad_cam(image)
    assert heat.shape == (32, 32) and 0 <= heat.min() and heat.max() == pytest.approx(1.0)


def test_metrics_on_known_values() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.9 + 0.1 / 3
    m = classification_metrics(y, probs)
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m.balanced_accuracy == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m.per_class["Elliptical"].precision == pytest.approx(2 / 3)
    assert m.spiral_vs_elliptical_accuracy == pytest.approx(3 / 4)


def test_models_build() -> None:
    for arch in ("resnet_small", "plain_cnn"):
        out = build_model(Architecture(arch, 8, 1))(torch.zeros(2, 3, 32, 32))
        assert out.shape == (2, 3)


def test_jitter_without_perturbation_is_the_plain_crop() -> None:
    from galaxy_core.data.geometry import InputGeometry, crop_and_resize
    from galaxy_core.training.batches import jittered_crop, random_jitter

    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8))
    for geometry in (InputGeometry(128, 96, 64), InputGeometry(128, 96, 32)):  # source, crop, input
        plain = crop_and_resize(images, geometry)
        same = jittered_crop(images, geometry, torch.tensor([[0.0, 1.0, 0.0, 0.0]] * 3))
        torch.testing.assert_close(same[..., 2:-2, 2:-2], plain[..., 2:-2, 2:-2], rtol=0, atol=1e-5)
        turned = jittered_crop(images, geometry, torch.tensor([[np.pi / 2, 1.0, 0.0, 0.0]] * 3))
        quarter = torch.rot90(plain, 1, dims=(-2, -1))
        torch.testing.assert_close(turned[..., 2:-2, 2:-2], quarter[..., 2:-2, 2:-2], rtol=0, atol=1e-4)
    jitter = random_jitter(1000, torch.Generator().manual_seed(0))
    assert jitter[:, 1].min() >= 0.9 and jitter[:, 1].max() <= 1.1 and jitter[:, 2:].abs().max() <= 3
    assert not torch.equal(jittered_crop(images, InputGeometry(128, 96, 64), jitter[:3]),
                           crop_and_resize(images, InputGeometry(128, 96, 64)))


def test_training_with_jitter_runs(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", n_per_class=10)
    result = train(small_config(data, tmp_path / "m", epochs=1, batch_size=8, jitter=True))
    assert not result.stopped and result.metrics is not None
