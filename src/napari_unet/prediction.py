"""Apply a U-Net to images of any size: tiled, blended, streamed.

:func:`iter_predict` is a generator of progress events that a GUI or command line
renders and may stop at any event; :func:`predict` drains it and returns the
result.

Memory stays bounded whatever the image size: tiles are read on demand from numpy,
memory-mapped TIFF (:class:`~napari_unet.io.TiffArray`), zarr or dask inputs, and
finished bands of the result go to ``out`` (a TIFF or zarr on disk) as they are
ready. A dask input gives a lazy dask array whose chunks blend the same tiles with
the same weights as the in-memory path, so both give identical results; it runs on
the local scheduler or, when a ``dask.distributed`` Client is active, on its cluster.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import warnings
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._device import autocast_dtype, resolve_device
from ._inference import make_forward
from .config import PredictConfig
from .data import (
    InputError,
    Normalization,
    channel_axis_of,
    convert_channels,
    grey_picture,
    stack_shape,
)
from .model import SegmentationModel, UNet
from .tiling import (
    Band,
    TileGrid,
    TilesDone,
    blend_region,
    iter_tiled,
    prepare_tile,
    tile_side,
    tile_window,
    tiles_touching,
    weight_tile_output,
)


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
    """The result: labels (*stack, Y, X) int or probabilities (K, *stack, Y, X) float32.

    A numpy array; the on-disk array opened read-only when ``out`` was a path (a zarr
    array for ``.zarr``, a :class:`~napari_unet.io.TiffArray` for a TIFF); a lazy dask
    array for a dask input without ``out``.
    """

    result: object


# ---------------------------------------------------------------------------
# reading planes


@dataclass(frozen=True)
class ChannelConverter:
    """Turns a region read from the image into (C, h, w): moves the channel axis first
    (or adds one) and converts the channel count (grey <-> RGB, RGBA -> RGB)."""

    channel_position: int | None  # position of the channel axis in a region read
    channels: int

    def __call__(self, block) -> np.ndarray:
        block = np.asarray(block)
        if self.channel_position is None:
            block = block[None]
        elif self.channel_position:
            block = np.moveaxis(block, self.channel_position, 0)
        return convert_channels(block, self.channels)


class PlaneView:
    """Plane ``index`` of an image seen as (C, Y, X), read lazily by slicing.

    Works for numpy arrays, memory maps, :class:`~napari_unet.io.TiffArray`, zarr and
    dask arrays, whatever the position of the channel axis; only the region asked
    for is read.
    """

    def __init__(self, image, index: tuple[int, ...], channel_axis: int | None, channels: int):
        self.image = image
        self.index = tuple(index)
        self.channel_axis = channel_axis
        ndim = len(image.shape)
        spatial = [a for a in range(ndim) if a != channel_axis]
        self._y_axis, self._x_axis = spatial[-2:]
        self._lead_axes = spatial[:-2]
        position = None
        if channel_axis is not None:
            position = sum(1 for a in (self._y_axis, self._x_axis) if a < channel_axis)
        self.convert = ChannelConverter(position, channels)
        self.shape = (channels, image.shape[self._y_axis], image.shape[self._x_axis])

    def key(self, ys: slice, xs: slice) -> tuple:
        """The index into the image that reads rows ``ys`` and columns ``xs`` of the plane."""
        key: list = [slice(None)] * len(self.image.shape)
        for axis, i in zip(self._lead_axes, self.index, strict=True):
            key[axis] = i
        key[self._y_axis], key[self._x_axis] = ys, xs
        return tuple(key)

    def __getitem__(self, key) -> np.ndarray:
        _, ys, xs = key
        return self.convert(self.image[self.key(ys, xs)])


def _resolve_layout(shape, in_channels: int, channel_axis, convert: bool = False):
    """The channel axis of an image for a model of ``in_channels`` channels.

    A trailing axis of that size first; then, for a model that does not also accept grey
    images (``convert``), the leading axis of that size nearest Y, X, as training reads
    an axis its labels lack: (C, Y, X) and (Z, C, Y, X).
    """
    if channel_axis != "auto":
        return channel_axis_of(shape, channel_axis)
    if in_channels > 1 and len(shape) >= 3:
        if shape[-1] == in_channels:
            return len(shape) - 1
        leading = [i for i in range(len(shape) - 2) if shape[i] == in_channels]
        if leading and shape[-1] not in (3, 4) and (len(shape) == 3 or not convert):
            return leading[-1]
    axis = channel_axis_of(shape)
    if axis is None and len(shape) >= 3 and shape[-1] <= 2 and min(shape[-3:-1]) >= 16:
        # a short last axis after two long ones, (Y, X, 1) or (Y, X, 2): channels, as
        # training reads them, not a stack of images a few pixels wide
        return len(shape) - 1
    return axis


def _check_channels(
    model_channels: int, image_channels: int, convert: bool, shape: tuple[int, ...] = ()
) -> None:
    if image_channels == model_channels or convert:
        return
    if image_channels == 4 and model_channels == 3:
        return
    kind = {1: "grey", 3: "RGB", 4: "RGBA"}
    read_as = kind.get(image_channels, "multichannel")
    hint = ""
    if image_channels == 1 and len(shape) > 2:
        read_as = f"grey: read as a stack of {int(np.prod(shape[:-2]))} planes {shape}"
        fits = {model_channels, 4} if model_channels == 3 else {model_channels}
        axes = [i for i, size in enumerate(shape) if size in fits]  # (Y, C, X) too
        leading = [i for i in axes if i < len(shape) - 2]  # before Y, X first
        if axes:
            a = leading[-1] if leading else axes[0]
            hint = (
                f" If axis {a} holds the channels, give --channel-axis {a} on the command "
                f"line or predict(..., channel_axis={a}) from Python, or save the image "
                "with them last (Y, X, C)."
            )
    raise InputError(
        f"The model expects {model_channels} channel(s) ({kind.get(model_channels, 'multichannel')}) "
        f"but the image has {image_channels} ({read_as}); give an image like the training "
        f"images, or retrain with such images.{hint}"
    )


def _is_dask(array) -> bool:
    if "dask" not in sys.modules:  # nothing can be a dask array before dask is imported
        return False
    from dask import is_dask_collection

    return is_dask_collection(array)


def _active_client():
    """The default dask.distributed Client, or None."""
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# shipping the model to dask workers


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """A model as plain data (configuration, numpy weights, label and normalisation
    settings) for dask workers: it pickles without torch modules or code, and the
    worker rebuilds the network once per process (:meth:`build`)."""

    network: dict
    state: dict
    encoding: dict | None
    normalization: tuple[float, float] | None
    convert_channels: bool
    token: str
    min_object_size: int | None = None
    boundary_class: int | None = None
    label_offset: tuple[float, float] | None = None
    patch_size: int | None = None

    @classmethod
    def from_model(cls, model: SegmentationModel | UNet) -> ModelSpec:
        if isinstance(model, SegmentationModel):
            network = model.network
            enc = model.encoding
            encoding = {
                "mode": enc.mode,
                "class_names": list(enc.class_names),
                "class_values": list(enc.class_values),
                "source_values": list(enc.source_values),
            }
            normalization = (model.normalization.low, model.normalization.high)
            convert = model.convert_channels
            smallest, boundary = model.min_object_size, model.boundary_class
            offset, patch = model.label_offset, model.patch_size
        else:
            network, encoding, normalization, convert = model, None, None, False
            smallest = boundary = offset = patch = None
        state = {k: v.detach().cpu().numpy().copy() for k, v in network.state_dict().items()}
        digest = hashlib.sha1(
            repr(
                (network.config.model_dump(), encoding, smallest, boundary, offset, patch)
            ).encode()
        )
        for key in sorted(state):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(state[key]).tobytes())
        return cls(
            network.config.model_dump(),
            state,
            encoding,
            normalization,
            convert,
            digest.hexdigest(),
            smallest,
            boundary,
            offset,
            patch,
        )

    def build(self) -> SegmentationModel | UNet:
        """The model, built once per process and then reused."""
        cached = _recall(_MODELS, self.token)
        if cached is not None:
            return cached
        import torch

        from .data import LabelEncoding

        network = UNet(**self.network)
        network.load_state_dict({k: torch.from_numpy(v) for k, v in self.state.items()})
        network.eval()
        model: SegmentationModel | UNet = network
        if self.encoding is not None:
            model = SegmentationModel(
                network,
                LabelEncoding(notes=[], **self.encoding),
                Normalization(*self.normalization),
                convert_channels=self.convert_channels,
                min_object_size=self.min_object_size,
                boundary_class=self.boundary_class,
                label_offset=self.label_offset,
                # the patch size a model reads from its history (small images mirrored)
                history={"runs": [{"config": {"patch_size": self.patch_size}}]}
                if self.patch_size
                else None,
            )
        _remember(_MODELS, self.token, model)
        return model


# Per-process caches, each holding the two most recently used entries: models built
# from a spec and their forward passes (dask workers), forward passes of the networks
# this process predicts with.
_CACHE_LOCK = threading.Lock()
_MODELS: OrderedDict[str, object] = OrderedDict()
_FORWARDS: OrderedDict[tuple, object] = OrderedDict()
_LOCAL_FORWARDS: OrderedDict[tuple, tuple] = OrderedDict()


def _recall(cache: OrderedDict, key):
    """The entry of ``key`` (marked as just used), or None."""
    with _CACHE_LOCK:
        value = cache.get(key)
        if value is not None:
            cache.move_to_end(key)
        return value


def _remember(cache: OrderedDict, key, value, keep: int = 2) -> None:
    """Store ``value`` under ``key``, dropping the least recently used beyond ``keep``."""
    with _CACHE_LOCK:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > keep:
            cache.popitem(last=False)


DEFAULT_MIN_SIZE = 10
"""Smallest object kept (pixels) by a model that has no size learned from its labels."""


def _local_forward(network: UNet, device, dtype, tta: bool, offset=None):
    """``make_forward`` for this process, reused by the next call on the same network.

    Building a forward pass copies the network, folds BatchNorm and converts the
    weights; reusing it saves that for every image of a batch. The entry is reused
    only while it was built from this very network object (a weak reference, so a new
    network at the same address does not match) with unchanged weights (the version
    counters of its tensors move with every in-place update, such as a training step
    or ``load_state_dict``).
    """
    tensors = list(network.state_dict(keep_vars=True).values())
    state = tuple((t.data_ptr(), t._version) for t in tensors)
    key = (id(network), str(device), dtype, tta, offset)
    entry = _recall(_LOCAL_FORWARDS, key)
    if entry is not None and entry[0]() is network and entry[1] == state:
        return entry[2]
    forward = make_forward(network, device, dtype, softmax=True, tta=tta, offset=offset)
    _remember(_LOCAL_FORWARDS, key, (weakref.ref(network), state, forward))
    return forward


def _forward_for(spec: ModelSpec, device: str, mixed_precision: bool | None, tta: bool = False):
    key = (spec.token, device, mixed_precision, tta)
    forward = _recall(_FORWARDS, key)
    if forward is None:
        model = spec.build()
        network = model.network if isinstance(model, SegmentationModel) else model
        torch_device = resolve_device(device)
        dtype = autocast_dtype(torch_device, mixed_precision)
        offset = model.label_offset if isinstance(model, SegmentationModel) else None
        forward = make_forward(network, torch_device, dtype, softmax=True, tta=tta, offset=offset)
        _remember(_FORWARDS, key, forward)
    return forward


# ---------------------------------------------------------------------------
# the plan of one call


@dataclass
class _Job:
    network: UNet
    normalization: Normalization | None
    class_values: np.ndarray
    instances: bool  # instance ids are wanted (labels of an instances-mode model)
    config: PredictConfig
    image: object
    channel_axis: int | None
    lead: tuple[int, ...]
    height: int
    width: int
    grid: TileGrid
    min_size: int
    boundary: int | None = None  # class index whose gaps are closed (semantic labels)
    offset: tuple[float, float] | None = None  # the model's label_offset (dy, dx)

    @property
    def in_channels(self) -> int:
        return self.network.config.in_channels

    @property
    def num_classes(self) -> int:
        return self.network.config.num_classes

    @property
    def labels(self) -> bool:
        return self.config.output == "labels"

    @property
    def out_shape(self) -> tuple[int, ...]:
        plane = (self.height, self.width)
        return (*self.lead, *plane) if self.labels else (self.num_classes, *self.lead, *plane)

    @property
    def out_dtype(self):
        if not self.labels:
            return np.dtype(np.float32)
        if self.instances:
            return np.dtype(np.int32)
        return np.min_scalar_type(max(255, int(self.class_values.max())))  # uint8, 16 or 32

    def prefix(self, index: tuple[int, ...]) -> tuple:
        return index if self.labels else (slice(None), *index)

    def view(self, index: tuple[int, ...]) -> PlaneView:
        return PlaneView(self.image, index, self.channel_axis, self.in_channels)

    def stats(self, view: PlaneView):
        return None if self.normalization is None else self.normalization.stats(view)


_LARGEST_TILE = next(
    rule.le for rule in PredictConfig.model_fields["tile_size"].metadata if hasattr(rule, "le")
)


class GreyPictureWarning(UserWarning):
    """An RGB(A) picture whose colour channels are equal is read as grey for a grey model."""


class TileDependenceWarning(UserWarning):
    """A model that normalises with each tile's own statistics (instance or group
    normalisation) is predicting an image in several tiles."""


def _tile_dependence_message(norm: str, height: int, width: int, grid: TileGrid) -> str:
    side = max(height, width)
    tile_y, tile_x = grid.tile_shape
    whole = (
        f"Predict it whole with a tile size of at least {side} (--tile-size on the "
        "command line, the Segment widget's tile size, tile_size= in Python), or"
        if side <= _LARGEST_TILE
        else "An image this large cannot be predicted in one tile:"
    )
    return (
        f"This model normalises with each tile's own statistics ({norm} normalisation), "
        f"and the {height} x {width} image is predicted in {grid.count} tiles of "
        f"{tile_y} x {tile_x}: the result depends on the tile size, and tiles of empty "
        f"background can fill with false objects. {whole} train with batch "
        "normalisation (--norm batch, the default) for large images."
    )


def _check_closing(model, close_boundaries: bool | None) -> None:
    """Refuse ``close_boundaries=True`` for a model it cannot apply to."""
    if not close_boundaries:
        return
    if isinstance(model, SegmentationModel) and model.mode == "instances":
        raise InputError(
            "Closing gaps in boundaries is for semantic and sparse models; this model "
            "predicts instances, which its boundary class already parts."
        )
    classes = model.num_classes if isinstance(model, SegmentationModel) else None
    if isinstance(model, UNet):
        classes = model.config.num_classes
    if classes is not None and classes != 2:
        raise InputError(
            "Closing gaps in boundaries needs a model of two classes (regions and "
            f"boundary); this one has {classes}."
        )


def _plan(
    model,
    image,
    config: PredictConfig,
    channel_axis,
    min_size: int,
    warn_tiles: bool = True,
    close_boundaries: bool | None = None,
    least_tile: int | None = None,
) -> _Job:
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
    if len(shape) < 2 or min(shape) < 1:  # no pixels, or a stack of no planes
        raise InputError(
            f"The image is empty or not 2-D (shape {shape}): it holds no pixels to segment."
        )
    in_channels = network.config.in_channels
    axis = _resolve_layout(shape, in_channels, channel_axis, convert)
    image_channels = 1 if axis is None else shape[axis]
    if (
        in_channels == 1
        and image_channels in (3, 4)
        and axis == len(shape) - 1
        and not convert
        and grey_picture(image)
    ):  # the channels are averaged as each tile is read (convert_channels)
        warnings.warn(
            f"The image is saved as {'RGBA' if image_channels == 4 else 'RGB'} but its colour "
            "channels are equal (a grey picture): read as grey for this grey model.",
            GreyPictureWarning,
            stacklevel=3,
        )
        image_channels = 1
    _check_channels(in_channels, image_channels, convert, shape)
    lead = stack_shape(shape, axis)
    spatial = [s for i, s in enumerate(shape) if i != axis]
    height, width = spatial[-2:]
    tile = tile_side(config.tile_size, network.divisor)  # an overlap of None stays 64 px
    if least_tile is None:  # images smaller than the training patches: mirrored around
        least_tile = getattr(model, "patch_size", None) or 0
    grid = TileGrid.plan(
        (height, width), tile, config.overlap_of(tile), network.divisor, least_tile
    )
    if warn_tiles and grid.count > 1 and network.config.norm in ("instance", "group"):
        warnings.warn(
            _tile_dependence_message(network.config.norm, height, width, grid),
            TileDependenceWarning,
            stacklevel=2,
        )
    _check_closing(model, close_boundaries)
    boundary = None
    if config.output == "labels" and mode != "instances" and close_boundaries is not False:
        boundary = getattr(model, "boundary_class", None)
        if close_boundaries and boundary is None:
            boundary = 1  # the second class: the higher label value
    return _Job(
        network,
        normalization,
        class_values,
        mode == "instances" and config.output == "labels",
        config,
        image,
        axis,
        tuple(lead),
        int(height),
        int(width),
        grid,
        min_size,
        boundary,
        getattr(model, "label_offset", None),
    )


def _labels_of(values: np.ndarray, class_values: np.ndarray, dtype) -> np.ndarray:
    """Class probabilities (K, h, w) -> labels (h, w) of ``dtype``, a few rows at a time
    so that the int64 argmax of a wide band stays small."""
    if len(values) == 2:  # the common two-class case: one comparison, ties to class 0
        labels = np.full(values.shape[1:], class_values[0], dtype)
        labels[values[1] > values[0]] = class_values[1]
        return labels
    labels = np.empty(values.shape[1:], dtype)
    for y in range(0, values.shape[1], 64):
        labels[y : y + 64] = class_values[np.argmax(values[:, y : y + 64], axis=0)]
    return labels


# ---------------------------------------------------------------------------
# the public functions


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
    tta: bool = False,
    min_size: int | None = None,
    close_boundaries: bool | None = None,
    out=None,
    compute: bool = False,
    _warn_tiles: bool = True,
    _least_tile: int | None = None,
) -> Iterator[TileProgress | PredictionFinished]:
    """Generator form of :func:`predict`: yields :class:`TileProgress` after each batch of
    tiles and finally one :class:`PredictionFinished`. Closing it cancels the work and
    leaves no partial output file behind. ``compute=True`` computes a dask image's
    result here, tile by tile with progress, into numpy, instead of returning it lazily
    (what a GUI worker thread needs). ``_warn_tiles=False`` silences the
    :class:`TileDependenceWarning` (training's validation and preview passes);
    ``_least_tile``: the shortest tile side (None: the model's training patch size, as an
    image smaller than it is mirrored around to it)."""
    if isinstance(image, (str, os.PathLike)):  # a file: read lazily, as predict_to_file does
        from .io import open_image

        image = open_image(image)
    defaults = PredictConfig()
    config = PredictConfig(
        tile_size=defaults.tile_size if tile_size is None else tile_size,
        overlap=defaults.overlap if overlap is None else overlap,
        batch_size=defaults.batch_size if batch_size is None else batch_size,
        device=device,
        mixed_precision=mixed_precision,
        tta=tta,
        output=output,
    )
    if min_size is None:
        learned = getattr(model, "min_object_size", None)
        min_size = DEFAULT_MIN_SIZE if learned is None else int(learned)
    if min_size < 0:
        raise InputError(f"min_size must be 0 or more (pixels), not {min_size}.")
    if isinstance(out, (str, os.PathLike)):
        source, target = _source_path(image), Path(out).resolve()
        if source is not None and (
            _same_file(source, target) or source in target.parents or target in source.parents
        ):
            raise InputError(
                f"The result {out} would replace its input {source}, a folder or store "
                "holding it, or go inside it; write it elsewhere."
            )
        from .io import holds_data, written_by_us

        if target.exists() and holds_data(target) and not written_by_us(target):
            raise InputError(
                f"The result {out} would replace {target.name}, which napari-unet did not "
                "write (an image or data of yours?); write it elsewhere, or move or delete "
                "it first (results written before napari-unet marked its results count as "
                "not its own)."
            )
    elif out is not None and (
        out is image
        or ((source := _source_path(out)) is not None and source == _source_path(image))
    ):
        raise InputError("out is the input image's own array; give another array or a path.")
    from .io import stack_axes_only

    if channel_axis == "auto" and stack_axes_only(image):  # a file's Z/T axes: no channels
        channel_axis = None
    job = _plan(
        model, image, config, channel_axis, min_size, _warn_tiles, close_boundaries, _least_tile
    )
    lazy = _is_dask(job.image)
    if lazy and out is None and not job.instances and not compute:
        yield PredictionFinished(_lazy_result(job, ModelSpec.from_model(model)))
        return
    client = _active_client() if lazy else None
    spec = ModelSpec.from_model(model) if client is not None else None
    forward = None
    if client is None:
        torch_device = resolve_device(config.device)
        dtype = autocast_dtype(torch_device, config.mixed_precision)
        forward = _local_forward(job.network, torch_device, dtype, config.tta, job.offset)

    from .io import open_band_writer

    planes = int(np.prod(job.lead)) if job.lead else 1
    writer = open_band_writer(out, job.out_shape, job.out_dtype)
    try:
        for number, index in enumerate(np.ndindex(*job.lead)):
            view = job.view(index)
            stats = job.stats(view)
            stitcher = None
            if job.instances:
                stitcher = InstanceStitcher(job.height, job.width, min_size)
            elif job.labels and job.boundary is not None:
                stitcher = BoundaryCloser(
                    job.height, job.width, job.boundary, job.class_values, job.out_dtype, min_size
                )
            if client is None:
                transform = None
                if stats is not None:

                    def transform(tile, lows=stats[0], highs=stats[1]):
                        return Normalization.apply(tile, lows, highs)

                events = iter_tiled(
                    view,
                    forward,
                    job.num_classes,
                    job.grid,
                    batch_size=config.batch_size,
                    transform=transform,
                )
                converted = False
            else:
                converted = job.labels and stitcher is None
                events = _bands_on_cluster(client, job, spec, view, stats, converted)
            for event in events:
                if isinstance(event, TilesDone):
                    writer.alive()  # a run resuming the batch leaves its .part alone
                    yield TileProgress(number, planes, event.done, event.total)
                    continue
                if stitcher is not None:
                    for y0, rows in stitcher.push(event.y0, event.values):
                        writer.write(index, y0, rows)
                elif job.labels and not converted:
                    labels = _labels_of(event.values, job.class_values, job.out_dtype)
                    writer.write(index, event.y0, labels)
                else:
                    writer.write(job.prefix(index), event.y0, event.values)
            if stitcher is not None:
                for y0, rows in stitcher.finish():
                    writer.write(index, y0, rows)
        result = writer.finish()
    except BaseException:
        writer.abort()
        raise
    yield PredictionFinished(result)


def predict(model: SegmentationModel | UNet, image, **kwargs):
    """Segment an image with a trained model.

    Parameters
    ----------
    model
        A :class:`SegmentationModel` (trained or loaded; images are normalised as in
        training) or a bare :class:`UNet` (given the image as float32, unnormalised).
    image
        (Y, X), (Y, X, C) RGB(A), or a stack (Z, Y, X) / (Z, Y, X, C); numpy, a
        memory-mapped TIFF, :class:`~napari_unet.io.TiffArray`, zarr or dask array,
        read one tile at a time; or the path of an image file (opened with
        :func:`~napari_unet.io.open_image`, lazily).
    tile_size, overlap, batch_size
        Square tiles of ``tile_size`` pixels overlapping by ``overlap`` (a share of
        the tile; None: 64 pixels, at most a quarter of the tile), ``batch_size`` tiles
        per forward pass. Defaults: :class:`PredictConfig` (tiles of 1024, one per pass).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
    output
        ``"labels"``: integer (*stack, Y, X) with the class values of the training
        labels (instance ids, int32, in ``instances`` mode); ``"probabilities"``:
        float32 (num_classes, *stack, Y, X).
    channel_axis
        ``"auto"`` (trailing axis of 3/4, or the model's channel count), an axis, or None.
    min_size
        Instances mode: objects smaller than this many pixels are dropped. None: the
        size the model learned from its training labels (half the 5th percentile of the
        annotated objects' areas, :func:`napari_unet.data.smallest_object_size`), or
        10 for models trained before it was recorded. With gaps in boundaries closed
        (``close_boundaries``): regions' cores smaller than half of it are not used.
    close_boundaries
        Semantic labels of a two-class model whose classes are boundaries (membranes, cell
        walls) and the regions between them: complete gaps in the predicted boundaries
        with one-pixel lines where two regions' cores meet (:func:`boundary_lines`), so
        that a faint membrane still parts two cells. None: when the model learned from
        its training labels that they draw such a network
        (:func:`napari_unet.data.boundary_network`; ``model.boundary_class``); True: also
        for other two-class models, with the second class (the higher label value; in
        ``sparse`` mode the higher painted value) as the boundary; False: never.
    out
        Where the result goes, band by band as it is computed, so that memory does not
        grow with the image: a path ending in ``.tif``/``.tiff`` or ``.zarr`` (written
        under a temporary name and renamed when complete), or an array of the result's
        shape to fill (numpy, zarr). ``None``: a numpy array in memory.

    Returns
    -------
    numpy.ndarray, or with ``out`` the result on disk opened read-only (a zarr array, or
    a :class:`~napari_unet.io.TiffArray`), so a viewer can show it lazily. For a dask
    ``image`` without ``out``: a lazy dask array, computed on the local scheduler or on
    the cluster of an active ``dask.distributed`` Client (instances mode needs a pass
    over the whole image to number objects, so it computes and returns numpy).
    """
    for event in iter_predict(model, image, **kwargs):
        if isinstance(event, PredictionFinished):
            return event.result
    raise RuntimeError("prediction ended without a result")


def result_layout(
    model: SegmentationModel | UNet, image, *, output: str = "labels", channel_axis="auto"
) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of what :func:`predict` makes of ``image`` (read for its shape
    only, no pixels), so that an existing result can be checked against them."""
    job = _plan(model, image, PredictConfig(output=output), channel_axis, 0, warn_tiles=False)
    return job.out_shape, job.out_dtype


def predict_to_file(model: SegmentationModel | UNet, image, output_path, **kwargs) -> Path:
    """Segment ``image`` (an array, or the path of an image file, read lazily) and write
    the result to ``output_path`` (``.tif``/``.tiff`` or ``.zarr``) band by band, in
    bounded memory; the file appears only when complete. Options as :func:`predict`.
    Returns the output path."""
    from .io import open_image

    if isinstance(image, (str, Path)):
        if _same_file(image, output_path):
            raise InputError(
                f"The result would replace its input image {image}; write it elsewhere."
            )
        image = open_image(image)
    predict(model, image, out=output_path, **kwargs)
    return Path(output_path)


def _source_path(image) -> Path | None:
    """The file or zarr store an image was opened from (a TiffArray, a zarr array), if any."""
    if hasattr(image, "store"):  # zarr: a store on disk, or one in memory (no path)
        root = getattr(image.store, "root", None) or getattr(image.store, "path", None)
        if not root:
            return None
        return (Path(str(root)) / str(getattr(image, "path", "") or "")).resolve()
    path = getattr(image, "path", None)  # a TiffArray
    return Path(path).resolve() if isinstance(path, (str, os.PathLike)) and path else None


def _same_file(a, b) -> bool:
    """Whether two paths name one file or folder (spelled either way, or linked)."""
    a, b = Path(a), Path(b)
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


# ---------------------------------------------------------------------------
# dask: one task per batch of tiles, one per output chunk


_CHUNK_TARGET = 2048  # pixels along each axis of an output chunk
_BAND_BYTES = 2**27  # bytes of one row of output chunks gathered from a cluster


def _chunk_bounds(axis, target: int) -> list[tuple[int, int]]:
    """Chunk edges along one axis: at tile starts, about ``target`` pixels apart."""
    starts = axis.starts
    if len(starts) == 1:
        return [(0, axis.length)]
    stride = max(1, starts[1] - starts[0])
    every = max(1, round(target / stride))
    edges = [0, *(starts[i] for i in range(every, len(starts), every)), axis.length]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _run_tile_batch(spec, blocks, convert, grid, tiles, stats, device, mixed_precision, tta):
    """Forward one batch of tiles read by dask; weighted outputs as in :func:`iter_tiled`."""
    forward = _forward_for(spec, device, mixed_precision, tta)
    batch = []
    for block in blocks:
        tile = prepare_tile(convert(block), grid)
        if stats is not None:
            tile = Normalization.apply(tile, *stats)
        batch.append(tile)
    outputs = forward(np.stack(batch))
    return [weight_tile_output(o, grid, r, c) for o, (r, c) in zip(outputs, tiles, strict=True)]


def _blend_chunk(grid, rows, cols, touching, positions, needed, outputs, class_values, dtype):
    """One output chunk from the weighted outputs of the tile batches it needs."""
    by_batch = dict(zip(needed, outputs, strict=True))
    weighted = {tile: by_batch[b][k] for tile, (b, k) in zip(touching, positions, strict=True)}
    values = blend_region(grid, slice(*rows), slice(*cols), weighted)
    if class_values is None:
        return values
    return _labels_of(values, class_values, dtype)


def _lazy_plane(job: _Job, spec: ModelSpec, view: PlaneView, stats, labels: bool, rows=None):
    """Plane of the result as a lazy dask array: labels (Y, X) or probabilities (K, Y, X).

    Chunks have edges at tile starts, about 2048 pixels apart (``rows`` gives the
    number of tile rows per chunk row instead).
    """
    import dask
    import dask.array as da

    grid, config = job.grid, job.config
    model = dask.delayed(spec, name=f"napari-unet-model-{spec.token}", traverse=False)
    order = [(r, c) for r in range(len(grid.y.starts)) for c in range(len(grid.x.starts))]
    size = config.batch_size
    run = dask.delayed(_run_tile_batch, pure=True)
    batches = []
    for first in range(0, len(order), size):
        tiles = order[first : first + size]
        blocks = [job.image[view.key(*tile_window(grid, r, c))] for r, c in tiles]
        batches.append(
            run(
                model,
                blocks,
                view.convert,
                grid,
                tiles,
                stats,
                config.device,
                config.mixed_precision,
                config.tta,
            )
        )
    where = {tile: (i // size, i % size) for i, tile in enumerate(order)}
    ybounds = _chunk_bounds(grid.y, rows if rows is not None else _CHUNK_TARGET)
    xbounds = _chunk_bounds(grid.x, _CHUNK_TARGET)
    dtype = job.out_dtype if labels else np.dtype(np.float32)
    blend = dask.delayed(_blend_chunk, pure=True)
    chunk_rows = []
    for y0, y1 in ybounds:
        chunk_row = []
        for x0, x1 in xbounds:
            touching = tiles_touching(grid, slice(y0, y1), slice(x0, x1))
            needed = sorted({where[t][0] for t in touching})
            chunk = blend(
                grid,
                (y0, y1),
                (x0, x1),
                touching,
                [where[t] for t in touching],
                needed,
                [batches[b] for b in needed],
                job.class_values if labels else None,
                dtype,
            )
            shape = (y1 - y0, x1 - x0) if labels else (job.num_classes, y1 - y0, x1 - x0)
            chunk_row.append(da.from_delayed(chunk, shape, dtype=dtype))
        chunk_rows.append(chunk_row)
    return da.block(chunk_rows)


def _lazy_result(job: _Job, spec: ModelSpec):
    """The whole result as a lazy dask array (labels or probabilities, not instances)."""
    import dask.array as da

    planes = []
    for index in np.ndindex(*job.lead):
        view = job.view(index)
        if job.labels and job.boundary is not None:
            probabilities = _lazy_plane(job, spec, view, job.stats(view), False)
            planes.append(_lazy_closed(job, probabilities))
            continue
        planes.append(_lazy_plane(job, spec, view, job.stats(view), job.labels))
    if not job.lead:
        return planes[0]
    stacked = da.stack(planes).reshape(*job.lead, *planes[0].shape)
    return stacked if job.labels else da.moveaxis(stacked, len(job.lead), 0)


def _lazy_closed(job: _Job, probabilities):
    """Labels (Y, X) of lazy probabilities (K, Y, X) with gaps in the boundary class closed,
    chunk by chunk with :data:`BOUNDARY_HALO` pixels of context. The chunks are not
    :class:`BoundaryCloser`'s windows; both agree with closing the plane whole except
    where a gap's region reaches beyond the context of a window or chunk."""
    import dask.array as da

    height, width = probabilities.shape[1:]
    halo = (0, min(BOUNDARY_HALO, height - 1), min(BOUNDARY_HALO, width - 1))
    probabilities = probabilities.rechunk({0: -1})
    closed = da.map_overlap(
        _closed_chunk,
        probabilities,
        depth=dict(enumerate(halo)),
        boundary="none",
        trim=True,
        dtype=job.out_dtype,
        meta=np.empty((0, 0, 0), job.out_dtype),
        boundary_class=job.boundary,
        class_values=job.class_values,
        out_dtype=job.out_dtype,
        min_size=job.min_size,
    )
    return closed[0]


def _closed_chunk(probabilities, boundary_class, class_values, out_dtype, min_size):
    """The closed labels of a chunk (K, h, w) with its halo, repeated K times along the
    first axis so that dask can trim the halo as from the input."""
    labels = _labels_of(probabilities, class_values, out_dtype)
    value = class_values[boundary_class]
    lines = boundary_lines(probabilities[boundary_class], min_size, inside=labels != value)
    labels[lines] = value
    return np.broadcast_to(labels, probabilities.shape)


def _bands_on_cluster(client, job: _Job, spec, view, stats, labels: bool):
    """Bands of one plane computed on a dask.distributed cluster, top to bottom.

    Keeps the next row of chunks in flight while a row is handed out, so the tiles
    that two rows share are computed once and the cluster stays busy.
    """
    per_row = job.width * (1 if labels else job.num_classes) * 4
    stride = job.grid.y.starts[1] - job.grid.y.starts[0] if len(job.grid.y.starts) > 1 else 1
    rows = max(stride, min(_CHUNK_TARGET, _BAND_BYTES // per_row))
    lazy = _lazy_plane(job, spec, view, stats, labels, rows=rows)
    bounds = np.cumsum((0, *lazy.chunks[-2]))
    total = job.grid.count
    pending: deque = deque()
    for y0, y1 in zip(bounds[:-1], bounds[1:], strict=True):
        pending.append((int(y0), int(y1), client.compute(lazy[..., y0:y1, :])))
        if len(pending) > 1:
            yield from _gathered(pending.popleft(), job.height, total)
    while pending:
        yield from _gathered(pending.popleft(), job.height, total)


def _gathered(item, height: int, total: int):
    y0, y1, future = item
    values = future.result()
    del future
    yield Band(y0, y1, values)
    yield TilesDone(round(total * y1 / height), total)


# ---------------------------------------------------------------------------
# instances


class _RowWindows:
    """Rows of one plane that arrive in bands, held in bounded memory and handed out as
    finished rows window by window: each window of ``band`` rows is worked on with
    ``halo`` rows of context above and below. Subclasses keep what they need of each
    piece of a band (:meth:`_keep`, into the arrays of ``_buffers``) and make a window's
    rows (:meth:`_window_row`)."""

    _PIECE = 64  # rows of an incoming band taken at a time

    def _start(self, height: int, width: int, band: int, block: int, halo: int) -> int:
        """Check and set the window sizes; the number of rows to hold."""
        if band < 1 or block < 1 or halo < 0:
            raise ValueError("band and block must be positive and halo not negative")
        self.height, self.width = height, width
        self.band, self.block, self.halo = band, block, halo
        self._y0 = 0  # image row of the first held row
        self._held = 0  # rows held
        self._next = 0  # first row of the next window row
        return min(height, band + 2 * halo + self._PIECE)

    def push(self, y0: int, probabilities: np.ndarray) -> list[tuple[int, np.ndarray]]:
        if y0 != self._y0 + self._held:
            raise ValueError("bands must come in order, top to bottom, without gaps")
        done = []
        for start in range(0, probabilities.shape[1], self._PIECE):
            piece = probabilities[:, start : start + self._PIECE]
            rows = slice(self._held, self._held + piece.shape[1])
            self._keep(rows, piece)
            self._held = rows.stop
            done += self._ready(final=False)
        return done

    def finish(self) -> list[tuple[int, np.ndarray]]:
        return self._ready(final=True)

    def _ready(self, final: bool) -> list[tuple[int, np.ndarray]]:
        done = []
        while self._next < self.height:
            end = min(self.height, self._next + self.band)
            if self._y0 + self._held < min(self.height, end + self.halo) and not final:
                break
            done.append((self._next, self._window_row(self._next, end)))
            self._next = end
            drop = max(0, end - self.halo - self._y0)
            for held in self._buffers:
                held[: self._held - drop] = held[drop : self._held]
            self._held -= drop
            self._y0 += drop
        return done

    _buffers: tuple[np.ndarray, ...] = ()

    def _keep(self, rows: slice, piece: np.ndarray) -> None:
        raise NotImplementedError

    def _window_row(self, y0: int, y1: int) -> np.ndarray:
        raise NotImplementedError


class InstanceStitcher(_RowWindows):
    """Instance ids of one plane from its probability bands, in bounded memory.

    The plane is cut into windows of ``band`` rows by ``block`` columns, each
    segmented by :func:`instances_from_probabilities` with ``halo`` pixels of context
    on every side. An object of a window takes the id of the already numbered object
    (above or to the left) that covers most of its pixels in the context margin, so an
    object that crosses a window border keeps one id. A plane that fits in one window
    gives exactly :func:`instances_from_probabilities`.

    ``push(y0, probabilities)`` takes the next rows (K >= 3, h, X) and returns the
    finished label rows as ``[(y0, labels (h, X) int32), ...]``; ``finish()`` returns
    the rest.

    ``band`` defaults to as many rows (256 to 1024) as keep the held watershed inputs
    (6 bytes a pixel, ``band + 2 * halo`` rows) near 32 MB, so memory does not grow
    with the image's height and stays moderate for very wide images.
    """

    def __init__(
        self,
        height: int,
        width: int,
        min_size: int = DEFAULT_MIN_SIZE,
        *,
        band: int | None = None,
        block: int = 1024,
        halo: int = 128,
    ):
        if band is None:
            band = int(np.clip(2**25 // (6 * width) - 2 * halo, 256, 1024))
        capacity = self._start(height, width, band, block, halo)
        self.min_size = min_size
        self._foreground = np.zeros((capacity, width), bool)
        self._seeds = np.zeros((capacity, width), bool)
        self._elevation = np.zeros((capacity, width), np.float32)
        self._buffers = (self._foreground, self._seeds, self._elevation)
        self._above = np.zeros((0, width), np.int32)  # finished labels just above it
        self._count = 0

    def _keep(self, rows: slice, piece: np.ndarray) -> None:
        features = _instance_features(piece)
        self._foreground[rows], self._seeds[rows], self._elevation[rows] = features

    def _window_row(self, y0: int, y1: int) -> np.ndarray:
        top = max(0, y0 - self.halo)
        bottom = min(self.height, y1 + self.halo)
        rows = slice(top - self._y0, bottom - self._y0)
        labels = np.zeros((y1 - y0, self.width), np.int32)
        above = self._above[max(0, self._above.shape[0] - (y0 - top)) :]
        for x0 in range(0, self.width, self.block):
            x1 = min(self.width, x0 + self.block)
            left, right = max(0, x0 - self.halo), min(self.width, x1 + self.halo)
            foreground, seeds, elevation = (
                f[rows, left:right] for f in (self._foreground, self._seeds, self._elevation)
            )
            local = _instances(foreground, seeds, elevation, self.min_size)
            # Ids already given in the window: rows above, and columns to the left.
            known = np.zeros(local.shape, np.int32)
            settled = np.zeros(local.shape, bool)
            known[: y0 - top] = above[:, left:right]
            settled[: y0 - top] = True
            known[y0 - top : y1 - top, : x0 - left] = labels[:, left:x0]
            settled[y0 - top : y1 - top, : x0 - left] = True
            kept = local[y0 - top : y1 - top, x0 - left : x1 - left]
            table = self._numbering(local, known, settled, kept)
            labels[:, x0:x1] = table[kept]
        self._above = np.concatenate([self._above, labels])[
            max(0, self._above.shape[0] + labels.shape[0] - self.halo) :
        ]
        return labels

    def _numbering(self, local, known, settled, kept) -> np.ndarray:
        """Lookup table local id -> plane id: the known id that covers at least half of
        the object's settled pixels (the most, if several), else the next new id."""
        count = int(local.max())
        table = np.zeros(count + 1, np.int32)
        inside = settled & (local > 0)
        both = inside & (known > 0)
        if both.any():
            area = np.bincount(local[inside], minlength=count + 1)
            span = np.int64(known.max()) + 1
            pairs, overlap = np.unique(
                local[both].astype(np.int64) * span + known[both], return_counts=True
            )
            objects, others = pairs // span, pairs % span
            order = np.lexsort((overlap, objects))
            objects, others, overlap = objects[order], others[order], overlap[order]
            best = np.append(objects[1:] != objects[:-1], True)  # the largest per object
            objects, others, overlap = objects[best], others[best], overlap[best]
            match = 2 * overlap >= area[objects]
            table[objects[match]] = others[match]
        present = np.zeros(count + 1, bool)
        present[kept.ravel()] = True
        new = np.flatnonzero(present & (table == 0))
        new = new[new > 0]
        table[new] = self._count + 1 + np.arange(new.size, dtype=np.int32)
        self._count += new.size
        return table


# ---------------------------------------------------------------------------
# boundaries (semantic models whose labels draw a network of membranes or walls)

BOUNDARY_SEED_BELOW = 0.05
"""Where a model's labels draw boundaries between regions (cell membranes, cell walls:
:func:`napari_unet.data.boundary_network`), the regions' cores are the connected pixels
whose boundary probability is below this; a watershed of the boundary probability from
those cores draws a one-pixel line wherever two cores meet, and those lines are added to
the predicted boundaries. A faint or broken membrane then still parts two cells. On the
development slices of the accuracy study's ISBI training part (docs/accuracy-levers.md)
0.05 lowered the Rand error of the cells from 0.193 to 0.106 and 0.136 with two models
(0.02: 0.132 / 0.159, 0.1: 0.116 / 0.136, 0.2: 0.169 / 0.162), the pixel error by less
than 0.0003 either way."""

BOUNDARY_HALO = 256
"""Pixels of context around each window in which boundary lines are drawn when an image
is closed in windows (large images, lazy arrays); lines are kept only in the window."""


def boundary_lines(
    probability: np.ndarray, min_size: int = DEFAULT_MIN_SIZE, inside: np.ndarray | None = None
) -> np.ndarray:
    """The lines (Y, X) bool that part the regions of a boundary probability map (Y, X).

    ``inside``: the pixels predicted as regions, not boundary (default: probability at
    most 0.5). Regions' cores are the connected pixels below :data:`BOUNDARY_SEED_BELOW`
    of at least :data:`SEED_SHARE` x ``min_size`` pixels. Where one connected piece of
    ``inside`` holds two or more cores (a gap in the boundary joins their regions), a
    watershed of ``probability`` from the cores, confined to that piece, marks with a
    line one pixel wide where two meet, along the ridge of the probability, with the
    corner pixel added where two regions would still touch diagonally, so the regions it
    parts stay apart whether they are then labelled with 4- or 8-connectivity. Pieces with one
    core or none need no line: a watershed over the whole image would draw its lines
    there on boundary pixels only, as flooding fills each piece from its own core before
    it crosses a boundary.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    probability = np.asarray(probability, np.float32)
    lines = np.zeros(probability.shape, bool)
    if inside is None:
        inside = probability <= 0.5
    cores, _ = ndi.label(probability < BOUNDARY_SEED_BELOW)
    cores = _remove_small(cores, max(1, int(min_size * SEED_SHARE)))
    pieces, count = ndi.label(inside)
    holding = (cores > 0) & (pieces > 0)
    if count == 0 or not holding.any():
        return lines
    span = np.int64(cores.max()) + 1
    pairs = np.unique(pieces[holding].astype(np.int64) * span + cores[holding])
    shared = np.flatnonzero(np.bincount(pairs // span, minlength=count + 1) >= 2)
    boxes = ndi.find_objects(pieces)
    for piece in shared:
        box = boxes[piece - 1]
        mask = pieces[box] == piece
        basins = watershed(
            probability[box], markers=np.where(mask, cores[box], 0), mask=mask, watershed_line=True
        )
        line = mask & (basins == 0)
        # Basins that meet only at a corner stay joined for 8-connected labelling: the
        # upper pixel of each such pair joins the line. (A watershed with 8-connected
        # flooding would draw such lines itself, but can take a thousand times longer.)
        upper_left, lower_right = basins[:-1, :-1], basins[1:, 1:]
        line[:-1, :-1] |= (upper_left > 0) & (lower_right > 0) & (upper_left != lower_right)
        upper_right, lower_left = basins[:-1, 1:], basins[1:, :-1]
        line[:-1, 1:] |= (upper_right > 0) & (lower_left > 0) & (upper_right != lower_left)
        lines[box] |= line
    return lines


def close_boundaries(
    probabilities: np.ndarray, boundary: int, min_size: int = DEFAULT_MIN_SIZE
) -> np.ndarray:
    """Class probabilities (K, Y, X) -> class indices (Y, X) int64, the pixels of
    :func:`boundary_lines` of class ``boundary`` given to that class."""
    classes = np.argmax(probabilities, axis=0)
    lines = boundary_lines(probabilities[boundary], min_size, inside=classes != boundary)
    classes[lines] = boundary
    return classes


class BoundaryCloser(_RowWindows):
    """Semantic labels of one plane with gaps in its boundary class closed, from its
    probability bands, in bounded memory.

    The plane is cut into windows of ``band`` rows by ``block`` columns, and the
    :func:`boundary_lines` of each are drawn with ``halo`` pixels of context on every
    side. A plane that fits in one window gives exactly the lines of the whole plane.
    ``push(y0, probabilities)`` takes the next rows (K, h, X) and returns the finished
    label rows as ``[(y0, labels (h, X)), ...]``; ``finish()`` returns the rest.

    ``band`` defaults to as many rows (256 to 2048) as keep the held rows (about 8 bytes
    a pixel, ``band + 2 * halo`` rows) near 64 MB (more for images wider than about
    8,000 pixels, where the band is at its smallest: about 200 MB at 50,000). On a 4096 x 4096 mosaic of ISBI slices
    closing took 2.3-2.7 s with these windows (2.9 s as one window; the network's prediction
    5.4 s on 2 CPU cores), and every label agreed with closing the plane whole.
    """

    def __init__(
        self,
        height: int,
        width: int,
        boundary: int,
        class_values: np.ndarray,
        dtype,
        min_size: int = DEFAULT_MIN_SIZE,
        *,
        band: int | None = None,
        block: int = 2048,
        halo: int = BOUNDARY_HALO,
    ):
        if band is None:  # held rows near 64 MB (4-byte probability, 1-4 byte label)
            band = int(np.clip(2**26 // (8 * width) - 2 * halo, 256, 2048))
        capacity = self._start(height, width, band, block, halo)
        self.min_size, self.boundary = min_size, boundary
        self.class_values = np.asarray(class_values)
        self.dtype = np.dtype(dtype)
        self._probability = np.zeros((capacity, width), np.float32)
        self._labels = np.zeros((capacity, width), self.dtype)
        self._buffers = (self._probability, self._labels)

    def _keep(self, rows: slice, piece: np.ndarray) -> None:
        self._probability[rows] = piece[self.boundary]
        self._labels[rows] = _labels_of(piece, self.class_values, self.dtype)

    def _window_row(self, y0: int, y1: int) -> np.ndarray:
        top = max(0, y0 - self.halo)
        bottom = min(self.height, y1 + self.halo)
        rows = slice(top - self._y0, bottom - self._y0)
        labels = self._labels[y0 - self._y0 : y1 - self._y0].copy()
        value = self.class_values[self.boundary]
        for x0 in range(0, self.width, self.block):
            x1 = min(self.width, x0 + self.block)
            left, right = max(0, x0 - self.halo), min(self.width, x1 + self.halo)
            lines = boundary_lines(
                self._probability[rows, left:right],
                self.min_size,
                inside=self._labels[rows, left:right] != value,
            )
            core = lines[y0 - top : y1 - top, x0 - left : x1 - left]
            labels[:, x0:x1][core] = value
        return labels


# ---------------------------------------------------------------------------
# instances from probabilities


def instances_from_probabilities(
    probabilities: np.ndarray, min_size: int = DEFAULT_MIN_SIZE
) -> np.ndarray:
    """Background / interior / boundary probabilities (3, Y, X) -> instance ids (Y, X) int32.

    Seeds are the connected regions of confident interior (:data:`SEED_MARGIN`) of at
    least :data:`SEED_SHARE` times ``min_size`` pixels; a watershed on the boundary
    probability grows them over the foreground (interior + boundary), so touching objects
    stay apart. Foreground that no seed reaches becomes an object of its own; objects
    smaller than ``min_size`` pixels are dropped.
    """
    return _instances(*_instance_features(probabilities), min_size)


SEED_MARGIN = 0.4
"""Seeds of the watershed are pixels whose interior probability exceeds their boundary
probability by this much (and their background probability at all). Stricter seeds
split touching nuclei more often: on held-out images of the accuracy study's DSB
training part (docs/accuracy-levers.md), margins from 0.2 to 0.6 all raised F1@0.5 by
0.02-0.04 over a margin of 0, with the same foreground."""


SEED_SHARE = 0.5
"""Seeds smaller than this share of the smallest object size are dropped, so that a
speck of confident interior beside an object's core does not split the object (an
object left without a seed still becomes one where no other seed's watershed reaches
it). On the development images of the accuracy study (docs/accuracy-levers.md, 22
models) a half instead of a quarter raised F1@0.5 with 19 of the models and the DSB
score with 21 (means +0.005, +0.003), which suggests that more of the dropped specks
split objects than were objects of their own."""


FOREGROUND_BELOW = 0.5
"""Pixels whose background probability is below this are foreground (part of an object).
Lower values shrink the objects; on the development images of the accuracy study
(docs/accuracy-levers.md) 0.3 and 0.4 raised the DSB score but lowered the foreground
Dice and F1@0.5, so the default stays at the plain decision of 0.5."""


def _instance_features(probabilities: np.ndarray):
    """The per-pixel inputs of the watershed: foreground, seed mask, elevation."""
    background, interior, boundary = probabilities[:3]
    foreground = background < FOREGROUND_BELOW
    seeds = (interior - boundary > SEED_MARGIN) & (interior > background)
    return foreground, seeds, (boundary - interior).astype(np.float32, copy=False)


def _instances(foreground, seeds, elevation, min_size: int) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential, watershed

    markers, _ = ndi.label(seeds)
    markers = _remove_small(markers, max(1, int(min_size * SEED_SHARE)))
    labels = watershed(elevation, markers=markers, mask=foreground)
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
