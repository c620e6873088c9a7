"""Training: :func:`iter_train` yields typed events; :func:`train` drains it.

A consumer (the napari widget, the command line) renders the events and may stop
at any of them by closing the generator: the model handed out with
:class:`TrainingStarted` then holds the best validation weights seen so far.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import torch

from ._device import autocast, autocast_dtype, default_base_channels, resolve_device
from .config import ModelConfig, TrainConfig
from .data import (
    MAX_CHANNELS_READ,
    InputError,
    Normalization,
    PatchSampler,
    Sample,
    _plane_name,
    border_weights,
    boundary_network,
    channel_axis_from_labels,
    channel_axis_of,
    check_pairs,
    convert_channels,
    elastic_deform,
    encode_labels,
    grey_of,
    grey_picture,
    instance_ids,
    iter_planes,
    random_zoom,
    repair_lossy_masks,
    smallest_object_size,
    to_cyx,
    zoom_context,
)
from .losses import IGNORE, DiceCELoss
from .model import SegmentationModel, UNet

# ---------------------------------------------------------------------------
# events


@dataclass
class TrainingStarted:
    """Training is about to start. ``model`` is trained in place."""

    model: SegmentationModel
    train_planes: int
    validation_planes: int
    device: str
    precision: str
    notes: list[str] = field(default_factory=list)


@dataclass
class StepEnded:
    """One optimiser step; ``progress`` in [0, 1] and ``eta`` in seconds."""

    step: int
    epoch: int
    loss: float
    learning_rate: float
    elapsed: float
    progress: float
    eta: float


@dataclass
class EpochEnded:
    """An epoch ended; ``score`` is the validation mean Dice of the foreground classes."""

    epoch: int
    step: int
    loss: float
    score: float | None
    best_score: float | None
    improved: bool
    elapsed: float


@dataclass
class MeasuringLabelOffset:
    """The budget is used up and the best weights are back; the label offset is being
    measured on the validation part (``TrainConfig.label_offset``; seconds, during
    which no other event comes)."""

    elapsed: float


@dataclass
class TrainingFinished:
    """Training ended (budget used up); ``model`` holds the best validation weights."""

    model: SegmentationModel
    epochs: int
    steps: int
    best_score: float | None
    elapsed: float


TrainEvent = TrainingStarted | StepEnded | EpochEnded | MeasuringLabelOffset | TrainingFinished


# ---------------------------------------------------------------------------
# data preparation


@dataclass
class PreparedData:
    train: list[Sample]
    validation: list[Sample]
    encoding: object
    in_channels: int
    convert_channels: bool
    notes: list[str]
    description: str
    min_object_size: int | None = None
    boundary: tuple[int, int] | None = None  # (class, smallest region), semantic mode


def _as_list(images, labels: bool = False) -> list:
    """One array or several; a file path among them is read (labels as label files)."""
    if isinstance(images, (np.ndarray, str, os.PathLike)) or hasattr(images, "shape"):
        images = [images]
    from .io import read_image

    return [
        read_image(item, labels=labels) if isinstance(item, (str, os.PathLike)) else item
        for item in images
    ]


def _planes(images, labels, channel_axis, notes: list[str]):
    """Split images and stacks into 2-D planes (C, Y, X).

    Returns the planes, each plane's image index, and whether a 4-channel image was read
    as RGBA (a trailing colour axis) rather than as channels its labels lack. With
    ``channel_axis="auto"``, an image with one short axis more than its labels has its
    channels on that axis (:func:`channel_axis_from_labels`); a note says so.
    """
    planes, owners, rgba = [], [], False
    extra_axis = []  # notes on images whose extra axis is read as channels
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        image = np.asarray(image)
        colour = channel_axis_of(image.shape)  # a trailing RGB(A) axis, whatever was asked
        try:
            axis = channel_axis_from_labels(image.shape, np.shape(label), channel_axis)
        except InputError as error:  # a channel axis given that this image lacks
            raise InputError(f"Image #{i}: {error}") from None
        if (
            channel_axis == "auto"
            and axis is not None
            and axis != colour
            and image.shape[axis] > 1
        ):
            extra_axis.append(
                f"Image #{i} {image.shape} has one axis more than its labels "
                f"{tuple(np.shape(label))}: read as {image.shape[axis]} channels (axis {axis})"
            )
        # a trailing axis of 4 found on its own is RGBA; one asked for holds 4 channels
        if channel_axis == "auto" and axis is not None and axis == colour:
            if image.shape[axis] == 4 and not rgba:
                notes.append(
                    f"Image #{i} {image.shape} is read as RGBA: its fourth channel (alpha) is "
                    "left out. If it holds a fourth stain, name that axis as the channel "
                    "axis (--channel-axis -1, channel_axis=-1, or in napari a layer that is "
                    "not RGB and its 'channels' field) to train on all four."
                )
            rgba |= image.shape[axis] == 4
        first = len(planes)
        for _, plane in iter_planes(image, axis):
            planes.append(to_cyx(plane, None if axis is None else plane.ndim - 1))
            owners.append(i)
        _check_plane_count(i, len(planes) - first, label)
    if extra_axis:  # one note, not one per file
        more = len(extra_axis) - 1
        notes.append(
            extra_axis[0]
            + (f"; so are {more} more image(s) with an axis their labels lack." if more else ".")
        )
    return planes, owners, rgba


def _looks_rgb(shape) -> bool:
    """A (Y, X, 3/4) label image: a picture, not one integer per pixel."""
    return len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4


def _check_plane_count(index: int, planes: int, label) -> None:
    shape = tuple(np.shape(label))
    if _looks_rgb(shape):
        return  # _label_planes says what is wrong
    count = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    if count != planes:
        raise InputError(
            f"Image #{index} has {planes} plane(s) but its labels {shape} have {count}; give "
            "labels for every plane of a stack (an image axis of at most "
            f"{MAX_CHANNELS_READ} that the labels lack is read as channels)."
        )


def _label_planes(labels) -> list[np.ndarray]:
    planes = []
    for i, label in enumerate(labels):
        label = np.asarray(label)
        if label.ndim == 2:
            planes.append(label)
        elif _looks_rgb(label.shape):
            raise InputError(
                f"The labels of Image #{i} {label.shape} look like an RGB picture; labels must be one "
                "integer value per pixel (save the mask as a single-channel image)."
            )
        else:
            planes.extend(label.reshape(-1, *label.shape[-2:]))
    return planes


def prepare_data(
    images,
    labels,
    config: TrainConfig,
    *,
    model: SegmentationModel | None = None,
    channel_axis: int | None | str = "auto",
) -> PreparedData:
    """Check, convert, normalise and split the training data (see :func:`iter_train`)."""
    images, labels = _as_list(images), _as_list(labels, labels=True)
    if len(images) != len(labels):
        raise InputError(
            f"Got {len(images)} images but {len(labels)} label images; give one labels per image."
        )
    notes: list[str] = []
    planes, owners, rgba = _planes(images, labels, channel_axis, notes)
    label_planes = _label_planes(labels)
    check_pairs(planes, label_planes, owners)
    label_planes, lossy_notes = repair_lossy_masks(label_planes, owners)
    notes += lossy_notes
    if config.mode != "sparse":
        notes += _unlabelled_planes(label_planes, owners)
    if config.mode == "instances":  # consecutive integer ids, a mask's regions as objects
        label_planes, id_notes = instance_ids(label_planes, owners)
        notes += id_notes
    grey_model = model is None or model.in_channels == 1
    if grey_model and _colour_last(images, labels, channel_axis):
        # grey pictures saved as colour (equal channels, the colour axis last): a grey
        # model, as prediction reads such pictures, which also segments plain grey images
        if all(grey_picture(np.moveaxis(np.asarray(p), 0, -1)) for p in planes):
            planes = [grey_of(np.moveaxis(np.asarray(p), 0, -1))[None] for p in planes]
            notes.append(
                "The images are grey pictures saved as colour (equal channels): read as "
                "grey, so the model takes grey images (and such pictures) alike."
            )
    counts = sorted({p.shape[0] for p in planes})
    convert = False
    if model is not None:
        in_channels, convert = model.in_channels, model.convert_channels
        bad = [c for c in counts if c != in_channels and not (c == 4 and in_channels == 3)]
        if bad and not convert:
            raise InputError(
                f"The model takes {in_channels} channel(s), the images have {bad}; "
                "continue with images like the first training data, or train a new model."
            )
    else:
        in_channels = 3 if counts[-1] == 4 and rgba else counts[-1]  # RGBA: alpha dropped
        if len(counts) > 1:
            convert = True
            notes.append(
                f"Images have different channel counts {counts}; all are converted to "
                f"{in_channels} (grey is repeated into every channel)."
            )
    normalization = (
        model.normalization
        if model is not None
        else Normalization(config.low_percentile, config.high_percentile)
    )
    normalized = []
    for plane in planes:
        if np.isnan(np.asarray(plane, dtype=np.float32)).all():
            raise InputError("A training image holds only NaN values; check the file.")
        plane = convert_channels(plane, in_channels)
        normalized.append(normalization(plane))
    targets, encoding = encode_labels(
        label_planes, config.mode, None if model is None else model.encoding, owners
    )
    notes += encoding.notes
    if model is not None and encoding.num_classes != model.num_classes:
        raise InputError(
            f"The labels give {encoding.num_classes} classes, the model has {model.num_classes}; "
            "use labels with the model's classes or train a new model."
        )
    weights = None
    if config.mode == "instances" and config.border_weight > 0:
        weights = [border_weights(label, w0=config.border_weight) for label in label_planes]
    samples = [
        Sample(image, target, None if weights is None else weights[i])
        for i, (image, target) in enumerate(zip(normalized, targets, strict=True))
    ]

    def unusable(split) -> str | None:
        return _unusable_validation(samples, *split, encoding.class_names)

    train, validation, why = _split(samples, config.validation_fraction, unusable)
    if why:
        notes.append(
            f"Validation: a strip of each plane ({config.validation_fraction:.0%} of one "
            "side, at least 16 pixels) is held out, rather than the last plane(s) "
            f"whole, which {why}."
        )
    unusable = _unusable_validation(samples, train, validation, encoding.class_names)
    if unusable:
        notes.append(
            f"Validation: the part held out to choose the best weights {unusable}; training "
            "uses every annotated pixel instead and keeps the last weights."
        )
        train, validation = samples, []
    if not any((s.target != IGNORE).any() for s in train):
        raise InputError(
            "No annotated pixels in the training part; paint labels or lower the validation share."
        )
    shapes = sorted({tuple(p.shape[1:]) for p in planes})
    description = f"{len(planes)} plane(s) from {len(images)} image(s), sizes {shapes[:3]}" + (
        "..." if len(shapes) > 3 else ""
    )
    smallest = smallest_object_size(label_planes) if config.mode == "instances" else None
    boundary = None
    if config.mode == "semantic" and encoding.num_classes == 2:
        boundary = boundary_network(targets)
    if boundary is not None:
        notes.append(
            f"The labels draw '{encoding.class_names[boundary[0]]}' as boundaries between "
            "regions: predictions will close gaps in them (close_boundaries)."
        )
    return PreparedData(
        train, validation, encoding, in_channels, convert, notes, description, smallest, boundary
    )


def _split(
    samples: list[Sample], fraction: float, unusable=None
) -> tuple[list[Sample], list[Sample], str | None]:
    """Hold out the last whole planes (contiguous, as in a stack) or, with a single plane, a
    strip along its longer side. Where the last planes would hold more than twice
    ``fraction`` of the labelled pixels (two or three images, or a large one last), a
    strip of each plane instead, so that validation does not take most of the data.
    ``unusable(split)``: why a split cannot choose weights (too few pixels), or None;
    where the split chosen cannot and another can, the other (more whole planes, up to
    twice the share, or strips); the last planes whole never where they hold most of the
    labelled pixels. Returns the training and validation parts, and why the last planes
    were not held out whole where several planes were cut into strips (None where no
    split can choose weights: the caller then holds nothing out)."""
    if fraction <= 0:
        return samples, [], None
    parts = [_strip(sample, fraction) for sample in samples]
    strips = [t for t, _ in parts], [v for _, v in parts if v is not None]
    if len(samples) == 1:
        return (*strips, None)
    count = min(len(samples) - 1, max(1, round(len(samples) * fraction)))
    whole = samples[:-count], samples[-count:]
    pixels = [int((s.target != IGNORE).sum()) for s in samples]
    if sum(pixels[-count:]) <= 2 * fraction * sum(pixels):
        why = None if unusable is None else unusable(whole)
        if why is None:
            return (*whole, None)
        for more in range(count + 1, len(samples)):
            if sum(pixels[-more:]) > 2 * fraction * sum(pixels):
                break
            if unusable(larger := (samples[:-more], samples[-more:])) is None:
                return (*larger, None)
        if strips[1] and unusable(strips) is None:
            return (*strips, why)
        return (*whole, None)
    share = "would hold more than twice that share of the labelled pixels"

    def trains(split) -> bool:
        return any((s.target != IGNORE).any() for s in split[0])

    def scored(split) -> bool:  # objects or rare classes to score (scribbles may miss them)
        return trains(split) and any((s.target > 0).any() for s in split[1])

    # The last planes whole, though over twice the share, where strips cannot score or
    # train; never where they would hold most of the labels: training keeps the majority.
    most = 2 * sum(pixels[-count:]) > sum(pixels)
    if scored(strips) or most:
        chosen, other = strips, whole
    else:
        chosen, other = (whole, strips) if scored(whole) or not trains(strips) else (strips, whole)
    if unusable is not None and unusable(chosen):
        if other[1] and not (other is whole and most) and unusable(other) is None:
            chosen = other
        else:  # nothing usable: the caller holds nothing out, and says why
            return (*chosen, None)
    return (*chosen, share if chosen is strips and strips[1] else None)


VALIDATION_MIN_ANNOTATED = 1024
"""A validation part with fewer annotated pixels than this (32 x 32) ..."""

VALIDATION_MIN_FOREGROUND = 64
"""... or fewer pixels of objects or non-background classes than this is too small to
choose the best weights by: its score jumps from epoch to epoch (a strip of scribbles
holding 9 painted nucleus pixels scored 0.72-1.0), so training uses every annotated pixel
instead and keeps the last weights."""


def _unusable_validation(
    samples: list[Sample], train: list[Sample], validation: list[Sample], names: list[str]
) -> str | None:
    """Why the ``validation`` part cannot choose the best weights, or None where it can:
    it holds too few annotated or foreground pixels, or every pixel of a class."""
    if not validation:
        return None

    def counts(part: list[Sample]) -> np.ndarray:
        total = np.zeros(len(names), np.int64)
        for sample in part:
            target = sample.target[sample.target >= 0]
            total += np.bincount(target, minlength=len(names))[: len(names)]
        return total

    held, trained = counts(validation), counts(train)
    missing = [names[c] for c in np.flatnonzero((held > 0) & (trained == 0))]
    if missing:
        return f"would hold every annotated pixel of {', '.join(map(repr, missing))}"
    if held.sum() < VALIDATION_MIN_ANNOTATED:
        return (
            f"would hold only {held.sum()} annotated pixels, too few to choose by "
            f"(at least {VALIDATION_MIN_ANNOTATED})"
        )
    if held[1:].sum() < VALIDATION_MIN_FOREGROUND:
        return (
            f"would hold only {held[1:].sum()} pixels of objects or classes other than "
            f"background, too few to choose by (at least {VALIDATION_MIN_FOREGROUND})"
        )
    return None


def _strip(sample: Sample, fraction: float) -> tuple[Sample, Sample | None]:
    """A plane cut into a training part and a validation strip (``fraction`` of its side,
    at least 16 pixels; none where less than 16 would be left): at the end of its longer
    side, or where that holds too few pixels of objects or classes other than background
    to score (:data:`VALIDATION_MIN_FOREGROUND`) or takes every pixel of a class from
    training, at the first of its start, the end and the start of the shorter side that
    does neither."""
    height, width = sample.target.shape
    cuts = []
    for along_y in (height >= width, height < width):
        length = height if along_y else width
        size = max(16, int(round(length * fraction)))
        if length - size >= 16:
            cuts += [(along_y, slice(0, length - size), slice(length - size, None))]
            cuts += [(along_y, slice(size, None), slice(0, size))]
    if not cuts:
        return sample, None

    def part(a: np.ndarray | None, along_y: bool, keep: slice) -> np.ndarray | None:
        if a is None:
            return None
        return a[..., keep, :] if along_y else a[..., keep]

    classes = int(sample.target.max(initial=0)) + 1

    def counts(a: np.ndarray) -> np.ndarray:  # pixels per class
        return np.bincount(a[a >= 0].ravel(), minlength=classes)

    present = counts(sample.target) > 0

    def keeps(choice) -> bool:  # every class of the plane left to train
        return bool(np.all(counts(part(sample.target, choice[0], choice[1]))[present] > 0))

    def scores(choice) -> bool:  # objects or rare classes to score
        held = counts(part(sample.target, choice[0], choice[2]))
        return int(held[1:].sum()) >= VALIDATION_MIN_FOREGROUND

    along_y, head, tail = next(
        (c for rule in (lambda c: keeps(c) and scores(c), keeps, scores) for c in cuts if rule(c)),
        cuts[0],
    )

    def cut(keep: slice) -> Sample:
        return Sample(
            *(part(a, along_y, keep) for a in (sample.image, sample.target, sample.weight))
        )

    return cut(head), cut(tail)


# ---------------------------------------------------------------------------
# training


def _schedule(progress: float, warmup: float = 0.03) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 2% at the end."""
    if progress < warmup:
        return max(progress / warmup, 0.05)
    t = min(1.0, (progress - warmup) / (1 - warmup))
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))


def foreground_dice(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> float | None:
    """Mean Dice over classes 1..K-1 present in the annotated part of ``target``."""
    annotated = target != IGNORE
    scores = []
    for cls in range(1, num_classes):
        truth = (target == cls) & annotated
        if not truth.any():
            continue
        guess = (prediction == cls) & annotated
        scores.append(2 * (truth & guess).sum() / (truth.sum() + guess.sum()))
    return float(np.mean(scores)) if scores else None


def _validate(
    network: UNet, samples: list[Sample], device: str, tile: int, least: int = 0
) -> float | None:
    """Mean foreground Dice over ``samples``, predicted as a model trained on patches of
    ``least`` pixels predicts (see :meth:`napari_unet.tiling.Axis.plan`)."""
    from .prediction import predict

    scores = []
    for sample in samples:
        probs = predict(
            network,
            sample.image,
            output="probabilities",
            device=device,
            tile_size=tile,
            channel_axis=0,
            _warn_tiles=False,  # the warning is for users' predictions, not every epoch's
            _least_tile=least,
        )
        score = foreground_dice(
            np.argmax(probs, axis=0), sample.target, network.config.num_classes
        )
        if score is not None:
            scores.append(score)
    return float(np.mean(scores)) if scores else None


OFFSET_STEPS = (-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75)
"""Offsets (pixels, along each axis) that :func:`estimate_label_offset` tries."""

OFFSET_MIN_GAIN = 0.01
"""A label offset is kept only where it lowers the cross-entropy of the planes it is
measured on by at least this share, against no shift and against the opposite shift
(ISBI 2012, whose labels sit about half a pixel above the membranes of the images: 4-6%
against no shift on the validation slices of four development models)."""

OFFSET_AGREEMENT = 0.75
"""...and where at least this share of the planes (the two halves of a single plane),
each measured alone, finds an offset within a quarter pixel of it on both axes: an
offset of the labels as a whole, not of one image (the DSB 2018 nuclei are each
outlined a little off in their own direction, up to a pixel)."""

_OFFSET_SIDE = 2048  # larger planes are measured on a central crop of this side
_OFFSET_PIXELS = 2**22  # planes are measured until this many pixels are reached
_OFFSET_PLANES = 8  # nor more planes than this
_OFFSET_MIN_SIDE = 16  # narrower planes are left out (a strip held out is at least 16)
_OFFSET_MIN_ANNOTATED = 32 * 32  # fewer annotated pixels in all measure no offset


def _smooth(maps: torch.Tensor) -> torch.Tensor:
    """(..., H, W) maps averaged with the kernel (1/4, 1/2, 1/4) along both axes (edges
    repeated): the smoothing of a half-pixel shift and of its opposite, centred."""
    from ._inference import shift_maps

    for offset in ((0.5, 0.0), (-0.5, 0.0), (0.0, 0.5), (0.0, -0.5)):
        maps = shift_maps(maps, offset)
    return maps


def estimate_label_offset(
    network: UNet,
    samples: list[Sample],
    device: str = "cpu",
    tile: int | None = None,
    least: int = 0,
) -> tuple[float, float] | None:
    """The (dy, dx) shift, in steps of a quarter pixel up to 3/4, that best moves the
    network's probabilities onto the labels of ``samples`` (lowest cross-entropy over the
    annotated pixels), or None where it does not gain :data:`OFFSET_MIN_GAIN` over no
    shift and over the opposite shift, or where the planes disagree
    (:data:`OFFSET_AGREEMENT`); every candidate is scored on the probabilities smoothed by
    (1/4, 1/2, 1/4). ``tile``: the prediction tile size (None: the default). Planes
    narrower than 16 pixels are left out, and with fewer than 32 x 32 annotated pixels
    in all no offset is measured: too little to tell an offset from chance.

    Labels can sit a fraction of a pixel off the image, when they were drawn or
    resampled on a grid shifted against it. A network trained with flips and turns
    cannot learn such an offset (a flip reverses it), so it draws its outlines between
    the two, and every outline of a prediction is off by the rest. Measured on the
    validation planes, which the network did not train on, the shift is a property of
    the labels, as StarDist measures its thresholds there.
    """
    from ._inference import shift_maps
    from .prediction import predict

    chosen, pixels, annotated = [], 0, 0  # the planes measured on, and their crops
    for sample in samples:
        height, width = sample.target.shape
        if min(height, width) < _OFFSET_MIN_SIDE:
            continue
        y0, x0 = max(0, (height - _OFFSET_SIDE) // 2), max(0, (width - _OFFSET_SIDE) // 2)
        crop = (slice(y0, y0 + _OFFSET_SIDE), slice(x0, x0 + _OFFSET_SIDE))
        target = np.ascontiguousarray(sample.target[crop])
        if not (target != IGNORE).any():
            continue
        chosen.append((sample, crop, target))
        pixels += target.size
        annotated += int((target != IGNORE).sum())
        if pixels >= _OFFSET_PIXELS or len(chosen) >= _OFFSET_PLANES:
            break
    if annotated < _OFFSET_MIN_ANNOTATED:  # too little to tell: nothing predicted
        return None
    planes = []
    for sample, crop, target in chosen:
        probs = predict(
            network,
            sample.image[(slice(None), *crop)],
            output="probabilities",
            device=device,
            tile_size=tile,
            channel_axis=0,
            _warn_tiles=False,
            _least_tile=least,
        )
        # Every candidate is compared on the same smoothed probabilities: a shift by a
        # fraction of a pixel smooths them too, which by itself lowers the cross-entropy
        # of a confident network's scattered mistakes, in any direction.
        probs = _smooth(torch.from_numpy(np.ascontiguousarray(probs)))
        planes.append((probs, torch.from_numpy(target)))

    def parts(target: torch.Tensor) -> list[torch.Tensor]:
        """The annotated pixels of the plane, or of each half of a single plane."""
        annotated = target != IGNORE
        if len(planes) > 1:
            return [annotated]
        first, second = annotated.clone(), annotated.clone()
        if target.shape[0] >= target.shape[1]:
            half = target.shape[0] // 2
            first[half:], second[:half] = False, False
        else:
            half = target.shape[1] // 2
            first[:, half:], second[:, :half] = False, False
        return [first, second]

    masks = [parts(target) for _, target in planes]
    offsets = [(dy, dx) for dy in OFFSET_STEPS for dx in OFFSET_STEPS]
    totals = np.zeros((len(offsets), sum(map(len, masks))))  # cross-entropy sums per part
    counts = np.array([float(m.sum()) for group in masks for m in group])
    for row, offset in enumerate(offsets):
        column = 0
        for (probs, target), group in zip(planes, masks, strict=True):
            picked = shift_maps(probs, offset).gather(0, target.clamp(min=0)[None])[0]
            loss = -torch.log(picked.clamp(min=1e-6))
            for mask in group:
                totals[row, column] = float(loss[mask].sum())
                column += 1
    joint = totals.sum(axis=1) / counts.sum()
    best = int(np.argmin(joint))
    mirror = offsets.index((-offsets[best][0], -offsets[best][1]))
    # An offset of the labels makes one direction win over the other, where what is
    # left of smoothing after the common (1/4, 1/2, 1/4) would favour both alike.
    if joint[best] >= (1 - OFFSET_MIN_GAIN) * min(joint[offsets.index((0.0, 0.0))], joint[mirror]):
        return None
    own = [offsets[i] for i in np.argmin(totals / np.maximum(counts, 1), axis=0)]
    near = [max(abs(a - b) for a, b in zip(o, offsets[best], strict=True)) <= 0.25 for o in own]
    if np.mean([n for n, c in zip(near, counts, strict=True) if c]) < OFFSET_AGREEMENT:
        return None
    return offsets[best]


def _colour_last(images: list, labels: list, channel_axis) -> bool:
    """Whether every image is a colour picture: 3 or 4 values on its last axis, which its
    labels lack, read as the channels (not channels given on another axis)."""
    for image, label in zip(images, labels, strict=True):
        shape = tuple(image.shape)
        if len(shape) != np.ndim(label) + 1 or shape[-1] not in (3, 4):
            return False
        if channel_axis not in ("auto", -1, len(shape) - 1):
            return False
    return bool(images)


def _unlabelled_planes(label_planes: list[np.ndarray], owners: list[int]) -> list[str]:
    """A note where a stack has planes of labels all 0 beside labelled ones: in semantic
    and instances modes they train as background, which is right for empty planes and
    wrong for planes left unannotated (the Train widget trains only labelled planes)."""
    empty: dict[int, list[int]] = {}
    labelled: set[int] = set()
    for plane, (label, owner) in enumerate(zip(label_planes, owners, strict=True)):
        if np.any(label):
            labelled.add(owner)
        else:
            empty.setdefault(owner, []).append(plane)
    stacks = [owner for owner in empty if owner in labelled]
    if not stacks:
        return []
    count = sum(len(empty[owner]) for owner in stacks)
    first = _plane_name(empty[stacks[0]][0], owners)
    return [
        f"{count} plane(s) of stacked image(s) (the first: {first}) hold no labels "
        "(all 0) beside labelled planes: they train as background. If they are not "
        "annotated, give only the labelled planes (or scribbles in sparse mode, where 0 is "
        "not annotated)."
    ]


def _steps_per_epoch(samples: list[Sample], config: TrainConfig) -> int:
    if config.steps_per_epoch:
        return config.steps_per_epoch
    pixels = sum(s.target.size for s in samples)
    return int(np.clip(math.ceil(pixels / (config.batch_size * config.patch_size**2)), 16, 250))


def _with_fields(config: TrainConfig | None, fields: dict, model) -> TrainConfig | None:
    """``config`` with the :class:`TrainConfig` fields given as keywords over its own."""
    unknown = sorted(set(fields) - set(TrainConfig.model_fields))
    if unknown:
        raise TypeError(
            f"Unknown training option(s) {unknown}: give TrainConfig fields "
            f"({', '.join(TrainConfig.model_fields)}), or model, model_config, channel_axis."
        )
    if not fields:
        return config
    base = config.model_dump(exclude_unset=True) if config is not None else {}
    if config is None and model is not None:  # as iter_train's default
        base["mode"] = model.mode
    if "epochs" in fields or "minutes" in fields:  # one budget replaces the other
        base.pop("epochs", None)
        base.pop("minutes", None)
    return TrainConfig(**{**base, **fields})


def iter_train(
    images,
    labels,
    config: TrainConfig | None = None,
    *,
    model: SegmentationModel | None = None,
    model_config: ModelConfig | None = None,
    channel_axis: int | None | str = "auto",
    **fields,
) -> Iterator[TrainEvent]:
    """Train a U-Net, yielding events as it goes.

    Parameters
    ----------
    images
        An image or a list of images: (Y, X), (Y, X, C) RGB, or stacks (Z, Y, X) /
        (Z, Y, X, C) whose planes are trained on independently. Any size and dtype.
    labels
        Label images of the same height and width, read as ``config.mode`` says
        (see :func:`napari_unet.data.encode_labels`).
    config
        :class:`TrainConfig`; defaults if None. Its fields may also be given as
        keywords (``epochs=5``, ``mode="instances"``), alone or over those of ``config``.
    model
        Continue training this model (same label mode, classes and channels).
    model_config
        Architecture of a new model (depth, base channels, ...); channels and classes
        are taken from the data.

    Yields
    ------
    :class:`TrainingStarted`, then :class:`StepEnded` per step and :class:`EpochEnded`
    per epoch, :class:`MeasuringLabelOffset` before the label offset is measured, and
    :class:`TrainingFinished` at the end. Closing the generator stops training (before
    :class:`TrainingFinished`, no offset is measured); the model keeps the best
    validation weights either way.
    """
    if model is not None and model_config is not None:
        warnings.warn(
            "model_config is not used when a model is continued (model=...): the model "
            "keeps its architecture.",
            UserWarning,
            stacklevel=2,
        )
    config = _with_fields(config, fields, model)
    config = config or TrainConfig(mode=model.mode if model is not None else "semantic")
    data = prepare_data(images, labels, config, model=model, channel_axis=channel_axis)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)

    if model is None:
        architecture = model_config or ModelConfig()
        architecture = architecture.model_copy(
            update={
                "in_channels": data.in_channels,
                "num_classes": data.encoding.num_classes,
                "base_channels": architecture.base_channels or default_base_channels(device),
            }
        )
        network = UNet.from_config(architecture)
        model = SegmentationModel(
            network,
            data.encoding,
            Normalization(config.low_percentile, config.high_percentile),
            convert_channels=data.convert_channels,
        )
    if data.min_object_size is not None:  # never drop sizes annotated in earlier runs
        known = [v for v in (model.min_object_size, data.min_object_size) if v is not None]
        model.min_object_size = min(known)
    if data.boundary is not None:  # labels that draw boundaries between regions
        model.boundary_class, smallest_region = data.boundary
        known = [v for v in (model.min_object_size, smallest_region) if v is not None]
        model.min_object_size = min(known)
    network = model.network.to(device).to(memory_format=torch.channels_last)
    dtype = autocast_dtype(device, config.mixed_precision)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    loss_fn = DiceCELoss(config.dice_weight, config.ce_weight)
    # patches whose sides the network's pooling divides, and at least 2 x 2 at the
    # bottleneck (normalisation needs more than one value per channel)
    divisor = network.divisor

    def side(length: int) -> int:  # at least 16, as TrainConfig takes
        return max(16, 2 * divisor, -(-length // divisor) * divisor)

    patch_size = side(config.patch_size)
    # every image smaller than the patch: a patch that just holds the largest, instead of
    # one made mostly of mirrored padding, which the loss ignores but each step computes
    largest = max(max(s.target.shape) for s in data.train)
    if side(largest) < patch_size:
        patch_size = side(largest)
        held_out = " (the part held out for validation left aside)" if data.validation else ""
        data.notes.append(
            f"Patch size {config.patch_size} -> {patch_size}: the images trained on"
            f"{held_out} are at most {largest} pixels across, and a larger patch would "
            "mostly hold mirrored copies of their edges, which only slows training."
        )
    elif patch_size != config.patch_size:
        data.notes.append(
            f"Patch size {config.patch_size} -> {patch_size}: a U-Net of depth "
            f"{network.config.depth} takes sides that are multiples of {divisor}, at least "
            f"{2 * divisor}."
        )
    if patch_size != config.patch_size:
        config = config.model_copy(update={"patch_size": patch_size})
    zooming = config.augment and config.zoom > 1
    context = zoom_context(config.patch_size, config.zoom) if zooming else 0
    sampler = PatchSampler(
        data.train,
        config.patch_size,
        data.encoding.num_classes,
        config.foreground_sampling,
        rng,
        context,
    )
    steps_per_epoch = _steps_per_epoch(data.train, config)
    budget = config.minutes * 60 if config.minutes else None
    total_steps = None if budget else config.epochs * steps_per_epoch
    validation_tile = max(256, config.patch_size * 2)

    run = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": data.description,
        "config": config.model_dump(),
        "epochs": 0,
        "steps": 0,
        "best_score": None,
        "curve": [],
    }
    model.history.setdefault("runs", []).append(run)
    yield TrainingStarted(
        model,
        len(data.train),
        len(data.validation),
        str(device),
        "fp32" if dtype is None else str(dtype).replace("torch.", ""),
        data.notes,
    )

    # None until the first validation: stopped before it, the model keeps what it learned
    best_state = None
    best_score: float | None = None
    start = time.perf_counter()
    step = epoch = 0
    try:
        while True:
            network.train()
            losses = []
            for _ in range(steps_per_epoch):
                elapsed = time.perf_counter() - start
                progress = elapsed / budget if budget else step / total_steps
                if progress >= 1:
                    break
                lr = config.learning_rate * _schedule(progress)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x, y, w = sampler.batch(config.batch_size, config.augment, turn=not zooming)
                x = torch.from_numpy(x).to(device)
                y = torch.from_numpy(y).to(device)
                w = None if w is None else torch.from_numpy(w).to(device)
                if zooming:
                    size = (config.patch_size, config.patch_size)
                    x, y, w = random_zoom(x, y, w, rng, config.zoom, size)
                if config.augment and config.elastic:
                    x, y, w = elastic_deform(x, y, w, rng)
                x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device, dtype):
                    logits = network(x)
                loss = loss_fn(logits, y, w)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                step += 1
                losses.append(loss.item())
                elapsed = time.perf_counter() - start
                progress = min(1.0, elapsed / budget if budget else step / total_steps)
                eta = elapsed / max(progress, 1e-9) * (1 - progress)
                yield StepEnded(step, epoch, losses[-1], lr, elapsed, progress, eta)
            if not losses:
                break
            epoch += 1  # also the last, partial one of a time budget
            network.eval()
            score = _validate(
                network, data.validation, str(device), validation_tile, config.patch_size
            )
            improved = score is not None and (best_score is None or score > best_score)
            if improved or (score is None and best_score is None):
                best_state = copy.deepcopy(network.state_dict())
                if improved:
                    best_score = score
                    run["best_epoch"] = epoch
            run.update(epochs=epoch, steps=step, best_score=best_score)
            run["curve"].append(
                {
                    "epoch": epoch,
                    "step": step,
                    "loss": float(np.mean(losses)),
                    "score": score,
                    "elapsed": round(time.perf_counter() - start, 2),
                }
            )
            yield EpochEnded(
                epoch,
                step,
                float(np.mean(losses)),
                score,
                best_score,
                improved,
                time.perf_counter() - start,
            )
            if not budget and step >= total_steps:
                break
    finally:
        if step:  # the weights changed: an offset measured for the old ones is gone
            model.label_offset = None
        if best_state is not None:
            network.load_state_dict(best_state)
        network.eval()
        run.update(
            epochs=epoch,
            steps=step,
            best_score=best_score,
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
    measurable = [s for s in data.validation if min(s.target.shape) >= _OFFSET_MIN_SIDE]
    if config.label_offset and step and measurable:
        yield MeasuringLabelOffset(time.perf_counter() - start)
        try:
            model.label_offset = estimate_label_offset(
                network, measurable, str(device), tile=validation_tile, least=config.patch_size
            )
        except (RuntimeError, MemoryError) as error:  # out of memory: keep the run
            run["label_offset_error"] = str(error).splitlines()[0] if str(error) else "?"
    run["label_offset"] = None if model.label_offset is None else list(model.label_offset)
    yield TrainingFinished(model, epoch, step, best_score, time.perf_counter() - start)


class TrainingNote(UserWarning):
    """What training noticed about its data (a 0/255 mask read as foreground, alpha
    dropped, labels that look like object ids, ...), issued by :func:`train` as a
    warning; :func:`iter_train` yields them in :attr:`TrainingStarted.notes`."""


def train(images, labels, config: TrainConfig | None = None, **kwargs) -> SegmentationModel:
    """Train a U-Net and return it (best validation weights). See :func:`iter_train`.

    Fields of :class:`TrainConfig` may be given as keywords (``epochs=5``, ``mode=
    "instances"``), alone or over those of ``config``; the other keywords go to
    :func:`iter_train` (``model``, ``model_config``, ``channel_axis``). Training's
    notes on the data are issued as :class:`TrainingNote` warnings.
    """
    model = None
    for event in iter_train(images, labels, config, **kwargs):
        if isinstance(event, TrainingStarted):
            for note in event.notes:
                warnings.warn(note, TrainingNote, stacklevel=2)
        if isinstance(event, TrainingStarted | TrainingFinished):
            model = event.model
    return model
