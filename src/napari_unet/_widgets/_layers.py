"""Reading napari layers as the core expects them and writing results back as layers."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels, Layer

from ..data import InputError


def full_resolution(layer: Layer):
    """The layer's data at full resolution (level 0 of a multiscale layer), not loaded."""
    return layer.data[0] if layer.multiscale else layer.data


def channel_axis(layer: Image) -> int | None:
    """-1 for RGB(A) layers, whose colour axis napari keeps last; None otherwise."""
    return -1 if getattr(layer, "rgb", False) else None


def spatial_shape(layer: Layer) -> tuple[int, ...]:
    """Shape of the layer without its colour axis: (*stack, Y, X)."""
    shape = tuple(full_resolution(layer).shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def current_index(viewer, layer: Layer) -> tuple[int, ...]:
    """Index of the stack plane of ``layer`` that the viewer shows now ((): a 2-D layer)."""
    shape = spatial_shape(layer)
    lead = shape[:-2]
    if not lead:
        return ()
    position = layer.world_to_data(viewer.dims.point)
    index = np.round(np.asarray(position)[: len(lead)]).astype(int)
    return tuple(int(np.clip(i, 0, n - 1)) for i, n in zip(index, lead, strict=True))


def check_pair(image: Image, labels: Labels) -> None:
    """Raise :class:`InputError` unless ``labels`` covers ``image`` pixel for pixel."""
    image_shape, label_shape = spatial_shape(image), spatial_shape(labels)
    if image_shape != label_shape:
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


def _copy_placement(source: Layer, target: Layer, extra_leading: int = 0) -> None:
    """Give ``target`` the scale, translate, axis names and units of ``source``."""
    pad = extra_leading
    target.scale = (1.0,) * pad + tuple(source.scale)
    target.translate = (0.0,) * pad + tuple(source.translate)
    target.axis_labels = ("class",) * pad + tuple(source.axis_labels)
    target.units = ("pixel",) * pad + tuple(source.units)


OUTPUT_KEY = "napari-unet output"


def output_layer(viewer, source: Layer, suffix: str) -> Layer | None:
    """The layer written earlier for ``source`` with ``suffix``, if it is still there.

    Only layers this plugin created carry the mark, so a user's own layer that
    happens to have the same name is never overwritten.
    """
    mark = {"source": source.name, "kind": suffix}
    return next((layer for layer in viewer.layers if layer.metadata.get(OUTPUT_KEY) == mark), None)


def write_layer(viewer, source: Image, data: np.ndarray, kind: str, suffix: str) -> Layer:
    """Show ``data`` in the layer "<source name> <suffix>", creating it or replacing its data.

    ``kind`` is "labels" or "image"; the layer gets the placement (scale, translate,
    axis names, units) of ``source``. An extra leading axis in ``data`` (probabilities
    of several classes) is named "class".
    """
    layer_type = Labels if kind == "labels" else Image
    extra = data.ndim - len(spatial_shape(source))
    existing = output_layer(viewer, source, suffix)
    if existing is not None and isinstance(existing, layer_type) and existing.ndim == data.ndim:
        existing.data = data
        _copy_placement(source, existing, extra)
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
    _copy_placement(source, layer, extra)
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
