"""What this server allows its visitors, read from the environment in one place (not a page).

The app is a demo that strangers open; every request a visitor can make is bounded here, and the
pages say the bounds beside the inputs they bound. An operator changes them with environment
variables (README, "Exposing the app to others").
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass

from PIL import Image

from galaxy_core.base import ConfigError, GalaxyError

GB = 1024**3
MB = 1024**2
UPLOAD_MB = 20
"""The largest uploaded file, as `.streamlit/config.toml` server.maxUploadSize says (a test checks
the two agree)."""


class LimitError(GalaxyError):
    """A visitor asked for more than this server allows."""


def _number(environ: Mapping[str, str], name: str, default: float, low: float) -> float:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text[:40]!r}") from None
    if not value >= low:
        raise ConfigError(f"{name} must be at least {low:g}, got {value:g}")
    return value


@dataclass(frozen=True)
class ServerLimits:
    """The bounds on one visitor's requests, and whether the demo may write at all."""

    max_job_memory_gb: float = 8.0
    max_upload_files: int = 20
    max_upload_megapixels: float = 100.0
    max_download_galaxies: int = 5_000
    max_cache_gb: float = 2.0
    demo_mode: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ServerLimits:
        """GALAXY_MAX_JOB_MEMORY_GB, GALAXY_MAX_UPLOAD_FILES, GALAXY_MAX_UPLOAD_MEGAPIXELS,
        GALAXY_MAX_DOWNLOAD_GALAXIES, GALAXY_MAX_CACHE_GB and GALAXY_DEMO_MODE (1: classify and
        results only)."""
        d = cls()
        demo = environ.get("GALAXY_DEMO_MODE", "").strip().lower()
        if demo not in ("", "0", "1", "true", "false", "yes", "no"):
            raise ConfigError(f"GALAXY_DEMO_MODE must be 1 or 0, got {demo[:40]!r}")
        return cls(
            max_job_memory_gb=_number(environ, "GALAXY_MAX_JOB_MEMORY_GB", d.max_job_memory_gb, 0.1),
            max_upload_files=int(_number(environ, "GALAXY_MAX_UPLOAD_FILES", d.max_upload_files, 1)),
            max_upload_megapixels=_number(environ, "GALAXY_MAX_UPLOAD_MEGAPIXELS", d.max_upload_megapixels, 0.01),
            max_download_galaxies=int(_number(environ, "GALAXY_MAX_DOWNLOAD_GALAXIES", d.max_download_galaxies, 3)),
            max_cache_gb=_number(environ, "GALAXY_MAX_CACHE_GB", d.max_cache_gb, 0.01),
            demo_mode=demo in ("1", "true", "yes"))

    @property
    def max_cache_bytes(self) -> int:
        return int(self.max_cache_gb * GB)

    @property
    def max_job_bytes(self) -> int:
        return int(self.max_job_memory_gb * GB)

    def check_job_memory(self, needed_bytes: int) -> None:
        """Refuse a job whose estimated peak does not fit, with both figures."""
        if needed_bytes > self.max_job_bytes:
            raise LimitError(f"these settings need about {gigabytes(needed_bytes)} of memory; this server "
                             f"allows {gigabytes(self.max_job_bytes)} per job: lower the batch size, width, "
                             "depth or image size")

    def check_uploads(self, sizes: list[tuple[int, int]]) -> None:
        """Refuse a request of too many images, or of more pixels in all than the server decodes at once."""
        if len(sizes) > self.max_upload_files:
            raise LimitError(f"{len(sizes)} images at once; this server classifies at most "
                             f"{self.max_upload_files} per request")
        pixels = sum(w * h for w, h in sizes) / 1e6
        if pixels > self.max_upload_megapixels:
            raise LimitError(f"these images hold {pixels:,.1f} megapixels in all; this server decodes at most "
                             f"{self.max_upload_megapixels:g} megapixels per request")

    def check_download(self, galaxies: int) -> None:
        if galaxies > self.max_download_galaxies:
            raise LimitError(f"{galaxies:,} galaxies asked for; this server downloads at most "
                             f"{self.max_download_galaxies:,} per dataset")

    def upload_note(self) -> str:
        """The upload caps in words, for beside the uploader."""
        return (f"Up to {self.max_upload_files} images and {self.max_upload_megapixels:g} megapixels "
                f"per request, {UPLOAD_MB} MB a file.")


def gigabytes(n: int) -> str:
    value = n / GB
    return f"{value:,.1f} GB" if value < 10 else f"{value:,.0f} GB"


def image_sizes(files: list[bytes]) -> list[tuple[int, int]]:
    """(width, height) from each file's header, decoding no pixels; an unreadable file counts as
    empty here (the classifier says what is wrong with it)."""
    sizes = []
    for data in files:
        try:
            with Image.open(io.BytesIO(data)) as image:
                sizes.append(image.size)
        except Exception:  # noqa: BLE001 - any damage is the classifier's to report
            sizes.append((0, 0))
    return sizes
