"""Packed cache, galaxy-level splits and balancing by rotation/culling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from galaxy_core.base.config import CLASSES, ConfigError, SplitConfig, TrainConfig
from galaxy_core.data.cache import PackedDataset, build_cache
from galaxy_core.data.dataset import balance, plan_views, soft_targets, split_dataset
from galaxy_core.sources.images import load_image


def test_cache_holds_decoded_images_and_is_reused(tiny_dataset: Path, tmp_path: Path) -> None:
    first = build_cache(tiny_dataset, cache_root=tmp_path / "c", shard_size=10)
    assert not first.reused and first.galaxies == 36
    dataset = PackedDataset(first.cache_dir)
    assert len(dataset.shards) == 4 and [len(s) for s in dataset.shards] == [10, 10, 10, 6]
    for row in (0, 17, 35):
        expected = np.asarray(load_image(tiny_dataset / dataset.index["image"][row]))
        np.testing.assert_array_equal(dataset.images(np.array([row]))[0], expected)
    assert build_cache(tiny_dataset, cache_root=tmp_path / "c", shard_size=10).reused
    assert not list(tiny_dataset.rglob("*.npy"))


def test_a_killed_builds_temp_folder_is_removed_by_the_next_build(tiny_dataset: Path, tmp_path: Path) -> None:
    key = build_cache(tiny_dataset, cache_root=tmp_path / "probe").cache_dir.name
    root = tmp_path / "c"
    stale = root / f".{key}-k1ll3d"  # what mkdtemp left when a builder was SIGKILLed
    stale.mkdir(parents=True)
    (stale / "shard-00000.npy").write_bytes(b"\x93NUMPY half written")
    other = root / ".0123456789abcdef-x"  # another dataset's build: not ours to touch
    other.mkdir()
    report = build_cache(tiny_dataset, cache_root=root)
    assert not stale.exists() and other.is_dir()
    assert report.galaxies == 36 and sorted(p.name for p in root.iterdir()) == sorted(
        [".build.lock", other.name, key])


def test_cache_key_changes_when_images_change(tiny_dataset: Path, tmp_path: Path) -> None:
    a = build_cache(tiny_dataset, cache_root=tmp_path)
    (tiny_dataset / "images" / "syn0_0000.jpg").write_bytes(
        (tiny_dataset / "images" / "syn1_0000.jpg").read_bytes())
    b = build_cache(tiny_dataset, cache_root=tmp_path)
    assert a.cache_dir != b.cache_dir and not b.reused


def test_undecodable_images_are_skipped_and_reported(tiny_dataset: Path, tmp_path: Path) -> None:
    (tiny_dataset / "images" / "syn2_0003.jpg").write_bytes(b"not a jpeg")
    report = build_cache(tiny_dataset, cache_root=tmp_path)
    assert report.galaxies == 35 and list(report.failed) == ["syn2_0003"]
    assert "syn2_0003" not in PackedDataset(report.cache_dir).ids


def test_split_is_stratified_disjoint_and_seeded() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 1000)
    ids = np.array([f"g{i}" for i in range(1000)])
    split = split_dataset(ids, labels, SplitConfig(seed=3))
    parts = [set(split.train), set(split.val), set(split.test)]
    assert sum(map(len, parts)) == 1000 and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    for cls in range(3):
        share = (labels[split.test] == cls).mean()
        assert share == pytest.approx((labels == cls).mean(), abs=0.01)
    again = split_dataset(ids, labels, SplitConfig(seed=3))
    np.testing.assert_array_equal(split.test, again.test)
    assert not np.array_equal(split.test, split_dataset(ids, labels, SplitConfig(seed=4)).test)


@pytest.mark.parametrize("subset", [None, 150])
def test_a_split_seed_keeps_the_held_out_galaxies_of_another_training_seed(subset: int | None) -> None:
    ids = np.array([f"g{i:03d}" for i in range(200)])
    labels = np.array([0] * 120 + [1] * 50 + [2] * 30)
    plan = lambda **seeds: plan_views(ids, labels, TrainConfig(Path("."), Path("."), max_galaxies=subset,  # noqa: E731
                                                                balance="median", **seeds))
    first, second, own = plan(seed=0), plan(seed=1, split_seed=0), plan(seed=1)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(first.split, name), getattr(second.split, name))
    assert not np.array_equal(first.split.test, own.split.test)  # without it, the seed moves the split
    # ...while the training seed still draws its own balancing (which galaxies are culled).
    assert not np.array_equal(first.views.rows, second.views.rows)


def test_split_does_not_depend_on_row_order() -> None:
    labels = np.repeat([0, 1, 2], 50)
    ids = np.array([f"g{i:03d}" for i in range(150)])
    order = np.random.default_rng(0).permutation(150)
    a = split_dataset(ids, labels, SplitConfig(seed=0))
    b = split_dataset(ids[order], labels[order], SplitConfig(seed=0))
    assert set(ids[a.test]) == set(ids[order][b.test])


def test_balance_rotates_rare_and_culls_common() -> None:
    labels = np.array([0] * 100 + [1] * 20 + [2] * 60)
    result = balance(np.arange(180), labels, seed=0)
    assert result.counts_before == {"Spiral": 100, "Elliptical": 20, "Uncertain": 60}
    assert result.counts_after == {"Spiral": 60, "Elliptical": 60, "Uncertain": 60}
    ell = result.rows[labels[result.rows] == 1]
    assert set(np.bincount(ell)[np.unique(ell)]) == {3}  # each galaxy 3 views: 0, 90 and 180 degrees
    views = set(zip(result.rows.tolist(), result.rotations.tolist()))
    assert len(views) == len(result.rows)  # no view twice
    assert len(set(result.rows[labels[result.rows] == 0])) == 60


def test_balance_caps_at_four_views() -> None:
    labels = np.array([0] * 100 + [1] * 5 + [2] * 100)
    result = balance(np.arange(205), labels, seed=0)
    assert result.counts_after["Elliptical"] == 20
    assert result.rotations.max() == 3


def test_balance_needs_every_class() -> None:
    with pytest.raises(ConfigError, match="Elliptical"):
        balance(np.arange(10), np.array([0] * 5 + [2] * 5), seed=0)


def test_soft_targets_follow_the_vote_threshold() -> None:
    t = soft_targets(np.array([0.95, 0.05, 0.5, 0.81]), np.array([0.03, 0.93, 0.45, 0.1]))
    assert t.argmax(1).tolist() == [CLASSES.index(c) for c in ("Elliptical", "Spiral", "Uncertain", "Elliptical")]
    np.testing.assert_allclose(t.sum(1), 1, rtol=1e-6)
    assert 0.5 < t[3, 1] < 0.7  # barely above 0.8: a genuinely uncertain target


def test_shared_cache_and_split(shared_gz2: Path, tmp_path: Path) -> None:
    report = build_cache(shared_gz2, cache_root=tmp_path)
    dataset = PackedDataset(report.cache_dir)
    assert len(dataset) == 6442 and dataset.shards[0].dtype == np.uint8
    split = split_dataset(dataset.ids, dataset.labels, SplitConfig(seed=0))
    assert split.sizes() == {"train": 5154, "val": 644, "test": 644}
