"""The framer: it finds the galaxy in any framing, frames it as training cutouts are, and says
when there is no galaxy to classify."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from benchmarks.edge_cue import input_position, mean_step
from galaxy_core.base.fields import FieldError
from galaxy_core.data.framing import NO_GALAXY, WARNINGS, FramingSpec, cut_square, estimate_sky, frame_image
from galaxy_core.model.card import ModelCard
from galaxy_core.serving.predict import answer_warning, vote_sentence

SPEC = FramingSpec(0.3)


def sky(size: int, rng: np.random.Generator, level: float = 12.0, noise: float = 4.0) -> np.ndarray:
    return rng.normal(level, noise, (size, size, 3))


def add_galaxy(image: np.ndarray, x: float, y: float, scale: float, peak: float = 200.0,
               axis_ratio: float = 1.0) -> np.ndarray:
    yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
    r = np.hypot(xx - x, (yy - y) / axis_ratio)
    image += peak * np.exp(-r / scale)[..., None] * np.array([1.0, 0.9, 0.7])
    return image


def add_stars(image: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
    for _ in range(n):
        cx, cy = rng.uniform(0, image.shape[1], 2)
        image += rng.uniform(60, 200) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 1.2**2))[..., None]
    return image


def picture(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8))


def r90_of(framed: np.ndarray, background: float) -> tuple[float, float, float]:
    """Centre and r90 of the light in a framed cutout, measured independently of the framer."""
    light = np.clip(framed.mean(axis=2) - background - 12, 0, None)
    yy, xx = np.mgrid[:framed.shape[0], :framed.shape[1]]
    total = light.sum()
    cx, cy = (light * xx).sum() / total, (light * yy).sum() / total
    radii = np.hypot(xx - cx, yy - cy).ravel()
    order = np.argsort(radii)
    enclosed = np.cumsum(light.ravel()[order])
    return cx, cy, radii[order][np.searchsorted(enclosed, 0.9 * total)]


@pytest.mark.parametrize("size, x, y, scale", [(128, 64, 64, 8.0), (423, 150, 260, 5.0), (600, 300, 300, 20.0)])
def test_a_galaxy_anywhere_is_centred_at_the_reference_size(size, x, y, scale):
    rng = np.random.default_rng(0)
    image = picture(add_galaxy(sky(size, rng), x, y, scale))
    framing = frame_image(image, SPEC, 128)
    assert framing.warning is None
    assert framing.image.shape == (128, 128, 3) and framing.image.dtype == np.uint8
    cx, cy, r90 = r90_of(framing.image, 12)
    assert abs(cx - 63.5) < 4 and abs(cy - 63.5) < 4
    # Measured to the same isophote the framer uses, so within a sixth of the reference radius.
    assert r90 / 128 == pytest.approx(SPEC.radius_fraction, rel=0.35)
    assert framing.source is not None and abs(framing.source.x - x) < 3 and abs(framing.source.y - y) < 3


def test_the_same_galaxy_at_two_scales_frames_alike():
    rng = np.random.default_rng(1)
    small = frame_image(picture(add_galaxy(sky(400, rng), 200, 200, 5.0, axis_ratio=0.5)), SPEC, 128)
    large = frame_image(picture(add_galaxy(sky(400, rng), 200, 200, 15.0, axis_ratio=0.5)), SPEC, 128)
    assert small.source.r90 * 2.2 < large.source.r90  # 3x in truth; seeing-like smoothing blurs the small one
    a, b = small.image.mean(axis=2), large.image.mean(axis=2)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


def test_the_galaxy_nearest_the_centre_is_chosen_over_a_brighter_one_at_the_side():
    rng = np.random.default_rng(2)
    image = add_galaxy(sky(400, rng), 210, 190, 6.0, peak=120)
    image = add_galaxy(image, 60, 70, 9.0, peak=230)
    framing = frame_image(picture(image), SPEC, 128)
    assert framing.warning is None
    assert abs(framing.source.x - 210) < 4 and abs(framing.source.y - 190) < 4


def no_galaxy_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:300, :400]
    photo = np.stack([np.linspace(60, 240, 400)[None].repeat(300, 0), 120 + 60 * np.sin(yy / 20.0),
                      np.full((300, 400), 180.0)], axis=2) + rng.normal(0, 8, (300, 400, 3))
    return {
        "black": picture(np.zeros((200, 200, 3))),
        "flat grey": picture(np.full((256, 256, 3), 40.0)),
        "dark noise": picture(sky(256, rng, 20, 8)),
        "bright noise": picture(rng.integers(0, 256, (256, 256, 3)).astype(float)),
        "star field": picture(add_stars(sky(400, rng), rng, 40)),
        "photo": picture(photo),
    }


@pytest.mark.parametrize("name", list(no_galaxy_images()))
def test_images_without_a_galaxy_are_warned_about(name):
    framing = frame_image(no_galaxy_images()[name], SPEC, 128)
    assert framing.warning is not None and framing.warning.startswith(NO_GALAXY), (name, framing.warning)
    assert framing.image.shape == (128, 128, 3)


def test_a_galaxy_cut_by_the_edge_is_warned_about_and_one_inside_is_not():
    rng = np.random.default_rng(4)
    inside = frame_image(picture(add_galaxy(sky(256, rng), 128, 128, 10)), SPEC, 128)
    cut = frame_image(picture(add_galaxy(sky(256, rng), 250, 128, 10)), SPEC, 128)
    assert inside.warning is None
    assert cut.warning == WARNINGS["edge"]


def test_framing_is_deterministic_and_without_a_spec_is_the_plain_centre_square():
    rng = np.random.default_rng(5)
    image = picture(add_galaxy(sky(300, rng), 100, 180, 6.0))
    assert np.array_equal(frame_image(image, SPEC, 128).image, frame_image(image, SPEC, 128).image)
    plain = frame_image(image.crop((0, 0, 300, 200)), None, 128)
    expected = np.asarray(image.crop((50, 0, 250, 200)).resize((128, 128), Image.Resampling.BILINEAR,
                                                               reducing_gap=None))
    assert np.array_equal(plain.image, expected)


def test_framing_spec_is_validated_and_round_trips_through_the_card():
    with pytest.raises(FieldError, match="framing.radius_fraction"):
        FramingSpec.from_dict({"radius_fraction": 5})
    from galaxy_core.data.geometry import InputGeometry
    from galaxy_core.data.normalise import ChannelStats
    from galaxy_core.model.network import Architecture

    card = ModelCard(Architecture("resnet_small", 8, 1, 3), InputGeometry(), ChannelStats((0.1,) * 3, (0.2,) * 3),
                     label_rule="votes", framing=SPEC, confidence_floor=0.45)
    again = ModelCard.from_dict(card.to_dict())
    assert again.framing == SPEC and again.confidence_floor == 0.45
    old = card.to_dict()
    del old["framing"], old["confidence_floor"]
    assert ModelCard.from_dict(old).framing is None


def test_low_confidence_and_framer_warnings_and_vote_words():
    rng = np.random.default_rng(6)
    framing = frame_image(picture(add_galaxy(sky(128, rng), 64, 64, 8.0)), SPEC, 128)
    assert answer_warning(framing, np.array([0.7, 0.2, 0.1]), 0.5) is None
    low = answer_warning(framing, np.array([0.45, 0.40, 0.15]), 0.5)
    assert low.startswith("low confidence") and "Spiral, 45%" in low
    blank = frame_image(picture(np.zeros((64, 64, 3))), SPEC, 128)
    assert answer_warning(blank, np.array([0.9, 0.05, 0.05]), 0.5).startswith(NO_GALAXY)
    assert vote_sentence({"smooth": 0.85, "features": 0.12, "artifact": 0.03}, "votes") == (
        "About 85% of volunteers would call it smooth (12% features or a disk, 3% a star or artifact).")


@pytest.mark.parametrize("size", [1, 2, 5, 441, 442])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_framers_median_is_numpys(size: int, dtype: type) -> None:
    from galaxy_core.data.framing import _median

    rng = np.random.default_rng(size)
    for values in (rng.normal(20, 5, size).astype(dtype), np.round(rng.normal(20, 5, size)).astype(dtype)):
        expected = np.median(values)
        assert _median(values) == expected and _median(np.sort(values), ordered=True) == expected
        assert _median(values).dtype == expected.dtype


def clipped_by_masks(values: np.ndarray, rounds: int = 4) -> tuple[float, float]:
    """Sigma clipping as first written: a boolean mask of the kept values, every round."""
    keep = np.ones(values.shape, dtype=bool)
    level, noise = float(np.median(values)), 0.0
    for _ in range(rounds):
        sample = values[keep]
        level = float(np.median(sample))
        noise = float(1.4826 * np.median(np.abs(sample - level)))
        keep = values <= level + 3 * max(noise, 0.5)
    return level, noise


def test_sigma_clipping_on_sorted_values_equals_clipping_by_masks() -> None:
    from galaxy_core.data.framing import _clipped

    rng = np.random.default_rng(7)
    for trial in range(200):
        patch = rng.normal(rng.uniform(0, 60), rng.uniform(0.01, 9), (rng.integers(2, 40), rng.integers(2, 40)))
        if trial % 2:  # sources above the sky, and the whole-number levels of a JPEG
            patch += rng.exponential(40, patch.shape) * (rng.random(patch.shape) < 0.2)
            patch = np.round(patch)
        patch = patch.astype(np.float32)
        assert _clipped(patch) == clipped_by_masks(patch)



def filled_and_real(size: int, box: tuple[float, float, float], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A square of pure sky noise cut to ``box`` at 128 pixels: the grey result, and where it
    shows filled-in sky and where the image's own (3 input pixels clear of the seam)."""
    array = sky(size, np.random.default_rng(seed), level=20.0, noise=6.0)
    image = picture(array)
    rgb = np.asarray(image, dtype=np.float32)
    framed = cut_square(image, box, 128, estimate_sky(rgb, rgb.mean(axis=2)))
    sx, sy = input_position(box, 128)
    margin = 3 * box[2] / 128
    outside = (sx < -margin) | (sy < -margin) | (sx > size + margin) | (sy > size + margin)
    inside = (sx > margin) & (sy > margin) & (sx < size - margin) & (sy < size - margin)
    return framed.astype(float).mean(axis=2), outside, inside


@pytest.mark.parametrize("box", [(-64.0, -64.0, 256.0), (-10.5, 20.25, 160.0), (-20.0, -20.0, 80.0)])
def test_the_sky_beyond_the_image_has_the_grain_and_level_of_its_own_sky(box):
    """A big galaxy in a small cutout: the frame runs past the image, and the sky filled in
    there must not stand out from the real sky, or the network learns that an edge means a big
    galaxy (a fill of fresh noise at the output's scale was twice as grainy when shrunk)."""
    grey, filled, real = filled_and_real(128, box, seed=6)
    assert filled.sum() > 300 and real.sum() > 300
    assert 0.8 < mean_step(grey, filled) / mean_step(grey, real) < 1.25
    assert abs(grey[filled].mean() - grey[real].mean()) < 1.0


def test_two_images_do_not_share_one_pattern_of_filled_sky():
    fills = []
    for seed, box in ((7, (-64.0, -64.0, 256.0)), (8, (-60.0, -66.0, 256.0))):
        grey, filled, _ = filled_and_real(128, box, seed)
        fills.append(grey[:25, :25][filled[:25, :25]])
    a, b = (fill - fill.mean() for fill in fills)
    assert len(a) == len(b) == 625
    assert abs(float(np.corrcoef(a, b)[0, 1])) < 0.2


@pytest.mark.parametrize("box", [(-1000.0, -1000.0, 6000.0), (-20.0, 3000.0, 100.0)])
def test_a_huge_image_that_the_frame_runs_past_is_cut_without_a_copy_at_its_scale(box):
    """A big galaxy filling a 5000-px photo, or a small one at its edge: only the part under the
    box is read, never a float copy of the whole image (which would take 300 MB)."""
    image = picture(sky(500, np.random.default_rng(9))).resize((5000, 5000))
    rgb = np.asarray(image.reduce(20), dtype=np.float32)
    tracemalloc.start()
    try:
        framed = cut_square(image, box, 128, estimate_sky(rgb, rgb.mean(axis=2)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert framed.shape == (128, 128, 3) and framed.dtype == np.uint8
    assert peak < 32 * 1024**2
    grey = framed.astype(float).mean(axis=2)
    assert abs(grey.mean() - 12.0) < 3.0  # sky throughout, the fill of the same level


def test_the_filled_sky_is_as_dark_as_the_sky_beyond_a_galaxy_that_fills_the_cutout():
    """The sky's colour comes from the darkest corners, not from every faint pixel: a big
    galaxy's outskirts made the filled-in sky brighter than the real sky around it."""
    image = picture(add_galaxy(sky(128, np.random.default_rng(10), level=20.0), 64, 64, 30.0, axis_ratio=0.3))
    framing = frame_image(image, SPEC, 128)
    sx, sy = input_position(framing.box, 128)
    filled = (sx < -3) | (sy < -3) | (sx > 131) | (sy > 131)
    assert filled.sum() > 1000
    assert abs(framing.image.mean(axis=2)[filled].mean() - 20.0) < 0.8
