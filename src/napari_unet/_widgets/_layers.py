"""Reading napari layers as the core expects them and writing results back as layers."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels, Layer

from ..data import MAX_CHANNELS_READ, InputError


def full_resolution(layer: Layer):
    """The layer's data at full resolution (level 0 of a multiscale layer), not loaded."""
    return layer.data[0] if layer.multiscale else layer.data


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
    names = [_named(name) for name in layer.axis_labels]
    return [
        (AUTO, AUTO),
        ("none: grey planes", GREY),
        *[(f"axis {k}{names[k]} ({shape[k]} channels)", k) for k in axes],
    ]


def _named(axis_label: str) -> str:
    """ " 'c'" for an axis name the user gave, "" for napari's default ("-3")."""
    label = str(axis_label)
    return "" if label.lstrip("-").isdigit() else f" '{label}'"


def channel_field(image_field, auto: str):
    """The "channels" ComboBox of a widget whose image layer is chosen in ``image_field``;
    ``auto`` says what its auto choice does."""
    from magicgui.widgets import ComboBox

    return ComboBox(
        name="channels",
        label="channels",
        choices=lambda _: channel_choices(image_field.value),
        tooltip=f"Which axis of the image holds its channels (a nuclear and a membrane "
        f"stain, say). auto: {auto}. none: every axis is a stack of grey planes.",
    )


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


def single_plane_axis(shape, label_shape) -> int | None:
    """The leading axis on which labels of ``label_shape`` are one plane long and an
    image of ``shape`` has 2 to :data:`~napari_unet.data.MAX_CHANNELS_READ` entries,
    the shapes being equal otherwise (results of this plugin keep a channel axis after
    a stack axis so), or None."""
    shape, label_shape = tuple(shape), tuple(label_shape)
    if len(shape) != len(label_shape):
        return None
    differ = [k for k, (a, b) in enumerate(zip(shape, label_shape, strict=True)) if a != b]
    if len(differ) == 1 and differ[0] < len(shape) - 2 and label_shape[differ[0]] == 1:
        return differ[0] if 2 <= shape[differ[0]] <= MAX_CHANNELS_READ else None
    return None


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


def check_not_channels_last(image: Image, axis: int | None, command: str) -> None:
    """Refuse a layer that is not RGB and keeps 2-4 values on its last axis, where no
    channel ``axis`` is chosen: its planes would be strips a few pixels wide (a colour
    image opened without ``rgb=True``, or channels saved last). ``command``: the
    napari-unet command that reads such files (train, predict)."""
    if axis is not None or getattr(image, "rgb", False):
        return
    shape = tuple(full_resolution(image).shape)
    if len(shape) < 3 or not 2 <= shape[-1] <= 4:
        return
    raise InputError(
        f"The image layer '{image.name}' {shape} keeps {shape[-1]} values on its last axis, "
        f"so its planes would be {shape[-2]} x {shape[-1]} pixels. If that axis holds colour "
        "channels, open the image as RGB (viewer.add_image(data, rgb=True)); other channels: "
        "move them first (numpy.moveaxis(data, -1, 0)) and choose that axis in 'channels', "
        f"or use `napari-unet {command} --channel-axis -1`."
    )


def check_pair(image: Image, labels: Labels, axis: int | None = None) -> None:
    """Raise :class:`InputError` unless ``labels`` covers ``image`` pixel for pixel.

    With a channel ``axis`` the labels may have it too (labels painted on one or more
    channel planes) or have it one plane long (a result of this plugin, corrected); they
    may lack it only where it is the first axis: napari lines layers up by their last
    axes, so labels without a later channel axis are shown on the wrong planes.
    """
    image_shape, label_shape = spatial_shape(image, axis), spatial_shape(labels)
    full = tuple(full_resolution(image).shape)
    if label_shape == image_shape:  # (labels without the last axis: see below)
        check_not_channels_last(image, axis, "train")
    if leading_axis(full, axis) is None:
        if image_shape == label_shape:
            return
    else:
        fitting = [full, full[:axis] + (1,) + full[axis + 1 :]]
        if axis == 0:
            fitting.append(image_shape)
        if label_shape in fitting:
            return
        if label_shape == image_shape:
            raise InputError(
                f"The labels layer '{labels.name}' lacks axis {axis} of '{image.name}' (its "
                f"{full[axis]} channels), so napari shows it on the wrong planes of the "
                "image; paint on a labels layer of the image's own shape (Layers > New "
                f"labels layer with the image selected) and choose axis {axis} in 'channels'."
            )
    if axis is None and len(image_shape) == len(label_shape) + 1:
        if image_shape[:-1] == label_shape and 2 <= image_shape[-1] <= MAX_CHANNELS_READ:
            raise InputError(
                f"The image layer '{image.name}' {image_shape} keeps {image_shape[-1]} "
                "channels on its last axis, which this widget cannot read (it reads channels "
                "from an RGB layer or from an axis before Y, X); train on such files with "
                "`napari-unet train --channel-axis -1` or `napari_unet.train(..., "
                "channel_axis=-1)`, or move the channels first (numpy.moveaxis)."
            )
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


def _spanned(source: Layer, axis: int | None) -> bool:
    """Whether results keep ``source``'s channel ``axis`` as one plane spanning it.

    napari lines layers up by their last axes, so a result without a channel axis that
    has stack axes before it ((T, C, Y, X) -> (T, Y, X)) would slide with the wrong
    slider; such results keep the axis, one plane long, stretched over every channel.
    A first axis can simply be left out.
    """
    return axis is not None and axis > 0 and not getattr(source, "rgb", False)


def placed_alike(image: Layer, labels: Layer, axis: int | None = None) -> bool:
    """Whether ``labels`` is shown where ``image`` is (scale, translation, rotation and the
    extra affine on the axes they share; a channel ``axis`` is left out of both, as the
    labels lack it or span it), so that painting and training agree."""

    def parts(layer: Layer, drop: int | None) -> list[np.ndarray]:
        keep = [i for i in range(len(layer.scale)) if i != drop]
        rows = [*keep, len(layer.scale)]
        return [
            np.asarray(layer.scale, float)[keep],
            np.asarray(layer.translate, float)[keep],
            np.asarray(layer.rotate, float)[np.ix_(keep, keep)],
            np.asarray(layer.affine.affine_matrix, float)[np.ix_(rows, rows)],
        ]

    channel = (
        axis if axis is not None and axis != -1 and not getattr(image, "rgb", False) else None
    )
    ours = parts(image, channel)
    theirs = parts(labels, channel if len(labels.scale) == len(image.scale) else None)
    if any(a.shape != b.shape for a, b in zip(ours, theirs, strict=True)):
        return True  # not comparable axis by axis; check_pair has judged the shapes
    return all(np.allclose(a, b) for a, b in zip(ours, theirs, strict=True))


def _placement(source: Layer, extra_leading: int = 0, axis: int | None = None) -> dict:
    """The scale, translate, axis names and units of ``source`` for a result layer; its
    channel ``axis`` is left out, or, where :func:`_spanned`, one plane covering it."""
    pad = extra_leading
    scale, translate = list(source.scale), list(source.translate)
    names, units = list(source.axis_labels), list(source.units)
    dropped = None
    if _spanned(source, axis):
        channels = full_resolution(source).shape[axis]
        translate[axis] += (channels - 1) * scale[axis] / 2  # centred on the channels
        scale[axis] *= channels
    elif axis is not None and axis != -1 and not getattr(source, "rgb", False):
        dropped = axis % len(scale)
        for values in (scale, translate, names, units):
            del values[dropped]
    return {
        "scale": (1.0,) * pad + tuple(scale),
        "translate": (0.0,) * pad + tuple(translate),
        "axis_labels": ("class",) * pad + tuple(names),
        "units": ("pixel",) * pad + tuple(units),
        **_turns(source, dropped, pad),
    }


def _turns(source: Layer, dropped: int | None, pad: int) -> dict:
    """The rotation, shear and affine of ``source`` for a result without its axis
    ``dropped`` (a channel axis) and with ``pad`` leading axes of its own (classes),
    which these leave as they are."""
    ndim = len(source.scale)
    shear = np.asarray(source.shear, dtype=float)
    if shear.ndim == 1:  # napari's upper triangle, row by row
        vector, shear = shear, np.eye(ndim)
        shear[np.triu_indices(ndim, 1)] = vector
    matrices = [np.asarray(source.rotate, dtype=float), shear, source.affine.affine_matrix]
    if dropped is not None:
        matrices = [np.delete(np.delete(m, dropped, 0), dropped, 1) for m in matrices]
    if pad:
        grown = []
        for matrix in matrices:
            out = np.eye(len(matrix) + pad)
            out[pad:, pad:] = matrix
            grown.append(out)
        matrices = grown
    return dict(zip(("rotate", "shear", "affine"), matrices, strict=True))


def layer_result(layer: Layer, source: Layer, axis: int | None) -> np.ndarray:
    """The data of a result ``layer`` of ``source`` as it was given to :func:`write_layer`
    (without the spanning channel plane), a view."""
    data = np.asarray(layer.data)
    if _spanned(source, axis):
        position = data.ndim - len(full_resolution(source).shape) + axis
        if 0 <= position < data.ndim and data.shape[position] == 1:
            data = np.squeeze(data, axis=position)
    return data


OUTPUT_KEY = "napari-unet output"


def plane_digest(plane: np.ndarray) -> str:
    """A fingerprint of a plane's values, to tell later whether the user painted on it."""
    import hashlib

    plane = np.ascontiguousarray(plane)
    return hashlib.blake2b(plane.tobytes() + str(plane.dtype).encode(), digest_size=16).hexdigest()


def output_layer(viewer, source: Layer, suffix: str, *, edited: bool = False) -> Layer | None:
    """The layer written earlier for ``source`` with ``suffix``, if it is still there.

    Only layers this plugin created carry the mark, so a user's own layer that
    happens to have the same name is never overwritten; nor is a result the user has
    renamed since (to keep it, say), painted on or trained on: it is theirs now
    (``edited``: that one instead).
    """
    return next(
        (layer for layer in viewer.layers if _written_for(layer, source, suffix, edited)), None
    )


def _written_for(layer: Layer, source: Layer, suffix: str, edited: bool = False) -> bool:
    """Whether ``layer`` is the result ``suffix`` of ``source`` that the plugin may replace
    (``edited``: one that it may not, as the user painted on it or trained on it)."""
    mark = layer.metadata.get(OUTPUT_KEY)
    if not isinstance(mark, dict) or mark.get("kind") != suffix:
        return False
    if bool(mark.get("edited")) != edited:
        return False
    if layer.name != mark.get("name", layer.name):
        return False
    if "source_id" in mark:  # follows the source through a rename
        return mark["source_id"] == str(source.unique_id)
    return mark.get("source") == source.name  # layers saved without the id


def mark_edited(layer: Layer, edited: bool = True) -> bool:
    """Keep a result the user painted on, or trained on, from being replaced: the next
    result goes to a layer of its own (``edited=False``: no longer). Returns whether it
    was marked before."""
    mark = layer.metadata.get(OUTPUT_KEY)
    if not isinstance(mark, dict):
        return False
    before = bool(mark.get("edited"))
    mark["edited"] = edited
    return before


def unmark_unpainted(layer: Layer) -> None:
    """Undo :func:`mark_edited` for a layer trained on by a run that never started,
    unless the user painted on it meanwhile."""
    mark = layer.metadata.get(OUTPUT_KEY)
    if isinstance(mark, dict) and not mark.get("painted"):
        mark["edited"] = False


def _painted(event) -> None:
    mark = event.source.metadata.get(OUTPUT_KEY)
    if isinstance(mark, dict):
        mark["painted"] = True
    mark_edited(event.source)


def write_layer(
    viewer,
    source: Image,
    data: np.ndarray,
    kind: str,
    suffix: str,
    axis: int | None = None,
    model: dict | None = None,
    into: Layer | None = None,
) -> Layer:
    """Show ``data`` in the layer "<source name> <suffix>", creating it or replacing its data.

    ``kind`` is "labels" or "image"; ``data`` has the axes of ``source`` less its channel
    ``axis``. The layer gets the placement (scale, translate, axis names, units) of
    ``source`` (see :func:`_placement` for the channel axis). An extra leading axis
    in ``data`` (probabilities of several classes) is named "class".
    """
    layer_type = Labels if kind == "labels" else Image
    extra = data.ndim - len(spatial_shape(source, axis))
    if _spanned(source, axis):
        data = np.expand_dims(data, extra + axis)
    existing = output_layer(viewer, source, suffix) if into is None else into
    placement = _placement(source, extra, axis)
    mark = {"source": source.name, "kind": suffix, "source_id": str(source.unique_id)}
    if _spanned(source, axis):  # the channel axis kept one plane long: not a plane index
        mark["span"] = extra + axis
    if model is not None:  # which model wrote it: planes of one result come from one model
        mark["model"] = model
    if existing is not None and isinstance(existing, layer_type) and existing.ndim == data.ndim:
        existing.data = data
        earlier = existing.metadata[OUTPUT_KEY]
        if earlier.get("source") != source.name:  # the source was renamed
            existing.name = f"{source.name} {suffix}"
        if into is not None:  # planes added to a result the user edited: still theirs
            mark.update({k: earlier[k] for k in ("edited", "painted", "planes") if k in earlier})
        existing.metadata[OUTPUT_KEY] = {**mark, "name": existing.name}
        for name, value in placement.items():
            setattr(existing, name, value)
        if kind == "image":
            existing.contrast_limits = (0.0, 1.0)
        return existing
    if existing is not None and into is None:  # never a layer the user edited
        viewer.layers.remove(existing)
    kept = [layer.name for layer in viewer.layers if _written_for(layer, source, suffix, True)]
    if kept and kind == "labels":
        from napari.utils.notifications import show_info

        show_info(
            f"'{kept[-1]}' holds your edits (painted, or trained on), so it is kept; the "
            "new result goes to a layer of its own."
        )
    options = {  # placed when added: a layer added unplaced would move the sliders
        "name": f"{source.name} {suffix}",
        "metadata": {OUTPUT_KEY: mark},
        **placement,
    }
    if kind == "labels":
        layer = viewer.add_labels(data, opacity=0.6, **options)
        layer.events.paint.connect(_painted)  # corrections: never replaced
    else:
        layer = viewer.add_image(
            data, colormap="magma", contrast_limits=(0.0, 1.0), blending="additive", **options
        )
    layer.metadata[OUTPUT_KEY]["name"] = layer.name  # as napari named it (unique)
    return layer


def scribble_result_labels(layer: Layer, data: np.ndarray) -> tuple[np.ndarray, str | None]:
    """The labels to train on in sparse mode from ``layer`` (its ``data``): where it is a
    segmentation written by a sparse (scribbles) model, its 0 pixels are the background
    that model wrote as 0, not pixels left unannotated, so they become the background's
    painted value, in the planes the model wrote (all, or those segmented one by one).
    Without this, only its objects and the corrections would train: erasing a false
    object would leave nothing, and painting it background would teach more objects.
    Returns the data (a copy where changed) and a note, or ``data`` and None."""
    mark = layer.metadata.get(OUTPUT_KEY)
    if not isinstance(mark, dict) or mark.get("kind") != "segmentation":
        return data, None
    model = mark.get("model")
    background = model.get("background") if isinstance(model, dict) else None
    if background is None:
        return data, None
    data = np.asarray(data)
    planes = mark.get("planes")
    if planes:  # segmented plane by plane: the planes written
        data = data.copy()
        span = mark.get("span")
        view = data if span is None or data.shape[span] != 1 else np.squeeze(data, axis=span)
        for key in planes:
            index = tuple(int(i) for i in key.split(",")) if key else ()
            if len(index) + 2 == view.ndim:
                plane = view[index]
                plane[plane == 0] = background
    else:
        data = np.where(data == 0, np.asarray(background, data.dtype), data)
    return data, (
        f"'{layer.name}' is a segmentation by a scribbles (sparse) model: its unlabelled "
        f"pixels (0) are the background it found, so they train as background "
        f"({background}); erase or paint over wrong objects to correct them."
    )


def made_here(layer: Layer) -> bool:
    """Whether ``layer`` is a result or preview this plugin wrote."""
    return OUTPUT_KEY in layer.metadata


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
