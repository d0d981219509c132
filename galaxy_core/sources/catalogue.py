"""Galaxy Zoo tables (GZ1 table 2, GZ2 Hart et al. 2016, our own, or a plain ``image,label``
list) -> one canonical frame.

The canonical frame keeps both kinds of vote fraction for the first question (smooth, features
or disk, star or artifact): ``votes_*``, what the volunteers said about the image (GZ2
``_weighted_fraction``, GZ1 ``P_EL``/``P_CS``), and ``debiased_*``, Galaxy Zoo's correction for
distance (GZ2 ``_debiased``, GZ1 ``P_EL_DEBIASED``/``P_CS_DEBIASED``), with the class each label
rule gives (``label_votes``, ``label_debiased``), plus ``id, ra, dec`` and, when images are
known, ``image`` (a path relative to the dataset folder). Which rule a model learns is chosen
later (``--labels``); the fractions are kept so training can use them as soft labels and as the
targets of the vote-fraction head, not only the thresholded class.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from galaxy_core.base.atomic import atomic_path
from galaxy_core.base.config import ANSWERS, CLASS_THRESHOLD, CLASSES, LABEL_RULES, DownloadConfig
from galaxy_core.base.fields import clip, shown
from galaxy_core.sources.catalogue_io import CatalogueError, read_raw_table
from galaxy_core.sources.fetch import UrlPolicy

CatalogueFormat = Literal["auto", "gz1", "gz2", "canonical", "plain"]



def fraction_columns(rule: str) -> list[str]:
    """The canonical columns holding one label rule's vote fractions, in ANSWERS order."""
    return [f"{rule}_{answer}" for answer in ANSWERS]


def label_column(rule: str) -> str:
    return f"label_{rule}"


CANONICAL_COLUMNS = ["id", "ra", "dec", *(c for rule in LABEL_RULES for c in fraction_columns(rule)),
                     *(label_column(rule) for rule in LABEL_RULES)]
LEGACY_COLUMNS = ["id", "ra", "dec", "frac_smooth", "frac_features", "frac_artifact", "label"]
"""Our catalogues from before the label rule was a choice: one set of fractions and one label."""
GZ1_COLUMNS = ["OBJID", "RA", "DEC", "P_EL_DEBIASED", "P_CS_DEBIASED", "P_DK",
               "SPIRAL", "ELLIPTICAL", "UNCERTAIN"]
GZ1_VOTES = {"votes": ("P_EL", "P_CS", "P_DK"), "debiased": ("P_EL_DEBIASED", "P_CS_DEBIASED", "P_DK")}
PLAIN_COLUMNS = ["image", "label"]
"""A plain labelled folder: one class per image, no vote fractions (the original project's format)."""
PLAIN_NAMES = {**{c.lower(): c for c in CLASSES}, "unsure": "Uncertain"}
GZ2_PREFIX = "t01_smooth_or_features_"
GZ2_ANSWERS = ("a01_smooth", "a02_features_or_disk", "a03_star_or_artifact")
GZ2_SUFFIX = {"votes": "weighted_fraction", "debiased": "debiased"}
GZ2_COLUMNS = ["ra", "dec", *(f"{GZ2_PREFIX}{a}_debiased" for a in GZ2_ANSWERS)]
TREE_KINDS = ("count", "weighted_fraction")
"""Per-answer columns of the whole GZ2 decision tree that are carried through to the canonical
catalogue and the packed cache, named ``<GZ2 column stem>_<kind>``: the raw vote counts (the tree
loss's targets) and the weighted fractions (what the tree's answers are scored against)."""
TREE_COLUMN = re.compile(r"^t\d\d_[a-z0-9_]+_a\d\d_[a-z0-9_]+_(count|weighted_fraction)$")


def tree_columns(columns: Iterable[str]) -> list[str]:
    """The decision-tree answer columns among ``columns``, in their order."""
    return [c for c in columns if TREE_COLUMN.match(str(c))]


def _add_tree(out: pd.DataFrame, frame: pd.DataFrame) -> None:
    """Copy the per-answer counts and fractions of the whole tree, when the source has them."""
    for column in tree_columns(frame.columns):
        values = _numeric(frame, column)
        bad = (values < 0) | ((values > 1) if column.endswith("_fraction") else False)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise CatalogueError(f"line {row + 2}, column {column}: {shown(frame[column].iloc[row])} - "
                                 "must be a vote count (>= 0) or a fraction in [0, 1]")
        out[column] = values


def label_from_fractions(frac_smooth: np.ndarray, frac_features: np.ndarray) -> np.ndarray:
    """The Galaxy Zoo rule: a class needs more than 80% of the vote (Elliptical wins a tie)."""
    smooth = np.asarray(frac_smooth, dtype=float)
    features = np.asarray(frac_features, dtype=float)
    labels = np.full(smooth.shape, "Uncertain", dtype=object)
    labels[features > CLASS_THRESHOLD] = "Spiral"
    labels[smooth > CLASS_THRESHOLD] = "Elliptical"
    return labels


def parse_sexagesimal(values: pd.Series, *, hours: bool, column: str) -> np.ndarray:
    """'HH:MM:SS.ss' (RA, hours) or '+DD:MM:SS.s' (Dec, degrees) -> decimal degrees."""
    text = values.astype(str).str.strip()
    parts = text.str.extract(r"^([+-]?)(\d{1,3})[:\s](\d{1,2})[:\s](\d{1,2}(?:\.\d*)?)$")
    bad = parts[1].isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise CatalogueError(
            f"line {row + 2}, column {column}: cannot read {shown(values.iloc[row])} as "
            f"{'HH:MM:SS' if hours else '±DD:MM:SS'}")
    minutes, seconds = parts[2].astype(float), parts[3].astype(float)
    over = ((minutes >= 60) | (seconds >= 60)).to_numpy()
    if over.any():
        row = int(np.flatnonzero(over)[0])
        raise CatalogueError(f"line {row + 2}, column {column}: {shown(values.iloc[row])} has minutes or "
                             "seconds of 60 or more")
    whole = parts[1].astype(float) + minutes / 60 + seconds / 3600
    sign = np.where(parts[0] == "-", -1.0, 1.0)
    return (whole * (15.0 if hours else 1.0) * sign).to_numpy(dtype=float)


def _require_columns(frame: pd.DataFrame, columns: list[str], fmt: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CatalogueError(f"{fmt} catalogue is missing column(s): {', '.join(missing)}")


def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raw = frame[column].iloc[row]
        what = "is empty" if pd.isna(raw) or str(raw).strip() == "" else f"is not a number ({shown(raw)})"
        raise CatalogueError(f"line {row + 2}, column {column}: value {what}")
    return values.to_numpy(dtype=float)


def _fraction(frame: pd.DataFrame, column: str) -> np.ndarray:
    values = _numeric(frame, column)
    bad = (values < 0) | (values > 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise CatalogueError(f"line {row + 2}, column {column}: {values[row]} - must be in [0, 1]")
    return values


def _from_gz1(frame: pd.DataFrame) -> pd.DataFrame:
    _require_columns(frame, GZ1_COLUMNS, "GZ1")
    flags = np.stack([_numeric(frame, c) for c in ("SPIRAL", "ELLIPTICAL", "UNCERTAIN")], axis=1)
    bad = (flags.sum(axis=1) != 1) | ~np.isin(flags, (0, 1)).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise CatalogueError(
            f"line {row + 2}: exactly one of SPIRAL, ELLIPTICAL, UNCERTAIN must be 1, "
            f"got {flags[row].astype(int).tolist()}")
    for column in ("RA", "DEC"):
        empty = frame[column].isna()
        if empty.any():
            raise CatalogueError(f"line {int(np.flatnonzero(empty)[0]) + 2}, column {column}: value is empty")
    out = pd.DataFrame({
        "id": frame["OBJID"].astype(str).str.strip(),
        "ra": parse_sexagesimal(frame["RA"], hours=True, column="RA"),
        "dec": parse_sexagesimal(frame["DEC"], hours=False, column="DEC"),
    })
    for rule, columns in GZ1_VOTES.items():
        if all(c in frame.columns for c in columns):  # table 2 has both; older extracts may lack P_EL
            _add_rule(out, rule, [_numeric(frame, c) for c in columns])
    # The debiased class is GZ1's own SPIRAL / ELLIPTICAL / UNCERTAIN flag, which is more than the
    # 0.8 threshold on the debiased fractions alone.
    out[label_column("debiased")] = np.asarray(CLASSES, dtype=object)[flags.argmax(axis=1)]
    return out


def _add_rule(out: pd.DataFrame, rule: str, fractions: list[np.ndarray]) -> None:
    """One label rule's fractions and the class the CLASS_THRESHOLD rule gives them."""
    for column, values in zip(fraction_columns(rule), fractions):
        out[column] = values
    out[label_column(rule)] = label_from_fractions(fractions[0], fractions[1])


def _gz2_ids(frame: pd.DataFrame, ra: np.ndarray, dec: np.ndarray) -> pd.Series:
    for column in ("dr7objid", "objid", "OBJID"):
        if column in frame.columns:
            return frame[column].astype(str).str.strip()
    if "image" in frame.columns:
        return frame["image"].astype(str).map(lambda p: Path(p).stem)
    return pd.Series([f"gz2_{r:.5f}_{d:+.5f}" for r, d in zip(ra, dec)])


def _from_gz2(frame: pd.DataFrame) -> pd.DataFrame:
    _require_columns(frame, GZ2_COLUMNS, "GZ2")
    ra, dec = _numeric(frame, "ra"), _numeric(frame, "dec")
    out = pd.DataFrame({"id": _gz2_ids(frame, ra, dec).to_numpy(), "ra": ra, "dec": dec})
    for rule, suffix in GZ2_SUFFIX.items():
        columns = [f"{GZ2_PREFIX}{answer}_{suffix}" for answer in GZ2_ANSWERS]
        if all(c in frame.columns for c in columns):
            _add_rule(out, rule, [_numeric(frame, c) for c in columns])
    _add_tree(out, frame)
    if "image" in frame.columns:
        out["image"] = frame["image"].astype(str).to_numpy()
    return out


def _labels(frame: pd.DataFrame, column: str) -> np.ndarray:
    labels = frame[column].astype(str).str.strip()
    bad = ~labels.isin(CLASSES)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise CatalogueError(f"line {row + 2}, column {column}: {shown(labels.iloc[row])} is not one of "
                             f"{', '.join(CLASSES)}")
    return labels.to_numpy(dtype=object)


def _from_canonical(frame: pd.DataFrame) -> pd.DataFrame:
    legacy = "label" in frame.columns and not any(label_column(r) in frame.columns for r in LABEL_RULES)
    _require_columns(frame, LEGACY_COLUMNS if legacy else ["id", "ra", "dec"], "canonical")
    out = pd.DataFrame({"id": frame["id"].astype(str).str.strip()})
    for column in ("ra", "dec"):
        out[column] = _numeric(frame, column)
    if legacy:  # one set of fractions, made by whatever rule wrote it: it serves both rules
        fractions = [_fraction(frame, old) for old in LEGACY_COLUMNS[3:6]]
        for rule in LABEL_RULES:
            for column, values in zip(fraction_columns(rule), fractions):
                out[column] = values
            out[label_column(rule)] = _labels(frame, "label")
    for rule in LABEL_RULES if not legacy else ():
        columns = fraction_columns(rule)
        if label_column(rule) in frame.columns and not frame[label_column(rule)].isna().all():
            out[label_column(rule)] = _labels(frame, label_column(rule))
            for column in columns:
                out[column] = _numeric(frame, column)
    _add_tree(out, frame)
    if "image" in frame.columns:
        out["image"] = frame["image"].astype(str).to_numpy()
    return out


def _from_plain(frame: pd.DataFrame) -> pd.DataFrame:
    """``image,label`` rows -> the canonical frame: the one label serves both label rules, the
    vote fractions are unknown (NaN), the id is the image's file name and RA/Dec may be absent."""
    _require_columns(frame, PLAIN_COLUMNS, "plain")
    images = frame["image"].astype(str).str.strip()
    missing = frame["image"].isna() | (images == "")
    if missing.any():
        raise CatalogueError(f"line {int(np.flatnonzero(missing.to_numpy())[0]) + 2}, column image: value is empty")
    raw = frame["label"].astype(str).str.strip()
    labels = raw.str.lower().map(PLAIN_NAMES)
    bad = labels.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise CatalogueError(f"line {row + 2}, column label: {raw.iloc[row]!r} is not one of "
                             f"{', '.join(CLASSES)} (any case; 'Unsure' means Uncertain)")
    ids = frame["id"].astype(str).str.strip() if "id" in frame.columns else images.map(lambda p: Path(p).stem)
    out = pd.DataFrame({"id": ids.to_numpy()})
    for column in ("ra", "dec"):
        out[column] = _numeric(frame, column) if column in frame.columns else np.nan
    for rule in LABEL_RULES:
        for column in fraction_columns(rule):
            out[column] = np.nan
        out[label_column(rule)] = labels.to_numpy(dtype=object)
    out["image"] = images.to_numpy()
    return out


def _is_plain(cols: set[str]) -> bool:
    fractions = set(LEGACY_COLUMNS[3:6]) | {c for rule in LABEL_RULES for c in fraction_columns(rule)}
    return set(PLAIN_COLUMNS) <= cols and not cols & fractions


def detect_format(columns: list[str]) -> CatalogueFormat:
    cols = set(columns)
    if _is_plain(cols):
        return "plain"
    if {"OBJID", "SPIRAL", "ELLIPTICAL", "UNCERTAIN"} <= cols:
        return "gz1"
    # Ours first: a canonical catalogue may carry the tree's t01_..._count columns too.
    if "id" in cols and ("label" in cols or any(label_column(r) in cols for r in LABEL_RULES)):
        return "canonical"
    if any(c.startswith(GZ2_PREFIX) for c in cols):
        return "gz2"
    nearest = ""
    if "id" in cols:
        expected = LEGACY_COLUMNS if cols & set(LEGACY_COLUMNS[3:6]) else CANONICAL_COLUMNS
        nearest = f"; as our own format it lacks {', '.join(c for c in expected if c not in cols)}"
    elif "OBJID" in cols:
        nearest = f"; as GZ1 it lacks {', '.join(c for c in GZ1_COLUMNS if c not in cols)}"
    raise CatalogueError(
        "cannot tell the catalogue format: expected Galaxy Zoo 1 table 2 columns (OBJID, RA, DEC, "
        "SPIRAL, ELLIPTICAL, UNCERTAIN, ...), Galaxy Zoo 2 columns (ra, dec, "
        f"{GZ2_PREFIX}..._debiased) or a plain image,label table; found "
        f"{', '.join(sorted(cols)[:8]) or 'no columns'}{nearest}")


def validate_canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """Coordinates in range, fractions in [0, 1], unique ids, at least one label rule; raises
    naming the first bad row. A rule the source has no columns for is left out (all NaN)."""
    if frame.empty:
        raise CatalogueError("the catalogue has no rows")
    if not any(label_column(rule) in frame.columns for rule in LABEL_RULES):
        raise CatalogueError("the catalogue has no vote fractions or labels for either label rule")
    checks = [
        ("ra", (frame["ra"] < 0) | (frame["ra"] >= 360), "RA must be in [0, 360) degrees"),
        ("dec", (frame["dec"] < -90) | (frame["dec"] > 90), "Dec must be in [-90, 90] degrees"),
    ]
    for rule in LABEL_RULES:
        for column in fraction_columns(rule):
            if column not in frame.columns:
                frame[column] = np.nan
            checks.append((column, (frame[column] < 0) | (frame[column] > 1), "must be in [0, 1]"))
        if label_column(rule) not in frame.columns:
            frame[label_column(rule)] = ""
    for column, bad, why in checks:
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise CatalogueError(f"line {row + 2}, column {column}: {shown(frame[column].iloc[row])} - {why}")
    empty_id = frame["id"].isin(["", "nan", "None"])
    if empty_id.any():
        raise CatalogueError(f"line {int(np.flatnonzero(empty_id.to_numpy())[0]) + 2}: empty galaxy id")
    dup = frame["id"].duplicated(keep="first")
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        first = int(np.flatnonzero((frame["id"] == frame["id"].iloc[row]).to_numpy())[0])
        raise CatalogueError(f"line {row + 2}: duplicate galaxy id {shown(frame['id'].iloc[row])} "
                             f"(first seen on line {first + 2})")
    return frame.reset_index(drop=True)


def read_catalogue(source: str | os.PathLike[str], fmt: CatalogueFormat = "auto", *,
                   policy: UrlPolicy | None = None, stop: threading.Event | None = None,
                   timeout_s: float = DownloadConfig.timeout_s) -> pd.DataFrame:
    """Read a GZ1, GZ2 or canonical catalogue from a path or URL into the canonical frame; a URL
    must pass ``policy`` (the app's allowed hosts) when one is given, ``stop`` ends its download
    and ``timeout_s`` bounds each wait in it.

    A URL fetched under a ``policy`` is fetched for someone else: a message about its content
    then names no text of it (column names, values), since that text may be a page of a server
    the visitor could not otherwise read."""
    text = str(source)
    frame = read_raw_table(source, policy=policy, stop=stop, timeout_s=timeout_s)
    try:
        return _canonical(frame, fmt, text)
    except CatalogueError:
        if policy is None or not text.startswith(("http://", "https://")):
            raise
        raise CatalogueError(f"{clip(text, 200)}: the answer is not a Galaxy Zoo catalogue that can be read (its "
                             "content is not repeated here; save it and open it as a file to see why)") from None


def _canonical(frame: pd.DataFrame, fmt: CatalogueFormat, text: str) -> pd.DataFrame:
    empty = frame.isna().all(axis=1).to_numpy()
    if empty.any():
        raise CatalogueError(f"{text}: line {int(np.flatnonzero(empty)[0]) + 2} is empty")
    if fmt == "auto":
        fmt = detect_format(list(frame.columns))
    readers = {"gz1": _from_gz1, "gz2": _from_gz2, "canonical": _from_canonical, "plain": _from_plain}
    if fmt not in readers:
        raise CatalogueError(f"unknown catalogue format {fmt!r}: use gz1, gz2, plain or auto")
    frame = validate_canonical(readers[fmt](frame))
    return frame[[*CANONICAL_COLUMNS, *tree_columns(frame.columns), *(["image"] if "image" in frame.columns else [])]]


def write_catalogue(frame: pd.DataFrame, path: Path) -> None:
    """Write atomically, so a crash never leaves a half catalogue behind."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def class_counts(labels: pd.Series | np.ndarray) -> dict[str, int]:
    series = pd.Series(np.asarray(labels))
    return {name: int((series == name).sum()) for name in CLASSES}


def has_labels(frame: pd.DataFrame, rule: str) -> bool:
    """Whether every galaxy has a class under ``rule`` (a catalogue may lack one rule's columns)."""
    return bool(frame[label_column(rule)].isin(CLASSES).all())


def rule_labels(frame: pd.DataFrame, rule: str) -> np.ndarray:
    """Class indices (CLASSES order) of every galaxy under the label rule ``rule``."""
    if not has_labels(frame, rule):
        other = [r for r in LABEL_RULES if r != rule and has_labels(frame, r)]
        hint = f"; use --labels {other[0]}" if other else ""
        raise CatalogueError(f"this catalogue has no {rule} labels (its source lacks those vote "
                             f"fractions){hint}")
    return frame[label_column(rule)].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(np.int64)


def rule_fractions(frame: pd.DataFrame, rule: str) -> np.ndarray:
    """(n, 3) vote fractions under ``rule``, in ANSWERS order; NaN where the catalogue has none."""
    return frame[fraction_columns(rule)].to_numpy(dtype=np.float64)
