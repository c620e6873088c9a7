"""The "Segment with U-Net" widget: apply a model to an image layer."""

from __future__ import annotations

import threading

import numpy as np
from magicgui.widgets import ComboBox, Container
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from pydantic import ValidationError
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..config import OVERLAP_PIXELS, PredictConfig, describe_error
from ..data import InputError
from ..prediction import (
    GreyPictureWarning,
    TileDependenceWarning,
    TileProgress,
    _resolve_layout,
)
from ._form import config_field, device_choices, status_area
from ._layers import (
    AUTO,
    OUTPUT_KEY,
    channel_choices,
    channel_field,
    check_not_channels_last,
    chosen_axis,
    current_index,
    full_resolution,
    layer_result,
    layers_of,
    leading_axis,
    output_layer,
    plane_digest,
    spatial_shape,
    watch_layers,
    write_layer,
)
from ._models import ModelEntry, registry_for
from ._workers import JobFailed, refuse, segment_worker

EVERY_PLANE = "every plane"
CURRENT_PLANE = "current plane"
AS_LEARNED = "as the model learned"
BOUNDARY_CHOICES = {AS_LEARNED: None, "close gaps": True, "as predicted": False}
"""The Segment widget's "boundaries" choices and their ``close_boundaries`` values."""


def foreground_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """(K, ...) class probabilities -> those of the K-1 foreground classes, without the
    class axis when there is a single foreground class."""
    foreground = probabilities[1:]
    return foreground[0] if foreground.shape[0] == 1 else foreground


def auto_channel_axis(entry: ModelEntry | None, image: Image) -> int | None:
    """The leading axis of a layer that is not RGB that holds a model's channels, as
    prediction reads an image (an axis of the model's channel count), or None."""
    if entry is None or getattr(image, "rgb", False) or entry.model.in_channels == 1:
        return None
    model = entry.model
    shape = tuple(full_resolution(image).shape)
    axis = _resolve_layout(shape, model.in_channels, "auto", model.convert_channels)
    return leading_axis(shape, axis)


def _check_channels(entry: ModelEntry, image: Image, axis: int | None) -> None:
    """Refuse, with what to do instead, a layer whose channels do not match the model."""
    channels = entry.model.in_channels
    if axis is not None and axis != -1:
        found = full_resolution(image).shape[axis]
        if found != channels and not entry.model.convert_channels:
            raise InputError(
                f"'{entry.name}' takes {channels} channel(s) but axis {axis} of "
                f"'{image.name}' has {found}; choose the axis that holds the channels in "
                "the 'channels' field, or a model trained on such images."
            )
    elif channels > 1 and axis is None and not entry.model.convert_channels:
        advice = (
            "choose the axis that holds its channels in the 'channels' field."
            if channel_choices(image)
            else "this widget reads channels from an axis before Y, X (one with a slider) "
            "or from an RGB layer. If napari opened the channels as separate layers, select "
            "them and right-click > Merge to Stack, then choose the new axis in the "
            "'channels' field; segment other layouts with `napari-unet predict` or "
            "`napari_unet.predict(model, image)`."
        )
        raise InputError(
            f"'{entry.name}' takes {channels} channels but '{image.name}' is read as grey "
            f"planes; {advice}"
        )


class SegmentWidget(QWidget):
    """Segment an image layer with a trained or loaded model.

    The result goes to the layer "<image> segmentation" (or "<image> probabilities"),
    placed like the image; segmenting again replaces that layer's data. Stacks are
    segmented plane by plane, all of them or only the one on screen. RGB, dask-backed
    and multiscale layers (at full resolution) work too.
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.registry = registry_for(napari_viewer)
        self._worker = None
        self._active_changed = False  # the active model changed while a job ran
        self._stop = threading.Event()
        self._job: dict = {}

        self.model = ComboBox(
            name="model",
            label="model",
            choices=lambda _: [(entry.name, entry) for entry in self.registry.entries],
            tooltip="A model trained in 'Train U-Net' or loaded in 'Load U-Net model'.",
        )
        self.image = ComboBox(
            name="image",
            label="image",
            choices=lambda _: layers_of(self.viewer, Image),
            tooltip="The image to segment (2-D, a Z/T stack, RGB; multiscale at full resolution).",
        )
        self.channels = channel_field(
            self.image, "an axis with as many entries as the model has input channels"
        )
        self.planes = ComboBox(
            name="planes",
            label="stack",
            choices=[EVERY_PLANE, CURRENT_PLANE],
            value=EVERY_PLANE,
            tooltip="For a Z/T stack: segment every plane, or only the plane on screen.",
        )
        self.tile_size = config_field(PredictConfig, "tile_size", step=64)
        # a share of the tile; the API's default (None) is 64 pixels of any tile, so the
        # field follows the tile size until the user sets an overlap of their own
        self.overlap = config_field(
            PredictConfig, "overlap", value=PredictConfig().overlap_share, step=1 / 32
        )
        self.overlap.native.setDecimals(4)  # Qt's 2 would show 0.0625 as 0.06
        self.overlap.tooltip = (
            "Overlap between neighbouring tiles, as a share of a tile; follows the tile "
            f"size so as to stay {OVERLAP_PIXELS} pixels (at most a quarter of the tile) "
            "until set."
        )
        self.overlap.value = PredictConfig().overlap_share
        self._overlap_follows = True  # until the user edits the overlap
        self._following = False
        self.overlap.changed.connect(self._overlap_edited)
        self.tile_size.changed.connect(self._follow_tile_size)
        self.batch_size = config_field(PredictConfig, "batch_size")
        self.tta = config_field(PredictConfig, "tta", label="test-time augmentation")
        self.boundaries = ComboBox(
            name="boundaries",
            label="boundaries",
            choices=list(BOUNDARY_CHOICES),
            value=AS_LEARNED,
            tooltip="Two-class models of boundaries (membranes, cell walls) and the regions "
            "between them: close gaps in the predicted boundaries so that a faint membrane "
            "still parts two cells. 'as the model learned': when its training labels drew "
            "such boundaries.",
        )
        self.device = config_field(PredictConfig, "device", choices=device_choices())
        self.output = config_field(PredictConfig, "output")
        self.output.tooltip = (
            "labels: a Labels layer with the classes (or objects, in instance mode). "
            "probabilities: an Image layer with the probability of each foreground class."
        )
        self.form = Container(
            widgets=[
                self.model,
                self.image,
                self.channels,
                self.planes,
                self.output,
                self.tile_size,
                self.overlap,
                self.batch_size,
                self.tta,
                self.boundaries,
                self.device,
            ]
        )
        self.form.margins = (0, 0, 0, 0)

        self.segment_button = QPushButton("Segment")
        self.segment_button.setToolTip("Segment the image with the model.")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop segmenting; no layer is changed.")
        self.segment_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.segment_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFormat("")
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(status_area(self.status))
        layout.addStretch(1)

        self.registry.changed.connect(self._select_active_model)
        self.image.changed.connect(self._image_changed)
        self.channels.changed.connect(self._update_planes)
        self.model.changed.connect(self._update_planes)
        watch_layers(self.viewer, self.reset_choices)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.reset_choices()
        self._select_active_model()
        self._set_running(False)

    # ------------------------------------------------------------------ form

    def reset_choices(self, *_) -> None:
        """Refresh the layer and model choices (napari calls this when layers change)."""
        self.form.reset_choices()
        self._update_planes()

    def _select_active_model(self, *_) -> None:
        if self.running:  # the run's model stays shown; the new one is chosen at its end
            self._active_changed = True
            return
        self._active_changed = False
        self.model.reset_choices()
        if self.registry.active is not None:
            self.model.value = self.registry.active
        self._update_status()

    def _overlap_edited(self, *_) -> None:
        if not self._following:
            self._overlap_follows = False

    def _follow_tile_size(self, tile: int) -> None:
        """Keep the default overlap of 64 pixels when the tile size changes, until the
        user has set an overlap of their own."""
        if not self._overlap_follows:
            return
        self._following = True
        try:
            self.overlap.value = PredictConfig(tile_size=tile).overlap_share
        finally:
            self._following = False

    def _image_changed(self, *_) -> None:
        self.channels.reset_choices()
        if channel_choices(self.image.value):
            self.channels.value = AUTO  # an axis chosen for another layer means nothing here
        self._update_planes()

    def _update_planes(self, *_) -> None:
        image = self.image.value
        self.channels.visible = self._channels_apply(image)
        self.planes.visible = (
            image is not None and len(spatial_shape(image, self.channel_axis(image))) > 2
        )
        self.boundaries.visible = self._boundaries_apply()

    def _boundaries_apply(self) -> bool:
        """Whether the "boundaries" field means anything: a two-class model that does not
        predict instances."""
        entry = self.model.value
        return (
            entry is not None and entry.model.mode != "instances" and entry.model.num_classes == 2
        )

    def _channels_apply(self, image: Image | None) -> bool:
        """Whether the "channels" field means anything: a layer with an axis that could
        hold channels, and a model that takes several (a grey model reads planes)."""
        entry = self.model.value
        return bool(channel_choices(image)) and entry is not None and entry.model.in_channels > 1

    def channel_axis(self, image: Image) -> int | None:
        """The axis of ``image``'s data that holds channels, as the "channels" field says
        (auto: as the model reads images; -1 for an RGB layer; None: grey planes)."""
        choice = self.channels.value if self._channels_apply(image) else AUTO
        return chosen_axis(image, choice, auto_channel_axis(self.model.value, image))

    def _update_status(self) -> None:
        if self.running:
            return
        if not self.registry.entries:
            self.status.setText(
                "No model yet: train one with 'Train U-Net' or load one with 'Load U-Net model'."
            )
        elif self.status.text().startswith("No model yet"):
            self.status.setText("")

    # ------------------------------------------------------------------ jobs

    @property
    def running(self) -> bool:
        return self._worker is not None

    def _set_running(self, running: bool) -> None:
        self.segment_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.form.enabled = not running

    def start(self) -> None:
        """Segment with the form's settings; problems appear as notifications."""
        if self.running:
            return
        entry: ModelEntry | None = self.model.value
        image = self.image.value
        try:
            if entry is None:
                raise InputError(
                    "There is no model: train one with 'Train U-Net' or load a model file with "
                    "'Load U-Net model'."
                )
            if image is None:
                raise InputError("Add an image layer to segment.")
            if entry.busy:
                raise InputError(
                    f"'{entry.name}' is being trained; stop training or wait until it ends."
                )
            axis = self.channel_axis(image)
            check_not_channels_last(image, axis, "predict")
            _check_channels(entry, image, axis)
            config = PredictConfig(
                tile_size=self.tile_size.value,
                overlap=self.overlap.value,
                batch_size=self.batch_size.value,
                tta=self.tta.value,
                device=self.device.value,
                output=self.output.value,
            )
        except InputError as error:
            refuse(self, str(error))
            return
        except ValidationError as error:
            refuse(self, describe_error(error))
            return

        stacked = len(spatial_shape(image, axis)) > 2
        index = ()
        if stacked and self.planes.value == CURRENT_PLANE:
            index = current_index(self.viewer, image, axis)
        self._job = {
            "image": image,
            "index": index,
            "output": config.output,
            "entry": entry,
            "axis": axis,
        }
        self._stop.clear()
        self._worker = segment_worker(
            entry.model,
            full_resolution(image),
            index=index,
            stop=self._stop,
            tile_size=config.tile_size,
            overlap=config.overlap,
            batch_size=config.batch_size,
            tta=config.tta,
            device=config.device,
            output=config.output,
            channel_axis=axis,
            close_boundaries=BOUNDARY_CHOICES[self.boundaries.value]
            if self._boundaries_apply()
            else None,
        )
        self._worker.yielded.connect(self._on_event)
        self._worker.warned.connect(self._on_warned)
        self._worker.returned.connect(self._on_returned)
        self._worker.finished.connect(self._on_finished)
        self.registry.set_busy(entry.model, True)
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        where = f" (plane {', '.join(map(str, index))})" if index else ""
        self.status.setText(f"Segmenting '{image.name}'{where} with '{entry.name}'…")
        self._set_running(True)
        self._worker.start()

    def event(self, event) -> bool:
        # napari closes a dock widget by taking it out of its parent: cancel the job with it
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.cancel()
        return super().event(event)

    def cancel(self) -> None:
        """Stop segmenting after the current batch of tiles; no layer changes."""
        if self.running:
            self._stop.set()
            self.cancel_button.setEnabled(False)
            self.status.setText("Cancelling…")

    def _on_layer_removed(self, event) -> None:
        """The image being segmented was removed: nothing left to write to, so stop."""
        if self.running and event.value is self._job.get("image"):
            self._stop.set()
            self.cancel_button.setEnabled(False)
            self.status.setText(f"The image layer '{event.value.name}' was removed; stopping…")

    def _on_warned(self, warning: tuple) -> None:
        """What prediction warns of (tiles of a model normalised per tile, a grey picture
        saved as colour), shown: napari does not pass a worker's warnings on."""
        message, category = warning[0], warning[1]
        if isinstance(category, type) and issubclass(
            category, (TileDependenceWarning, GreyPictureWarning)
        ):
            show_warning(str(message))

    def _on_event(self, event) -> None:
        if isinstance(event, TileProgress):
            self.progress.setValue(int(round(event.fraction * 1000)))
            plane = f"plane {event.plane + 1}/{event.planes}  ·  " if event.planes > 1 else ""
            self.progress.setFormat(f"{plane}tile {event.tiles_done}/{event.tiles_total}  ·  %p%")
        elif isinstance(event, JobFailed):
            show_error(event.message)
            self.progress.setFormat("failed")
            self.status.setText(f"Segmentation failed: {event.message}")

    def _on_returned(self, result: np.ndarray | None) -> None:
        job = self._job
        image = job["image"]
        if result is None:
            if self._stop.is_set():
                gone = image not in self.viewer.layers
                self.status.setText(
                    f"The image layer '{image.name}' was removed; segmenting stopped."
                    if gone
                    else "Cancelled; no layer was changed."
                )
                self.progress.setFormat("cancelled")
            return
        if image not in self.viewer.layers:
            self.status.setText(f"The image layer '{image.name}' was removed meanwhile.")
            return
        try:
            if job["output"] == "labels":
                layer = self._write(
                    image, result, job["index"], "labels", "segmentation", job["axis"]
                )
            else:
                data = foreground_probabilities(result)
                layer = self._write(
                    image, data, job["index"], "image", "probabilities", job["axis"]
                )
        except InputError as error:
            self.status.setText(str(error))
            show_error(str(error))
            return
        self.progress.setValue(1000)
        self.progress.setFormat("done")
        self.status.setText(f"Wrote the layer '{layer.name}'.")

    def _write(self, image: Image, result: np.ndarray, index: tuple, kind: str, suffix: str, axis):
        entry = self._job["entry"]
        steps = sum(run.get("steps", 0) for run in entry.model.history.get("runs", []))
        # which model, and which version of it (more training: more steps), wrote the result
        model = {"name": entry.name, "id": id(entry.model), "steps": steps}
        encoding = entry.model.encoding
        if encoding.mode == "sparse":  # its background is written as 0, painted as this
            model["background"] = int(encoding.source_values[0])
        shape = spatial_shape(image, axis)
        if not index:
            classes = result.ndim - len(shape)  # probabilities of several classes: one axis
            if classes not in ((0,) if kind == "labels" else (0, 1)) or tuple(
                result.shape[classes:]
            ) != tuple(shape):
                raise InputError(
                    f"The image layer '{image.name}' changed while it was segmented; segment "
                    "it again."
                )
            return write_layer(self.viewer, image, result, kind, suffix, axis, model)
        extra = result.shape[:-2]  # the class axis of probabilities, if any
        full_shape = (*extra, *shape)
        if (
            len(index) + 2 != len(shape)
            or any(i >= n for i, n in zip(index, shape, strict=False))
            or tuple(shape[-2:]) != tuple(result.shape[-2:])
        ):
            raise InputError(
                f"The image layer '{image.name}' changed while it was segmented; segment it again."
            )
        existing = output_layer(self.viewer, image, suffix)
        into = None
        if existing is None:  # a result painted on: this plane may join it if untouched
            into = self._untouched(image, suffix, index, len(extra), model, full_shape, axis)
            existing = into
        data = None
        if existing is not None:
            data = layer_result(existing, image, axis)
            data = data if data.shape == full_shape else None
            earlier = existing.metadata[OUTPUT_KEY].get("model")
            if data is not None and isinstance(earlier, dict) and earlier != model:
                name = earlier.get("name")
                source = (
                    f"an earlier version of '{name}' (before its latest training)"
                    if (name, earlier.get("id")) == (entry.name, model["id"])
                    else f"the model '{name}'"
                )
                show_info(
                    f"The other planes of '{existing.name}' came from {source}; the layer now "
                    f"holds this plane's result from '{entry.name}' only (segment every plane "
                    "to fill it)."
                )
                data = None
            elif data is None and existing.data.any():
                show_info(
                    f"'{existing.name}' held results of another shape (another model's "
                    "classes); it now holds this plane's result only."
                )
        if data is not None:
            if np.result_type(data.dtype, result.dtype) != data.dtype:
                data = data.astype(np.result_type(data.dtype, result.dtype))
        if data is None:
            data = np.zeros(full_shape, result.dtype)
        plane = (*(slice(None),) * len(extra), *index)
        data[plane] = result
        layer = write_layer(self.viewer, image, data, kind, suffix, axis, model, into=into)
        planes = layer.metadata[OUTPUT_KEY].setdefault("planes", {})
        planes[",".join(map(str, index))] = plane_digest(data[plane])
        return layer

    def _untouched(self, image, suffix, index, extra, model, full_shape, axis):
        """The result layer the user edited, where this plane of it is not theirs: written
        by the same model and not painted since (or never written and empty)."""
        edited = output_layer(self.viewer, image, suffix, edited=True)
        if edited is None or edited.metadata[OUTPUT_KEY].get("model") != model:
            return None
        data = layer_result(edited, image, axis)
        if data.shape != full_shape:
            return None
        plane = data[(*(slice(None),) * extra, *index)]
        written = edited.metadata[OUTPUT_KEY].get("planes", {}).get(",".join(map(str, index)))
        untouched = plane_digest(plane) == written if written else not plane.any()
        return edited if untouched else None

    def _on_finished(self) -> None:
        entry = self._job.get("entry")
        if entry is not None:
            self.registry.set_busy(entry.model, False)
        self._worker = None
        self._set_running(False)
        if self._active_changed:  # a model loaded or trained meanwhile
            self._select_active_model()
