"""The "Train U-Net" widget: train on an image layer and a labels layer."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from pydantic import ValidationError
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from .._device import default_base_channels, resolve_device
from ..config import ModelConfig, TrainConfig, describe_error
from ..data import MAX_SEMANTIC_CLASSES, InputError, channel_axis_from_labels
from ..model import SegmentationModel
from ..training import (
    EpochEnded,
    MeasuringLabelOffset,
    StepEnded,
    TrainingFinished,
    TrainingStarted,
)
from ._form import config_field, device_choices, status_area
from ._layers import (
    AUTO,
    channel_choices,
    channel_field,
    check_pair,
    chosen_axis,
    current_index,
    full_resolution,
    layers_of,
    leading_axis,
    made_here,
    mark_edited,
    output_layer,
    placed_alike,
    scribble_result_labels,
    single_plane_axis,
    spatial_shape,
    unmark_unpainted,
    watch_layers,
    write_layer,
)
from ._models import registry_for
from ._plot import TrainingPlot
from ._workers import JobFailed, PlanesSelected, Preview, PreviewReady, refuse, train_worker

DEFAULT_MINUTES = 5.0
_SUGGEST_MAX_PIXELS = 2**23  # labels read for the label mode when chosen, at most (8 M)


def _named_for(layer: Labels, image: Image, images: list[str]) -> bool:
    """Whether ``layer`` is named after ``image`` ("cells - Labels", as napari names a new
    labels layer): its name starts with the image's, alone or followed by a separator,
    and with no longer name of the viewer's ``images`` ("cells_2 - Labels" is cells_2's,
    not cells')."""

    def starts(base: str) -> bool:
        name = layer.name
        return name == base or (name.startswith(base) and not name[len(base)].isalnum())

    owners = [name for name in images if starts(name)]
    return bool(owners) and max(owners, key=len) == image.name


def format_duration(seconds: float) -> str:
    """1:05 for 65 s, 1:02:03 for 3723 s."""
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class TrainWidget(QWidget):
    """Train a U-Net on an image layer and a labels layer of the viewer.

    Labels may be dense (every pixel labelled) or sparse scribbles. In a stack only
    the planes that hold labels are trained on. Training runs in a thread worker;
    Stop ends it at the next step and keeps the best weights seen. The trained model
    becomes the viewer's active model, used by "Segment with U-Net".
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.registry = registry_for(napari_viewer)
        self.model: SegmentationModel | None = None
        self._own_settings: list | None = None  # the form's model fields while continuing
        self._worker = None
        self._stop = threading.Event()
        self._completed = False  # the running training reached TrainingFinished
        self._preview_layer_source: Image | None = None
        self._preview_data: np.ndarray | None = None
        self._preview_axis: int | None = None
        self._preview: Preview | None = None
        self._preview_epoch: int | None = None  # the epoch whose weights drew the preview
        self._told_stack: set = set()  # image layers said to be read as stacks of grey planes
        self._busy_model: SegmentationModel | None = None
        self._image_name = self._labels_name = ""
        self._unmark: Labels | None = None  # marked at start, unmarked if it never trained
        self._planes: tuple[tuple[int, ...], ...] = ()  # the labelled planes of the run
        self._planes_note = ""

        self.image = ComboBox(
            name="image",
            label="image",
            choices=lambda _: layers_of(self.viewer, Image),
            tooltip="The image to learn from (2-D, a Z/T stack, or RGB).",
        )
        self.labels = ComboBox(
            name="labels",
            label="labels",
            choices=lambda _: layers_of(self.viewer, Labels),
            tooltip="Labels of the same size: dense labels or sparse scribbles.",
        )
        self.channels = channel_field(
            self.image, "the first axis if the labels lack it, or an axis they have one plane long"
        )
        self.mode = config_field(TrainConfig, "mode", label="label mode")
        self.mode.tooltip = (
            "semantic: pixel value = class, 0 = background. "
            "sparse: scribbles; 0 = not annotated, the lowest painted value is background. "
            "instances: one id per object; touching objects are kept apart."
        )
        self.continue_training = CheckBox(
            name="continue_training",
            text="continue training the active model",
            value=False,
            tooltip="Start from the active model (trained or loaded) instead of a new one.",
        )
        self.depth = config_field(ModelConfig, "depth", label="model depth")
        self.base_channels = config_field(
            ModelConfig,
            "base_channels",
            step=8,
            value=default_base_channels(resolve_device("auto")),
        )
        self.budget = ComboBox(
            name="budget",
            label="train for",
            choices=["minutes", "epochs"],
            value="minutes",
            tooltip="Stop after a time budget (the learning-rate schedule fits into it) "
            "or after a number of epochs.",
        )
        self.minutes = config_field(TrainConfig, "minutes", value=DEFAULT_MINUTES, step=0.25)
        self.minutes.min = 0.05
        self.epochs = config_field(TrainConfig, "epochs", value=TrainConfig().epochs)
        self.patch_size = config_field(TrainConfig, "patch_size", step=16)
        self.batch_size = config_field(TrainConfig, "batch_size")
        self.preview = CheckBox(
            name="preview",
            text="live preview",
            value=True,
            tooltip="After each epoch, segment the plane on screen into a '<image> preview' "
            "layer.",
        )
        self.form = Container(
            widgets=[
                self.image,
                self.labels,
                self.channels,
                self.mode,
                self.continue_training,
                self.depth,
                self.base_channels,
                self.budget,
                self.minutes,
                self.epochs,
                self.patch_size,
                self.batch_size,
                self.preview,
            ]
        )
        self.learning_rate = config_field(TrainConfig, "learning_rate", step=1e-4)
        self.augment = config_field(TrainConfig, "augment", label="augmentation")
        self.elastic = config_field(TrainConfig, "elastic", label="elastic deformation")
        self.zoom = config_field(TrainConfig, "zoom", step=0.05, label="zoom and turn")
        self.foreground_sampling = config_field(TrainConfig, "foreground_sampling", step=0.05)
        self.border_weight = config_field(TrainConfig, "border_weight", step=1.0)
        self.dice_weight = config_field(TrainConfig, "dice_weight", step=0.1, label="Dice weight")
        self.ce_weight = config_field(TrainConfig, "ce_weight", step=0.1, label="CE weight")
        self.validation_fraction = config_field(TrainConfig, "validation_fraction", step=0.05)
        self.label_offset = config_field(TrainConfig, "label_offset", label="measure label offset")
        self.device = config_field(TrainConfig, "device", choices=device_choices())
        self.norm = config_field(ModelConfig, "norm", label="normalisation")
        self.dropout = config_field(ModelConfig, "dropout", step=0.01)
        self.advanced = Container(
            widgets=[
                self.learning_rate,
                self.augment,
                self.elastic,
                self.zoom,
                self.foreground_sampling,
                self.border_weight,
                self.dice_weight,
                self.ce_weight,
                self.validation_fraction,
                self.label_offset,
                self.device,
                self.norm,
                self.dropout,
            ]
        )
        for field in (self.form, self.advanced):
            field.margins = (0, 0, 0, 0)
        collapsible = QCollapsible("Advanced")
        collapsible.addWidget(self.advanced.native)

        self.train_button = QPushButton("Train")
        self.train_button.setToolTip("Train with the settings above.")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop training now and keep the best weights so far.")
        self.save_button = QPushButton("Save model…")
        self.save_button.setToolTip("Write the trained model to a .safetensors file.")
        self.train_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.save_button.clicked.connect(lambda: self.save_model())
        buttons = QHBoxLayout()
        for button in (self.train_button, self.stop_button, self.save_button):
            buttons.addWidget(button)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.status = QLabel("Pick an image and its labels, then press Train.")
        self.status.setWordWrap(True)
        self.plot = TrainingPlot()

        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(collapsible)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(status_area(self.status))
        layout.addWidget(self.plot)
        layout.addStretch(1)

        self.budget.changed.connect(self._update_budget)
        self.mode.changed.connect(self._update_mode_fields)
        self.augment.changed.connect(self._update_mode_fields)
        self.continue_training.changed.connect(self._update_model_fields)
        self.image.changed.connect(self._image_changed)
        self.labels.changed.connect(self._suggest_mode)
        self.registry.changed.connect(self._update_model_fields)
        watch_layers(self.viewer, self.reset_choices)
        self.viewer.dims.events.current_step.connect(self._follow_plane)
        self.reset_choices()
        self._image_changed()
        self._update_budget()
        self._update_mode_fields()
        self._update_model_fields()
        self._suggest_mode()  # the labels chosen with the form
        self._set_running(False)

    # ------------------------------------------------------------------ form

    def reset_choices(self, *_) -> None:
        """Refresh the layer choices (napari calls this when layers change)."""
        self.form.reset_choices()
        self._update_channels()
        self._match_labels()

    def _image_changed(self, *_) -> None:
        self._update_channels()
        if channel_choices(self.image.value):
            self.channels.value = AUTO  # an axis chosen for another layer means nothing here
        self._match_labels(keep_fitting=False)

    def _match_labels(self, *_, keep_fitting: bool = True) -> None:
        """Pick a labels layer for the image: one of its own shape first (one named after
        it first, then the one chosen, if it is), then one that lacks a channel axis of
        the image; the user's layers before this plugin's results and previews. With
        ``keep_fitting`` (layers were added or removed), a chosen layer that fits stays."""
        image, labels = self.image.value, self.labels.value
        if image is None or (keep_fitting and labels is not None and self._fits(image, labels)):
            return
        candidates = sorted(  # the user's own layers before this plugin's results
            (layer for _, layer in layers_of(self.viewer, Labels)), key=made_here
        )
        same = [layer for layer in candidates if spatial_shape(layer) == spatial_shape(image)]
        # the image's own labels ("B - Labels", as napari names a new one) before others of
        # its shape: images of one size are common, and another's labels fit them too
        names = [layer.name for _, layer in layers_of(self.viewer, Image)]
        own = [layer for layer in same if not made_here(layer) and _named_for(layer, image, names)]
        if labels in (own or same) and not made_here(labels):
            return
        fitting = own or same or [layer for layer in candidates if self._fits(image, layer)]
        if fitting:
            self.labels.value = fitting[0]

    def _suggest_mode(self, *_) -> None:
        """Labels of more values than semantic mode takes (one id per object, as napari's
        sample and most instance annotations) set the label mode to instances, with a
        note, where the mode is the form's own; large layers are left to the run's check."""
        labels = self.labels.value
        if labels is None or self.continue_training.value or self.mode.value != "semantic":
            return
        data = full_resolution(labels)
        if not isinstance(data, np.ndarray) or data.size > _SUGGEST_MAX_PIXELS:
            return
        values = np.unique(data)
        count = int(np.count_nonzero(values))
        if values.size > MAX_SEMANTIC_CLASSES:  # as semantic mode counts them, 0 too
            self.mode.value = "instances"
            show_info(
                f"'{labels.name}' holds {count} label values, one per object rather than "
                "classes: the label mode is set to instances."
            )

    def _update_channels(self, *_) -> None:
        self.channels.reset_choices()
        self.channels.visible = bool(channel_choices(self.image.value))

    def _fits(self, image: Image, labels: Labels) -> bool:
        try:
            check_pair(image, labels, self.channel_axis(image, labels))
        except InputError:
            return False
        return True

    def channel_axis(self, image: Image, labels: Labels | None) -> int | None:
        """The axis of ``image``'s data that holds channels, as the "channels" field says
        (auto: an axis the labels lack, which :func:`check_pair` accepts only as the first
        one, or an axis they have one plane long; -1 for an RGB layer; None: grey)."""
        auto = None
        if labels is not None and not getattr(image, "rgb", False):
            shape, label_shape = tuple(full_resolution(image).shape), spatial_shape(labels)
            auto = leading_axis(shape, channel_axis_from_labels(shape, label_shape))
            if auto is None:
                auto = single_plane_axis(shape, label_shape)
        choice = self.channels.value if channel_choices(image) else AUTO
        return chosen_axis(image, choice, auto)

    def _update_budget(self, *_) -> None:
        by_time = self.budget.value == "minutes"
        self.minutes.visible = by_time
        self.epochs.visible = not by_time

    def _update_mode_fields(self, *_) -> None:
        self.border_weight.enabled = self.mode.value == "instances"
        self.elastic.enabled = self.augment.value
        self.zoom.enabled = self.augment.value

    @property
    def trained_model(self) -> SegmentationModel | None:
        """The model "Save model…" writes: the last one trained here, or, in a panel
        opened since, the viewer's active model where it was trained rather than loaded."""
        if self.model is not None:
            return self.model
        active = self.registry.active
        return active.model if active is not None and active.source == "trained" else None

    def _update_model_fields(self, *_) -> None:
        if not self.running:
            self.save_button.setEnabled(self.trained_model is not None)
        if self.running:  # the (disabled) form shows the run's model until the run ends
            self.continue_training.enabled = False
            return
        active = self.registry.active
        self.continue_training.enabled = active is not None and self._worker is None
        if active is None:
            self.continue_training.value = False
        self.continue_training.text = (
            "continue training the active model"
            if active is None
            else f"continue training '{active.name}'"
        )
        resume = self.continue_training.value and active is not None
        fields = (self.mode, self.depth, self.base_channels, self.norm, self.dropout)
        for field in fields:
            field.enabled = not resume
        if resume and self._own_settings is None:  # shown again when it is unticked
            self._own_settings = [field.value for field in fields]
        elif not resume and self._own_settings is not None:
            for field, value in zip(fields, self._own_settings, strict=True):
                field.value = value
            self._own_settings = None
        if resume:
            network = active.model.network.config
            self.mode.value = active.model.mode
            self.depth.value = network.depth
            self.base_channels.value = network.base_channels
            self.norm.value = network.norm
            self.dropout.value = network.dropout

    def train_config(self) -> TrainConfig:
        """The :class:`TrainConfig` the form describes."""
        by_time = self.budget.value == "minutes"
        return TrainConfig(
            mode=self.mode.value,
            minutes=self.minutes.value if by_time else None,
            epochs=None if by_time else self.epochs.value,
            patch_size=self.patch_size.value,
            batch_size=self.batch_size.value,
            learning_rate=self.learning_rate.value,
            augment=self.augment.value,
            elastic=self.elastic.value,
            zoom=self.zoom.value,
            foreground_sampling=self.foreground_sampling.value,
            border_weight=self.border_weight.value,
            dice_weight=self.dice_weight.value,
            ce_weight=self.ce_weight.value,
            validation_fraction=self.validation_fraction.value,
            label_offset=self.label_offset.value,
            device=self.device.value,
        )

    def model_config(self) -> ModelConfig:
        """The architecture of a new model as the form describes it."""
        return ModelConfig(
            depth=self.depth.value,
            base_channels=self.base_channels.value,
            norm=self.norm.value,
            dropout=self.dropout.value,
        )

    # ------------------------------------------------------------------ jobs

    @property
    def running(self) -> bool:
        return self._worker is not None

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.save_button.setEnabled(not running and self.trained_model is not None)
        self.form.enabled = not running
        self.advanced.enabled = not running
        if not running:
            self._update_model_fields()

    def start(self) -> None:
        """Start training with the form's settings; problems appear as notifications."""
        if self.running:
            return
        image, labels = self.image.value, self.labels.value
        try:
            if image is None:
                raise InputError("Add an image layer to train on (File > Open, or a sample).")
            if labels is None:
                raise InputError(
                    "Add a labels layer with the image's size and paint some labels "
                    "(Layers > New labels layer)."
                )
            axis = self.channel_axis(image, labels)
            check_pair(image, labels, axis)
            if not placed_alike(image, labels, axis):
                show_warning(
                    f"The labels layer '{labels.name}' is shown with another scale, "
                    f"translation or rotation than the image '{image.name}', but training "
                    "pairs their pixels by index, not by where they are shown. If the labels "
                    "were painted where they appear, give both layers the same placement."
                )
            config = self.train_config()
            model = None
            if self.continue_training.value:
                entry = self.registry.active
                if entry is None:
                    raise InputError("There is no active model to continue; train or load one.")
                if entry.busy:
                    raise InputError(f"'{entry.name}' is busy; wait for its job to end.")
                model = entry.model
            model_config = None if model is not None else self.model_config()
        except InputError as error:
            refuse(self, str(error))
            return
        except ValidationError as error:
            refuse(self, describe_error(error))
            return

        preview = None
        if self.preview.value:
            index = current_index(self.viewer, image, axis)
            preview = Preview(full_resolution(image), index, axis, config.device)
            self._preview_layer_source = image
            self._preview_axis = axis
            self._preview_data = None
        self._preview = preview  # its plane follows the viewer (_follow_plane)
        self._preview_epoch = None
        if axis is not None and axis != -1:
            channels = full_resolution(image).shape[axis]
            show_info(f"Training reads axis {axis} of '{image.name}' as {channels} channels.")
        elif (
            axis is None
            and self.channels.value == AUTO
            and channel_choices(image)
            and image.unique_id not in self._told_stack  # once per layer, not every run
        ):
            self._told_stack.add(image.unique_id)
            show_info(
                f"Training reads '{image.name}' as a stack of grey planes; if one of its "
                "axes holds channels, choose it in the 'channels' field."
            )
        label_data = full_resolution(labels)
        if config.mode == "sparse":
            label_data, note = scribble_result_labels(labels, label_data)
            if note:
                show_info(note)
        self._stop.clear()
        self._completed = False
        self._worker = train_worker(
            full_resolution(image),
            label_data,
            channel_axis=axis,
            config=config,
            model=model,
            model_config=model_config,
            preview=preview,
            stop=self._stop,
        )
        self._image_name = image.name
        self._labels_name = labels.name
        # a result trained on as labels (corrections) is not replaced by the next; marked
        # now, so that no segmentation replaces it while the data are prepared, and
        # unmarked if the run ends before training started
        self._unmark = None if mark_edited(labels) else labels
        self._planes = ()
        self._worker.yielded.connect(self._on_event)
        self._worker.returned.connect(self._on_returned)
        self._worker.finished.connect(self._on_finished)
        if model is not None:
            self.registry.set_busy(model, True)
        self._busy_model = model
        self.plot.clear()
        self.progress.setValue(0)
        self.progress.setFormat("preparing…")
        self.status.setText("Preparing the training data…")
        self._set_running(True)
        self._worker.start()

    def event(self, event) -> bool:
        # napari closes a dock widget by taking it out of its parent: stop the run with it,
        # or it would go on training (and could be started again from a new panel)
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.stop()
        return super().event(event)

    def stop(self) -> None:
        """Stop training at the next step; the model keeps its best weights."""
        if self.running:
            self._stop.set()
            self.stop_button.setEnabled(False)
            self.status.setText("Stopping…")

    def _on_event(self, event) -> None:
        if isinstance(event, StepEnded):
            self.progress.setValue(int(round(event.progress * 1000)))
            self.progress.setFormat(f"%p%  ·  {format_duration(event.eta)} left")
            self.plot.add_loss(event.step, event.loss)
        elif isinstance(event, EpochEnded):
            self.plot.add_score(event.step, event.score)
            score = "-" if event.score is None else f"{event.score:.3f}"
            best = "-" if event.best_score is None else f"{event.best_score:.3f}"
            if not self._stop.is_set():
                self.status.setText(
                    f"Epoch {event.epoch}: loss {event.loss:.3f}, validation score {score} "
                    f"(best {best}), {format_duration(event.elapsed)} elapsed."
                )
        elif isinstance(event, PreviewReady):
            self._show_preview(event)
        elif isinstance(event, PlanesSelected):
            self._planes = event.planes
            self._planes_note = (
                f" from the {event.used} of {event.total} planes that hold labels"
                if event.total > 1
                else ""
            )
        elif isinstance(event, TrainingStarted):
            self._unmark = None  # the labels layer was trained on: it stays the user's
            self._busy_model = event.model
            self.registry.set_busy(event.model, True)
            split = (
                f"{event.train_planes} training and {event.validation_planes} validation part(s)"
            )
            self.status.setText(
                f"Training on {event.device} ({event.precision}), {split}{self._planes_note}."
            )
            for note in event.notes:
                show_info(self._layer_words(note))
        elif isinstance(event, MeasuringLabelOffset):
            self.progress.setValue(1000)
            self.progress.setFormat("measuring the label offset…")
            self.stop_button.setEnabled(False)  # seconds, and nothing left to stop
            if not self._stop.is_set():
                self.status.setText(
                    "Training done; measuring on the validation part whether the labels sit "
                    "a fraction of a pixel off the image…"
                )
        elif isinstance(event, TrainingFinished):
            self._completed = True
            self.progress.setValue(1000)
            self.progress.setFormat("done")
        elif isinstance(event, JobFailed):
            message = self._layer_words(event.message)
            show_error(message)
            self.progress.setFormat("failed")
            self.status.setText(f"Training failed: {message}")

    def _layer_words(self, text: str) -> str:
        """A message of the engine, which numbers the images it trains on ("Image #2"),
        in this widget's words: the layers' names and, for a stack, the plane (the
        engine's images are the labelled planes, in order)."""

        def plane(number: str) -> str:
            k = int(number)
            if not self._planes:
                return ""
            index = self._planes[k] if k < len(self._planes) else None
            return "" if index is None else f" (plane {', '.join(map(str, index))})"

        text = text.replace(
            "The labels layer is empty", f"The labels layer '{self._labels_name}' is empty"
        )
        text = re.sub(
            r"\bThe labels of Image #(\d+)(?: \(plane \d+\))? hold\b",
            lambda m: f"The labels layer '{self._labels_name}'{plane(m.group(1))} holds",
            text,
        )
        text = re.sub(
            r"\b([Tt])he labels of Image #(\d+)(?: \(plane \d+\))?",
            lambda m: f"{m.group(1)}he labels layer '{self._labels_name}'{plane(m.group(2))}",
            text,
        )
        return re.sub(
            r"\bImage #(\d+)(?: \(plane \d+\))?",
            lambda m: f"'{self._image_name}'{plane(m.group(1))}",
            text,
        )

    def _follow_plane(self, *_) -> None:
        """The live preview segments the plane on screen: the next epoch's follows it."""
        preview, source = self._preview, self._preview_layer_source
        if preview is None or not self.running or source not in self.viewer.layers:
            return
        index = current_index(self.viewer, source, self._preview_axis)
        if len(index) == len(preview.index):
            preview.index = index

    def _show_preview(self, event: PreviewReady) -> None:
        source = self._preview_layer_source
        if source is None or source not in self.viewer.layers:
            return
        if output_layer(self.viewer, source, "preview") is None:  # gone, or painted on
            self._preview_data = None  # a fresh one: the old layer keeps its own data
        shape = spatial_shape(source, self._preview_axis)
        if tuple(shape[-2:]) != tuple(event.labels.shape[-2:]) or len(event.index) + 2 != len(
            shape
        ):
            return  # the image layer's data was replaced while training ran
        if event.index:
            if self._preview_data is None or self._preview_data.dtype != event.labels.dtype:
                self._preview_data = np.zeros(shape, event.labels.dtype)
            self._preview_data[event.index] = event.labels
            data = self._preview_data
        else:
            data = event.labels
        write_layer(self.viewer, source, data, "labels", "preview", self._preview_axis)
        self._preview_epoch = event.epoch

    def _on_returned(self, model: SegmentationModel | None) -> None:
        if model is None:
            return
        # Stop pressed while the label offset was measured still ends a finished run
        stopped = self._stop.is_set() and not self._completed
        known = self.registry.entry_of(model)
        if known is None and not model.history["runs"][-1].get("steps"):
            self.progress.setFormat("stopped")
            self.status.setText("Stopped before the first training step; no model was made.")
            return
        self.model = model
        name = (
            known.name
            if known is not None
            else f"{self._image_name} {model.mode} {time.strftime('%H:%M')}"
        )
        entry = self.registry.add(model, name, "trained")
        score = "-" if model.best_score is None else f"{model.best_score:.3f}"
        verb = "stopped" if stopped else "finished"
        why = ""
        run = model.history["runs"][-1]
        if model.best_score is None and not stopped:
            why = (
                " (no validation part was held out, or it held no painted foreground: the "
                "model keeps its last weights)"
            )
        elif run.get("best_epoch") and run["best_epoch"] < run.get("epochs", 0):
            why = (
                f" (the model keeps the weights of epoch {run['best_epoch']} of "
                f"{run['epochs']}, which scored best"
                + (
                    "; the preview shows them)"
                    if self._preview_shown() and self._preview_epoch == run["best_epoch"]
                    else ")"
                )
            )
        self.status.setText(
            f"Training {verb}. Best validation score {score}{why}. "
            f"'{entry.name}' is now the active model for segmenting."
        )
        if stopped:
            self.progress.setFormat("stopped")
        show_info(f"Training {verb}: '{entry.name}' (validation score {score}) is ready.")

    def _preview_shown(self) -> bool:
        source = self._preview_layer_source
        return (
            self._preview is not None
            and source is not None
            and source in self.viewer.layers
            and output_layer(self.viewer, source, "preview") is not None
        )

    def _on_finished(self) -> None:
        if self._unmark is not None:  # refused before training started
            unmark_unpainted(self._unmark)
            self._unmark = None
        if self._busy_model is not None:
            self.registry.set_busy(self._busy_model, False)
        self._busy_model = None
        self._worker = None
        self._set_running(False)

    # ------------------------------------------------------------------ saving

    def save_model(self, path: str | Path | None = None) -> Path | None:
        """Write the trained model to ``path`` (asked for with a file dialog if None)."""
        model = self.trained_model
        if model is None:
            show_warning("There is no trained model to save yet.")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Save U-Net model", "unet.safetensors", "U-Net model (*.safetensors)"
            )
            if not path:
                return None
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        try:
            model.save(path)
        except OSError as error:
            show_error(f"Could not write {path}: {error.strerror or error}.")
            return None
        show_info(f"Saved the model to {path}.")
        return path
