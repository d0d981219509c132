"""The dataset folders a user has chosen, remembered across reloads and tabs (not a page).

A short list, most recent first, in a JSON file under the app's data folder, written atomically;
only folders that are still datasets are kept, so a deleted folder drops out by itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from galaxy_core.base import write_text_atomic
from galaxy_core.sources import DatasetFolder

RECENT_NAME = ".recent-datasets.json"
MAX_RECENT = 10


def recent_file(data_root: Path) -> Path:
    return Path(data_root) / RECENT_NAME


def read_recent(data_root: Path) -> list[Path]:
    """The remembered dataset folders that still hold a catalogue; a damaged file reads as none."""
    try:
        values = json.loads(recent_file(data_root).read_text()).get("datasets", [])
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(values, list):
        return []
    out: list[Path] = []
    for value in values:
        if isinstance(value, str) and Path(value) not in out and DatasetFolder(Path(value)).exists():
            out.append(Path(value))
    return out[:MAX_RECENT]


def remember(data_root: Path, folder: Path) -> list[Path]:
    """Put ``folder`` first in the list (only if it is a dataset) and write the list atomically."""
    folder = Path(folder)
    recent = read_recent(data_root)
    if not DatasetFolder(folder).exists():
        return recent
    recent = [folder, *(p for p in recent if p != folder)][:MAX_RECENT]
    try:
        Path(data_root).mkdir(parents=True, exist_ok=True)
        write_text_atomic(recent_file(data_root), json.dumps({"datasets": [str(p) for p in recent]}, indent=1))
    except OSError:  # a read-only data folder: the choice still holds for this session and URL
        pass
    return recent
