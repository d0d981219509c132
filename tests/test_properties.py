"""Property-based tests: image decoding, catalogue parsing and the normalisation round trip hold
for inputs nobody thought to write down."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from galaxy_core.sources.catalogue import CatalogueError, parse_sexagesimal, read_catalogue
from galaxy_core.sources.images import ImageLoadError, load_image
from galaxy_core.data.geometry import InputGeometry
from galaxy_core.data.normalise import ChannelStats, image_to_tensor, tensor_to_image

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
@given(st.integers(0, 23), st.integers(0, 59), st.integers(0, 5999),
       st.sampled_from(["+", "-", ""]), st.integers(0, 89), st.integers(0, 59), st.integers(0, 599))
def test_sexagesimal_round_trip(h: int, m: int, cs: int, sign: str, d: int, dm: int, ds: int) -> None:
    ra_text = f"{h:02d}:{m:02d}:{cs / 100:05.2f}"
    dec_text = f"{sign}{d:02d}:{dm:02d}:{ds / 10:04.1f}"
    ra = parse_sexagesimal(pd.Series([ra_text]), hours=True, column="RA")[0]
    dec = parse_sexagesimal(pd.Series([dec_text]), hours=False, column="DEC")[0]
    expected_ra = 15 * (h + m / 60 + cs / 100 / 3600)
    expected_dec = (-1 if sign == "-" else 1) * (d + dm / 60 + ds / 10 / 3600)
    assert ra == pytest.approx(expected_ra, abs=1e-9) and 0 <= ra < 360
    assert dec == pytest.approx(expected_dec, abs=1e-9) and -90 <= dec <= 90


@FAST
@given(st.text(alphabet="0123456789:+-. abcx", max_size=16))
def test_sexagesimal_garbage_gives_catalogue_error(text: str) -> None:
    try:
        value = parse_sexagesimal(pd.Series([text]), hours=True, column="RA")[0]
    except CatalogueError as exc:
        assert "line 2, column RA" in str(exc)
    else:
        assert np.isfinite(value)


GZ1_HEADER = "OBJID,RA,DEC,P_EL_DEBIASED,P_CS_DEBIASED,P_DK,SPIRAL,ELLIPTICAL,UNCERTAIN\n"
CANONICAL_HEADER = "id,ra,dec,frac_smooth,frac_features,frac_artifact,label\n"
CSV_CHARACTERS = '0123456789abc,.:+-"\n\r\t <>nNaIf\x00'


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("garbage")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.sampled_from(["", GZ1_HEADER, CANONICAL_HEADER]),
       body=st.one_of(st.binary(max_size=600),
                      st.text(alphabet=CSV_CHARACTERS, max_size=600).map(str.encode)),
       gz=st.booleans())
@example(header="", body=b"\x01\r,\x01", gz=False)  # a bare carriage return inside a ragged row
def test_catalogue_garbage_gives_catalogue_error_only(scratch: Path, header: str, body: bytes,
                                                      gz: bool) -> None:
    import gzip

    raw = header.encode() + body
    if gz:
        raw = gzip.compress(raw)[: max(10, len(raw) // 2)] if body[:1] == b"0" else gzip.compress(raw)
    with tempfile.NamedTemporaryFile(dir=scratch, suffix=".csv", delete=False) as handle:
        handle.write(raw)
    try:
        frame = read_catalogue(handle.name)
    except CatalogueError as exc:
        assert str(exc)
    else:  # whatever parses must be a valid canonical frame
        assert list(frame.columns[:7]) == ["id", "ra", "dec", "frac_smooth", "frac_features",
                                          "frac_artifact", "label"]
        assert frame["ra"].between(0, 360).all() and frame["dec"].between(-90, 90).all()
        assert not frame["id"].duplicated().any()
    finally:
        Path(handle.name).unlink()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 5999),
                          st.booleans(), st.integers(0, 89), st.integers(0, 59), st.integers(0, 599),
                          st.sampled_from([(1, 0, 0), (0, 1, 0), (0, 0, 1)])),
                min_size=1, max_size=8))
def test_gz1_table_round_trip(scratch: Path, rows: list) -> None:
    lines, expected = [GZ1_HEADER], []
    for n, (h, m, cs, south, d, dm, ds, flags) in enumerate(rows):
        ra_text = f"{h:02d}:{m:02d}:{cs / 100:05.2f}"
        dec_text = f"{'-' if south else '+'}{d:02d}:{dm:02d}:{ds / 10:04.1f}"
        flag_text = ",".join(map(str, flags))
        lines.append(f"{587727000000000 + n},{ra_text},{dec_text},0.5,0.4,0.1,{flag_text}\n")
        expected.append((15 * (h + m / 60 + cs / 360000), (-1 if south else 1) * (d + dm / 60 + ds / 36000),
                         ["Spiral", "Elliptical", "Uncertain"][flags.index(1)]))
    path = scratch / "gz1.csv"
    path.write_text("".join(lines))
    frame = read_catalogue(path)
    assert len(frame) == len(rows)
    for (ra, dec, label), row in zip(expected, frame.itertuples()):
        assert row.ra == pytest.approx(ra, abs=1e-9) and row.dec == pytest.approx(dec, abs=1e-9)
        assert row.label_debiased == label


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
