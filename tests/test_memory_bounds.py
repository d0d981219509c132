"""Memory bounds: a gzip bomb catalogue and a folder of huge photos each end in a clear result
under an address-space cap (a child process with RLIMIT_AS), never a MemoryError traceback."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image, ImageDraw

from galaxy_core.serving import predict
from galaxy_core.sources import catalogue_io
from galaxy_core.sources.catalogue import CatalogueError, read_catalogue
from galaxy_core.sources.catalogue_io import read_raw_table
from galaxy_core.sources.images import MAX_DECODED_SIDE, load_image

GZ1_HEADER = (b"OBJID,RA,DEC,NVOTE,P_EL,P_CW,P_ACW,P_EDGE,P_DK,P_MG,P_CS,P_EL_DEBIASED,P_CS_DEBIASED,"
              b"SPIRAL,ELLIPTICAL,UNCERTAIN\n")
GZ1_ROW = b"587727178986356823,00:00:00.41,-10:22:25.7,59,0.61,0.034,0.0,0.153,0.153,0.051,0.186,0.61,0.186,0,0,1\n"
GB = 1024**3
# Importing the package (torch) reserves about 3.5 GB of address space before any work is done,
# so a child's cap is that reservation plus ``headroom``, and at least ``cap`` in all.
CHILD_ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def member(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return packer.compress(data) + packer.flush()


def capped(cap_bytes: int, *args: str, cwd: Path, headroom: int = 2 * GB) -> subprocess.CompletedProcess:
    """``python -m galaxy_core ARGS`` in a child whose address space is capped."""
    code = ("import resource, runpy, sys; "
            f"sys.path.insert(0, {str(REPO)!r}); import galaxy_core.cli; "
            "used = int(open('/proc/self/status').read().split('VmPeak:')[1].split()[0]) * 1024; "
            f"cap = max({cap_bytes}, used + {headroom}); "
            "resource.setrlimit(resource.RLIMIT_AS, (cap, cap)); "
            f"sys.argv = ['galaxy_core', *{list(args)!r}]; "
            "runpy.run_module('galaxy_core', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=CHILD_ENV,
                          check=False, timeout=120)


def test_a_gzip_bomb_catalogue_is_refused_early_under_a_4gb_cap(tmp_path: Path) -> None:
    """7 MB on disk, 1.9 GB of GZ1 rows once inflated (1,900 gzip members of 1 MB each)."""
    block = member(GZ1_ROW * (1024**2 // len(GZ1_ROW)))
    bomb = tmp_path / "bomb.csv.gz"
    bomb.write_bytes(member(GZ1_HEADER) + block * 1900)
    assert bomb.stat().st_size < 10 * 1024**2
    result = capped(4 * GB, "download", "--catalogue", str(bomb), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "more than 1,000,000 rows of 16 columns" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_text_rows_and_values_are_bounded_while_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain, packed = tmp_path / "cat.csv", tmp_path / "cat.csv.gz"
    plain.write_bytes(GZ1_HEADER + GZ1_ROW * 50)
    packed.write_bytes(member(GZ1_HEADER + GZ1_ROW * 50))
    monkeypatch.setattr(catalogue_io, "MAX_TEXT_BYTES", 2000)
    with pytest.raises(CatalogueError, match="gzip expands beyond 2,000 bytes"):
        read_raw_table(packed)
    with pytest.raises(CatalogueError, match="the catalogue is larger than 2,000 bytes"):
        read_raw_table(plain)
    monkeypatch.setattr(catalogue_io, "MAX_TEXT_BYTES", 10**9)
    monkeypatch.setattr(catalogue_io, "MAX_CELLS", 16 * 20)
    with pytest.raises(CatalogueError, match="more than 20 rows of 16 columns"):
        read_raw_table(packed)
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"c{i}" for i in range(1500)) + "\n")
    with pytest.raises(CatalogueError, match="more than 1,000 columns"):
        read_raw_table(wide)


def test_a_large_gz1_table_in_many_members_and_chunks_still_reads(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunked reading returns the same table (small chunks stand in for the 667,944-row table)."""
    monkeypatch.setattr(catalogue_io, "CHUNK_CELLS", 16 * 7)
    rows = [GZ1_ROW.replace(b"587727178986356823", str(10**17 + i).encode()) for i in range(100)]
    path = tmp_path / "gz1.csv.gz"
    path.write_bytes(member(GZ1_HEADER + b"".join(rows[:33])) + b"\x00" * 16 + member(b"".join(rows[33:])))
    frame = read_catalogue(path)
    assert len(frame) == 100 and frame["id"].iloc[-1] == str(10**17 + 99)


def flat_photo(side: int, fmt: str) -> bytes:
    image = Image.new("RGB", (side, side), (20, 20, 30))
    ImageDraw.Draw(image).ellipse((side // 3, side // 3, 2 * side // 3, 2 * side // 3), fill=(200, 180, 150))
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 80} if fmt == "JPEG" else {"compress_level": 1}))
    return buffer.getvalue()


def test_64_huge_photos_are_classified_under_a_5gb_cap(tmp_path: Path) -> None:
    """64 7000x7000 JPEGs: decoded whole they need 9.4 GB; reduced while decoding, a few MB each."""
    folder = tmp_path / "photos"
    folder.mkdir()
    data = flat_photo(7000, "JPEG")
    for i in range(64):
        (folder / f"g{i:02d}.jpg").write_bytes(data)
    out = tmp_path / "predictions.csv"
    result = capped(5 * GB, "predict", str(folder), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert len(lines) == 65 and all(",," not in line.split(",", 2)[1][:1] for line in lines[1:])


def test_every_image_is_reduced_as_it_is_decoded_and_batches_hold_only_framed_cutouts(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    png = flat_photo(3000, "PNG")
    reduced = load_image(png, max_side=MAX_DECODED_SIDE)
    assert reduced.size == (MAX_DECODED_SIDE, MAX_DECODED_SIDE)
    wide = Image.new("RGB", (3000, 1000))
    assert load_image(wide, max_side=MAX_DECODED_SIDE).size == (1024, 341) and wide.size == (3000, 1000)
    assert load_image(flat_photo(2048, "JPEG"), max_side=MAX_DECODED_SIDE).size == (1024, 1024)  # draft 1/2

    framed_sizes: list[tuple[int, int]] = []
    batches: list[tuple[int, ...]] = []
    frame = predict.Classifier.frame

    def recording_frame(self, image):
        framed_sizes.append(image.size)
        return frame(self, image)

    def outputs(self, cutouts):
        batches.append(cutouts.shape)
        return predict.Outputs(np.full((len(cutouts), 3), 1 / 3, dtype=np.float32))

    monkeypatch.setattr(predict.Classifier, "frame", recording_frame)
    monkeypatch.setattr(predict.Classifier, "_outputs", outputs)
    classifier = predict.Classifier.load(predict.PredictConfig(batch_size=2))
    results = classifier.predict([png] * 5 + [b"not an image"])
    assert [r.error is None for r in results] == [True] * 5 + [False]
    # Each photo reaches the framer reduced, and a batch holds only framed cutouts.
    assert framed_sizes == [(MAX_DECODED_SIDE, MAX_DECODED_SIDE)] * 5
    assert batches == [(2, 128, 128, 3), (2, 128, 128, 3), (1, 128, 128, 3)]
