"""Find the galaxy in an image of any size and framing, and frame it as the training cutouts are.

An upload may be a wide field with a small galaxy off centre, a tight crop, or no galaxy at all.
The framer estimates the sky background, finds the extended sources above it, picks the one
nearest the centre, measures the radius holding 90% of its light (r90) and cuts a square around
it so that r90 is the same fraction of the side in every framed image, training cutouts included.
What it sees is also the reason for a warning: blank sky, only point sources, no dark sky at all
(a photo of something else), or a galaxy cut off by the image's edge.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from galaxy_core.base import fields
from galaxy_core.sources.images import resize_square

FRAMER_VERSION = 2  # part of a framed cache's key: a changed framer frames anew
DETECTION_SIDE = 256
FLAT_GREY_LEVELS = 8  # an image whose grey levels all lie closer than this is blank
ISOPHOTE = 0.1  # the galaxy ends where its light falls to this fraction of its peak
MIN_AREA, MIN_AREA_FRACTION = 24.0, 0.0015  # smaller sources are stars or specks of noise
STANDS_OUT = 5.0  # times the median source's area
# Cut off: still this bright at the border, relative to its peak, with the peak this near an
# edge (a large galaxy centred in the frame that overflows it is not "at the edge").
EDGE_LIGHT, EDGE_MARGIN = 0.3, 0.2  # sources are found on a copy at most this many pixels across
NO_GALAXY = "no galaxy found"
WARNINGS = {
    "blank": f"{NO_GALAXY}: the image is blank (no structure above the background)",
    "point_sources": f"{NO_GALAXY}: only point sources (stars) or noise above the sky",
    "not_sky": f"{NO_GALAXY}: this does not look like an image of the sky (no dark background)",
    "edge": "galaxy at the edge or cut off: part of it lies outside the image",
}


@dataclass(frozen=True)
class FramingSpec:
    """How training cutouts and uploads are framed: the galaxy's r90 as a fraction of the side."""

    radius_fraction: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        return {"radius_fraction": self.radius_fraction}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: str = "framing.") -> FramingSpec:
        values = fields.section(values, path.rstrip("."))
        return cls(radius_fraction=fields.number(values, "radius_fraction", path, low=0.02, high=0.5))


def framing_spec(radius_fraction: float | None) -> FramingSpec | None:
    """The spec of a training setting (``TrainConfig.framing``); None when cutouts are not framed."""
    return None if radius_fraction is None else FramingSpec(radius_fraction)


@dataclass(frozen=True)
class Sky:
    level: float  # median grey level of the background, 0-255
    noise: float  # robust standard deviation of the background
    colour: tuple[float, float, float]
    noise_rgb: tuple[float, float, float]


@dataclass(frozen=True)
class Source:
    """The galaxy found, in the input image's pixels."""

    x: float
    y: float
    r90: float
    touches_edge: float  # its brightness where the image ends, over its peak: 0 when inside
    peak_margin: float  # from its brightest point to the nearest edge, over the image's shorter side


@dataclass(frozen=True)
class Framing:
    """A framed uint8 square, the box it was cut from (left, top, side) and why not to trust it."""

    image: np.ndarray
    box: tuple[float, float, float]
    source: Source | None
    sky: Sky
    warning: str | None


def _small(image: Image.Image) -> tuple[np.ndarray, np.ndarray, float]:
    """RGB and grey float copies at most about DETECTION_SIDE across (an integer box reduction,
    cheap even for a large photo), and the factor back to the input's pixels."""
    factor = max(1, int(np.ceil(max(image.size) / DETECTION_SIDE)))
    small = image if factor == 1 else image.reduce(factor)
    rgb = np.asarray(small, dtype=np.float32)
    grey = rgb.mean(axis=2)
    return rgb, grey, float(image.size[0] / small.size[0]) if factor > 1 else 1.0


def _median(values: np.ndarray, ordered: bool = False) -> np.floating:
    """``np.median`` of a 1-d array (the same value, in the array's type) without its general
    machinery: framing takes dozens of medians of small patches per image. ``ordered``: the
    values are sorted already."""
    half = values.size // 2
    if not ordered:
        values = np.partition(values, half if values.size % 2 else (half - 1, half))
    return values[half] if values.size % 2 else (values[half - 1] + values[half]) / 2


def _clipped(values: np.ndarray, rounds: int = 4) -> tuple[float, float]:
    """Median and robust sigma after clipping everything above median + 3 sigma (the sources).

    The values are sorted once, so each round's sample is a prefix of them; a round that keeps
    the same prefix as the one before has converged."""
    ordered = np.sort(values, axis=None)
    kept, level, noise = ordered.size, 0.0, 0.0
    for _ in range(rounds):
        sample = ordered[:kept]
        level = float(_median(sample, ordered=True))
        noise = float(1.4826 * _median(np.abs(sample - level)))
        # The bound in the values' own type, as a comparison of the array with it would take it.
        bound = ordered.dtype.type(level + 3 * max(noise, 0.5))
        now = int(np.searchsorted(ordered, bound, side="right"))
        if now == kept:
            break
        kept = now
    return level, noise


def _corners(shape: tuple[int, ...]) -> list[tuple[slice, slice]]:
    h, w = shape[:2]
    ph, pw = max(2, h // 6), max(2, w // 6)
    top, bottom, left, right = slice(0, ph), slice(h - ph, h), slice(0, pw), slice(w - pw, w)
    return [(top, left), (top, right), (bottom, left), (bottom, right)]


def _corner_patches(grey: np.ndarray) -> list[np.ndarray]:
    return [grey[corner] for corner in _corners(grey.shape)]


def estimate_sky(rgb: np.ndarray, grey: np.ndarray) -> Sky:
    """Sky from the two darkest corners: a galaxy that fills most of the frame, or a bright
    star in one corner, then does not pass for background. Its colour and per-channel spread
    come from those corners' pixels too (a galaxy's faint outskirts elsewhere made the sky that
    the framer fills in brighter than the real sky beside it)."""
    corners = _corners(grey.shape)
    clipped = [_clipped(grey[corner])[:2] for corner in corners]
    darkest = sorted(range(len(corners)), key=lambda k: clipped[k][0])[:2]
    level = float(np.mean([clipped[k][0] for k in darkest]))
    noise = float(np.mean([clipped[k][1] for k in darkest]))
    bound = level + 3 * max(noise, 0.5)
    patches = [(rgb[corners[k]].reshape(-1, 3), grey[corners[k]].ravel()) for k in darkest]
    background = np.concatenate([pixels[shade <= bound] for pixels, shade in patches])
    if not len(background):
        background = np.concatenate([pixels for pixels, _ in patches])
    colour = np.median(background, axis=0)
    spread = 1.4826 * np.median(np.abs(background - colour), axis=0)
    return Sky(level, noise, tuple(float(c) for c in colour), tuple(float(c) for c in spread))  # type: ignore[arg-type]


def find_galaxy(grey: np.ndarray, sky: Sky) -> Source | None:
    """The extended source nearest the centre, or None when there are only point sources."""
    smooth = ndimage.gaussian_filter(grey, 1.0)
    smooth_noise = float(np.mean(sorted(_clipped(p)[1] for p in _corner_patches(smooth))[:2]))
    floor = sky.level + max(3 * smooth_noise, 2.0)
    labels, count = ndimage.label(smooth > floor)
    if count == 0:
        return None
    h, w = grey.shape
    light = np.clip(grey - sky.level, 0, None)
    index = np.arange(1, count + 1)
    area = ndimage.sum_labels(np.ones_like(grey), labels, index)
    flux = ndimage.sum_labels(light, labels, index)
    min_area = max(MIN_AREA, MIN_AREA_FRACTION * h * w)
    centres = np.array(ndimage.center_of_mass(light + 1e-6, labels, index)).reshape(-1, 2)
    distance = np.hypot(centres[:, 0] - (h - 1) / 2, centres[:, 1] - (w - 1) / 2) / max(h, w)
    # The source under the centre first, then the nearest, brighter ones first at similar distances.
    score = distance - 0.02 * np.log1p(flux / max(flux.max(), 1e-9))
    under_centre = labels[h // 2, w // 2]
    if under_centre:
        score[under_centre - 1] -= 1.0
    for best in np.argsort(np.where(area >= min_area, score, np.inf))[:5]:
        if area[best] < min_area:
            break
        member, seed, peak = _core(smooth, labels == best + 1, floor, sky.level)
        if member.sum() >= min_area and _stands_out(member.sum(), np.delete(area, best)):
            return _measure(member, seed, light, smooth, peak - sky.level, sky.level)
    return None


def _stands_out(size: float, others: np.ndarray) -> bool:
    """In a field of many sources, a galaxy is much larger than the typical one (a star, whose
    size is the seeing's, whatever the pixel scale); a few merged stars are not."""
    others = others[others >= 4]
    return len(others) < 5 or size >= STANDS_OUT * float(np.median(others))


def _core(smooth: np.ndarray, region: np.ndarray, floor: float,
          level: float) -> tuple[np.ndarray, tuple[int, int], float]:
    """The part of ``region`` above an isophote tied to its own peak: neighbours joined to it by
    faint light fall away, and its size is measured the same way whatever its brightness. The
    peak is the brightest point favouring the centre, so a bright star on the galaxy's outskirts
    does not count as its core."""
    h, w = smooth.shape
    yy, xx = np.ogrid[:h, :w]
    nearness = 1.0 / (1.0 + (np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) / (0.15 * max(h, w))) ** 2)
    py, px = np.unravel_index(np.argmax(np.where(region, (smooth - level) * nearness, -np.inf)), smooth.shape)
    peak = float(smooth[py, px])
    core, _ = ndimage.label(smooth > max(floor, level + ISOPHOTE * (peak - level)))
    return core == core[py, px], (py, px), peak


def _measure(member: np.ndarray, seed: tuple[int, int], light: np.ndarray, smooth: np.ndarray, peak: float,
             level: float) -> Source:
    ys, xs = np.nonzero(member)
    weights = light[ys, xs] + 1e-6
    cy, cx = np.average(ys, weights=weights), np.average(xs, weights=weights)
    radii = np.hypot(ys - cy, xs - cx)
    order = np.argsort(radii)
    enclosed = np.cumsum(weights[order])
    r90 = float(radii[order][np.searchsorted(enclosed, 0.9 * enclosed[-1])]) + 0.5
    # Cut off: the galaxy is still bright where the image ends (faint outskirts may touch it).
    glow = np.where(member, smooth - level, 0.0)
    border = max(glow[0].max(), glow[-1].max(), glow[:, 0].max(), glow[:, -1].max())
    h, w = member.shape
    py, px = seed
    margin = min(py, px, h - 1 - py, w - 1 - px) / min(h, w)
    return Source(float(cx), float(cy), max(r90, 1.0), float(border / max(peak, 1e-6)), float(margin))


def _warning(sky: Sky, source: Source | None, flat: bool) -> str | None:
    if flat or (sky.noise < 0.05 and source is None):
        return WARNINGS["blank"]
    if sky.level > 90:
        return WARNINGS["not_sky"]
    if source is None:
        return WARNINGS["point_sources"]
    if source.touches_edge > EDGE_LIGHT and source.peak_margin < EDGE_MARGIN:
        return WARNINGS["edge"]
    return None


def runs_past(box: tuple[float, float, float], size: tuple[int, int]) -> bool:
    """Whether the square ``box`` (left, top, side) reaches past an image of ``size`` (width,
    height): the framer fills that part with sky."""
    left, top, side = box
    return left < 0 or top < 0 or left + side > size[0] or top + side > size[1]


@functools.lru_cache(maxsize=4)
def _sky_field(side: int) -> np.ndarray:
    """Seeded standard normal noise from which each sky fill takes a window (drawing fresh noise
    was a quarter of framing a cutout); read-only, float32."""
    field = np.random.default_rng(0).standard_normal((side, side, 3), dtype=np.float32)
    field.flags.writeable = False
    return field


def _sky_canvas(image: Image.Image, box: tuple[float, float, float], out_size: int,
                sky: Sky) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """``image`` placed on a canvas of its own sky that covers ``box``, at the image's pixel
    scale or an integer reduction of it (so the canvas is at most about four times ``out_size``
    across), and the box on that canvas.

    The sky noise is drawn at the canvas's pixel scale and resampled together with the image, so
    it has the grain of the real sky beside it and no seam: a fill of fresh noise at the output's
    scale was more than twice as grainy, an edge that tells big (mostly spiral) galaxies from
    small ones. Its window in the noise field depends on the box and the sky, so the same input
    frames the same and different inputs do not share one pattern."""
    left, top, side = box
    reduction = max(1, int(side // (2 * out_size)))
    own_scale = max(image.size) <= DETECTION_SIDE  # the sky was measured on the image itself
    if not own_scale:
        # A large image: only the part under the box is read (its edges on the reduction's grid,
        # so the reduced part equals that part of the reduced image), never a copy of the whole.
        image_w, image_h = image.size
        cx0, cy0 = (int(max(0.0, v) // reduction) * reduction for v in (left, top))
        cx1 = min(image_w, -(-int(np.ceil(min(float(image_w), left + side))) // reduction) * reduction)
        cy1 = min(image_h, -(-int(np.ceil(min(float(image_h), top + side))) // reduction) * reduction)
        image = image.crop((cx0, cy0, cx1, cy1))
        left, top = left - cx0, top - cy0
    if reduction > 1:
        image = image.reduce(reduction)
        left, top, side = left / reduction, top / reduction, side / reduction
    x0, y0 = int(np.floor(left)), int(np.floor(top))
    width, height = int(np.ceil(left + side)) - x0, int(np.ceil(top + side)) - y0
    if reduction == 1 and own_scale:
        spread = np.asarray(sky.noise_rgb, dtype=np.float32)  # measured at this very scale
    else:
        rgb = np.asarray(image, dtype=np.float32)
        spread = np.asarray(estimate_sky(rgb, rgb.mean(axis=2)).noise_rgb, dtype=np.float32)
    field = _sky_field(4 * out_size + 8)
    spare = field.shape[0] - max(width, height)
    pick = hash((round(left, 3), round(top, 3), round(side, 3), *sky.colour)) % (spare * spare)
    oy, ox = divmod(pick, spare)
    window = field[oy:oy + height, ox:ox + width]
    canvas = np.clip(np.rint(np.asarray(sky.colour, dtype=np.float32) + spread * window), 0, 255).astype(np.uint8)
    # The part of the image inside the box, pasted over the sky.
    ix0, iy0 = max(0, x0), max(0, y0)
    ix1, iy1 = min(image.size[0], x0 + width), min(image.size[1], y0 + height)
    if ix1 > ix0 and iy1 > iy0:
        canvas[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = np.asarray(image.crop((ix0, iy0, ix1, iy1)))
    return Image.fromarray(canvas), (left - x0, top - y0, left - x0 + side, top - y0 + side)


def cut_square(image: Image.Image, box: tuple[float, float, float], out_size: int, sky: Sky) -> np.ndarray:
    """The square ``box`` of ``image`` at ``out_size``; what lies outside the image is filled
    with sky of the image's own colour and grain (``_sky_canvas``)."""
    left, top, side = box
    if runs_past(box, image.size):
        image, corners = _sky_canvas(image, box, out_size, sky)
    else:
        corners = (left, top, left + side, top + side)
    framed = image.resize((out_size, out_size), Image.Resampling.BILINEAR, box=corners, reducing_gap=None)
    return np.asarray(framed, dtype=np.uint8)


def frame_image(image: Image.Image, spec: FramingSpec | None, out_size: int) -> Framing:
    """Frame ``image`` (RGB, any size) as a training cutout of ``out_size`` pixels.

    Without a galaxy to measure, or with no ``spec`` (a model trained on cutouts as downloaded),
    the image is centre-cropped to a square exactly as without a framer; the warning is the same.
    """
    image = image.convert("RGB")
    rgb, grey, factor = _small(image)
    sky = estimate_sky(rgb, grey)
    flat = float(grey.max() - grey.min()) < FLAT_GREY_LEVELS
    found = None if flat else find_galaxy(grey, sky)
    warning = _warning(sky, found, flat)
    width, height = image.size
    source = None if found is None else _scaled(found, factor)
    if spec is None or source is None or warning == WARNINGS["not_sky"]:
        side = float(min(width, height))
        box = ((width - side) // 2, (height - side) // 2, side)
        return Framing(resize_square(image, out_size), box, source, sky, warning)
    side = max(source.r90 / spec.radius_fraction, 8.0)
    box = (source.x + 0.5 - side / 2, source.y + 0.5 - side / 2, side)
    return Framing(cut_square(image, box, out_size, sky), box, source, sky, warning)


def _scaled(source: Source, factor: float) -> Source:
    """From detection-copy pixels to the input image's pixels."""
    return Source((source.x + 0.5) * factor - 0.5, (source.y + 0.5) * factor - 0.5, source.r90 * factor,
                  source.touches_edge, source.peak_margin)
