"""The whole Galaxy Zoo decision tree: its schema as card data, the catalogue's per-answer columns
carried to the cache, the tree loss, the class rule, the tree's answers in predict's CSV and in
words, its RMSE in the metrics, and training for greyscale."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from galaxy_core.base import fields
from galaxy_core.base.config import CLASSES, PredictConfig, TrainConfig
from galaxy_core.data.cache import PackedDataset
from galaxy_core.data.dataset import training_targets
from galaxy_core.model.bundle import read_card
from galaxy_core.model.card import ModelCard
from galaxy_core.model.metrics import tree_rmse
from galaxy_core.model.tree import (
    GZ2_TREE,
    ClassRule,
    TreeSchema,
    apply_class_rule,
    edge_on_share,
    tree_fractions,
    tree_loss,
)
from galaxy_core.serving.predict import CSV_COLUMNS, Classifier, predictions_csv
from galaxy_core.serving.tree_words import read_tree
from galaxy_core.sources.catalogue import read_catalogue, tree_columns, write_catalogue
from galaxy_core.sources.folder import DatasetError
from galaxy_core.training.batches import LOW_RES_FACTORS, LUMINANCE, coarsened, random_low_res, recoloured
from galaxy_core.training.train import train
from tests.conftest import make_dataset, synthetic_galaxy

REPO = Path(__file__).resolve().parents[2]
STEMS = GZ2_TREE.stems


def add_tree_votes(root: Path, seed: int = 0) -> Path:
    """Give a synthetic dataset's catalogue per-answer vote counts and fractions for every GZ2 answer."""
    frame = pd.read_csv(root / "catalogue.csv")
    rng = np.random.default_rng(seed)
    for part in GZ2_TREE.slices():
        counts = rng.integers(0, 20, (len(frame), part.stop - part.start))
        total = counts.sum(axis=1, keepdims=True)
        for k, stem in enumerate(STEMS[part]):
            frame[f"{stem}_count"] = counts[:, k]
            frame[f"{stem}_weighted_fraction"] = np.divide(counts[:, k], total[:, 0], out=np.zeros(len(frame)),
                                                           where=total[:, 0] > 0)
    frame.to_csv(root / "catalogue.csv", index=False)
    return root


def test_gz2_tree_is_the_shared_catalogues_columns(shared_gz2: Path) -> None:
    header = pd.read_csv(shared_gz2 / "catalogue.csv", nrows=1).columns
    stems = sorted({c[: -len("_count")] for c in header if c.endswith("_count")})
    assert sorted(STEMS) == stems and len(GZ2_TREE.questions) == 9
    frame = read_catalogue(shared_gz2 / "catalogue.csv")
    expected = [f"{s}_{k}" for s in header_order(header) for k in ("count", "weighted_fraction")]
    assert tree_columns(frame.columns) == expected


def header_order(header: pd.Index) -> list[str]:
    return [c[: -len("_count")] for c in header if c.endswith("_count")]


def test_tree_schema_round_trips_and_refuses_a_bad_one() -> None:
    assert TreeSchema.from_dict(json.loads(json.dumps(GZ2_TREE.to_dict()))) == GZ2_TREE
    looped = GZ2_TREE.to_dict()
    looped["questions"][5]["answers"][0]["leads_to"] = "t07"  # t06 -> t07 -> t06
    with pytest.raises(fields.FieldError, match="loop"):
        TreeSchema.from_dict(looped)
    bad_stem = GZ2_TREE.to_dict()
    bad_stem["questions"][1]["answers"][0]["stem"] = "edge on"
    with pytest.raises(fields.FieldError, match="GZ2 column stem"):
        TreeSchema.from_dict(bad_stem)
    nowhere = GZ2_TREE.to_dict()
    nowhere["questions"][1]["answers"][0]["leads_to"] = "t42"
    with pytest.raises(fields.FieldError, match="t42"):
        TreeSchema.from_dict(nowhere)


def test_reach_follows_the_tree() -> None:
    f = np.zeros(len(STEMS))
    f[GZ2_TREE.index("t01_smooth_or_features_a01_smooth")] = 0.25
    f[GZ2_TREE.index("t01_smooth_or_features_a02_features_or_disk")] = 0.75
    f[GZ2_TREE.index("t02_edgeon_a05_no")] = 0.6
    f[GZ2_TREE.index("t02_edgeon_a04_yes")] = 0.4
    f[GZ2_TREE.index("t06_odd_a14_yes")] = 0.5
    for question in ("t03", "t04", "t05", "t07", "t09"):  # each question's first answer, by everyone asked
        f[GZ2_TREE.index(GZ2_TREE.question(question).answers[0].stem)] = 1.0
    reach = dict(zip([q.id for q in GZ2_TREE.questions], GZ2_TREE.reach(f[None])[0]))
    assert reach["t02"] == pytest.approx(0.75) and reach["t07"] == pytest.approx(0.25)
    assert reach["t03"] == pytest.approx(0.45) and reach["t09"] == pytest.approx(0.3)
    # t06 is reached through t05 (0.45), t07 (0.25) and t09 (0.3): every non-artifact volunteer.
    assert reach["t06"] == pytest.approx(1.0) and reach["t08"] == pytest.approx(0.5)


def test_tree_loss_is_the_vote_likelihood_and_ignores_questions_nobody_was_asked() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, len(STEMS), requires_grad=True)
    counts = torch.zeros(2, len(STEMS))
    first = GZ2_TREE.slices()[0]
    counts[:, first] = torch.tensor([[30.0, 10.0, 0.0], [5.0, 35.0, 0.0]])
    t02 = GZ2_TREE.slices()[1]
    counts[1, t02] = torch.tensor([20.0, 15.0])
    loss = tree_loss(logits, counts, GZ2_TREE)
    logp0 = torch.log_softmax(logits[0, first], 0)
    logp1 = torch.log_softmax(logits[1, first], 0)
    logp1_t02 = torch.log_softmax(logits[1, t02], 0)
    expected = (-(counts[0, first] / 40 * logp0).sum()
                - (counts[1, first] / 40 * logp1).sum() - (counts[1, t02] / 40 * logp1_t02).sum()) / 2
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    loss.backward()
    asked_nothing = [i for i in range(len(STEMS)) if not (first.start <= i < first.stop)]
    assert torch.all(logits.grad[0, asked_nothing] == 0)  # galaxy 0 answered only t01
    assert torch.any(logits.grad[1, t02] != 0)
    nan = torch.full((1, len(STEMS)), float("nan"))
    assert float(tree_loss(logits[:1].detach(), nan, GZ2_TREE)) == 0.0


def test_edge_on_rule_moves_elliptical_to_spiral_by_the_edge_on_share() -> None:
    f = np.zeros((2, len(STEMS)))
    for row, (smooth, cigar) in enumerate([(0.9, 0.8), (0.9, 0.0)]):
        f[row, GZ2_TREE.index("t01_smooth_or_features_a01_smooth")] = smooth
        f[row, GZ2_TREE.index("t01_smooth_or_features_a02_features_or_disk")] = 1 - smooth
        f[row, GZ2_TREE.index("t07_rounded_a18_cigar_shaped")] = cigar
    assert edge_on_share(f, GZ2_TREE) == pytest.approx([0.72, 0.0])
    probs = np.array([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1]], dtype=np.float32)
    moved = apply_class_rule(probs, f, GZ2_TREE, ClassRule("edge_on_disk", 1.0))
    assert moved.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert moved[0].argmax() == CLASSES.index("Spiral") and moved[0, 0] == pytest.approx(0.1 + 0.72 * 0.8)
    assert moved[0, 2] == pytest.approx(0.1)  # Uncertain keeps its own
    np.testing.assert_allclose(moved[1], probs[1])  # a round smooth galaxy keeps its Elliptical
    np.testing.assert_array_equal(apply_class_rule(probs, f, GZ2_TREE, ClassRule()), probs)


def test_tree_rmse_scores_each_question_where_it_was_asked() -> None:
    observed = np.zeros((2, len(STEMS)))
    predicted = np.zeros((2, len(STEMS)))
    first, t02 = GZ2_TREE.slices()[:2]
    observed[:, first] = [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]
    predicted[:, first] = [[0.6, 0.4, 0.0], [1.0, 0.0, 0.0]]
    observed[0, t02] = [1.0, 0.0]
    predicted[:, t02] = [[0.8, 0.2], [0.0, 1.0]]  # galaxy 1 was never asked t02: its error is not counted
    rmse = tree_rmse(predicted, observed, GZ2_TREE)
    assert rmse["t01"] == pytest.approx(np.sqrt(0.02 / 6)) and rmse["t02"] == pytest.approx(0.2)
    assert set(rmse) == {"t01", "t02", "mean"}
    assert rmse["mean"] == pytest.approx(np.mean([np.sqrt(0.005), np.sqrt(0.005), 0, 0.2, 0.2]))


def test_tree_words_follow_the_most_likely_path() -> None:
    f = torch.zeros(1, len(STEMS))
    for stem, value in [("t01_smooth_or_features_a02_features_or_disk", 5), ("t02_edgeon_a04_yes", 5),
                        ("t09_bulge_shape_a25_rounded", 5), ("t06_odd_a15_no", 5), ("t03_bar_a07_no_bar", 5)]:
        f[0, GZ2_TREE.index(stem)] = value
    shares = tree_fractions(f, GZ2_TREE)[0].numpy()
    reading = read_tree(dict(zip(STEMS, shares)), GZ2_TREE)
    assert [a.stem for a in reading.path] == ["t01_smooth_or_features_a02_features_or_disk", "t02_edgeon_a04_yes",
                                              "t09_bulge_shape_a25_rounded", "t06_odd_a15_no"]
    assert reading.sentence.startswith(
        "A disk or features (99%), seen edge-on (99%), with a rounded bulge (99%), nothing odd")
    assert len(reading.answers) == len(STEMS) and reading.answers[0].reach == 1.0


def test_old_cards_load_without_a_tree_and_a_card_says_what_its_tree_head_answers() -> None:
    old = read_card(REPO / "models" / "debiased")
    assert old.tree is None and old.class_rule == ClassRule() and not old.trained_for_greyscale
    values = old.to_dict()
    assert values["format"] == 3 and ModelCard.from_dict(values) == old
    values["architecture"]["tree_outputs"] = 5
    with pytest.raises(fields.FieldError, match="tree_outputs is 5 but the card's tree has 0"):
        ModelCard.from_dict(values)
    values["architecture"]["tree_outputs"] = 0
    values["class_rule"] = {"name": "edge_on_disk", "edge_weight": 1.0}
    with pytest.raises(fields.FieldError, match="needs a tree"):
        ModelCard.from_dict(values)


def test_a_folder_without_tree_counts_refuses_the_tree_loss_but_still_trains(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "plain", n_per_class=4)
    dataset = PackedDataset.open(data, cache_root=tmp_path / "cache")
    assert not dataset.has_tree(STEMS)
    assert training_targets(dataset, np.arange(3), soft=True).shape == (3, 3)
    with pytest.raises(DatasetError, match="--tree-weight 0"):
        training_targets(dataset, np.arange(3), soft=True, tree_stems=STEMS)


def test_catalogue_carries_tree_columns_to_the_cache(tmp_path: Path) -> None:
    data = add_tree_votes(make_dataset(tmp_path / "tree", n_per_class=4))
    frame = read_catalogue(data / "catalogue.csv")
    assert len(tree_columns(frame.columns)) == 2 * len(STEMS)
    write_catalogue(frame, tmp_path / "again.csv")
    pd.testing.assert_frame_equal(read_catalogue(tmp_path / "again.csv"), frame)
    dataset = PackedDataset.open(data, cache_root=tmp_path / "cache")
    raw = pd.read_csv(data / "catalogue.csv")
    targets = training_targets(dataset, np.arange(len(dataset)), soft=True, tree_stems=STEMS)
    np.testing.assert_array_equal(targets[:, 3:], raw[[f"{s}_count" for s in STEMS]].to_numpy(np.float32))


def test_greyscale_views_are_the_luminance_a_greyscale_image_is_read_as() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    grey = recoloured(x, torch.tensor([True]), torch.ones(1, 3))
    pil = np.asarray(Image.fromarray(pixels[0]).convert("L").convert("RGB")).astype(np.float32) / 255
    np.testing.assert_allclose(grey[0].permute(1, 2, 0).numpy(), pil, atol=1 / 255 + 1e-6)
    assert LUMINANCE == (0.299, 0.587, 0.114)
    kept = recoloured(x, torch.tensor([False]), torch.tensor([[1.0, 0.5, 2.0]]))
    np.testing.assert_allclose(kept[0, 1].numpy(), x[0, 1].numpy() * 0.5, rtol=1e-6)
    assert float(kept.max()) <= 1.0


def test_low_resolution_views_lose_fine_detail_and_keep_their_light() -> None:
    gen = torch.Generator().manual_seed(0)
    assert random_low_res(100, gen, 0.0) is None  # runs without it draw what they drew before
    factors = random_low_res(4000, gen, 0.25)
    assert set(factors.unique().tolist()) == {1.0, *LOW_RES_FACTORS}
    assert float((factors > 1).float().mean()) == pytest.approx(0.25, abs=0.03)
    # A one-pixel checkerboard (the finest detail) with a smooth galaxy-like glow.
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    glow = torch.exp(-((yy - 15.5) ** 2 + (xx - 15.5) ** 2) / 60)
    x = (0.5 * glow + 0.1 * ((yy + xx) % 2)).expand(3, 32, 32)[None].repeat(2, 1, 1, 1)
    out = coarsened(x, torch.tensor([1.0, 2.0]))
    assert torch.equal(out[0], x[0])  # factor 1: untouched
    detail = (out[1] - out[1].roll(1, dims=-1)).abs().mean()
    assert detail < 0.3 * (x[1] - x[1].roll(1, dims=-1)).abs().mean()
    assert float(out[1].mean()) == pytest.approx(float(x[1].mean()), rel=0.05)


def test_a_tree_model_trains_and_answers_every_question(tmp_path: Path) -> None:
    data = add_tree_votes(make_dataset(tmp_path / "data", n_per_class=8))
    out = tmp_path / "model"
    train(TrainConfig(data_dir=data, out_dir=out, epochs=1, batch_size=8, input_size=32, crop=96, width=8,
                      depth=1, aux_weight=1.0, tree_weight=1.0, greyscale=0.3, colour_jitter=0.1, low_res=0.3,
                      cache_dir=tmp_path / "cache"))
    card = read_card(out)
    assert card.tree == GZ2_TREE and card.architecture.tree_outputs == len(STEMS) and card.trained_for_greyscale
    assert card.provenance.config.low_res == 0.3
    assert set(card.metrics.tree_rmse) >= {"t01", "t02", "mean"}
    classifier = Classifier.load(PredictConfig(model_dir=out))
    rng = np.random.default_rng(1)
    results = classifier.predict([Image.fromarray(synthetic_galaxy(k, rng)) for k in (0, 1)] + [b"garbage"])
    for r in results[:2]:
        shares = np.array([r.tree[s] for s in STEMS])
        for part in GZ2_TREE.slices():
            assert shares[part].sum() == pytest.approx(1.0, abs=1e-4)
    header, *rows = list(csv.reader(io.StringIO(predictions_csv(results))))
    assert header == [*CSV_COLUMNS, *STEMS] and len(rows) == 3
    assert float(rows[0][header.index("t02_edgeon_a04_yes")]) == pytest.approx(results[0].tree["t02_edgeon_a04_yes"],
                                                                                abs=1e-6)
    assert rows[2][len(CSV_COLUMNS):] == [""] * len(STEMS)  # the unreadable file has no answers
    # A tree card with the edge-on rule reads back and changes the answers it should.
    tuned = dataclasses.replace(card, class_rule=ClassRule("edge_on_disk", 2.0))
    assert ModelCard.from_dict(json.loads(json.dumps(tuned.to_dict()))) == tuned
    shutil.rmtree(tmp_path / "cache")


def test_classify_page_says_the_trees_answer_in_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    data = add_tree_votes(make_dataset(tmp_path / "data", n_per_class=8))
    models = tmp_path / "models"
    train(TrainConfig(data_dir=data, out_dir=models / "tree", epochs=1, batch_size=8, input_size=32, crop=96, width=8,
                      depth=1, tree_weight=1.0, cache_dir=tmp_path / "cache"))
    monkeypatch.setenv("GALAXY_MODELS_ROOT", str(models))
    monkeypatch.setenv("GALAXY_DATA_ROOT", str(tmp_path / "empty"))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/classify.py").run()
    upload = ("galaxy.jpg", (data / "images" / "syn0_0001.jpg").read_bytes(), "image/jpeg")
    at.file_uploader[0].set_value([upload]).run()
    assert not at.exception, [e.value for e in at.exception]
    said = [m.value for m in at.markdown if "decision tree" in m.value]
    assert len(said) == 1 and said[0].split(": ", 1)[1].split(" (")[0] in {a.words.capitalize() for a in
                                                                          GZ2_TREE.questions[0].answers}


def test_init_from_starts_from_a_models_weights_but_never_from_one_that_saw_the_test_galaxies(tmp_path: Path) -> None:
    from galaxy_core.base.config import ConfigError
    from galaxy_core.model.bundle import load_bundle

    data = add_tree_votes(make_dataset(tmp_path / "data", n_per_class=8))
    common = dict(data_dir=data, epochs=1, batch_size=8, input_size=32, crop=96, width=8, depth=1,
                  cache_dir=tmp_path / "cache")
    train(TrainConfig(out_dir=tmp_path / "first", aux_weight=1.0, **common))
    first = load_bundle(tmp_path / "first").model.state_dict()
    train(TrainConfig(out_dir=tmp_path / "tree", tree_weight=1.0, init_from=tmp_path / "first", lr=1e-6,
                      weight_decay=0.0, **common))
    tuned = load_bundle(tmp_path / "tree").model.state_dict()
    assert torch.allclose(tuned["stem.0.weight"], first["stem.0.weight"], atol=1e-4)  # lr ~0: still its weights
    assert not torch.allclose(first["stem.0.weight"], torch.zeros_like(first["stem.0.weight"]))
    with pytest.raises(ConfigError, match="overlap this run's validation or test galaxies"):
        train(TrainConfig(out_dir=tmp_path / "other", init_from=tmp_path / "first", **{**common, "seed": 5}))
