"""Images and labels: layouts, normalisation, label modes, patches, augmentation.

Axes used throughout: a 2-D image is ``(Y, X)`` or, with channels, ``(Y, X, C)``
as napari and tifffile give RGB data. Internally every image is ``(C, Y, X)``
float32; targets are ``(Y, X)`` int64 with :data:`~napari_unet.losses.IGNORE`
for pixels without annotation.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .losses import IGNORE

MAX_SEMANTIC_CLASSES = 32
_STAT_PIXELS = 2**22  # pixels read to estimate percentiles of a large image


class InputError(ValueError):
    """Input the user can fix: the message says what was wrong and what to do."""


# ---------------------------------------------------------------------------
# layouts


def channel_axis_of(shape: Sequence[int], channel_axis: int | None | str = "auto") -> int | None:
    """Which axis of an image of ``shape`` holds channels (None: no channel axis).

    ``"auto"`` reads a trailing axis of 3 or 4 as RGB(A); every other axis is
    spatial (a leading axis is a Z or T stack).
    """
    if channel_axis != "auto":
        if channel_axis is None or str(channel_axis).lower() == "none":
            return None
        try:
            axis = int(channel_axis)
        except (TypeError, ValueError):
            raise InputError(
                f"channel_axis={channel_axis!r}: give 'auto', None (every axis spatial) or "
                "the number of the axis that holds the channels."
            ) from None
        if len(shape) < 3 or not -len(shape) <= axis < len(shape):
            raise InputError(
                f"Channel axis {channel_axis} does not fit an image of shape {tuple(shape)}: "
                + (
                    "a 2-D (grey) image has no channel axis; give one only for images "
                    "that have channels."
                    if len(shape) < 3
                    else f"give an axis from {-len(shape)} to {len(shape) - 1}, or none if "
                    "every axis is spatial."
                )
            )
        return axis % len(shape)
    if len(shape) < 2:
        raise InputError(f"An image needs at least 2 dimensions (Y, X); got shape {tuple(shape)}.")
    if len(shape) >= 3 and shape[-1] in (3, 4) and min(shape[-3:-1]) > 4:
        return len(shape) - 1
    return None


MAX_CHANNELS_READ = 8
"""Longest image axis that training reads as channels because the labels lack it."""


def channel_axis_from_labels(
    shape: Sequence[int], label_shape: Sequence[int], channel_axis: int | None | str = "auto"
) -> int | None:
    """Channel axis of a training image, using the shape of its labels where it helps.

    As :func:`channel_axis_of`, except that when ``"auto"`` finds no colour axis and the
    image has exactly one axis more than its labels, of at most :data:`MAX_CHANNELS_READ`
    entries, that axis holds the channels: a (C, Y, X) or (Y, X, C) image with (Y, X)
    labels, or a (Z, C, Y, X) stack with (Z, Y, X) labels. Of several such axes the one
    nearest Y, X is taken, as prediction does. A longer axis is more likely a stack with
    labels for one plane, which stays an error.
    """
    axis = channel_axis_of(shape, channel_axis)
    shape, label_shape = tuple(shape), tuple(label_shape)
    if channel_axis != "auto" or axis is not None or len(shape) != len(label_shape) + 1:
        return axis
    candidates = [
        i
        for i in range(len(shape))
        if shape[:i] + shape[i + 1 :] == label_shape and shape[i] <= MAX_CHANNELS_READ
    ]
    return max(candidates) if candidates else None


def stack_shape(shape: Sequence[int], channel_axis: int | None) -> tuple[int, ...]:
    """Leading (stack) axes of an image: () for a single 2-D image, (Z,) for a stack."""
    spatial = [s for i, s in enumerate(shape) if i != channel_axis]
    return tuple(spatial[:-2])


def to_cyx(image: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """One 2-D image (Y, X) or (Y, X, C) (channel axis given) -> (C, Y, X), a view."""
    image = np.asarray(image)
    if channel_axis is None:
        if image.ndim != 2:
            raise InputError(f"Expected a 2-D image, got shape {image.shape}.")
        return image[None]
    return np.moveaxis(image, channel_axis, 0)


def iter_planes(image, channel_axis: int | None):
    """Yield ``(index, plane)`` for every 2-D plane of a possibly stacked image.

    ``plane`` keeps the channel axis last (or has none); it is sliced lazily, so a
    memory-mapped, zarr or dask stack is read one plane at a time.
    """
    if channel_axis is not None:
        image = _moveaxis(image, channel_axis, -1)
        lead = image.shape[:-3]
    else:
        lead = image.shape[:-2]
    for index in np.ndindex(*lead):
        yield index, image[index]


def _moveaxis(image, source: int, dest: int):
    if source % image.ndim == dest % image.ndim:
        return image
    if hasattr(image, "transpose") and not isinstance(image, np.ndarray):
        axes = list(range(image.ndim))
        axes.insert(dest % image.ndim, axes.pop(source % image.ndim))
        return image.transpose(axes)
    return np.moveaxis(image, source, dest)


GREY_SAMPLE = 1024
"""Side of the central crop of each of a few planes looked at in a lazily read RGB(A)
image to tell whether it is a grey picture (:func:`grey_picture`)."""

_GREY_BAND = 256  # rows of an in-memory picture compared at a time


def grey_picture(image) -> bool:
    """Whether an RGB(A) image (Y, X, C) or stack (..., Y, X, C) is a grey picture saved
    as colour: its colour channels equal, and any alpha constant. 8-bit channels may
    differ by up to 8 (a JPEG's colour noise) where the picture spans 64 values or more;
    other channels must be equal. An in-memory array (numpy, a memory map) is compared
    whole, band by band, after a central crop that rejects most colour pictures at once;
    a lazy one (zarr, dask, TIFF) in central crops of its first, middle and last planes."""
    shape = tuple(image.shape)
    if len(shape) < 3 or shape[-1] not in (3, 4):
        return False
    dtype = np.dtype(image.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        return False
    height, width = shape[-3:-1]
    planes = list(np.ndindex(*shape[:-3]))
    y0, x0 = max(0, (height - GREY_SAMPLE) // 2), max(0, (width - GREY_SAMPLE) // 2)
    centre = (slice(y0, y0 + GREY_SAMPLE), slice(x0, x0 + GREY_SAMPLE))
    picked = sorted({planes[0], planes[len(planes) // 2], planes[-1]})
    pieces = [(plane, centre) for plane in picked]
    if isinstance(image, np.ndarray):  # the rest too, band by band
        bands = range(0, height, _GREY_BAND)
        pieces += [(p, (slice(y, y + _GREY_BAND), slice(None))) for p in planes for y in bands]
    tolerance = 8 if dtype == np.uint8 else 0
    spread, low, high, alpha = 0, None, None, None
    for plane, (ys, xs) in pieces:
        piece = np.asarray(image[(*plane, ys, xs)])
        if shape[-1] == 4:
            values = np.unique(piece[..., 3])
            if values.size > 1 or (alpha is not None and values[0] != alpha):
                return False  # a varying alpha carries something of its own
            alpha = values[0]
        rgb = piece[..., :3]
        if tolerance:
            diff = np.abs(rgb.astype(np.int16) - rgb[..., :1])
            spread = max(spread, int(diff.max(initial=0)))
        elif not (
            np.array_equal(rgb[..., 1], rgb[..., 0]) and np.array_equal(rgb[..., 2], rgb[..., 0])
        ):
            return False
        if spread > tolerance:
            return False
        if rgb.size:
            low = rgb.min() if low is None else min(low, rgb.min())
            high = rgb.max() if high is None else max(high, rgb.max())
    return spread == 0 or (high is not None and int(high) - int(low) >= 64)


def grey_of(rgb: np.ndarray) -> np.ndarray:
    """The grey values of a grey picture saved as colour (:func:`grey_picture`): its
    first channel where the channels are equal, else their rounded mean, in its dtype."""
    rgb = np.asarray(rgb)
    first = rgb[..., 0]
    if np.array_equal(rgb[..., 1], first) and np.array_equal(rgb[..., 2], first):
        return first.copy()
    total = rgb[..., 0].astype(np.uint16) + rgb[..., 1] + rgb[..., 2]
    return ((total + 1) // 3).astype(rgb.dtype)


def convert_channels(cyx: np.ndarray, channels: int, *, what: str = "image") -> np.ndarray:
    """Bring (C, Y, X) to ``channels`` channels: RGBA drops alpha, grey <-> RGB."""
    have = cyx.shape[0]
    if have == channels:
        return cyx
    if have == 4 and channels == 3:
        return cyx[:3]
    if have == 1:
        return np.repeat(cyx, channels, axis=0)
    if channels == 1 and have in (3, 4):
        return cyx[:3].astype(np.float32).mean(axis=0, keepdims=True)
    raise InputError(
        f"The {what} has {have} channels but {channels} are expected; "
        "convert it to the model's channel count first."
    )


# ---------------------------------------------------------------------------
# normalisation


_HISTOGRAM_BINS = 2**20  # integer images spanning more values take the sorting path


def _integer_percentiles(values: np.ndarray, qs: tuple[float, float]) -> tuple[float, float]:
    """``np.percentile(values, qs)`` of integer values (linear interpolation) from their
    histogram, several times faster than sorting, with the same flat-channel fallback
    to the full range as the float path."""
    if values.dtype == bool:
        values = values.view(np.uint8)
    lowest, highest = int(values.min()), int(values.max())
    if highest - lowest >= _HISTOGRAM_BINS:
        lo, hi = np.percentile(values.astype(np.float64), qs)
    else:
        # offsets from the lowest value, exact in the native dtype (unsigned) or int64
        if values.dtype.kind == "u":
            offsets = values - values.min()
        else:
            offsets = values.astype(np.int64) - np.int64(lowest)
        ends = np.cumsum(np.bincount(offsets.astype(np.intp).ravel()))  # ends[v]: count <= v
        position = (values.size - 1) * (np.asarray(qs, np.float64) / 100)
        below = np.floor(position).astype(np.int64)
        above = np.minimum(below + 1, values.size - 1)
        at = np.searchsorted(ends, below, side="right").astype(np.float64)
        next_ = np.searchsorted(ends, above, side="right").astype(np.float64)
        lo, hi = (float(lowest) + at + (position - below) * (next_ - at)).tolist()
    # the fallback is judged in float32, the precision the values are used in
    lo, hi = float(np.float32(lo)), float(np.float32(hi))
    if hi <= lo:
        lo, hi = float(lowest), float(highest)
    return lo, hi


_STUCK_SHARE = 0.01  # at most this share of pixels at an extreme value can be stuck


def _past_stuck_pixels(
    plane: np.ndarray | None, values: np.ndarray, bounds, qs: tuple[float, float]
) -> tuple[float, float]:
    """``bounds`` (low, high: the percentiles ``qs``) of one channel, its pixels as the
    2-D ``plane`` (every pixel of the image: not a subsample, where neighbours are not
    neighbours) and its finite ``values``; where the high bound is the channel's
    maximum held by hot pixels -- at most 1% of them, nearly all without a neighbour of
    that value (not saturated nuclei), and far from the rest (taken over the other
    pixels, the bound drops by at least half the range) -- it is taken again over the
    other pixels. Otherwise a few hot pixels at 65535 in an image of values near 1000
    would scale the whole image to about 0. (Dead pixels at the minimum rarely reach
    the 1st percentile, which needs 1% of the pixels there.)"""
    lo, hi = bounds
    if plane is None:  # a subsample of a large image, where neighbours are not neighbours
        return lo, hi
    top = values.max()

    def stuck(value) -> bool:
        at = plane == value
        count = int(at.sum())
        if count == 0 or count >= values.size or count > _STUCK_SHARE * values.size:
            return False
        padded = np.pad(at, 1)
        neighbour = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
        return int((at & ~neighbour).sum()) >= 0.9 * count

    def percentile(rest: np.ndarray, q: float) -> float:  # rare: sorting will do
        return float(np.float32(np.percentile(rest.astype(np.float64), q)))

    if hi >= top and stuck(top):
        new_hi = percentile(values[values < top], qs[1])
        if lo < new_hi < lo + (hi - lo) / 2:
            hi = new_hi
    return lo, hi


@dataclass(frozen=True)
class Normalization:
    """Per-image percentile normalisation: ``(x - p_low) / (p_high - p_low)`` per channel.

    The percentiles are taken on each image as it is predicted (on a subsample of
    at most ~4 M pixels for large images), so images brighter or darker than the
    training data are brought to the same range.
    """

    low: float = 1.0
    high: float = 99.8

    def __post_init__(self):
        # also what a model file's header is checked against when it is loaded
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"percentile {name}={value!r} is not a number")
        if not 0 <= self.low < self.high <= 100:
            raise ValueError(
                f"percentiles low={self.low!r}, high={self.high!r} must satisfy "
                "0 <= low < high <= 100"
            )

    def stats(self, image) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) values of a (C, Y, X) array-like (numpy, zarr, dask)."""
        height, width = image.shape[-2:]
        step = max(1, int(np.ceil(np.sqrt(height * width / _STAT_PIXELS))))
        planes = np.asarray(image[:, ::step, ::step])
        sample = planes.reshape(planes.shape[0], -1)
        if sample.dtype.kind in "uib":
            qs = (self.low, self.high)
            channels = [
                _past_stuck_pixels(p if step == 1 else None, c, _integer_percentiles(c, qs), qs)
                for p, c in zip(planes, sample, strict=True)
            ]
            lows, highs = zip(*channels, strict=True)
            return np.asarray(lows, np.float32), np.asarray(highs, np.float32)
        sample = sample.astype(np.float32, copy=False)
        finite = np.isfinite(sample)
        if not finite.any():
            raise InputError("The image holds no finite values (all NaN or inf); check the file.")
        lows, highs = [], []
        for plane, channel, ok in zip(planes, sample, finite, strict=True):
            values = channel[ok] if not ok.all() else channel
            if values.size == 0:
                values = np.zeros(1, np.float32)
            lo, hi = np.percentile(values, [self.low, self.high])
            if hi <= lo:  # flat or nearly binary channel: fall back to its full range
                lo, hi = float(values.min()), float(values.max())
            whole = plane if step == 1 else None
            lo, hi = _past_stuck_pixels(whole, values, (lo, hi), (self.low, self.high))
            lows.append(lo)
            highs.append(hi)
        return np.asarray(lows, np.float32), np.asarray(highs, np.float32)

    @staticmethod
    def apply(cyx: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> np.ndarray:
        """(C, Y, X) -> float32 (C, Y, X) scaled to about [0, 1]; NaN becomes 0."""
        out = np.asarray(cyx, dtype=np.float32)
        lows, highs = np.asarray(lows, np.float64), np.asarray(highs, np.float64)
        scale = 1.0 / np.maximum(highs - lows, 1e-6)
        if np.abs(np.concatenate([lows, highs])).max(initial=0) < 1e30:
            out = (out - lows.astype(np.float32)[:, None, None]) * scale.astype(np.float32)[
                :, None, None
            ]
        else:  # values spanning more than float32's range: x - low would overflow
            out = out * scale.astype(np.float32)[:, None, None]
            out -= (lows * scale).astype(np.float32)[:, None, None]
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0, copy=False)

    def __call__(self, cyx: np.ndarray) -> np.ndarray:
        return self.apply(cyx, *self.stats(cyx))


# ---------------------------------------------------------------------------
# labels


@dataclass
class LabelEncoding:
    """How label values map to classes, and classes back to output values."""

    mode: str
    class_names: list[str]
    class_values: list[int]  # output value written for each class index
    source_values: list[int]  # label value read for each class index (semantic/sparse)
    notes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _check_integer_labels(
    label: np.ndarray, index: int, owners: Sequence[int] | None = None
) -> np.ndarray:
    label = np.asarray(label)
    if label.dtype == bool:
        return label.astype(np.int64)
    if not np.issubdtype(label.dtype, np.integer):
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            raise InputError(
                f"The labels of {_plane_name(index, owners)} hold non-integer values "
                f"({label.dtype}); labels must be "
                "whole numbers: 0 for background, 1, 2, ... for classes or objects."
            )
    label = label.astype(np.int64)
    if label.min() < 0:
        raise InputError(
            f"The labels of {_plane_name(index, owners)} hold negative values; use 0, 1, 2, ..."
        )
    return label


def _wide_mask(label: np.ndarray) -> bool:
    """Labels of 0 and a single value beyond the semantic classes (0..254): 0/255."""
    high = label.max(initial=0)
    return (
        high > 254 and label.min(initial=0) == 0 and bool(np.all((label == 0) | (label == high)))
    )


_IDS_FROM = 8  # foreground values from which one region per value looks like object ids


def _looks_like_ids(labels: Sequence[np.ndarray], values: np.ndarray, planes: int = 8) -> bool:
    """Whether semantic labels with at least :data:`_IDS_FROM` foreground values hold each
    value as one small connected region (its box under 5% of the plane) in nearly every
    plane looked at (the first ``planes`` that hold two or more values, up to 16 M pixels
    each): object ids given in semantic mode rather than classes, which paint many
    objects each, or large regions (organs, layers) where they paint one."""
    if np.count_nonzero(values) < _IDS_FROM:
        return False
    regions = single = looked = 0
    for label in labels:
        if looked == planes:
            break
        label = np.asarray(label)
        if label.size > 2**24:  # a slide's class map: too slow to look at, and not ids
            continue
        boxes = ndi.find_objects(label)  # values are 0..254 here: one box per value
        present = [(v, box) for v, box in enumerate(boxes, start=1) if box is not None]
        if len(present) < 2:
            continue
        looked += 1
        for value, box in present:
            regions += 1
            area = (box[0].stop - box[0].start) * (box[1].stop - box[1].start)
            if area < 0.05 * label.size:
                _, count = ndi.label(label[box] == value, structure=np.ones((3, 3), bool))
                single += count == 1
            if regions - single > 0.1 * max(regions, 20):  # clearly classes: stop looking
                return False
    return regions > 0 and single >= 0.9 * regions


LOSSY_MARGIN = 16
"""A two-valued mask saved as JPEG (or drawn with smoothed edges) holds other values only
within this many pixels of where its two values meet: two JPEG blocks of 8."""


LOSSY_SHIFT = 2
"""Where the most frequent dark (or light) value of a blurred mask lies this close to 0
(255) and fills flat areas, the values this close to it are that value shifted, as JPEG
leaves flat areas (0 came back as a speckle of 1 and 0 at quality 70)."""


LOSSY_SOLID = 0.02
"""At most this share of the other values' pixels of a blurred mask may lie inside a 3 x 3
patch of one value: JPEG leaves specks and rings (at most 0.2% on the DSB and ISBI masks),
labels paint solid regions."""


def lossy_mask_values(label) -> tuple[int, int] | None:
    """``(low, high)`` where a label plane (Y, X) is a two-valued mask such as 0/255 whose
    edges were blurred by lossy compression (JPEG) or smoothing, else None.

    Such a plane holds two values at least 128 apart as its most frequent ones, and other
    values only within :data:`LOSSY_MARGIN` pixels of pixels of each of the two, as specks
    and rings rather than solid regions (:data:`LOSSY_SOLID`): either many kinds of them
    (none holding half of the other pixels) or values a few (at most 8) off each of the
    two. Class maps (0/128/255, a boundary class between 0 and 255; classes 1, 2 beside
    255 as "ignore") and object ids (a few small ids beside a large one) do not qualify.
    Of the DSB 2018 nuclei masks (45) and ISBI 2012 membranes (10) saved as JPEG at
    qualities 50 to 100 all but one qualify (a large object whose inside came back a few
    values off), and splitting at the midpoint gives back the masks exactly; at quality
    70, JPEG brings their background back as a speckle of 1 and 0 (:data:`LOSSY_SHIFT`);
    thin lines of values 1 or 2 beside 0 (traced neurites, strokes) are no such speckle.
    Masks of black objects on white
    at quality 70 do not qualify: their objects come back as solid patches of 1, as a
    class painted 1 would look.
    """
    a = np.asarray(label)
    if a.ndim != 2 or a.size < 64 or a.size > 2**26 or not np.issubdtype(a.dtype, np.integer):
        return None
    if a.min() < 0 or a.max() > 255:
        return None
    counts = np.bincount(a.ravel().astype(np.intp, copy=False), minlength=256)
    if np.count_nonzero(counts) < 3:
        return None
    first = int(np.argmax(counts))
    far = counts.copy()
    far[max(0, first - 127) : first + 128] = 0
    if not far.any():
        return None
    low, high = sorted((first, int(np.argmax(far))))
    others = counts.copy()
    others[[low, high]] = 0
    kinds = np.flatnonzero(others)
    total = int(others.sum())
    if total > a.size // 2:
        return None
    slight = (  # values a few off each of the two, as JPEG at high quality leaves
        bool(np.all((kinds <= low + 8) | (kinds >= high - 8)))
        and bool(np.any(kinds <= low + 8))
        and bool(np.any(kinds >= high - 8))
    )
    if not slight and (kinds.size < 3 or others.max() > total // 2):
        return None
    stray = (a != low) & (a != high)
    flat = ndi.maximum_filter(a, size=3) == ndi.minimum_filter(a, size=3)

    def about(value: int, shifted: bool) -> np.ndarray:
        """The pixels that count as ``value``: where JPEG shifted the black or white of a
        flat area (0 came back as a speckle of 1 and 0 at quality 70) -- the value most
        frequent there lies a few off the end of the range and fills flat areas rather
        than lines -- also the values within LOSSY_SHIFT of it."""
        exact = a == value
        if shifted and np.count_nonzero(flat & exact) >= 0.5 * np.count_nonzero(exact):
            return np.abs(a.astype(np.int16) - np.int16(value)) <= LOSSY_SHIFT
        return exact

    about_low = about(low, 0 < low <= LOSSY_SHIFT)
    about_high = about(high, 255 - LOSSY_SHIFT <= high < 255)
    size = 2 * LOSSY_MARGIN + 1  # the others must lie near both, where the two meet
    near_low = ndi.maximum_filter(about_low, size=size)
    near_high = ndi.maximum_filter(about_high, size=size)
    if np.any(stray & ~(about_low | about_high | (near_low & near_high))):
        return None
    if np.count_nonzero(flat & stray) > LOSSY_SOLID * total:
        return None
    return low, high


def repair_lossy_masks(
    labels: Sequence[np.ndarray], owners: Sequence[int] | None = None
) -> tuple[list[np.ndarray], list[str]]:
    """Label planes with each blurred two-valued mask (:func:`lossy_mask_values`) split at
    the midpoint of its two values (written as 0 and 255 where they lie within 8 of them:
    JPEG brought 0 back as 1 at quality 70), and a note naming the first such plane."""
    out, found = [], []
    for i, label in enumerate(labels):
        pair = lossy_mask_values(label)
        if pair is not None:
            label = np.asarray(label)
            # values a few off the ends of the 8-bit range were 0 and 255, shifted by JPEG
            low, high = (0 if pair[0] <= 8 else pair[0]), (255 if pair[1] >= 247 else pair[1])
            label = np.where(label > sum(pair) / 2, high, low).astype(label.dtype)
            found.append((i, (low, high)))
        out.append(label)
    notes = []
    if found:
        (i, (low, high)), more = found[0], len(found) - 1
        notes.append(
            f"The labels of {_plane_name(i, owners)}"
            + (f" and of {more} more plane(s)" if more else "")
            + f" look like a {low}/{high} mask saved with lossy compression (JPEG) or "
            "drawn with smoothed edges: other values appear only where the two meet. Read as "
            f"{low}/{high}, split at the midpoint; save masks as PNG or TIFF to keep them exact."
        )
    return out, notes


def _some(values, shown: int = 8) -> str:
    """A list of values for a message: the first ``shown`` and how many more."""
    values = list(values)
    text = ", ".join(str(v) for v in values[:shown])
    return f"[{text}, ... {len(values) - shown} more]" if len(values) > shown else f"[{text}]"


def encode_labels(
    labels: Sequence[np.ndarray],
    mode: str,
    previous: LabelEncoding | None = None,
    owners: Sequence[int] | None = None,
    *,
    training: bool = True,
) -> tuple[list[np.ndarray], LabelEncoding]:
    """Turn label images into class targets (Y, X) int64 with IGNORE for unannotated pixels.

    ``owners`` as for :func:`check_pairs`: the image each label plane belongs to.
    ``training=False`` (scoring labels against a model's predictions) allows sparse
    labels of a single painted class, such as an image painted with background only.

    Modes
    -----
    semantic
        Pixel value = class, 0 = background. A two-valued mask (0/255, 0/1,
        boolean) is read as background/foreground.
    sparse
        Scribbles: 0 = not annotated (ignored by the loss); the painted values are
        the classes, the lowest painted value being background (written as 0).
    instances
        0 = background, one id per object; trained as background / interior /
        boundary (the boundary separates touching objects).
    """
    if previous is not None and previous.mode != mode:
        _check_previous(LabelEncoding(mode, [], [], [], []), previous)
    labels = [_check_integer_labels(label, i, owners) for i, label in enumerate(labels)]
    values = np.unique(np.concatenate([np.unique(label) for label in labels]))
    notes: list[str] = []
    if mode == "instances":
        if values.max(initial=0) == 0:
            raise InputError("The labels hold no objects (all 0); paint or load instance labels.")
        encoding = LabelEncoding(
            mode, ["background", "interior", "boundary"], [0, 1, 2], [0, 1, 2], notes
        )
        return [instance_targets(label) for label in labels], _check_previous(encoding, previous)
    if mode == "sparse":
        painted = values[values > 0]
        if painted.size == 0:
            raise InputError(
                "No annotated pixels: paint at least two classes (e.g. 1 = background, 2 = object)."
            )
        if previous is not None:
            source = previous.source_values
            unknown = sorted(set(painted.tolist()) - set(source))
            if unknown:
                first = next(i for i, label in enumerate(labels) if np.isin(label, unknown).any())
                advice = (
                    "paint with the model's values or train a new model."
                    if training
                    else f"to score it against masks or object ids, give labels in its values "
                    f"(background -> {source[0]}, objects -> {_some(source[1:])}; 0 is not "
                    "scored)."
                )
                raise InputError(
                    f"Label values {_some(unknown)} (the first in the labels of "
                    f"{_plane_name(first, owners)}) are not classes of the model "
                    f"({_some(source)}: a scribbles model's classes are the values it was "
                    f"painted with); {advice}"
                )
            encoding = previous
        if painted.size < 2 and training:  # also when continuing: one class teaches itself
            raise InputError(
                f"Only one class is painted (value {painted[0]}); paint at least two: "
                "the lowest value is background, higher values are objects"
                + (
                    " (a model trained on strokes of one class alone drifts towards it: add "
                    "a few strokes of the other classes to the corrections)."
                    if previous is not None
                    else "."
                )
            )
        if previous is None:
            if painted.size > MAX_SEMANTIC_CLASSES:
                raise InputError(
                    f"The labels hold {painted.size} painted values: these look like instance "
                    "labels (one id per object), which sparse mode would read as classes (the "
                    "lowest id as background, the unpainted 0 as not annotated). Use mode "
                    "'instances', or paint class values (1 = background, 2, 3, ...)."
                )
            source = painted.tolist()
            if _looks_like_ids(labels, values):
                notes.append(
                    f"The labels hold {painted.size} painted values, each painted as one small "
                    "connected region: if they are object ids rather than classes, use mode "
                    "'instances' (sparse mode learns each value as a class of its own, the "
                    "lowest as background)."
                )
            encoding = LabelEncoding(
                mode,
                ["background"] + [f"class {v}" for v in source[1:]],
                [0] + source[1:],
                source,
                notes,
            )
        lut = np.full(int(max(max(source), values.max())) + 1, IGNORE, np.int64)
        lut[np.asarray(source)] = np.arange(len(source))
        return [lut[label] for label in labels], encoding
    if mode != "semantic":
        raise InputError(f"Unknown label mode {mode!r}; use semantic, sparse or instances.")
    # A plane holding 0 and one value beyond the classes (0/255) is a binary mask, also
    # among planes saved otherwise (0/1, boolean, several classes).
    masks = [k for k, label in enumerate(labels) if _wide_mask(label)]
    if masks and len(values) > 2:
        labels = list(labels)
        for k in masks:
            labels[k] = (labels[k] > 0).astype(np.int64)
        values = np.unique(np.concatenate([np.unique(label) for label in labels]))
        notes.append(
            f"{len(masks)} label plane(s) are two-valued masks such as 0/255 (the first: "
            f"{_plane_name(masks[0], owners)}); read as background (0) / class 1."
        )
    if previous is not None:
        source = previous.source_values
        if len(values) == 2 and values[0] == 0 and len(source) == 2:
            targets = [(label > 0).astype(np.int64) for label in labels]
            return targets, previous
        beyond = values[values >= len(source)]
        if beyond.size:
            first = next(i for i, label in enumerate(labels) if (label >= len(source)).any())
            raise InputError(
                f"Label values {_some(beyond.tolist())} (the first in the labels of "
                f"{_plane_name(first, owners)}) are beyond the model's {len(source)} classes "
                f"(0..{len(source) - 1}); fix the labels or train a new model."
            )
        return list(labels), previous
    if len(values) > MAX_SEMANTIC_CLASSES:
        raise InputError(
            f"The labels hold {len(values)} different values: these look like instance labels "
            "(one id per object). Use mode 'instances', or give class values 0..K."
        )
    if len(values) == 1:
        raise InputError(
            f"The labels hold a single value ({values[0]}); they need background and at least "
            "one foreground class."
        )
    if len(values) == 2 and values[0] == 0:
        if values[1] != 1:
            notes.append(
                f"Two-valued masks (0/{values[1]}) are read as background (0) / foreground (1)."
            )
        targets = [(label > 0).astype(np.int64) for label in labels]
        num_classes = 2
    else:
        if values.max() > 254:
            raise InputError(
                f"The labels hold values up to {values.max()} ({_some(values)}): in semantic "
                "mode a pixel's "
                "value is its class, 0..254 (only a two-valued mask such as 0/255 is read as "
                "background / foreground). Renumber the classes 0, 1, 2, ..., or use mode "
                "'instances' if the values are object ids"
                + (
                    "; masks saved as JPEG come back with such values along their edges: "
                    "save them as PNG or TIFF."
                    if np.count_nonzero(values > 254) == 1 and values.size > 8
                    else "."
                )
            )
        targets = list(labels)
        num_classes = int(values.max()) + 1
        if num_classes > len(values):
            unused = sorted(set(range(num_classes)) - set(values.tolist()))
            notes.append(
                f"The labels hold the values {_some(values.tolist())}: in semantic mode a "
                f"value is its class, so the model gets {num_classes} classes, of which "
                f"{len(unused)} ({_some(unused)}) are never painted. Renumber the classes "
                "0, 1, 2, ... for a model of only the painted ones (or, if the values are "
                "object ids, use mode 'instances')."
            )
    if _looks_like_ids(targets, values):
        notes.append(
            f"The labels hold {np.count_nonzero(values)} foreground values, each painted "
            "as one small connected region: if they are object ids rather than classes, use mode "
            "'instances' (semantic mode learns each value as a class of its own)."
        )
    names = ["background"] + [f"class {v}" for v in range(1, num_classes)]
    encoding = LabelEncoding(
        mode, names, list(range(num_classes)), list(range(num_classes)), notes
    )
    return targets, encoding


def instance_ids(
    labels: Sequence[np.ndarray], owners: Sequence[int] | None = None
) -> tuple[list[np.ndarray], list[str]]:
    """Instance labels as consecutive int32 ids per plane, and notes (``owners`` as for
    :func:`check_pairs`, to name the image in errors).

    Ids may come as any whole numbers (floats with whole values, large sparse ids). A
    mask with a single object value (0/1, 0/255, boolean) holds no ids to tell objects
    apart, so its connected regions become the objects; so do the regions of a class map
    (a few values, each for several separate regions: :func:`_value_pieces`). Labels with
    no background (0) in any plane where a value covers several separate regions, such as
    a class map whose background is 1, are refused.
    """
    from skimage.segmentation import relabel_sequential

    checked = [_check_integer_labels(label, i, owners) for i, label in enumerate(labels)]
    values = [np.unique(label) for label in checked]

    def pieces(label: np.ndarray, present: np.ndarray):  # few values: ids, or classes?
        if present.size <= 33 and label.size <= 2**26 and present[-1] != 0:
            return _value_pieces(label)
        return None

    if checked and all(present[0] != 0 for present in values):
        for i, (label, present) in enumerate(zip(checked, values, strict=True)):
            found = pieces(label, present)
            if found is not None and found[2].max() >= 3:
                value = found[1][np.argmax(found[2])]
                raise InputError(
                    f"The labels of {_plane_name(i, owners)} have no background (0), and the "
                    f"value {value} covers {int(found[2].max())} separate regions: in instances "
                    "mode 0 is background and every other value one object. If they are a "
                    "class map (such as 1 = background, 2 = nuclei), give the background the "
                    "value 0, or train in mode 'semantic'."
                )
    out, masks = [], 0
    for label, present in zip(checked, values, strict=True):
        if present.size == 2 and present[0] == 0:  # one object value: a mask (or one object)
            regions, count = ndi.label(label > 0)
            masks += count > 1
            label = regions
        elif (found := pieces(label, present)) is not None and _is_class_map(*found[1:]):
            masks += 1
            label = found[0]
        out.append(relabel_sequential(label)[0].astype(np.int32))
    notes = []
    if masks:
        notes.append(
            f"{masks} label plane(s) are masks or class maps (one value for several "
            "objects), not one id per object; each connected region is taken as an object "
            "(touching objects cannot be told apart: give them different values to train "
            "their separation)."
        )
    return out, notes


def _value_pieces(label: np.ndarray):
    """``(regions, values, pieces, areas)`` of a label plane (Y, X): its 8-connected
    regions of one value each (0 is background), and per non-zero value the number of its
    substantial pieces (of at least 16 pixels, or a quarter of its largest piece where that
    is smaller, and 2: a stray pixel or a short tail joined at a corner does not count)
    and its pixel count."""
    from skimage.measure import label as regions_of

    regions = regions_of(label, background=0, connectivity=2)
    sizes = np.bincount(regions.ravel())[1:]
    if sizes.size == 0:
        empty = np.zeros(0, np.int64)
        return regions, empty, empty, empty
    value_of = np.zeros(sizes.size + 1, np.int64)
    value_of[regions.ravel()] = label.ravel()
    values, which = np.unique(value_of[1:], return_inverse=True)
    largest = np.zeros(values.size, np.int64)
    np.maximum.at(largest, which, sizes)
    substantial = sizes >= np.maximum(2, np.minimum(16, 0.25 * largest[which]))
    pieces = np.bincount(which, weights=substantial, minlength=values.size).astype(np.int64)
    areas = np.bincount(which, weights=sizes, minlength=values.size).astype(np.int64)
    return regions, values, pieces, areas


def _is_class_map(values: np.ndarray, pieces: np.ndarray, areas: np.ndarray) -> bool:
    """Whether a plane's values read as classes rather than ids: values of several
    separate regions each (one of them at least three) hold most of the labelled pixels."""
    if values.size == 0 or pieces.max() < 3:
        return False
    return 2 * areas[pieces >= 2].sum() > areas.sum()


def _check_previous(encoding: LabelEncoding, previous: LabelEncoding | None) -> LabelEncoding:
    if previous is not None and previous.mode != encoding.mode:
        raise InputError(
            f"The model was trained in mode {previous.mode!r}, not {encoding.mode!r}; "
            "continue in its mode or train a new model."
        )
    return previous or encoding


def instance_targets(label: np.ndarray) -> np.ndarray:
    """Instance ids (Y, X) -> classes 0 background, 1 interior, 2 boundary (int64).

    The boundary is the objects' own outer pixel ring, so two touching objects are
    separated by two boundary pixels.
    """
    from skimage.segmentation import find_boundaries

    label = np.asarray(label)
    target = (label > 0).astype(np.int64)
    boundary = find_boundaries(label, mode="inner") & (label > 0)
    target[boundary] = 2
    return target


def smallest_object_size(labels: Sequence[np.ndarray]) -> int | None:
    """Objects smaller than this many pixels are dropped when an instances-mode model
    predicts: half the 5th percentile of the areas of the annotated objects, at least 2.

    Set from the training labels, so it follows the scale of the data (the DSB nuclei of
    the accuracy study: about 20 pixels; a few-pixel spot data set: 2-4), and fragments
    much smaller than nearly every annotated object neither become objects nor seed a
    split of a real one. None when the labels hold no object.
    """
    areas = []
    for label in labels:  # unique, not bincount: ids may be large and sparse
        ids, counts = np.unique(np.asarray(label), return_counts=True)
        areas.append(counts[ids != 0])
    areas = np.concatenate(areas) if areas else np.zeros(0)
    if areas.size == 0:
        return None
    return max(2, int(round(0.5 * float(np.percentile(areas, 5)))))


BOUNDARY_REGIONS = 10
"""A plane draws a boundary network when one class parts the other into at least this
many regions (see :func:`boundary_network`)."""


BOUNDARY_PARTING = 0.9
"""A boundary network parts regions along nearly all of its length: on the ISBI 2012 labels
99.5-100% of the membranes' midline lies between two cells (as for synthetic cells, walls
up to 16 pixels wide, and a tissue with empty space around it), on branching vessels whose
branches close loops 54-84%; membranes drawn with gaps fall below too (see
:func:`boundary_network`)."""


def _parting_share(
    boundary: np.ndarray, regions: np.ndarray, depth: float = 1.0, side: int = 1024
) -> float:
    """The share of the midline (skeleton) of ``boundary`` (Y, X) bool whose pixels lie
    where two of the ``regions`` (labelled, 0 on the boundary) meet, each boundary pixel
    belonging to its nearest region; within about twice the boundary's mean ``depth`` of
    such a meeting, as the midline of a thick boundary wanders off it near junctions.
    Boundary drawn along the image's edge is left out (it parts a region from the
    outside). Measured on a window of at most ``side`` at the centre of the boundary's
    bounding box."""
    from skimage.morphology import skeletonize

    rows, cols = np.nonzero(boundary.any(axis=1))[0], np.nonzero(boundary.any(axis=0))[0]
    if rows.size == 0 or boundary.all():
        return 0.0
    window = tuple(
        slice(max(0, (lo + hi - side) // 2), max(0, (lo + hi - side) // 2) + side)
        for lo, hi in ((rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1))
    )
    boundary, regions = boundary[window], regions[window]
    reach = 1 + int(np.ceil(2 * depth))
    midline = skeletonize(boundary)
    midline[:reach], midline[-reach:], midline[:, :reach], midline[:, -reach:] = (False,) * 4
    if not midline.any():
        return 0.0
    _, (near_rows, near_cols) = ndi.distance_transform_edt(boundary, return_indices=True)
    nearest = regions[near_rows, near_cols]
    size = 2 * reach + 1
    meet = ndi.maximum_filter(nearest, size=size) != ndi.minimum_filter(nearest, size=size)
    return float(meet[midline].mean())


def boundary_network(targets: Sequence[np.ndarray], planes: int = 32) -> tuple[int, int] | None:
    """``(class, smallest region)`` when two-class labels draw one class as a network of
    boundaries between regions of the other (cell membranes in EM, plant cell walls),
    else None.

    A fully labelled plane (no ignored pixels) shows a network when one class is thin
    (the mean city-block distance of its pixels to the other class is at most half that
    of the other class's pixels to it), its largest 8-connected piece holds at least half
    of its pixels, and it parts the other class into at least :data:`BOUNDARY_REGIONS`
    4-connected regions, and at least :data:`BOUNDARY_PARTING` of its midline lies between
    two regions. Nuclei, cells or lesions on a background do not: their pieces are many,
    and the background around them is the thicker class; nor do vessels or filaments,
    whose branches end freely inside a region even where they close loops. The class is returned
    when at least half of the fully labelled planes (at most ``planes`` of them, spread
    evenly) show it, with half the 5th percentile of the regions' areas (at least 2
    pixels): prediction then completes gaps in the predicted boundaries
    (:func:`napari_unet.prediction.predict`, ``close_boundaries``).

    ``targets`` are class indices per pixel (negative: not labelled).
    """
    dense = [t for t in targets if t.ndim == 2 and t.size and (t >= 0).all()]
    if not dense or any(t.max() > 1 for t in dense):
        return None
    dense = [
        dense[i] for i in np.unique(np.linspace(0, len(dense) - 1, planes).round().astype(int))
    ]
    votes = {0: [], 1: []}
    for target in dense:
        for k in (0, 1):
            boundary = target == k
            pieces, count = ndi.label(boundary, structure=np.ones((3, 3), bool))
            if count == 0:
                continue
            largest = np.bincount(pieces.ravel())[1:].max()
            if 2 * largest < boundary.sum():
                continue
            regions, found = ndi.label(~boundary)
            if found < BOUNDARY_REGIONS:
                continue
            # thin: its pixels lie at most half as deep inside it as the regions' pixels
            # (city-block distances: an order of magnitude faster than Euclidean ones)
            depth = ndi.distance_transform_cdt(boundary, metric="taxicab")[boundary].mean()
            if (
                2 * depth
                <= ndi.distance_transform_cdt(~boundary, metric="taxicab")[~boundary].mean()
                and _parting_share(boundary, regions, depth) >= BOUNDARY_PARTING  # no tree
            ):
                votes[k].append(np.bincount(regions.ravel())[1:])
    for k in (1, 0):
        if 2 * len(votes[k]) >= len(dense):
            areas = np.concatenate(votes[k])
            return k, max(2, int(round(0.5 * float(np.percentile(areas, 5)))))
    return None


def border_weights(label: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """The U-Net paper's weight map ``1 + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))``.

    ``d1`` and ``d2`` are the distances of a pixel to the nearest and second-nearest
    object. The map weights the pixels that separate objects: background and, since
    :func:`instance_targets` parts touching objects by their boundary pixels, those
    too; the narrow gaps and contacts between objects get the highest weights.
    Computed per object in a window of 3 sigma around it.
    """
    from skimage.segmentation import find_boundaries

    label = np.asarray(label)
    height, width = label.shape
    d1 = np.full(label.shape, np.inf, np.float32)
    d2 = np.full(label.shape, np.inf, np.float32)
    margin = int(np.ceil(3 * sigma))
    for index, region in enumerate(ndi.find_objects(label), start=1):
        if region is None:
            continue
        ys = slice(max(0, region[0].start - margin), min(height, region[0].stop + margin))
        xs = slice(max(0, region[1].start - margin), min(width, region[1].stop + margin))
        distance = ndi.distance_transform_edt(label[ys, xs] != index).astype(np.float32)
        a, b = d1[ys, xs], d2[ys, xs]
        closer = distance < a
        b[:] = np.where(closer, a, np.minimum(b, distance))
        a[:] = np.where(closer, distance, a)
    gap = np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    separating = (label == 0) | find_boundaries(label, mode="inner")
    weight = 1.0 + w0 * np.where(separating, gap, 0.0)
    return weight.astype(np.float32)


# ---------------------------------------------------------------------------
# patches and augmentation


@dataclass
class Sample:
    """One training image: (C, Y, X) float32 image, (Y, X) int64 target, optional weight."""

    image: np.ndarray
    target: np.ndarray
    weight: np.ndarray | None = None


class PatchSampler:
    """Random square patches, favouring rare classes.

    With probability ``foreground_sampling`` a patch is centred on a pixel of a
    randomly chosen non-background class present in the data (each class equally
    likely); otherwise on a random annotated pixel. Images are reflect-padded by
    half a patch; padded target pixels are ignored by the loss. With ``context`` > 0 each
    sample also holds that many pixels of surroundings on every side (for
    :func:`random_zoom`, which turns and scales the window and crops the patch from it).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        patch_size: int,
        num_classes: int,
        foreground_sampling: float,
        rng: np.random.Generator,
        context: int = 0,
    ):
        self.patch = patch_size
        self.context = context
        self.rng = rng
        self.foreground_sampling = foreground_sampling
        half = patch_size // 2 + context
        self.padded: list[Sample] = []
        self.annotated: list[np.ndarray] = []
        self.by_class: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i, sample in enumerate(samples):
            pad = ((half, half), (half, half))
            image = np.pad(sample.image, ((0, 0), *pad), mode="reflect")
            target = np.pad(sample.target, pad, constant_values=IGNORE)
            weight = None if sample.weight is None else np.pad(sample.weight, pad, mode="edge")
            self.padded.append(Sample(image, target, weight))
            flat = sample.target.ravel()
            self.annotated.append(np.flatnonzero(flat != IGNORE).astype(np.int64))
            for cls in range(1, num_classes):
                where = np.flatnonzero(flat == cls)
                if where.size:
                    self.by_class.setdefault(cls, []).append((i, where))
        sizes = np.array([a.size for a in self.annotated], np.float64)
        if sizes.sum() == 0:
            raise InputError("No annotated pixels in the training data; paint some labels.")
        self.image_p = sizes / sizes.sum()
        self.widths = [s.target.shape[1] for s in samples]

    def _centre(self) -> tuple[int, int, int]:
        rng = self.rng
        if self.by_class and rng.random() < self.foreground_sampling:
            classes = sorted(self.by_class)
            per_image = self.by_class[classes[rng.integers(len(classes))]]
            i, where = per_image[rng.integers(len(per_image))]
        else:
            i = int(rng.choice(len(self.padded), p=self.image_p))
            where = self.annotated[i]
            if where.size == 0:
                where = self.annotated[int(np.argmax([a.size for a in self.annotated]))]
        flat = int(where[rng.integers(where.size)])
        y, x = divmod(flat, self.widths[i])
        return i, y, x

    def sample(self) -> Sample:
        i, y, x = self._centre()
        p, jitter = self.patch, self.patch // 4
        # The centre pixel lands anywhere in the middle half of the patch.
        y0 = int(np.clip(y + self.rng.integers(-jitter, jitter + 1), 0, None))
        x0 = int(np.clip(x + self.rng.integers(-jitter, jitter + 1), 0, None))
        padded = self.padded[i]
        height, width = padded.target.shape
        c = self.context
        y0, x0 = min(y0, height - p - 2 * c), min(x0, width - p - 2 * c)
        window = (slice(y0, y0 + p + 2 * c), slice(x0, x0 + p + 2 * c))
        weight = None if padded.weight is None else padded.weight[window]
        return Sample(padded.image[(slice(None), *window)], padded.target[window], weight)

    def batch(
        self, size: int, augment: bool, turn: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``size`` samples stacked; ``augment`` applies :func:`augment_sample` (``turn``:
        with its 90 degree turns and flips, left out where :func:`random_zoom` turns and
        mirrors the batch anyway)."""
        samples = [self.sample() for _ in range(size)]
        if augment:
            samples = [augment_sample(s, self.rng, turn) for s in samples]
        images = np.stack([s.image for s in samples]).astype(np.float32, copy=False)
        targets = np.stack([s.target for s in samples])
        weights = None
        if samples[0].weight is not None:
            weights = np.stack([s.weight for s in samples]).astype(np.float32, copy=False)
        return images, targets, weights


def augment_sample(sample: Sample, rng: np.random.Generator, turn: bool = True) -> Sample:
    """Random rotation by k*90 degrees, flip (unless ``turn`` is False), and per-channel
    contrast/brightness jitter."""
    k, flip = (int(rng.integers(4)), bool(rng.integers(2))) if turn else (0, False)

    def geom(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, k, axes=(-2, -1))
        return a[..., ::-1] if flip else a

    image = geom(sample.image)
    channels = image.shape[0]
    scale = np.exp(rng.uniform(-0.25, 0.25, size=(channels, 1, 1))).astype(np.float32)
    shift = rng.uniform(-0.1, 0.1, size=(channels, 1, 1)).astype(np.float32)
    image = image * scale + shift
    weight = None if sample.weight is None else np.ascontiguousarray(geom(sample.weight))
    return Sample(np.ascontiguousarray(image), np.ascontiguousarray(geom(sample.target)), weight)


def _resample(images, targets, weights, grid):
    """Sample a batch at ``grid`` (B, H, W, 2): images bilinear with reflection, targets
    nearest with IGNORE outside, weights bilinear."""
    import torch.nn.functional as F

    images = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=True
    )
    shifted = (targets + 1).unsqueeze(1).float()  # IGNORE (-1) -> 0, which padding also gives
    targets = (
        F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=True)[
            :, 0
        ].long()
        - 1
    )
    if weights is not None:
        weights = F.grid_sample(
            weights.unsqueeze(1), grid, mode="bilinear", padding_mode="border", align_corners=True
        )[:, 0]
    return images, targets, weights


def zoom_context(patch: int, zoom: float) -> int:
    """Pixels of surroundings on each side that :func:`random_zoom` needs to fill a patch
    of side ``patch`` turned by any angle and scaled down by up to ``zoom``."""
    return max(0, math.ceil((patch * math.sqrt(2) * zoom - patch) / 2) + 1)


def random_zoom(images, targets, weights, rng: np.random.Generator, zoom: float, size=None):
    """Scale each window of a batch by a random factor between ``1/zoom`` and ``zoom``
    (log-uniform; above 1 objects grow), turn it by a random angle about its centre and
    mirror half of the windows, then take the central ``size`` (H, W) of it (default: the window's own size), so that
    a model meets its objects at more sizes and orientations than the data shows.

    ``images`` (B, C, H, W) float32, ``targets`` (B, H, W) int64, ``weights`` (B, H, W) or
    None. Give windows :func:`zoom_context` pixels larger than ``size`` on each side and
    every output pixel comes from inside them; otherwise the pixels from outside are
    ignored by the loss.
    """
    import torch
    import torch.nn.functional as F

    batch, channels, height, width = images.shape
    out_h, out_w = (height, width) if size is None else size
    factor = np.exp(rng.uniform(-np.log(zoom), np.log(zoom), size=batch))
    angle = rng.uniform(0, 2 * np.pi, size=batch)
    cos, sin = np.cos(angle) / factor, np.sin(angle) / factor
    mirror = np.where(rng.random(batch) < 0.5, -1.0, 1.0)  # flips the output's x axis
    # output pixel offsets from the centre -> input ones, in each side's normalised units
    sx, sy = (out_w - 1) / max(width - 1, 1), (out_h - 1) / max(height - 1, 1)
    theta = np.zeros((batch, 2, 3), np.float64)
    theta[:, 0, 0] = cos * sx * mirror
    theta[:, 0, 1] = -sin * (out_h - 1) / max(width - 1, 1)
    theta[:, 1, 0] = sin * (out_w - 1) / max(height - 1, 1) * mirror
    theta[:, 1, 1] = cos * sy
    theta = torch.from_numpy(theta).to(images.device, images.dtype)
    grid = F.affine_grid(theta, [batch, channels, out_h, out_w], align_corners=True)
    return _resample(images, targets, weights, grid)


def elastic_deform(images, targets, weights, rng: np.random.Generator, strength: float = 10.0):
    """The paper's elastic deformation: a random 3x3 grid of displacements (std ``strength``
    pixels), smoothly interpolated, applied to a batch of torch tensors.

    ``images`` (B, C, H, W) float, ``targets`` (B, H, W) int64, ``weights`` (B, H, W) or None.
    """
    import torch
    import torch.nn.functional as F

    batch, _, height, width = images.shape
    coarse = rng.normal(0, strength, size=(batch, 2, 3, 3)).astype(np.float32)
    coarse = torch.from_numpy(coarse).to(images.device)
    flow = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    ys = torch.linspace(-1, 1, height, device=images.device)
    xs = torch.linspace(-1, 1, width, device=images.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack(
        [
            grid_x + flow[:, 0] * 2 / max(width - 1, 1),
            grid_y + flow[:, 1] * 2 / max(height - 1, 1),
        ],
        dim=-1,
    )
    return _resample(images, targets, weights, grid)


def check_pairs(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], owners: Sequence[int] | None = None
) -> None:
    """Raise InputError unless each image has labels of the same height and width.

    ``owners``: for planes cut from stacks, the index of the image each plane comes from
    (errors name that image, as the user gave it, and the plane)."""
    if len(images) != len(labels):
        raise InputError(
            f"Got {len(images)} images but {len(labels)} label images; give one labels per image."
        )
    if not images:
        raise InputError("No training images were given.")
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        if image.shape[-2:] != label.shape[-2:]:
            raise InputError(
                f"{_plane_name(i, owners)} is {image.shape[-2:]} (Y, X) but its labels are "
                f"{label.shape[-2:]}; labels must have the image's height and width."
            )


def _plane_name(index: int, owners: Sequence[int] | None) -> str:
    """'Image #N' for plane ``index``, with its plane number where the image is a stack."""
    if owners is None:
        return f"Image #{index}"
    owner = owners[index]
    first = list(owners).index(owner)  # planes of an image are consecutive
    count = list(owners).count(owner)
    if count == 1:
        return f"Image #{owner}"
    return f"Image #{owner} (plane {index - first})"
