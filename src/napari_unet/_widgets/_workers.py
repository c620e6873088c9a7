"""Thread workers that run training and prediction off the GUI thread.

Each worker drains a core generator (:func:`~napari_unet.training.iter_train`,
:func:`~napari_unet.prediction.iter_predict`) in a napari thread worker and yields
its events, which the widgets render on the GUI thread. Stopping is cooperative:
the widget sets a :class:`threading.Event`, the worker closes the core generator
at the next event (so training restores its best weights) and returns.

Errors never leave the worker as exceptions: they are yielded as
:class:`JobFailed` with a message a person can act on, which the widget shows as
a notification.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from napari.qt.threading import GeneratorWorker, create_worker

from ..config import ModelConfig, TrainConfig
from ..data import InputError
from ..model import SegmentationModel
from ..prediction import PredictionFinished, iter_predict, predict
from ..training import EpochEnded, TrainingStarted, iter_train
from ._layers import annotated_planes, plane_of

logger = logging.getLogger(__name__)


@dataclass
class JobFailed:
    """The job ended with an error; ``message`` says what went wrong."""

    message: str


@dataclass
class PlanesSelected:
    """Training uses ``used`` of the ``total`` stack planes: those that hold labels;
    ``planes``: their indices in the stack, in the order the engine numbers its images
    ("Image #0" is the first), empty for a single plane."""

    used: int
    total: int
    planes: tuple[tuple[int, ...], ...] = ()


@dataclass
class PreviewReady:
    """A prediction of the plane ``index`` with the weights after an epoch."""

    index: tuple[int, ...]
    labels: np.ndarray
    epoch: int = 0  # the epoch of the run whose weights drew it


@dataclass
class Preview:
    """Which plane to predict after each epoch for the live preview."""

    image: object
    index: tuple[int, ...]
    channel_axis: int | None
    device: str


def refuse(widget, message: str) -> None:
    """A start refused: the notification, and the widget's panel says so too (rather
    than the status of its last run)."""
    from napari.utils.notifications import show_error

    show_error(message)
    widget.status.setText(f"Not started: {message}")
    widget.progress.setValue(0)
    widget.progress.setFormat("")


def describe(error: Exception) -> str:
    """A message for a notification: input errors as they are, others with their type."""
    if isinstance(error, InputError):
        return str(error)
    if isinstance(error, MemoryError):
        return "Out of memory: use smaller patches or tiles, a smaller batch or model."
    return f"{type(error).__name__}: {error}"


def _guarded(events: Iterator):
    try:
        return (yield from events)
    except Exception as error:  # every failure becomes a notification, none a traceback
        logger.debug("job failed", exc_info=error)
        yield JobFailed(describe(error))
        return None


def _collapse_channels(labels: np.ndarray, axis: int) -> np.ndarray:
    """Labels painted on the channel planes of a (.., C, .., Y, X) layer -> one set of
    labels without that axis: a pixel takes the value painted on any plane."""
    planes = np.moveaxis(labels, axis, 0)
    painted = planes != 0
    merged = np.take_along_axis(planes, painted.argmax(axis=0)[None], 0)[0]
    if np.any(painted & (planes != merged[None])):
        raise InputError(
            "The labels differ between channel planes at some pixels; paint each pixel on "
            "one channel plane only (or on all of them alike)."
        )
    return merged


def _training_data(image, labels, channel_axis: int | None):
    """The planes of a (stacked) image and its labels that hold labels, read into memory,
    and the channel axis of those planes (``channel_axis`` is that of ``image``)."""
    labels = np.array(labels, copy=True)  # painting during training must not change the targets
    if channel_axis is not None and channel_axis != -1 and labels.ndim == len(image.shape):
        if labels.shape[channel_axis] == 1 and image.shape[channel_axis] != 1:
            labels = labels.squeeze(channel_axis)  # one plane spanning the channels
        else:
            labels = _collapse_channels(labels, channel_axis)
    planes = annotated_planes(labels)
    if not planes:
        raise InputError(
            "The labels layer is empty: paint some labels (or, in sparse mode, scribbles of "
            "at least two classes) before training."
        )
    if labels.ndim == 2:
        return np.asarray(image), labels, PlanesSelected(1, 1), channel_axis
    total = int(np.prod(labels.shape[:-2]))
    images, plane_axis = [], channel_axis
    for index in planes:
        plane, plane_axis = plane_of(image, index, channel_axis)
        images.append(np.asarray(plane))
    targets = [labels[index] for index in planes]
    selected = PlanesSelected(len(planes), total, tuple(tuple(map(int, i)) for i in planes))
    return images, targets, selected, plane_axis


def _train(
    image,
    labels,
    channel_axis: int | None,
    config: TrainConfig,
    model: SegmentationModel | None,
    model_config: ModelConfig | None,
    preview: Preview | None,
    stop: threading.Event,
):
    images, targets, selected, plane_axis = _training_data(image, labels, channel_axis)
    yield selected
    events = iter_train(
        images,
        targets,
        config,
        model=model,
        model_config=model_config,
        # an RGB(A) layer (-1): its colour axis as read on its own, RGBA without alpha
        channel_axis="auto" if plane_axis == -1 else plane_axis,
    )
    trained = None

    def previewed(epoch: int) -> PreviewReady:
        index = preview.index  # once: the widget moves it with the viewer's plane
        plane, axis = plane_of(preview.image, index, preview.channel_axis)
        labels = predict(
            trained,
            plane,
            channel_axis=axis,
            device=preview.device,
            compute=True,
            _warn_tiles=False,  # the Segment step warns; not every epoch's preview
        )
        return PreviewReady(index, labels, epoch)

    # the epoch whose weights are kept, and the one the preview shows
    kept = drawn = 0
    try:
        for event in events:
            if isinstance(event, TrainingStarted):
                trained = event.model
            if isinstance(event, EpochEnded):
                kept = event.epoch if event.improved or event.best_score is None else kept
            yield event
            if stop.is_set():
                break
            if preview is not None and isinstance(event, EpochEnded):
                try:  # a preview that fails costs the preview, not the training
                    ready = previewed(event.epoch)
                except Exception as error:
                    logger.debug("preview failed", exc_info=error)
                else:
                    yield ready
                    drawn = event.epoch
    finally:
        events.close()  # restores the best weights when training was stopped early
    if preview is not None and trained is not None and kept and kept != drawn:
        try:  # the weights kept, not the last epoch's; the model matters more than this
            ready = previewed(kept)
        except Exception as error:
            logger.debug("final preview failed", exc_info=error)
        else:
            yield ready
    return trained


def train_worker(
    image,
    labels,
    *,
    channel_axis: int | None,
    config: TrainConfig,
    model: SegmentationModel | None = None,
    model_config: ModelConfig | None = None,
    preview: Preview | None = None,
    stop: threading.Event,
) -> GeneratorWorker:
    """A worker (not started) that trains on ``image`` / ``labels`` (*stack, Y, X).

    Yields :class:`PlanesSelected`, then the training events, a :class:`PreviewReady`
    after each epoch when ``preview`` is given, or :class:`JobFailed`; returns the
    model (best weights), or None when training failed before it started.
    """
    return create_worker(
        _guarded,
        _train(image, labels, channel_axis, config, model, model_config, preview, stop),
        _start_thread=False,
    )


def _segment(
    model: SegmentationModel,
    image,
    index: tuple[int, ...],
    stop: threading.Event,
    channel_axis: int | None = None,
    **options,
):
    plane, axis = plane_of(image, index, channel_axis)
    # compute=True: a dask layer is segmented here, in the worker, with progress and
    # Cancel, not handed to the GUI thread as a lazy graph
    events = iter_predict(model, plane, channel_axis=axis, compute=True, **options)
    try:
        for event in events:
            if isinstance(event, PredictionFinished):
                return event.result
            yield event
            if stop.is_set():
                return None
    finally:
        events.close()
    return None


def segment_worker(
    model: SegmentationModel,
    image,
    *,
    index: tuple[int, ...] = (),
    stop: threading.Event,
    **options,
) -> GeneratorWorker:
    """A worker (not started) that segments ``image`` (or its plane ``index``).

    ``channel_axis`` is that of ``image`` (the plane's follows from it); ``options`` go
    to :func:`~napari_unet.prediction.iter_predict`. Yields
    :class:`~napari_unet.prediction.TileProgress` or :class:`JobFailed`; returns the
    result, or None when cancelled or failed.
    """
    return create_worker(
        _guarded, _segment(model, image, index, stop, **options), _start_thread=False
    )
