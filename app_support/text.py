"""Text that came from a file, a URL or a visitor, made safe to put in the page (not a page).

Streamlit renders markdown in titles, captions, markdown, alerts, progress texts and labels: a
galaxy id such as ``![t](http://elsewhere/t.png)`` would plant a tracking image for every visitor.
``escape_markdown`` is the one rule for such text; ``public_text`` also replaces the server's own
folders with their short names, so no visitor learns where the app keeps its files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from galaxy_core.base import clip

MAX_SHOWN = 300
_MARKDOWN = re.compile(r"([\\`*_\[\]()<>#!|~$])")
_AUTOLINK = re.compile(r"(://|www\.)", re.IGNORECASE)


def escape_markdown(text: object, limit: int = MAX_SHOWN) -> str:
    """``text`` clipped and with every markdown (and HTML, emoji-shortcode, LaTeX) character escaped,
    so it is drawn exactly as written; line breaks become spaces (one line each)."""
    flat = " ".join(str(text).split())
    escaped = _MARKDOWN.sub(r"\\\1", clip(flat, limit))
    # GFM turns bare URLs into links: an escaped ':' or '.' breaks the pattern, and still reads the same
    return _AUTOLINK.sub(lambda m: "\\://" if m.group(1) == "://" else m.group(1)[:3] + "\\.", escaped)


def redact_paths(text: str, roots: Iterable[tuple[Path, str]]) -> str:
    """``text`` with each server folder in ``roots`` (path, public name) replaced by its name, the
    longest first so a folder inside another keeps its own name."""
    pairs = []
    for root, name in roots:
        for form in {str(root), os.path.abspath(root), os.path.realpath(root)}:
            pairs.append((form.rstrip("/"), name))
    for form, name in sorted(pairs, key=lambda p: -len(p[0])):
        if form:
            text = text.replace(form, name)
    return text


def public_text(text: object, roots: Iterable[tuple[Path, str]], limit: int = MAX_SHOWN) -> str:
    """Untrusted text for a markdown element: server folders named, clipped, escaped."""
    return escape_markdown(redact_paths(str(text), roots), limit)
