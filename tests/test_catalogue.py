"""Catalogue parsing: GZ1 table 2, GZ2 (Hart et al. 2016) and our canonical format."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from galaxy_core.catalogue import (CatalogueError, class_counts, label_from_fractions, parse_sexagesimal,
                                   read_catalogue, write_catalogue)

GZ1_HEADER = ("OBJID,RA,DEC,NVOTE,P_EL,P_CW,P_ACW,P_EDGE,P_DK,P_MG,P_CS,P_EL_DEBIASED,P_CS_DEBIASED,"
              "SPIRAL,ELLIPTICAL,UNCERTAIN\n")


def gz1_file(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "gz1.csv"
    path.write_text(GZ1_HEADER + "\n".join(rows) + "\n")
    return path


def test_sexagesimal_to_degrees() -> None:
    ra = parse_sexagesimal(pd.Series(["00:00:00.41", "12:30:00", "23:59:59.99"]), hours=True, column="RA")
    dec = parse_sexagesimal(pd.Series(["-10:22:25.7", "+45:00:00", "-00:30:00.0"]), hours=False, column="DEC")
    np.testing.assert_allclose(ra, [0.41 * 15 / 3600, 187.5, 359.99995833], atol=1e-6)
    np.testing.assert_allclose(dec, [-(10 + 22 / 60 + 25.7 / 3600), 45.0, -0.5], atol=1e-9)


def test_gz1_flags_define_labels(tmp_path: Path) -> None:
    path = gz1_file(tmp_path, [
        "1,00:00:00.41,-10:22:25.7,59,0.61,0.03,0,0.15,0.15,0.05,0.19,0.61,0.19,0,0,1",
        "2,00:00:00.74,-09:13:20.2,18,0.61,0,0.17,0.22,0,0,0.39,0.20,0.80,1,0,0",
        "3,01:00:00.00,+09:13:20.2,18,0.9,0,0,0,0,0,0.1,0.9,0.1,0,1,0",
    ])
    frame = read_catalogue(path)
    assert frame["label"].tolist() == ["Uncertain", "Spiral", "Elliptical"]
    assert frame["id"].tolist() == ["1", "2", "3"]
    assert frame.loc[2, "ra"] == pytest.approx(15.0)
    assert frame.loc[1, "frac_features"] == pytest.approx(0.80)


def test_gz1_gzip_and_format_flag(tmp_path: Path) -> None:
    raw = GZ1_HEADER + "7,00:10:00,+01:00:00,10,0.9,0,0,0,0,0,0.1,0.9,0.1,0,1,0\n"
    path = tmp_path / "table.csv.gz"
    path.write_bytes(gzip.compress(raw.encode()))
    frame = read_catalogue(path, "gz1")
    assert frame["label"].tolist() == ["Elliptical"]


def test_gz1_row_with_two_flags_is_rejected(tmp_path: Path) -> None:
    path = gz1_file(tmp_path, ["1,00:00:00,+00:00:00,5,0.5,0,0,0,0,0,0.5,0.5,0.5,1,1,0"])
    with pytest.raises(CatalogueError, match="line 2.*exactly one"):
        read_catalogue(path)


def test_gz2_threshold_rule() -> None:
    labels = label_from_fractions(np.array([0.81, 0.10, 0.80, 0.5]), np.array([0.1, 0.85, 0.1, 0.5]))
    assert labels.tolist() == ["Elliptical", "Spiral", "Uncertain", "Uncertain"]


def test_canonical_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": ["a", "b"], "ra": [1.0, 2.0], "dec": [0.5, -0.5],
                          "frac_smooth": [0.9, 0.1], "frac_features": [0.05, 0.9],
                          "frac_artifact": [0.05, 0.0], "label": ["Elliptical", "Spiral"],
                          "image": ["images/a.jpg", "images/b.jpg"]})
    write_catalogue(frame, tmp_path / "catalogue.csv")
    again = read_catalogue(tmp_path / "catalogue.csv")
    pd.testing.assert_frame_equal(again, frame)
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("body, message", [
    ("<html><body>Service unavailable</body></html>", "HTML"),
    ("", "empty"),
    ("id,ra,dec\n", "cannot tell the catalogue format"),
    ("id,ra,dec,frac_smooth,frac_features,frac_artifact,label\nx,1,2,0.1,0.9,0,Spiral\nx,3,4,0.1,0.9,0,Spiral\n",
     "line 3: duplicate galaxy id 'x'"),
    ("id,ra,dec,frac_smooth,frac_features,frac_artifact,label\nx,400,2,0.1,0.9,0,Spiral\n", "line 2, column ra"),
    ("id,ra,dec,frac_smooth,frac_features,frac_artifact,label\nx,1,,0.1,0.9,0,Spiral\n",
     "line 2, column dec: value is empty"),
    ("id,ra,dec,frac_smooth,frac_features,frac_artifact,label\nx,1,2,0.1,0.9,0,Barred\n", "'Barred'"),
])
def test_bad_catalogues_name_the_problem(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(CatalogueError, match=message):
        read_catalogue(path)


def test_missing_file() -> None:
    with pytest.raises(CatalogueError, match="not found"):
        read_catalogue("/nonexistent/catalogue.csv")


def test_shared_gz1_sample_counts(shared_gz1: Path) -> None:
    frame = read_catalogue(shared_gz1)
    assert class_counts(frame["label"]) == {"Spiral": 1662, "Elliptical": 651, "Uncertain": 3872}
    assert frame["ra"].between(0, 16.0).all()  # the sample covers RA 00h-01h


def test_shared_gz2_counts(shared_gz2: Path) -> None:
    frame = read_catalogue(shared_gz2 / "catalogue.csv")
    assert class_counts(frame["label"]) == {"Spiral": 3027, "Elliptical": 1124, "Uncertain": 2291}
    assert frame["id"].is_unique and "image" in frame
