"""Safe image decoding: any mode or size in, 8-bit RGB out, hostile files refused before decoding."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from galaxy_core.base.config import GalaxyError
from galaxy_core.base.fields import clip

ImageSource = str | os.PathLike | bytes | BinaryIO | Image.Image
DEFAULT_MAX_PIXELS = 50_000_000
MAX_DECODED_SIDE = 1024
"""The long side an image is reduced to right after decoding when only its content matters
(classifying): a 7000-pixel photo then costs 3 MB in a batch, not 147 MB."""
MAX_FILE_BYTES = 64 * 1024**2
# Only ordinary raster formats are parsed: Pillow's other plugins include EPS, which runs
# Ghostscript on the file, and rarely used parsers that have had memory-safety bugs.
ALLOWED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP")


SOURCE_SIZE = "source_size"
"""``image.info`` key of the file's own (width, height), kept when decoding reduced the image."""
GREY_TOLERANCE = 3
"""Grey levels by which a greyscale image saved as colour (a JPEG's chroma noise) may differ
between channels."""


def source_size(image: Image.Image) -> tuple[int, int]:
    """The size of the file ``image`` was decoded from, before any reduction (draft mode included)."""
    return tuple(image.info.get(SOURCE_SIZE, image.size))  # type: ignore[return-value]


def is_greyscale(image: Image.Image) -> bool:
    """Whether an image holds no colour: a greyscale mode, or RGB whose channels agree (a grey
    image saved as colour). Looks at a sample of at most about 512 x 512 pixels."""
    if image.mode in GREY_MODES:
        return True
    if image.mode != "RGB":
        return False
    step = max(1, max(image.size) // 512)
    pixels = np.asarray(image)[::step, ::step].astype(np.int16)
    return bool(np.abs(pixels - pixels[..., :1]).max() <= GREY_TOLERANCE)


class ImageLoadError(GalaxyError):
    """The file is not an image we can read safely."""


class WrongImageError(ImageLoadError):
    """A whole, decodable image, but not the one asked for (wrong size): asking again won't help."""


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageLoadError("empty file")
        return Image.open(io.BytesIO(source), formats=ALLOWED_FORMATS)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageLoadError("file not found")
        size = path.stat().st_size
        if size == 0:
            raise ImageLoadError("empty file")
        if size > MAX_FILE_BYTES:
            raise ImageLoadError(f"file is {size / 1024**2:.0f} MB, larger than the "
                                 f"{MAX_FILE_BYTES // 1024**2} MB limit")
        return Image.open(io.BytesIO(path.read_bytes()), formats=ALLOWED_FORMATS)
    data = source.read(MAX_FILE_BYTES + 1)
    if not data:
        raise ImageLoadError("empty file")
    if len(data) > MAX_FILE_BYTES:
        raise ImageLoadError(f"file is larger than the {MAX_FILE_BYTES // 1024**2} MB limit")
    return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)


WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
"""16-bit, 32-bit and float greyscale: scaled by their own range (astronomers' PNG and TIFF
exports rarely use the whole range of their type)."""
GREY_MODES = ("1", "L", "LA", *WIDE_MODES)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; 16-bit and float images are rescaled, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in WIDE_MODES:
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = np.zeros_like(array) if high <= low else (array - low) / (high - low) * 255.0
        return Image.fromarray(np.round(scaled).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_side: int | None = None) -> Image.Image:
    """Decode one image as RGB; raises ImageLoadError with a one-line reason for bad input.

    The pixel count is checked from the header, before any pixel data is decoded, so a tiny
    file that claims to be 20000x20000 never allocates gigabytes. With ``max_side`` the image
    is reduced (keeping its shape) to at most that many pixels on its long side as it is
    decoded: a JPEG decodes at 1/2, 1/4 or 1/8 scale directly, others are reduced at once.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns about damaged metadata (ignored: the pixels decide) and, as early as
            # Image.open, about large images (an error here).
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = _open(source)
            width, height = image.size
            if width < 1 or height < 1:
                raise ImageLoadError(f"image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise ImageLoadError(f"image is {width}x{height} pixels, more than the "
                                     f"{max_pixels:,} pixel limit (possible decompression bomb)")
            previous = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            try:
                if max_side is not None and image.format == "JPEG":
                    image.draft(None, (max_side, max_side))
                image.load()
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
            image = _to_rgb(image)
            if max_side is not None and max(image.size) > max_side:
                scale = max_side / max(image.size)
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
            image.info[SOURCE_SIZE] = (width, height)
        return image
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError("not an image file (unrecognised format; expected "
                             f"{', '.join(ALLOWED_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"refused as a possible decompression bomb ({_one_line(exc)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = _one_line(exc)
        if "truncated" in reason.lower() or isinstance(exc, EOFError):
            raise ImageLoadError(f"truncated or corrupt image ({reason})") from None
        raise ImageLoadError(f"cannot decode image ({reason})") from None
    except MemoryError:
        raise ImageLoadError("image too large to decode in memory") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's parsers fail in many ways on hostile bytes
        raise ImageLoadError(f"corrupt image ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    """Exception text fit for one line of a CSV cell or a terminal."""
    return clip(" ".join(str(exc).split()), 200) or exc.__class__.__name__


def check_jpeg(data: bytes, size: int | None = None) -> None:
    """Raise ImageLoadError unless ``data`` is a complete, decodable JPEG of ``size`` x ``size``
    pixels (when given); WrongImageError for an answer that asking again will not change (a
    whole image of another size, or bytes that are neither JPEG nor an HTML page)."""
    if not data.startswith(b"\xff\xd8"):
        head = data[:64].lstrip().lower()
        if head.startswith((b"<", b"<!doctype")):  # a busy page: asking again may give the image
            raise ImageLoadError(f"answer is HTML ({len(data)} bytes), not a JPEG")
        raise WrongImageError(f"answer is not an image ({len(data)} bytes), not a JPEG")
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ImageLoadError(f"JPEG is truncated ({len(data)} bytes, no end marker)")
    image = load_image(data)
    if size is not None and image.size != (size, size):
        raise WrongImageError(f"answer is a {image.width}x{image.height} image, not the {size}x{size} "
                              "cutout asked for")


def resize_square(image: Image.Image, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to ``size`` x ``size``; returns uint8 HxWx3."""
    width, height = image.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.array(image, dtype=np.uint8)
