"""The Train U-Net widget in a real viewer: train, stop, save, continue, scribbles, errors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from qtpy.QtCore import QTimer

from napari_unet._widgets._models import registry_for
from napari_unet._widgets.load import LoadWidget
from napari_unet._widgets.segment import CURRENT_PLANE, SegmentWidget
from napari_unet._widgets.train import TrainWidget, format_duration
from napari_unet.io import load_model
from napari_unet.model import SegmentationModel

from .widget_helpers import scribbles, set_tiny, untrained_model, wait_for


@pytest.fixture
def viewer(make_napari_viewer, sample):
    viewer = make_napari_viewer()
    (image, labels), _ = sample
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels, name="nuclei labels")
    return viewer


def test_train_stop_save_load_and_segment_a_stack(viewer, qtbot, tmp_path, sample, notifications):
    train = TrainWidget(viewer)
    segment = SegmentWidget(viewer)
    load = LoadWidget(viewer)
    set_tiny(train)
    train.mode.value = "instances"
    train.budget.value = "minutes"
    train.minutes.value = 1.0

    train.start()
    assert train.running
    assert not train.train_button.isEnabled()
    assert train.stop_button.isEnabled()
    assert not train.save_button.isEnabled()
    qtbot.waitUntil(lambda: len(train.plot.scores) >= 5, timeout=60_000)
    train.stop()
    wait_for(qtbot, train)
    scores = [score for _, score in train.plot.scores]

    model = train.model
    assert model.best_score == pytest.approx(max(scores))
    assert registry_for(viewer).active.model is model
    assert segment.model.value.model is model
    assert "Training stopped" in train.status.text()
    assert train.train_button.isEnabled()
    assert train.save_button.isEnabled()
    assert viewer.layers["nuclei preview"].data.max() > 0
    assert not notifications.errors

    path = train.save_model(tmp_path / "nuclei")
    assert path == tmp_path / "nuclei.safetensors"
    assert load_model(path).best_score == pytest.approx(max(scores))

    loaded = load.load(path)
    assert registry_for(viewer).active.model is loaded
    assert "instances" in load.card.text()
    assert segment.model.value.model is loaded

    (image, _), (other, _) = sample
    stack = viewer.add_image(
        np.stack([image, other, image[::-1]]),
        name="stack",
        scale=(2.0, 0.5, 0.5),
        translate=(10.0, 5.0, -5.0),
        axis_labels=("z", "y", "x"),
    )
    segment.image.value = stack
    segment.start()
    wait_for(qtbot, segment)

    result = viewer.layers["stack segmentation"]
    assert result.data.shape == (3, 256, 256)
    assert tuple(result.scale) == (2.0, 0.5, 0.5)
    assert tuple(result.translate) == (10.0, 5.0, -5.0)
    assert tuple(result.axis_labels) == ("z", "y", "x")
    assert all(result.data[plane].max() > 5 for plane in range(3))  # objects on every plane
    assert not notifications.errors


def test_event_loop_keeps_running_during_training(viewer, qtbot):
    train = TrainWidget(viewer)
    set_tiny(train)
    train.mode.value = "instances"
    train.preview.value = False
    train.epochs.value = 2
    ticks = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))

    timer.start()
    started = time.perf_counter()
    train.start()
    wait_for(qtbot, train)
    elapsed = time.perf_counter() - started
    timer.stop()

    assert len(train.plot.losses) >= 16  # it trained meanwhile
    assert len(ticks) >= 0.25 * elapsed / 0.020
    assert max(np.diff(ticks)) < 1.0  # never frozen for a second


def test_sparse_scribbles_on_one_plane_of_a_stack(make_napari_viewer, qtbot, sample, monkeypatch):
    import threading

    import napari_unet._widgets._workers as workers

    predict, moved, previews = workers.predict, threading.Event(), []

    def preview_after_the_move(*args, **kwargs):
        previews.append(1)
        if len(previews) == 2:  # the second epoch's preview waits for the viewer to move
            moved.wait(30)  # (its plane was read before; the third epoch's is read after)
        return predict(*args, **kwargs)

    monkeypatch.setattr(workers, "predict", preview_after_the_move)
    viewer = make_napari_viewer()
    (image, labels), _ = sample
    stack = viewer.add_image(np.stack([image[::-1], image, image[:, ::-1]]), name="cells")
    painted = np.zeros(stack.data.shape, np.uint8)
    painted[1] = scribbles(labels)
    viewer.add_labels(painted, name="scribbles")
    viewer.dims.set_current_step(0, 1)
    train = TrainWidget(viewer)
    set_tiny(train)
    train.mode.value = "sparse"
    train.epochs.value = 3

    train.start()
    qtbot.waitUntil(lambda: "cells preview" in viewer.layers, timeout=60_000)
    viewer.dims.set_current_step(0, 2)  # the preview follows the plane on screen
    moved.set()
    wait_for(qtbot, train)

    assert train.model.history["runs"][-1]["data"].startswith("1 plane(s)")
    assert "1 of 3 planes" in train._planes_note

    model = train.model
    assert model.mode == "sparse"
    assert model.encoding.class_values == [0, 2]
    preview = viewer.layers["cells preview"].data
    assert preview.shape == (3, 256, 256)
    assert preview[1].any() and preview[2].any() and not preview[0].any()  # shown planes
    segment = SegmentWidget(viewer)
    segment.image.value = stack
    segment.planes.value = "current plane"
    viewer.dims.set_current_step(0, 1)
    segment.start()
    wait_for(qtbot, segment)
    result = viewer.layers["cells segmentation"].data
    assert set(np.unique(result[1])) <= {0, 2}
    assert not result[0].any() and not result[2].any()


@pytest.mark.parametrize("alpha", [False, True])
def test_rgb_image_trains_a_three_channel_model(make_napari_viewer, qtbot, alpha):
    data = Path(__file__).parents[1] / "data"
    viewer = make_napari_viewer()
    pixels = tifffile.imread(data / "he_12.tif")
    if alpha:  # an RGBA layer: alpha is not a channel to learn from
        pixels = np.concatenate([pixels, np.full_like(pixels[..., :1], 255)], axis=-1)
    image = viewer.add_image(pixels, name="he")
    viewer.add_labels(tifffile.imread(data / "he_12_labels.tif"), name="he labels")
    assert image.rgb
    train = TrainWidget(viewer)
    set_tiny(train)
    train.mode.value = "instances"
    train.patch_size.value = 32

    train.start()
    wait_for(qtbot, train)

    assert train.model.in_channels == 3
    assert viewer.layers["he preview"].data.shape == (128, 128)


def test_a_channel_axis_the_labels_lack_trains_a_multichannel_model(
    make_napari_viewer, qtbot, sample, notifications
):
    viewer = make_napari_viewer()
    (image, labels), _ = sample
    stains = viewer.add_image(
        np.stack([image, image.max() - image]), name="stains", axis_labels=("c", "y", "x")
    )
    viewer.add_labels(np.zeros((64, 64), np.uint8), name="other size")
    viewer.add_labels(labels, name="nuclei labels")
    viewer.layers.selection.active = stains
    train = TrainWidget(viewer)
    train.image.value = stains
    set_tiny(train)
    train.mode.value = "instances"

    assert train.labels.value.name == "nuclei labels"
    assert not train.channels.native.isHidden()
    assert train.channel_axis(stains, train.labels.value) == 0
    train.start()
    wait_for(qtbot, train)

    assert not notifications.errors
    assert train.model.in_channels == 2
    assert any("axis 0" in note and "2 channels" in note for note in notifications.infos)
    assert viewer.layers["stains preview"].data.shape == (256, 256)
    assert tuple(viewer.layers["stains preview"].axis_labels) == ("y", "x")


def test_labels_painted_on_a_channel_plane(make_napari_viewer, qtbot, sample, notifications):
    viewer = make_napari_viewer()
    (image, labels), _ = sample
    stains = viewer.add_image(np.stack([image, image[::-1]]), name="stains")
    painted = np.zeros(stains.data.shape, np.uint8)
    painted[1] = scribbles(labels)
    viewer.add_labels(painted, name="scribbles")
    train = TrainWidget(viewer)
    set_tiny(train)
    train.mode.value = "sparse"
    train.preview.value = False

    assert train.channel_axis(stains, train.labels.value) is None  # auto: a stack of 2 planes
    train.start()
    wait_for(qtbot, train)
    assert train.model.in_channels == 1
    assert any("'channels' field" in note for note in notifications.infos)
    train.channels.value = 0
    train.start()
    wait_for(qtbot, train)

    assert not notifications.errors
    assert train.model.in_channels == 2
    assert train.model.history["runs"][-1]["data"].startswith("1 plane(s)")


def test_labels_of_the_images_own_shape_come_first(make_napari_viewer):
    viewer = make_napari_viewer()
    stack = viewer.add_image(np.zeros((3, 32, 32), np.float32), name="z stack")
    viewer.add_labels(np.zeros((3, 32, 32), np.uint8), name="stack labels")
    flat = viewer.add_image(np.zeros((32, 32), np.float32), name="flat")
    viewer.add_labels(np.zeros((32, 32), np.uint8), name="flat labels")
    train = TrainWidget(viewer)

    train.image.value = stack
    train.channels.value = 0
    train.image.value = flat
    assert train.labels.value.name == "flat labels"
    train.image.value = stack  # (32, 32) labels would fit as channels; its own shape wins
    assert train.channels.value == "auto"  # the axis chosen before is forgotten
    assert train.labels.value.name == "stack labels"
    assert train.channel_axis(stack, train.labels.value) is None

    train.labels.value = viewer.layers["flat labels"]  # chosen by hand: three channels
    viewer.add_points(name="unrelated layer")
    assert train.labels.value.name == "flat labels"
    assert train.channel_axis(stack, train.labels.value) == 0


def test_a_corrected_result_with_a_one_plane_channel_axis_trains(
    make_napari_viewer, qtbot, sample, notifications
):
    viewer = make_napari_viewer()
    (image, labels), _ = sample
    movie = viewer.add_image(
        np.stack([np.stack([image, image[::-1]])] * 2), name="movie"
    )  # (T, C, Y, X)
    corrected = np.zeros((2, 1, *image.shape), np.int32)  # as the Segment widget writes it
    corrected[1, 0] = labels
    # placed as the Segment widget writes it: one plane stretched over the two channels
    viewer.add_labels(
        corrected, name="movie segmentation", scale=(1, 2, 1, 1), translate=(0, 0.5, 0, 0)
    )
    train = TrainWidget(viewer)
    set_tiny(train)
    train.mode.value = "instances"

    assert train.channel_axis(movie, train.labels.value) == 1
    train.start()
    wait_for(qtbot, train)

    assert not notifications.errors and not notifications.warnings
    assert train.model.in_channels == 2
    assert train.model.history["runs"][-1]["data"].startswith("1 plane(s)")
    preview = viewer.layers["movie preview"]
    assert preview.data.shape == (2, 1, *image.shape)


def test_an_image_chosen_gets_its_own_labels_among_others_of_its_size(make_napari_viewer):
    viewer = make_napari_viewer()
    a = viewer.add_image(np.zeros((32, 32), np.float32), name="A")
    viewer.add_labels(np.zeros((32, 32), np.uint8), name="A - Labels")
    b = viewer.add_image(np.zeros((32, 32), np.float32), name="B")
    viewer.add_labels(np.zeros((32, 32), np.uint8), name="B - Labels")
    viewer.add_labels(np.zeros((32, 32), np.uint8), name="AB scribbles")  # not A's
    train = TrainWidget(viewer)

    train.image.value = a
    assert train.labels.value.name == "A - Labels"
    train.image.value = b  # A's labels fit B too, but B has its own
    assert train.labels.value.name == "B - Labels"
    train.image.value = a
    assert train.labels.value.name == "A - Labels"
    train.labels.value = viewer.layers["AB scribbles"]  # chosen by hand: kept
    viewer.add_points(name="unrelated layer")
    assert train.labels.value.name == "AB scribbles"

    # one image's name starts another's: "A_2 - Labels" is A_2's, not A's
    a2 = viewer.add_image(np.zeros((32, 32), np.float32), name="A_2")
    viewer.add_labels(np.zeros((32, 32), np.uint8), name="A_2 - Labels")
    train.image.value = a2
    assert train.labels.value.name == "A_2 - Labels"
    train.image.value = a
    assert train.labels.value.name == "A - Labels"


def test_painted_labels_come_before_the_plugins_results(make_napari_viewer):
    from napari_unet._widgets._layers import write_layer

    viewer = make_napari_viewer()
    cells = viewer.add_image(np.zeros((2, 32, 32), np.float32), name="cells")
    viewer.add_labels(np.zeros((2, 32, 32), np.uint8), name="painted")
    other = viewer.add_image(np.zeros((16, 16), np.float32), name="other")
    write_layer(viewer, cells, np.zeros((2, 32, 32), np.int32), "labels", "segmentation")
    train = TrainWidget(viewer)

    train.image.value = other
    train.image.value = cells

    assert train.labels.value.name == "painted"  # not "cells segmentation", on top


def test_labels_without_a_later_channel_axis_are_refused(make_napari_viewer, notifications):
    viewer = make_napari_viewer()
    movie = viewer.add_image(np.zeros((3, 2, 32, 32), np.float32), name="movie")
    labels = viewer.add_labels(np.ones((3, 32, 32), np.uint8), name="t labels")
    train = TrainWidget(viewer)
    train.labels.value = labels  # napari shows these on the image's "c" slider

    train.start()

    assert not train.running
    assert train.channel_axis(movie, labels) == 1
    assert "lacks axis 1" in notifications.errors[0]
    assert "own shape" in notifications.errors[0] and "'channels'" in notifications.errors[0]


def test_labels_that_differ_between_channel_planes_are_refused():
    from napari_unet._widgets._workers import _collapse_channels
    from napari_unet.data import InputError

    labels = np.zeros((2, 4, 5), np.uint8)
    labels[0, 1, 1] = 2
    labels[1, 2, 2] = 1
    labels[1, 1, 1] = 2  # the same value on both planes is fine
    merged = _collapse_channels(labels, 0)
    assert merged[1, 1] == 2 and merged[2, 2] == 1 and merged.sum() == 3
    labels[1, 1, 1] = 1
    with pytest.raises(InputError, match="differ between channel planes"):
        _collapse_channels(labels, 0)


def test_continue_training_a_loaded_model(viewer, qtbot, model_file):
    load = LoadWidget(viewer)
    train = TrainWidget(viewer)
    set_tiny(train)
    train.preview.value = False
    loaded = load.load(model_file)
    runs_before = len(loaded.history["runs"])

    train.continue_training.value = True
    assert train.mode.value == "instances" and not train.mode.enabled
    assert train.depth.value == 2 and not train.depth.enabled
    train.start()
    wait_for(qtbot, train)

    assert train.model is loaded
    assert len(loaded.history["runs"]) == runs_before + 1
    assert registry_for(viewer).active.model is loaded
    assert len(registry_for(viewer).entries) == 1


def test_a_model_loaded_during_a_run_leaves_the_form_alone(viewer, qtbot, model_file):
    load = LoadWidget(viewer)
    train = TrainWidget(viewer)
    set_tiny(train)
    train.preview.value = False
    load.load(model_file)  # an instances model
    train.continue_training.value = True
    text = train.continue_training.text

    train.start()
    registry_for(viewer).add(untrained_model(), "semantic one", "test")  # made active

    assert train.mode.value == "instances" and train.continue_training.text == text
    wait_for(qtbot, train)
    assert train.mode.value == "instances"  # the run's model is the active one again
    assert train.continue_training.enabled


def start_and_stop_at_once(viewer, qtbot) -> TrainWidget:
    """A tiny instances run stopped as soon as it starts."""
    train = TrainWidget(viewer)
    set_tiny(train)
    train.mode.value = "instances"
    train.start()
    train.stop()
    wait_for(qtbot, train)
    return train


def test_stop_before_the_first_step_makes_no_model(viewer, qtbot):
    train = start_and_stop_at_once(viewer, qtbot)

    assert train.model is None
    assert registry_for(viewer).active is None
    assert "no model was made" in train.status.text()
    assert train.train_button.isEnabled() and not train.save_button.isEnabled()


def test_stop_while_the_label_offset_is_measured_keeps_a_finished_run(viewer, qtbot, monkeypatch):
    import napari_unet.training as training

    train = TrainWidget(viewer)
    set_tiny(train)
    train.mode.value = "instances"

    def measured(network, samples, device="cpu", tile=None, least=0):
        train._stop.set()  # Stop pressed while the offset is measured (from this thread)
        return (-0.5, 0.0)

    monkeypatch.setattr(training, "estimate_label_offset", measured)
    train.start()
    wait_for(qtbot, train)

    assert train.model is not None and train.model.label_offset == (-0.5, 0.0)
    assert "Training finished" in train.status.text()
    assert train.progress.format() == "done"

    # what the panel shows while measuring: no Stop, which would stop nothing
    train._stop.clear()
    train._set_running(True)
    train._on_event(training.MeasuringLabelOffset(1.0))
    assert "measuring" in train.progress.format()
    assert "measuring on the validation part" in train.status.text()
    assert not train.stop_button.isEnabled()
    train._set_running(False)


def test_bad_inputs_become_notifications(make_napari_viewer, qtbot, sample, notifications):
    viewer = make_napari_viewer()
    train = TrainWidget(viewer)
    set_tiny(train)
    (image, labels), _ = sample

    train.start()
    assert train.status.text().startswith("Not started: Add an image layer")  # not a last run
    viewer.add_image(image, name="nuclei")
    train.start()
    viewer.add_labels(labels[:128], name="half labels")
    train.start()
    empty = viewer.add_labels(np.zeros_like(labels), name="empty")
    train.labels.value = empty
    train.start()
    wait_for(qtbot, train)
    viewer.layers.remove(empty)
    viewer.add_labels(labels, name="instances")
    train.mode.value = "semantic"
    train.start()
    wait_for(qtbot, train)

    assert len(notifications.errors) == 5
    assert "Add an image layer" in notifications.errors[0]
    assert "Add a labels layer" in notifications.errors[1]
    assert "(128, 256)" in notifications.errors[2] and "(256, 256)" in notifications.errors[2]
    assert "labels layer 'empty' is empty" in notifications.errors[3]
    assert "instances" in notifications.errors[4]
    assert train.model is None
    assert registry_for(viewer).active is None
    assert train.train_button.isEnabled()


def test_a_failed_run_names_the_image_layer(make_napari_viewer, qtbot, sample, notifications):
    viewer = make_napari_viewer()
    train = TrainWidget(viewer)
    set_tiny(train)
    (image, labels), _ = sample
    viewer.add_image(image, name="nuclei")
    negative = labels.astype(np.int32)
    negative[0, 0] = -1  # the engine refuses it once the run has started
    viewer.add_labels(negative, name="instances")
    train.start()
    wait_for(qtbot, train)

    assert len(notifications.errors) == 1
    assert "negative values" in notifications.errors[0]
    assert "Image #" not in notifications.errors[0]
    assert notifications.errors[0].startswith("The labels layer 'instances' holds negative")
    assert train.status.text().startswith("Training failed: The labels layer 'instances'")
    assert train.progress.format() == "failed"


def test_a_failed_run_on_a_stack_names_the_plane(make_napari_viewer, qtbot, sample, notifications):
    viewer = make_napari_viewer()
    train = TrainWidget(viewer)
    set_tiny(train)
    (image, labels), _ = sample
    viewer.add_image(np.stack([image] * 3), name="stack")
    painted = np.zeros((3, *labels.shape), np.int32)
    painted[0], painted[2] = labels, labels
    painted[2, 0, 0] = -1  # the second labelled plane: the engine's "Image #1"
    viewer.add_labels(painted, name="nuclei")
    train.start()
    wait_for(qtbot, train)

    assert notifications.errors[-1].startswith("The labels layer 'nuclei' (plane 2) holds")


def test_save_without_a_model_warns(viewer, tmp_path):
    train = TrainWidget(viewer)

    assert train.save_model(tmp_path / "model.safetensors") is None
    assert not (tmp_path / "model.safetensors").exists()


def test_form_follows_the_config_defaults_and_bounds(viewer):
    from napari_unet.config import ModelConfig, TrainConfig

    train = TrainWidget(viewer)

    assert train.depth.value == ModelConfig().depth
    assert (train.depth.min, train.depth.max) == (1, 6)
    assert train.patch_size.value == TrainConfig().patch_size
    assert train.learning_rate.value == pytest.approx(TrainConfig().learning_rate)
    assert train.validation_fraction.max < 0.9
    assert train.patch_size.tooltip == TrainConfig.model_fields["patch_size"].description
    assert train.image.value is viewer.layers["nuclei"]
    assert train.labels.value is viewer.layers["nuclei labels"]
    assert train.train_config().minutes == train.minutes.value


def test_advanced_settings_reach_the_configs(viewer):
    train = TrainWidget(viewer)
    train.mode.value = "semantic"
    assert not train.border_weight.enabled  # only instances mode has touching objects
    train.mode.value = "instances"
    assert train.border_weight.enabled
    train.augment.value = False
    assert not train.elastic.enabled  # elastic deformation is part of augmentation
    assert not train.zoom.enabled
    train.augment.value = True
    assert train.zoom.enabled

    train.elastic.value = True
    train.zoom.value = 1.5
    train.foreground_sampling.value = 0.8
    train.border_weight.value = 3.0
    train.dice_weight.value = 0.25
    train.ce_weight.value = 2.0
    train.norm.value = "group"
    train.dropout.value = 0.95  # the command line allows up to 0.99; so does the form
    assert train.dropout.value == pytest.approx(0.95)
    train.dropout.value = 0.3
    assert train.label_offset.value is True
    train.label_offset.value = False
    config, model_config = train.train_config(), train.model_config()

    assert config.elastic and config.foreground_sampling == pytest.approx(0.8)
    assert config.label_offset is False
    assert config.zoom == pytest.approx(1.5)
    assert (config.border_weight, config.dice_weight, config.ce_weight) == (3.0, 0.25, 2.0)
    assert (model_config.norm, model_config.dropout) == ("group", pytest.approx(0.3))


def test_format_duration():
    assert format_duration(65) == "1:05"
    assert format_duration(3723) == "1:02:03"


def test_labels_shown_elsewhere_than_the_image_get_a_warning(viewer, qtbot, notifications):
    viewer.layers["nuclei labels"].translate = (20, 20)

    start_and_stop_at_once(viewer, qtbot)

    assert any("pairs their pixels by index" in w for w in notifications.warnings)


def test_closing_the_panel_stops_training(viewer, qtbot):
    train = TrainWidget(viewer)
    dock = viewer.window.add_dock_widget(train)
    set_tiny(train)
    train.mode.value = "instances"
    train.budget.value = "minutes"
    train.minutes.value = 1.0

    train.start()
    viewer.window.remove_dock_widget(dock)

    assert train._stop.is_set()
    started = time.perf_counter()
    wait_for(qtbot, train)
    assert time.perf_counter() - started < 30  # stopped, not the minute's budget


def test_channels_on_the_last_axis_get_a_message_that_says_how(make_napari_viewer, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64, 5), np.float32), name="five stains")
    labels = np.zeros((64, 64), np.uint8)
    labels[10:20, 10:20] = 1
    viewer.add_labels(labels, name="cells")
    train = TrainWidget(viewer)

    train.start()

    assert not train.running
    assert "keeps 5 channels on its last axis" in notifications.errors[-1]
    assert "--channel-axis -1" in train.status.text()

    # labels of the layer's own shape (Layers > New labels layer) pair with its strips
    colour = viewer.add_image(np.zeros((64, 48, 3), np.uint8), rgb=False, name="colour")
    strips = viewer.add_labels(np.ones((64, 48, 3), np.uint8), name="strips")
    train.image.value, train.labels.value = colour, strips
    train.start()

    assert not train.running
    assert "planes would be 48 x 3 pixels" in notifications.errors[-1]
    assert "napari-unet train --channel-axis -1" in notifications.errors[-1]


def test_unticking_continue_gives_the_form_its_own_settings_back(viewer):
    registry_for(viewer).add(untrained_model(), "loaded", "loaded.safetensors")
    train = TrainWidget(viewer)
    train.mode.value, train.depth.value, train.base_channels.value = "sparse", 3, 8
    train.norm.value = "instance"

    train.continue_training.value = True
    assert (train.mode.value, train.depth.value, train.base_channels.value) == ("semantic", 2, 8)
    assert train.norm.value == "batch"
    train.continue_training.value = False
    assert (train.mode.value, train.depth.value, train.norm.value) == ("sparse", 3, "instance")


def test_a_panel_opened_after_training_saves_the_trained_model(viewer, tmp_path):
    model = untrained_model()
    registry_for(viewer).add(model, "trained earlier", "trained")
    train = TrainWidget(viewer)  # a panel closed and opened again

    assert train.save_button.isEnabled()
    path = train.save_model(tmp_path / "again.safetensors")
    assert load_model(path).class_names == model.class_names
    registry_for(viewer).add(untrained_model(), "loaded", "x.safetensors")  # active: loaded
    assert not train.save_button.isEnabled()


def test_the_preview_ends_with_the_weights_kept(monkeypatch):
    """After the last epoch the preview is drawn again with the best epoch's weights."""
    from napari_unet._widgets import _workers
    from napari_unet.training import EpochEnded, TrainingStarted

    model = untrained_model()

    def epochs(*args, **kwargs):
        yield TrainingStarted(model, 1, 1, "cpu", "fp32", [])
        for epoch, improved in [(1, True), (2, True), (3, False)]:
            yield EpochEnded(epoch, epoch, 0.5, 0.8, 0.9, improved, 1.0)

    monkeypatch.setattr(_workers, "iter_train", epochs)
    image = np.zeros((32, 32), np.float32)
    labels = np.zeros((32, 32), np.uint8)
    labels[4:8, 4:8] = 1
    preview = _workers.Preview(image, (), None, "cpu")
    events = list(
        _workers._train(image, labels, None, None, None, None, preview, _workers.threading.Event())
    )
    previews = [e for e in events if isinstance(e, _workers.PreviewReady)]
    assert len(previews) == 4  # one per epoch, and the weights kept (epoch 2) again
    assert isinstance(events[-1], _workers.PreviewReady)
    assert [e.epoch for e in previews] == [1, 2, 3, 2]

    # the final preview fails: the last one drawn is epoch 3's, and it says so
    calls = []

    def fails_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("out of memory")
        return np.zeros((32, 32), np.int32)

    monkeypatch.setattr(_workers, "predict", fails_the_fourth)
    events = list(
        _workers._train(image, labels, None, None, None, None, preview, _workers.threading.Event())
    )
    previews = [e for e in events if isinstance(e, _workers.PreviewReady)]
    assert [e.epoch for e in previews] == [1, 2, 3]


def test_the_status_says_the_preview_shows_the_kept_weights_only_where_it_does(viewer):
    """The closing status claims the preview shows the kept epoch only when it does."""
    from napari_unet._widgets.train import PreviewReady

    train = TrainWidget(viewer)
    image = viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    model = untrained_model()
    model.history["runs"].append({"steps": 30, "epochs": 3, "best_epoch": 2, "best_score": 0.9})
    train._preview_layer_source, train._preview_axis = image, None
    train._preview = object()  # a preview was asked for
    train._image_name = "img"
    for epoch, expected in [(3, False), (2, True)]:
        train._show_preview(PreviewReady((), np.ones((32, 32), np.uint8), epoch))
        train._on_returned(model)
        said = "the preview shows them" in train.status.text()
        assert said == expected, (epoch, train.status.text())


def test_errors_about_labels_name_the_labels_layer(viewer, qtbot, notifications):
    registry_for(viewer).add(untrained_model(), "two classes", "test")
    train = TrainWidget(viewer)
    set_tiny(train)
    train.preview.value = False
    painted = np.zeros(viewer.layers["nuclei"].data.shape[:2], np.uint8)
    painted[10:20, 10:20], painted[40:50, 40:50] = 1, 3  # 3: not a class of the model
    train.labels.value = viewer.add_labels(painted, name="scribbles")
    train.continue_training.value = True

    train.start()
    wait_for(qtbot, train)

    assert "(the first in the labels layer 'scribbles')" in notifications.errors[-1]


def test_a_preview_painted_on_keeps_its_data(make_napari_viewer):
    from napari_unet._widgets._workers import PreviewReady

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((3, 32, 32), np.float32), name="st")
    train = TrainWidget(viewer)
    train._preview_layer_source, train._preview_axis = image, None
    train._show_preview(PreviewReady((0,), np.ones((32, 32), np.uint8)))
    preview = viewer.layers["st preview"]
    preview.paint((1, 3, 3), 5)  # the user corrects the preview's plane 1

    train._show_preview(PreviewReady((1,), np.full((32, 32), 2, np.uint8)))

    assert np.asarray(preview.data)[1, 3, 3] == 5  # kept, and not written through
    new = [x for x in viewer.layers if x.name.startswith("st preview") and x is not preview]
    assert len(new) == 1 and np.asarray(new[0].data)[1, 3, 3] == 2
    assert not np.shares_memory(np.asarray(new[0].data), np.asarray(preview.data))


def test_a_result_trained_on_is_kept_by_the_next_segmentation(viewer, qtbot):
    from napari_unet._widgets._layers import OUTPUT_KEY

    segment = SegmentWidget(viewer)
    registry_for(viewer).add(untrained_model(), "first", "test")
    segment.image.value = viewer.layers["nuclei"]
    segment.tile_size.value, segment.device.value = 64, "cpu"
    segment.start()
    wait_for(qtbot, segment)
    result = viewer.layers["nuclei segmentation"]

    train = TrainWidget(viewer)
    set_tiny(train)
    train.preview.value = False
    train.labels.value = result
    result.data = np.zeros_like(result.data)  # nothing to learn: the run fails at once
    train.start()
    # the user's from the press of Train: no segmentation replaces it meanwhile
    assert result.metadata[OUTPUT_KEY].get("edited")
    wait_for(qtbot, train)
    assert not result.metadata[OUTPUT_KEY].get("edited")  # a failed run keeps nothing
    train.start()
    result.paint((5, 5), 7)  # painted on while the data are prepared: the user's for good
    wait_for(qtbot, train)
    assert result.metadata[OUTPUT_KEY].get("edited")
    result.data = np.zeros_like(result.data)

    result.data = (viewer.layers["nuclei labels"].data > 0).astype(np.int32)  # corrected
    train.start()
    wait_for(qtbot, train)
    assert result.metadata[OUTPUT_KEY].get("edited")
    segment.start()
    wait_for(qtbot, segment)
    assert result in viewer.layers and result.name == "nuclei segmentation"
    assert len([x for x in viewer.layers if x.name.startswith("nuclei segmentation")]) == 2


def sparse_model(in_channels: int = 1) -> SegmentationModel:
    """A scribbles model: background painted 1 (written 0), nuclei painted 2."""
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.model import UNet

    encoding = LabelEncoding("sparse", ["background", "class 2"], [0, 2], [1, 2], [])
    network = UNet(in_channels, 2, depth=2, base_channels=8)
    return SegmentationModel(network, encoding, Normalization())


@pytest.mark.parametrize("stack", [False, True, "channels"])
def test_a_scribble_models_segmentation_trains_its_background(
    make_napari_viewer, qtbot, monkeypatch, notifications, stack
):
    """Corrected and trained on, a segmentation by a sparse model trains everywhere it
    was written: its 0 is the background found, not pixels left unannotated (a (T, C, Y,
    X) movie's result keeps its channel axis one plane long)."""
    from napari_unet._widgets import _workers

    viewer = make_napari_viewer()
    shape = {False: (64, 64), True: (3, 64, 64), "channels": (3, 2, 64, 64)}[stack]
    image = viewer.add_image(np.random.default_rng(0).random(shape, np.float32), name="cells")
    model = sparse_model(2 if stack == "channels" else 1)
    registry_for(viewer).add(model, "scribbles", "test")
    segment = SegmentWidget(viewer)
    segment.image.value, segment.device.value = image, "cpu"
    if stack:
        segment.planes.value = CURRENT_PLANE
        viewer.dims.set_current_step(0, 1)
    segment.start()
    wait_for(qtbot, segment)
    result = viewer.layers["cells segmentation"]
    found = np.zeros(shape[-2:], np.uint8)
    found[10:20, 10:20] = found[40:50, 40:50] = 2  # two objects found
    found[40:50, 40:50] = 0  # one of them wrong: erased
    data = result.data.copy()
    plane = {False: (), True: (1,), "channels": (1, 0)}[stack]
    data[plane] = found
    result.data = data

    captured = {}

    def record(images, targets, *args, **kwargs):
        targets = [targets] if isinstance(targets, np.ndarray) and targets.ndim == 2 else targets
        captured["targets"] = [np.array(t) for t in targets]
        return
        yield

    monkeypatch.setattr(_workers, "iter_train", record)
    train = TrainWidget(viewer)
    train.image.value, train.labels.value = image, result
    train.continue_training.value = True
    assert train.mode.value == "sparse"
    train.start()
    wait_for(qtbot, train)
    (targets,) = captured["targets"]  # the plane written, and only that one
    assert set(np.unique(targets)) == {1, 2}
    assert (targets[10:20, 10:20] == 2).all() and (targets[40:50, 40:50] == 1).all()
    assert any("train as background (1)" in note for note in notifications.infos)
    assert result.data[plane][45, 45] == 0  # the layer itself unchanged


def test_a_grey_stack_is_said_to_be_read_as_planes_once(make_napari_viewer, qtbot, monkeypatch,
                                                       notifications):  # fmt: skip
    from napari_unet._widgets import _workers

    def nothing(*args, **kwargs):
        return
        yield

    monkeypatch.setattr(_workers, "iter_train", nothing)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 32, 32), np.float32), name="em")
    labels = np.zeros((3, 32, 32), np.uint8)
    labels[1, 4:20, 4:20] = 1
    viewer.add_labels(labels, name="em labels")
    train = TrainWidget(viewer)
    for _ in range(2):
        train.start()
        wait_for(qtbot, train)
    said = [n for n in notifications.infos if "as a stack of grey planes" in n]
    assert len(said) == 1


def test_labels_of_object_ids_set_the_label_mode_to_instances(viewer, notifications):
    """The sample's labels (one id per nucleus) are chosen with the image: instances."""
    train = TrainWidget(viewer)
    assert train.labels.value.name == "nuclei labels"
    assert train.mode.value == "instances"
    assert any("label mode is set to instances" in n for n in notifications.infos)

    classes = viewer.add_labels((viewer.layers["nuclei labels"].data > 0).astype(np.uint8),
                                name="classes")  # fmt: skip
    train.mode.value = "semantic"
    train.labels.value = classes  # two values: semantic stays
    assert train.mode.value == "semantic"
