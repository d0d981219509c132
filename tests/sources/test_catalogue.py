"""Catalogue parsing: GZ1 table 2, GZ2 (Hart et al. 2016) and our canonical format."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from galaxy_core.cli import EXIT_USER_ERROR, main
from galaxy_core.sources.catalogue import (
    CatalogueError,
    class_counts,
    label_from_fractions,
    parse_sexagesimal,
    read_catalogue,
    rule_fractions,
    rule_labels,
    write_catalogue,
)
from galaxy_core.sources.cutout_server import CutoutIndex, CutoutServer, ServerOptions

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


CANONICAL = "id,ra,dec,frac_smooth,frac_features,frac_artifact,label\n"


GZ1 = "OBJID,RA,DEC,P_EL_DEBIASED,P_CS_DEBIASED,P_DK,SPIRAL,ELLIPTICAL,UNCERTAIN\n"


GZ2 = ("ra,dec,t01_smooth_or_features_a01_smooth_debiased,"
       "t01_smooth_or_features_a02_features_or_disk_debiased,"
       "t01_smooth_or_features_a03_star_or_artifact_debiased\n")


ROW = "g1,10.5,-3.2,0.1,0.85,0.0,Spiral\n"


BAD_CATALOGUES = {
    "canonical without label": (CANONICAL.replace(",label", "") + "g1,10.5,-3.2,0.1,0.85,0.0\n",
                                "cannot tell the catalogue format.*lacks label"),
    "gz2 without artifact column": (GZ2.rsplit(",", 1)[0] + "\n10.5,-3.2,0.1,0.85\n",
                                    "missing column.*a03_star_or_artifact"),
    "gz1 without flags": ("OBJID,RA,DEC\n1,00:00:01.0,+01:00:00\n", "lacks P_EL_DEBIASED"),
    "empty row": (CANONICAL + ROW + ",,,,,,\n" + ROW.replace("g1", "g2"), "line 3 is empty"),
    "blank line": (CANONICAL + ROW + "\n" + ROW.replace("g1", "g2"), "line 3 is empty"),
    "nan ra": (CANONICAL + ROW + "g2,nan,1,0.1,0.1,0,Uncertain\n",
               "line 3, column ra: value is not a number"),
    "empty dec": (CANONICAL + "g2,1,,0.1,0.1,0,Uncertain\n", "line 2, column dec: value is empty"),
    "ra 360": (CANONICAL + "g2,360,1,0.1,0.1,0,Uncertain\n", r"line 2, column ra: .*\[0, 360\)"),
    "dec 95": (GZ2 + "10,95,0.1,0.9,0\n", "line 2, column dec: .*-90, 90"),
    "infinite dec": (CANONICAL + "g2,1,-inf,0.1,0.1,0,Uncertain\n", "line 2, column dec"),
    "fraction above 1": (CANONICAL + "g2,1,1,1.5,0.1,0,Uncertain\n", "line 2, column frac_smooth"),
    "duplicate id": (CANONICAL + ROW + ROW, "line 3: duplicate galaxy id 'g1' .first seen on line 2"),
    "unknown label": (CANONICAL + "g2,1,1,0.1,0.1,0,Barred\n", "line 2, column label: 'Barred'"),
    "extra field": (CANONICAL + ROW + "g2,1,1,0.1,0.1,0,Spiral,oops\n", "line 3, saw 8"),
    "extra field in first row": (CANONICAL + "g2,1,1,0.1,0.1,0,Spiral,oops\n" + ROW, "line 2 has 8 fields"),
    "unclosed quote": (CANONICAL + 'g2,"1,1,0.1\n', "not a readable CSV"),
    "gz1 bad RA": (GZ1 + "1,12h30m,+01:00:00,0.1,0.9,0,1,0,0\n", "line 2, column RA: cannot read '12h30m'"),
    "gz1 minutes 75": (GZ1 + "1,00:00:01.0,+01:75:00,0.1,0.9,0,1,0,0\n", "line 2, column DEC: .*60 or more"),
    "gz1 two flags": (GZ1 + "1,00:00:01.0,+01:00:00,0.1,0.9,0,1,1,0\n", "line 2: exactly one of SPIRAL"),
    "header only": (CANONICAL, "no rows"),
    "empty file": ("", "empty"),
    "html page": ("<!DOCTYPE html><html><body>Service unavailable</body></html>", "HTML"),
    "binary": (bytes(range(256)) * 8, "binary data"),
    "latin-1 bytes": (b"id,ra\n\xff\xfe,1\n", "not a readable CSV"),
    "gzip garbage": (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03not really deflate data", "corrupt gzip"),
    "truncated gzip": (gzip.compress((CANONICAL + ROW * 50).encode())[:40], "corrupt gzip"),
}


@pytest.mark.parametrize("name", sorted(BAD_CATALOGUES))
def test_bad_catalogue_names_the_problem(tmp_path: Path, name: str) -> None:
    body, message = BAD_CATALOGUES[name]
    path = tmp_path / "catalogue.csv"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    with pytest.raises(CatalogueError, match=message) as caught:
        read_catalogue(path)
    assert "\n" not in str(caught.value)


def test_gzipped_catalogue_with_padding_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.csv.gz"
    members = gzip.compress((CANONICAL + ROW).encode()) + gzip.compress(ROW.replace("g1", "g2").encode())
    path.write_bytes(members + b"\x00" * 16)
    assert read_catalogue(path)["id"].tolist() == ["g1", "g2"]


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])




CSV_CHARACTERS = '0123456789abc,.:+-"\n\r\t <>nNaIf\x00'


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("garbage")


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


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.sampled_from(["", GZ1_HEADER, CANONICAL]),
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
    lines, expected = [GZ1], []
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


def test_a_plain_catalogue_reads_in_any_case_with_unsure_as_uncertain(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    path.write_text("image,label\na/g1.jpg,spiral\nb/g2.png,ELLIPTICAL\nc/g3.jpg,Unsure\nd/g4.jpg, uncertain \n")
    frame = read_catalogue(path)
    assert list(frame["id"]) == ["g1", "g2", "g3", "g4"]
    for rule in ("votes", "debiased"):
        assert list(rule_labels(frame, rule)) == [0, 1, 2, 2]
    assert frame[["ra", "dec", "votes_smooth", "debiased_features"]].isna().all().all()
    path.write_text("image,label\ng1.jpg,Lenticular\n")
    with pytest.raises(CatalogueError, match="line 2, column label: 'Lenticular'"):
        read_catalogue(path)


@pytest.fixture
def catalogue_server(tiny_dataset: Path):
    files = {"/good.csv": (CANONICAL + ROW).encode(),
             "/busy.csv": b"<!DOCTYPE html><html><body>Error: service busy</body></html>",
             "/broken.csv.gz": BAD_CATALOGUES["gzip garbage"][0],
             "/dup.csv": (CANONICAL + ROW + ROW).encode()}
    with CutoutServer(CutoutIndex.from_catalogue(tiny_dataset), ServerOptions(extra_files=files)) as server:
        yield server


@pytest.mark.parametrize("path, message", [
    ("/busy.csv", "HTML"), ("/broken.csv.gz", "corrupt gzip"), ("/dup.csv", "duplicate galaxy id"),
    ("/missing.csv", "HTTP 404"),
])
def test_bad_catalogue_over_http(catalogue_server: CutoutServer, path: str, message: str) -> None:
    assert read_catalogue(catalogue_server.base_url + "/good.csv")["id"].tolist() == ["g1"]
    with pytest.raises(CatalogueError, match=message):
        read_catalogue(catalogue_server.base_url + path)


def test_bad_catalogue_via_cli_download(catalogue_server: CutoutServer, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    cases = [("/busy.csv", "HTML"), ("/broken.csv.gz", "corrupt gzip"), ("/missing.csv", "HTTP 404")]
    for path, message in cases:
        out = tmp_path / path.strip("/")
        code = main(["download", "--catalogue", catalogue_server.base_url + path, "--out", str(out),
                     "--cutout-url", catalogue_server.url])
        err = capsys.readouterr().err
        assert code == EXIT_USER_ERROR and message in err and "Traceback" not in err
        assert not out.exists()  # nothing created for a catalogue that could not be read
