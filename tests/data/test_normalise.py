"""Channel statistics and the image <-> normalised tensor round trip."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from galaxy_core.data.geometry import InputGeometry, crop_and_resize, dihedral, dihedral_per_sample
from galaxy_core.data.normalise import ChannelStats, compute_channel_stats, image_to_tensor, normalise, tensor_to_image


def test_stats_match_numpy() -> None:
    batches = [np.random.default_rng(i).integers(0, 256, (7, 16, 16, 3), dtype=np.uint8) for i in range(3)]
    stats = compute_channel_stats(batches)
    pixels = np.concatenate(batches).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(stats.mean, pixels.mean(0), atol=1e-9)
    np.testing.assert_allclose(stats.std, pixels.std(0), atol=1e-9)


def test_normalised_training_pixels_have_zero_mean_unit_std() -> None:
    batch = torch.from_numpy(np.random.default_rng(0).integers(0, 200, (32, 24, 24, 3), dtype=np.uint8))
    geometry = InputGeometry(source_size=24, crop=24, input_size=24)
    x = crop_and_resize(batch, geometry)
    stats = compute_channel_stats([x])
    z = normalise(x, stats)
    np.testing.assert_allclose(z.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(dim=(0, 2, 3), unbiased=False).numpy(), 1, atol=1e-4)


def test_round_trip_within_one_grey_level() -> None:
    array = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    stats = ChannelStats((0.1, 0.2, 0.3), (0.05, 0.1, 0.2))
    geometry = InputGeometry(source_size=64, crop=64, input_size=64)
    tensor = image_to_tensor(Image.fromarray(array), stats, geometry)
    assert tensor.shape == (1, 3, 64, 64)
    back = np.asarray(tensor_to_image(tensor, stats), dtype=int)
    assert np.abs(back - array).max() <= 1


def test_any_image_size_becomes_network_input() -> None:
    stats = ChannelStats((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    geometry = InputGeometry(source_size=128, crop=96, input_size=64)
    for size in [(1, 1), (300, 200), (128, 128), (2000, 40)]:
        tensor = image_to_tensor(Image.new("RGB", size, (10, 20, 30)), stats, geometry)
        assert tensor.shape == (1, 3, 64, 64)


def test_centre_crop_keeps_the_centre() -> None:
    batch = torch.zeros(1, 128, 128, 3, dtype=torch.uint8)
    batch[:, 16:112, 16:112] = 255
    x = crop_and_resize(batch, InputGeometry(source_size=128, crop=96, input_size=48))
    assert x.shape == (1, 3, 48, 48) and torch.all(x == 1.0)


def test_dihedral_group() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    views = [dihedral(x, k) for k in range(8)]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    ks = torch.tensor([0, 5])
    both = dihedral_per_sample(torch.cat([x, x]), ks)
    assert torch.equal(both[1], dihedral(x, 5)[0]) and torch.equal(both[0], x[0])
