"""Catalogue parsing: GZ1 table 2, GZ2 (Hart et al. 2016) and our canonical format."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from galaxy_core.sources.catalogue import (CatalogueError, class_counts, label_from_fractions, parse_sexagesimal,
                                   read_catalogue, rule_fractions, rule_labels, write_catalogue)

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
    assert frame["label_debiased"].tolist() == ["Uncertain", "Spiral", "Elliptical"]
    assert frame["id"].tolist() == ["1", "2", "3"]
    assert frame.loc[2, "ra"] == pytest.approx(15.0)
    assert frame.loc[1, "debiased_features"] == pytest.approx(0.80)
    # The volunteers' own fractions: P_EL for smooth, P_CS for features, the same 0.8 rule.
    assert frame["label_votes"].tolist() == ["Uncertain", "Uncertain", "Elliptical"]
    assert frame.loc[1, "votes_features"] == pytest.approx(0.39) and frame.loc[0, "votes_smooth"] == 0.61


def test_gz1_gzip_and_format_flag(tmp_path: Path) -> None:
    raw = GZ1_HEADER + "7,00:10:00,+01:00:00,10,0.9,0,0,0,0,0,0.1,0.9,0.1,0,1,0\n"
    path = tmp_path / "table.csv.gz"
    path.write_bytes(gzip.compress(raw.encode()))
    frame = read_catalogue(path, "gz1")
    assert frame["label_debiased"].tolist() == frame["label_votes"].tolist() == ["Elliptical"]


def test_gz1_row_with_two_flags_is_rejected(tmp_path: Path) -> None:
    path = gz1_file(tmp_path, ["1,00:00:00,+00:00:00,5,0.5,0,0,0,0,0,0.5,0.5,0.5,1,1,0"])
    with pytest.raises(CatalogueError, match="line 2.*exactly one"):
        read_catalogue(path)


def test_gz2_threshold_rule() -> None:
    labels = label_from_fractions(np.array([0.81, 0.10, 0.80, 0.5]), np.array([0.1, 0.85, 0.1, 0.5]))
    assert labels.tolist() == ["Elliptical", "Spiral", "Uncertain", "Uncertain"]


def test_canonical_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": ["a", "b"], "ra": [1.0, 2.0], "dec": [0.5, -0.5],
                          "votes_smooth": [0.9, 0.5], "votes_features": [0.05, 0.45], "votes_artifact": [0.05, 0.05],
                          "debiased_smooth": [0.9, 0.1], "debiased_features": [0.05, 0.9],
                          "debiased_artifact": [0.05, 0.0], "label_votes": ["Elliptical", "Uncertain"],
                          "label_debiased": ["Elliptical", "Spiral"], "image": ["images/a.jpg", "images/b.jpg"]})
    write_catalogue(frame, tmp_path / "catalogue.csv")
    again = read_catalogue(tmp_path / "catalogue.csv")
    pd.testing.assert_frame_equal(again, frame)
    assert not list(tmp_path.glob(".*"))
    assert rule_labels(again, "votes").tolist() == [1, 2] and rule_labels(again, "debiased").tolist() == [1, 0]


def test_catalogues_of_one_fraction_set_serve_both_rules(tmp_path: Path) -> None:
    """Our catalogues from before the label rule was a choice hold one set of fractions and a label."""
    (tmp_path / "old.csv").write_text("id,ra,dec,frac_smooth,frac_features,frac_artifact,label\n"
                                      "a,1,2,0.1,0.9,0,Spiral\n")
    frame = read_catalogue(tmp_path / "old.csv")
    for rule in ("votes", "debiased"):
        assert rule_labels(frame, rule).tolist() == [0]
        np.testing.assert_allclose(rule_fractions(frame, rule), [[0.1, 0.9, 0.0]])


def test_a_rule_the_source_cannot_give_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "gz1.csv").write_text("OBJID,RA,DEC,P_EL_DEBIASED,P_CS_DEBIASED,P_DK,SPIRAL,ELLIPTICAL,UNCERTAIN\n"
                                      "1,00:00:01.0,+01:00:00,0.1,0.9,0,1,0,0\n")
    frame = read_catalogue(tmp_path / "gz1.csv")
    assert rule_labels(frame, "debiased").tolist() == [0]
    with pytest.raises(CatalogueError, match="no votes labels.*use --labels debiased"):
        rule_labels(frame, "votes")


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
    assert class_counts(frame["label_debiased"]) == {"Spiral": 1662, "Elliptical": 651, "Uncertain": 3872}
    assert class_counts(frame["label_votes"]) == {"Spiral": 723, "Elliptical": 1451, "Uncertain": 4011}
    assert frame["ra"].between(0, 16.0).all()  # the sample covers RA 00h-01h


def test_shared_gz2_counts(shared_gz2: Path) -> None:
    frame = read_catalogue(shared_gz2 / "catalogue.csv")
    assert class_counts(frame["label_debiased"]) == {"Spiral": 3027, "Elliptical": 1124, "Uncertain": 2291}
    # The volunteers' own (weighted) fractions, same 0.8 rule: the two labels differ for 48%.
    assert class_counts(frame["label_votes"]) == {"Spiral": 903, "Elliptical": 2336, "Uncertain": 3203}
    assert (frame["label_votes"] != frame["label_debiased"]).mean() == pytest.approx(0.48, abs=0.01)
    assert frame["id"].is_unique and "image" in frame
