"""Property-based tests: image decoding, catalogue parsing and the normalisation round trip hold
for inputs nobody thought to write down."""

from __future__ import annotations

import io

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from galaxy_core.data.geometry import InputGeometry
from galaxy_core.data.normalise import ChannelStats, image_to_tensor, tensor_to_image
from galaxy_core.sources.images import ImageLoadError, load_image

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (mode, formats that can store it)
MODES = {
    "RGB": ["PNG", "JPEG", "TIFF", "BMP", "WEBP"],
    "L": ["PNG", "JPEG", "TIFF", "BMP"],
    "1": ["PNG", "TIFF", "BMP"],
    "P": ["PNG", "GIF", "BMP"],
    "RGBA": ["PNG", "TIFF", "WEBP"],
    "LA": ["PNG"],
    "I;16": ["PNG", "TIFF"],
    "I": ["TIFF"],
    "F": ["TIFF"],
    "CMYK": ["JPEG", "TIFF"],
}


@st.composite
def encoded_images(draw: st.DrawFn) -> tuple[bytes, tuple[int, int]]:
    """A real image file: random mode, size (including 1 px and long strips), pixels, format."""
    mode = draw(st.sampled_from(sorted(MODES)))
    fmt = draw(st.sampled_from(MODES[mode]))
    width, height = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode in ("I;16", "I"):
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
        image = image if mode == "I;16" else image.convert("I")
    elif mode == "F":
        image = Image.fromarray(rng.normal(0, 1, (height, width)).astype(np.float32))
    elif mode == "RGBA":
        image = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8))
    else:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue(), (width, height)


@FAST
@given(encoded_images())
def test_any_real_image_decodes_to_rgb_of_its_size(sample: tuple[bytes, tuple[int, int]]) -> None:
    data, size = sample
    image = load_image(data)
    assert image.mode == "RGB" and image.size == size
    assert np.asarray(image).dtype == np.uint8


@FAST
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_image_load_error(data: bytes) -> None:
    try:
        image = load_image(data)
    except ImageLoadError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert image.mode == "RGB"


@FAST
@given(encoded_images(),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=12),
       st.integers(0, 10_000))
def test_damaged_images_raise_only_image_load_error(sample: tuple[bytes, tuple[int, int]],
                                                    flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(sample[0])
    for where, value in flips:
        data[where % len(data)] = value
    data = bytes(data[: max(1, len(data) - cut % len(data))])
    try:
        image = load_image(data)
    except ImageLoadError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert image.mode == "RGB" and min(image.size) >= 1














@FAST
@given(st.integers(4, 40), st.integers(0, 2**32 - 1),
       st.tuples(*[st.floats(0.0, 1.0)] * 3), st.tuples(*[st.floats(0.02, 2.0)] * 3))
def test_normalisation_round_trip_within_one_grey_level(size: int, seed: int, mean: tuple,
                                                        std: tuple) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    stats = ChannelStats(mean, std)
    geometry = InputGeometry(source_size=size, crop=size, input_size=size)
    tensor = image_to_tensor(Image.fromarray(pixels), stats, geometry)
    assert tensor.shape == (1, 3, size, size) and tensor.dtype == torch.float32
    back = np.asarray(tensor_to_image(tensor, stats), dtype=np.int16)
    assert np.abs(back - pixels).max() <= 1
