"""Apply a U-Net to images of any size: tiled, blended, streamed.

:func:`iter_predict` is a generator of progress events that a GUI or command line
renders and may stop at any event; :func:`predict` drains it and returns the
result.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ._device import autocast_dtype, resolve_device
from ._inference import make_forward
from .config import PredictConfig
from .data import InputError, Normalization, channel_axis_of, convert_channels, stack_shape
from .model import SegmentationModel, UNet
from .tiling import Band, TileGrid, TilesDone, iter_tiled


@dataclass
class TileProgress:
    """``tiles_done`` of ``tiles_total`` tiles of plane ``plane + 1`` of ``planes``."""

    plane: int
    planes: int
    tiles_done: int
    tiles_total: int

    @property
    def fraction(self) -> float:
        return (self.plane + self.tiles_done / self.tiles_total) / self.planes


@dataclass
class PredictionFinished:
    """The result: labels (*stack, Y, X) int or probabilities (K, *stack, Y, X) float32."""

    result: np.ndarray


class PlaneView:
    """A 2-D plane of an array-like seen as (C, Y, X), read lazily by slicing.

    Works for numpy arrays, memory maps, zarr and dask arrays; converts the channel
    count on the fly (grey <-> RGB, RGBA -> RGB) when ``channels`` differs.
    """

    def __init__(self, plane, channel_last: bool, channels: int):
        self.plane = plane
        self.channel_last = channel_last
        height, width = plane.shape[:2] if channel_last else plane.shape[-2:]
        self.shape = (channels, height, width)

    def __getitem__(self, key) -> np.ndarray:
        _, ys, xs = key
        if self.channel_last:
            block = np.moveaxis(np.asarray(self.plane[ys, xs]), -1, 0)
        else:
            block = np.asarray(self.plane[ys, xs])[None]
        return convert_channels(block, self.shape[0])


def _resolve_layout(shape, in_channels: int, channel_axis):
    if channel_axis != "auto":
        return channel_axis_of(shape, channel_axis)
    if in_channels > 1 and len(shape) >= 3:
        if shape[-1] == in_channels:
            return len(shape) - 1
        if shape[0] == in_channels and shape[-1] not in (3, 4):
            return 0
    return channel_axis_of(shape)


def _check_channels(model_channels: int, image_channels: int, convert: bool) -> None:
    if image_channels == model_channels or convert:
        return
    if image_channels == 4 and model_channels == 3:
        return
    kind = {1: "grey", 3: "RGB", 4: "RGBA"}
    raise InputError(
        f"The model expects {model_channels} channel(s) ({kind.get(model_channels, 'multichannel')}) "
        f"but the image has {image_channels} ({kind.get(image_channels, 'multichannel')}); "
        "give an image like the training images, or retrain with such images."
    )


def iter_predict(
    model: SegmentationModel | UNet,
    image,
    *,
    tile_size: int | None = None,
    overlap: float | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    output: str = "labels",
    channel_axis: int | None | str = "auto",
    mixed_precision: bool | None = None,
    min_size: int = 10,
) -> Iterator[TileProgress | PredictionFinished]:
    """Generator form of :func:`predict`: yields :class:`TileProgress` after each batch of
    tiles and finally one :class:`PredictionFinished`. Closing it cancels the work."""
    defaults = PredictConfig()
    config = PredictConfig(
        tile_size=tile_size or defaults.tile_size,
        overlap=defaults.overlap if overlap is None else overlap,
        batch_size=batch_size or defaults.batch_size,
        device=device,
        mixed_precision=mixed_precision,
        output=output,
    )
    if isinstance(model, SegmentationModel):
        network, normalization = model.network, model.normalization
        class_values = np.asarray(model.encoding.class_values)
        mode, convert = model.mode, model.convert_channels
    elif isinstance(model, UNet):
        network, normalization, mode, convert = model, None, "semantic", False
        class_values = np.arange(model.config.num_classes)
    else:
        raise TypeError(
            f"model must be a SegmentationModel or a UNet, not {type(model).__name__}."
        )

    if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
        image = np.asarray(image)
    shape = tuple(image.shape)
    in_channels, num_classes = network.config.in_channels, network.config.num_classes
    axis = _resolve_layout(shape, in_channels, channel_axis)
    image_channels = 1 if axis is None else shape[axis]
    _check_channels(in_channels, image_channels, convert)
    if axis is not None and axis != len(shape) - 1:
        from .data import _moveaxis

        image = _moveaxis(image, axis, -1)
        shape = tuple(image.shape)
        axis = len(shape) - 1
    lead = stack_shape(shape, axis)
    height, width = shape[-3:-1] if axis is not None else shape[-2:]
    if height < 1 or width < 1:
        raise InputError(f"The image is empty (shape {shape}).")

    torch_device = resolve_device(config.device)
    dtype = autocast_dtype(torch_device, config.mixed_precision)
    forward = make_forward(network, torch_device, dtype, softmax=True)
    grid = TileGrid.plan((height, width), config.tile_size, config.overlap, network.divisor)

    want_labels = config.output == "labels"
    planes = int(np.prod(lead)) if lead else 1
    if want_labels:
        label_dtype = (
            np.int32
            if mode == "instances"
            else (np.uint8 if class_values.max() < 256 else np.uint16)
        )
        result = np.zeros((*lead, height, width), label_dtype)
    else:
        result = np.zeros((num_classes, *lead, height, width), np.float32)

    for number, index in enumerate(np.ndindex(*lead)):
        plane = image[index] if index else image  # image[()] would read a zarr array whole
        view = PlaneView(plane, axis is not None, in_channels)
        transform = None
        if normalization is not None:
            lows, highs = normalization.stats(view)

            def transform(tile, lows=lows, highs=highs):
                return Normalization.apply(tile, lows, highs)

        probabilities = None
        if mode == "instances" or not want_labels:
            probabilities = np.zeros((num_classes, height, width), np.float32)
        for event in iter_tiled(
            view, forward, num_classes, grid, batch_size=config.batch_size, transform=transform
        ):
            if isinstance(event, TilesDone):
                yield TileProgress(number, planes, event.done, event.total)
            elif isinstance(event, Band):
                if probabilities is not None:
                    probabilities[:, event.y0 : event.y1] = event.values
                else:
                    classes = np.argmax(event.values, axis=0)
                    result[index][event.y0 : event.y1] = class_values[classes]
        if probabilities is None:
            continue
        if want_labels:
            result[index] = instances_from_probabilities(probabilities, min_size=min_size)
        else:
            result[(slice(None), *index)] = probabilities
    yield PredictionFinished(result)


def predict(model: SegmentationModel | UNet, image, **kwargs) -> np.ndarray:
    """Segment an image with a trained model.

    Parameters
    ----------
    model
        A :class:`SegmentationModel` (trained or loaded; images are normalised as in
        training) or a bare :class:`UNet` (given the image as float32, unnormalised).
    image
        (Y, X), (Y, X, C) RGB(A), or a stack (Z, Y, X) / (Z, Y, X, C); numpy, a
        memory-mapped TIFF, zarr or dask array, read one tile at a time.
    tile_size, overlap, batch_size
        Square tiles of ``tile_size`` pixels overlapping by ``overlap`` (a share of
        the tile), ``batch_size`` tiles per forward pass. Defaults: :class:`PredictConfig`.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
    output
        ``"labels"``: integer (*stack, Y, X) with the class values of the training
        labels (instance ids in ``instances`` mode); ``"probabilities"``: float32
        (num_classes, *stack, Y, X).
    channel_axis
        ``"auto"`` (trailing axis of 3/4, or the model's channel count), an axis, or None.

    Returns
    -------
    numpy.ndarray
    """
    for event in iter_predict(model, image, **kwargs):
        if isinstance(event, PredictionFinished):
            return event.result
    raise RuntimeError("prediction ended without a result")


def instances_from_probabilities(probabilities: np.ndarray, min_size: int = 10) -> np.ndarray:
    """Background / interior / boundary probabilities (3, Y, X) -> instance ids (Y, X) int32.

    Seeds are the connected interior regions; a watershed on the boundary
    probability grows them over the foreground (interior + boundary), so touching
    objects stay apart. Foreground without a seed becomes an object of its own;
    objects smaller than ``min_size`` pixels are dropped.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential, watershed

    background, interior, boundary = probabilities[:3]
    foreground = background < 0.5
    seeds, _ = ndi.label((interior > boundary) & (interior > background))
    seeds = _remove_small(seeds, max(1, min_size // 4))
    labels = watershed(boundary - interior, markers=seeds, mask=foreground)
    orphans, count = ndi.label(foreground & (labels == 0))
    if count:
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    labels = _remove_small(labels, min_size)
    return relabel_sequential(labels)[0].astype(np.int32)


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set objects of fewer than ``min_size`` pixels to 0."""
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)
