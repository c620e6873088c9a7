"""Reading napari layers as the core expects them and writing results back as layers."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels, Layer

from ..data import MAX_CHANNELS_READ, InputError


def full_resolution(layer: Layer):
    """The layer's data at full resolution (level 0 of a multiscale layer), not loaded."""
    return layer.data[0] if layer.multiscale else layer.data


def channel_axis(layer: Image) -> int | None:
    """-1 for RGB(A) layers, whose colour axis napari keeps last; None otherwise."""
    return -1 if getattr(layer, "rgb", False) else None


AUTO = "auto"
"""Choice of the widgets' "channels" field: let the widget find the channel axis."""
GREY = "grey"
"""Choice of the widgets' "channels" field: every leading axis is a stack of grey planes."""


def channel_choices(layer: Layer | None) -> list[tuple[str, object]]:
    """Choices of the "channels" field for ``layer``: [] when there is nothing to choose.

    A layer that is not RGB can hold channels on a leading axis of at most
    :data:`~napari_unet.data.MAX_CHANNELS_READ` entries (napari shows such an axis
    with a slider, like a Z or T axis, so only the user knows which it is).
    """
    if not isinstance(layer, Image) or getattr(layer, "rgb", False):
        return []
    shape = tuple(full_resolution(layer).shape)
    axes = [k for k in range(len(shape) - 2) if 2 <= shape[k] <= MAX_CHANNELS_READ]
    if not axes:
        return []
    names = tuple(layer.axis_labels)
    return [
        (AUTO, AUTO),
        ("none: grey planes", GREY),
        *[(f"axis {k} '{names[k]}' ({shape[k]} channels)", k) for k in axes],
    ]


def chosen_axis(layer: Image, choice, auto: int | None) -> int | None:
    """The channel axis of ``layer``'s data for a "channels" ``choice`` (``auto``: what
    the widget found), -1 for an RGB layer."""
    if getattr(layer, "rgb", False):
        return -1
    if choice == GREY:
        return None
    if isinstance(choice, int) and not isinstance(choice, bool):
        return choice
    return auto


def leading_axis(shape, axis: int | None) -> int | None:
    """``axis`` if it is a leading axis of ``shape`` (not Y or X), else None."""
    return axis if axis is not None and 0 <= axis < len(shape) - 2 else None


def spatial_shape(layer: Layer, axis: int | None = None) -> tuple[int, ...]:
    """Shape of the layer without its colour or channel axis: (*stack, Y, X).

    ``axis`` is a channel axis of the layer's data (as :func:`chosen_axis` gives); an
    RGB layer's colour axis is left out without it.
    """
    shape = tuple(full_resolution(layer).shape)
    if getattr(layer, "rgb", False):
        return shape[:-1]
    if axis is not None and axis != -1:
        return shape[:axis] + shape[axis + 1 :]
    return shape


def plane_of(data, index: tuple[int, ...], axis: int | None):
    """The 2-D plane ``index`` of the stack axes of ``data`` (channel ``axis`` kept) and
    the position of the channel axis in that plane: (plane, plane's channel axis)."""
    if axis is None or axis == -1:
        return (data[index] if index else data), axis
    if not index:
        return data, axis
    key = list(index)
    key.insert(axis, slice(None))
    return data[tuple(key)], sum(1 for k in key[:axis] if isinstance(k, slice))


def current_index(viewer, layer: Layer, axis: int | None = None) -> tuple[int, ...]:
    """Index of the stack plane of ``layer`` that the viewer shows now ((): a 2-D layer);
    a channel ``axis`` of the layer's data is not part of it."""
    shape = spatial_shape(layer, axis)
    lead = shape[:-2]
    if not lead:
        return ()
    position = list(np.asarray(layer.world_to_data(viewer.dims.point)))
    if axis is not None and axis != -1 and not getattr(layer, "rgb", False):
        del position[axis]
    index = np.round(np.asarray(position)[: len(lead)]).astype(int)
    return tuple(int(np.clip(i, 0, n - 1)) for i, n in zip(index, lead, strict=True))


def check_pair(image: Image, labels: Labels, axis: int | None = None) -> None:
    """Raise :class:`InputError` unless ``labels`` covers ``image`` pixel for pixel.

    With a channel ``axis`` the labels may lack that axis or have it too (labels
    painted on one or more channel planes).
    """
    image_shape, label_shape = spatial_shape(image, axis), spatial_shape(labels)
    if image_shape == label_shape:
        return
    if leading_axis(tuple(full_resolution(image).shape), axis) is not None:
        if label_shape == tuple(full_resolution(image).shape):
            return
    raise InputError(
        f"The labels layer '{labels.name}' has shape {label_shape} but the image layer "
        f"'{image.name}' has shape {image_shape}; paint labels on a layer of the image's "
        "size (Layers > New labels layer with the image selected)."
    )


def annotated_planes(labels: np.ndarray) -> list[tuple[int, ...]]:
    """Indices of the stack planes of ``labels`` (*stack, Y, X) that hold any label."""
    lead = labels.shape[:-2]
    if not lead:
        return [()] if labels.any() else []
    flat = labels.reshape(-1, labels.shape[-2] * labels.shape[-1])
    painted = np.flatnonzero(flat.any(axis=1))
    return [np.unravel_index(i, lead) for i in painted]


def _copy_placement(
    source: Layer, target: Layer, extra_leading: int = 0, axis: int | None = None
) -> None:
    """Give ``target`` the scale, translate, axis names and units of ``source``, less
    the source's channel ``axis`` (a leading axis of its data), if any."""
    pad = extra_leading

    def kept(values) -> tuple:
        values = tuple(values)
        if axis is None or axis == -1 or getattr(source, "rgb", False):
            return values
        return values[:axis] + values[axis + 1 :]

    target.scale = (1.0,) * pad + kept(source.scale)
    target.translate = (0.0,) * pad + kept(source.translate)
    target.axis_labels = ("class",) * pad + kept(source.axis_labels)
    target.units = ("pixel",) * pad + kept(source.units)


OUTPUT_KEY = "napari-unet output"


def output_layer(viewer, source: Layer, suffix: str) -> Layer | None:
    """The layer written earlier for ``source`` with ``suffix``, if it is still there.

    Only layers this plugin created carry the mark, so a user's own layer that
    happens to have the same name is never overwritten.
    """
    mark = {"source": source.name, "kind": suffix}
    return next((layer for layer in viewer.layers if layer.metadata.get(OUTPUT_KEY) == mark), None)


def write_layer(
    viewer, source: Image, data: np.ndarray, kind: str, suffix: str, axis: int | None = None
) -> Layer:
    """Show ``data`` in the layer "<source name> <suffix>", creating it or replacing its data.

    ``kind`` is "labels" or "image"; the layer gets the placement (scale, translate,
    axis names, units) of ``source``, less its channel ``axis``. An extra leading axis in
    ``data`` (probabilities of several classes) is named "class".
    """
    layer_type = Labels if kind == "labels" else Image
    extra = data.ndim - len(spatial_shape(source, axis))
    existing = output_layer(viewer, source, suffix)
    if existing is not None and isinstance(existing, layer_type) and existing.ndim == data.ndim:
        existing.data = data
        _copy_placement(source, existing, extra, axis)
        if kind == "image":
            existing.contrast_limits = (0.0, 1.0)
        return existing
    if existing is not None:
        viewer.layers.remove(existing)
    options = {
        "name": f"{source.name} {suffix}",
        "metadata": {OUTPUT_KEY: {"source": source.name, "kind": suffix}},
    }
    if kind == "labels":
        layer = viewer.add_labels(data, opacity=0.6, **options)
    else:
        layer = viewer.add_image(
            data, colormap="magma", contrast_limits=(0.0, 1.0), blending="additive", **options
        )
    _copy_placement(source, layer, extra, axis)
    return layer


def layers_of(viewer, layer_type) -> list[tuple[str, Layer]]:
    """(name, layer) choices of the viewer's layers of ``layer_type``, top layer first."""
    return [
        (layer.name, layer) for layer in reversed(viewer.layers) if isinstance(layer, layer_type)
    ]


def watch_layers(viewer, callback) -> None:
    """Call ``callback()`` whenever layers are added, removed, reordered or renamed."""
    events = viewer.layers.events
    for name in ("inserted", "removed", "reordered", "renamed"):
        getattr(events, name).connect(callback)
