"""bfloat16 autocast: training and inference in bf16, fp32 fallback where bf16 is emulated."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset

from galaxy_core.base.config import ConfigError, PredictConfig, TrainConfig
from galaxy_core.cli import main
from galaxy_core.model import precision as precision_module
from galaxy_core.model.bundle import BundleError, load_bundle, read_card
from galaxy_core.model.network import Architecture, build_model
from galaxy_core.model.precision import autocast, inference_precision
from galaxy_core.serving.inference import outputs_for
from galaxy_core.serving.predict import Classifier
from galaxy_core.training.checkpoint import CHECKPOINT_NAME
from galaxy_core.training.train import train, training_loss


def small_config(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(epochs=2, batch_size=8, lr=5e-3, input_size=32, crop=96, width=8, depth=1,
                  num_threads=2, tta=True, precision="bf16")
    values.update(overrides)
    return TrainConfig(data_dir=data, out_dir=out, **values)


def test_autocast_runs_convolutions_in_bf16_and_fp32_leaves_them() -> None:
    model = build_model(Architecture("resnet_small", width=8, depth=1)).eval()
    x = torch.randn(2, 3, 32, 32)
    with autocast("cpu", "bf16"):
        assert model.stem(x).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert model.stem(x).dtype == torch.float32


def test_bf16_training_loss_and_gradients_stay_fp32() -> None:
    model = build_model(Architecture("resnet_small", width=8, depth=1, aux_outputs=2))
    config = TrainConfig(Path("."), Path("."), aux_weight=1.0, precision="bf16")
    targets = torch.cat([torch.eye(3)[[0, 1, 2, 0]], torch.full((4, 2), 0.5)], dim=1)
    loss, logits = training_loss(model, torch.randn(4, 3, 32, 32), targets, config)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("trained, native, expected", [
    ("fp32", True, "fp32"), ("fp32", False, "fp32"), ("bf16", True, "bf16"), ("bf16", False, "fp32"),
])
def test_inference_precision_falls_back_where_bf16_is_emulated(
        monkeypatch: pytest.MonkeyPatch, trained: str, native: bool, expected: str) -> None:
    monkeypatch.setattr(precision_module, "bf16_native", lambda device: native)
    assert inference_precision(trained, "cpu") == expected


def test_unknown_precision_is_refused_everywhere(tmp_path: Path, trained_tiny_model: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match="precision must be fp32 or bf16, got 'fp16'"):
        TrainConfig(tmp_path, tmp_path, precision="fp16")
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
    card = json.loads((trained_tiny_model / "card.json").read_text())
    bad = tmp_path / "bad-model"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((trained_tiny_model / "model.safetensors").read_bytes())
    (bad / "card.json").write_text(json.dumps({**card, "precision": "int4"}))
    with pytest.raises(BundleError, match="precision must be fp32 or bf16, got 'int4'"):
        load_bundle(bad)


def test_bf16_model_trains_records_precision_and_predicts_like_fp32(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", n_per_class=12)
    train(small_config(data, tmp_path / "m"))
    card = read_card(tmp_path / "m")
    assert card.precision == "bf16" and card.provenance.config.precision == "bf16"
    bundle = load_bundle(tmp_path / "m")
    x = torch.randn(6, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    p_bf16 = torch.exp(outputs_for(replace(bundle, precision="bf16"), x, True)[0])
    p_fp32 = torch.exp(outputs_for(replace(bundle, precision="fp32"), x, True)[0])
    assert not torch.equal(p_bf16, p_fp32)  # really computed in a different precision
    torch.testing.assert_close(p_bf16, p_fp32, rtol=0, atol=0.05)
    images = sorted((data / "images").glob("*.jpg"))[:3]
    predictions = Classifier.load(PredictConfig(model_dir=tmp_path / "m")).predict(images)
    assert all(p.error is None and abs(sum(p.probabilities.values()) - 1) < 1e-5 for p in predictions)


def test_checkpoint_from_before_the_precision_setting_still_resumes(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", n_per_class=10)
    train(small_config(data, tmp_path / "m", precision="fp32", epochs=1))  # a checkpoint at epoch 1 of 1
    path = tmp_path / "m" / CHECKPOINT_NAME
    state = torch.load(path, weights_only=True)
    del state["config"]["precision"]
    state["config"]["epochs"] = 2
    torch.save(state, path)
    result = train(small_config(data, tmp_path / "m", precision="fp32", epochs=2))
    assert not result.stopped and len(result.history) == 2
    with pytest.raises(ConfigError, match="precision"):
        train(small_config(data, tmp_path / "m", precision="bf16", epochs=2))
    assert np.isfinite(read_card(tmp_path / "m").metrics.accuracy)
