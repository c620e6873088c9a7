"""The Segment with U-Net widget: layer kinds, output placement, re-runs, cancel, errors."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_unet._widgets._models import registry_for
from napari_unet._widgets.segment import CURRENT_PLANE, SegmentWidget

from .widget_helpers import untrained_model, wait_for


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def segment_with(viewer, qtbot, layer, model, **settings) -> SegmentWidget:
    registry_for(viewer).add(model, "test model", "test")
    widget = SegmentWidget(viewer)
    widget.image.value = layer
    widget.tile_size.value = 64
    widget.device.value = "cpu"
    for name, value in settings.items():
        getattr(widget, name).value = value
    widget.start()
    wait_for(qtbot, widget)
    return widget


def test_rgb_layer(viewer, qtbot, notifications):
    rng = np.random.default_rng(0)
    layer = viewer.add_image(
        rng.integers(0, 255, (80, 96, 3), dtype=np.uint8), name="he", scale=(0.25, 0.25)
    )
    assert layer.rgb

    segment_with(viewer, qtbot, layer, untrained_model(in_channels=3))

    result = viewer.layers["he segmentation"]
    assert result.data.shape == (80, 96)
    assert tuple(result.scale) == (0.25, 0.25)
    assert not notifications.errors


def test_dask_stack_every_plane(viewer, qtbot):
    data = da.from_array(
        np.random.default_rng(0).random((3, 70, 90), np.float32), chunks=(1, 35, 45)
    )
    layer = viewer.add_image(data, name="lazy", axis_labels=("t", "y", "x"))

    widget = segment_with(viewer, qtbot, layer, untrained_model())

    assert widget.channels.native.isHidden()  # a grey model reads the planes
    result = viewer.layers["lazy segmentation"]
    assert result.data.shape == (3, 70, 90)
    assert isinstance(result.data, np.ndarray)  # computed in the worker, not lazily in the GUI
    assert tuple(result.axis_labels) == ("t", "y", "x")


def test_multiscale_layer_is_segmented_at_full_resolution(viewer, qtbot):
    full = np.random.default_rng(0).random((128, 160), np.float32)
    layer = viewer.add_image(
        [full, full[::2, ::2]], multiscale=True, name="pyramid", translate=(3.0, 4.0)
    )

    segment_with(viewer, qtbot, layer, untrained_model())

    result = viewer.layers["pyramid segmentation"]
    assert result.data.shape == (128, 160)
    assert tuple(result.translate) == (3.0, 4.0)


def test_probabilities_of_each_foreground_class(viewer, qtbot):
    layer = viewer.add_image(np.random.default_rng(0).random((2, 64, 64)), name="img")

    segment_with(viewer, qtbot, layer, untrained_model(num_classes=3), output="probabilities")

    result = viewer.layers["img probabilities"]
    assert result.data.shape == (2, 2, 64, 64)  # class, plane, y, x
    assert result.axis_labels[0] == "class"
    assert result.data.min() >= 0 and result.data.max() <= 1
    assert result.data.sum(axis=0).max() <= 1 + 1e-5


def test_rerun_replaces_the_layer_and_current_plane_keeps_the_others(viewer, qtbot):
    rng = np.random.default_rng(0)
    layer = viewer.add_image(rng.random((3, 64, 64), np.float32), name="stack")
    widget = segment_with(viewer, qtbot, layer, untrained_model())
    output = viewer.layers["stack segmentation"]
    output.data = np.full_like(output.data, 7)
    viewer.dims.set_current_step(0, 2)

    widget.planes.value = CURRENT_PLANE
    widget.start()
    wait_for(qtbot, widget)

    assert [lay.name for lay in viewer.layers] == ["stack", "stack segmentation"]
    assert viewer.layers["stack segmentation"] is output
    assert (output.data[:2] == 7).all()
    assert not (output.data[2] == 7).any()


def test_one_plane_by_another_model_does_not_mix_with_the_others(viewer, qtbot, notifications):
    layer = viewer.add_image(np.random.default_rng(0).random((3, 64, 64), np.float32), name="s")
    widget = segment_with(viewer, qtbot, layer, untrained_model())
    output = viewer.layers["s segmentation"]
    output.data = np.full_like(output.data, 7)
    registry_for(viewer).add(untrained_model(num_classes=3), "other model", "test")
    widget.model.value = registry_for(viewer).entries[-1]
    widget.planes.value = CURRENT_PLANE

    widget.start()
    wait_for(qtbot, widget)

    assert viewer.layers["s segmentation"] is output
    assert not (output.data[:2] == 7).any()  # the first model's planes are gone
    assert any("came from the model 'test model'" in n for n in notifications.infos)


def test_a_plane_by_the_model_after_more_training_says_so(viewer, qtbot, notifications):
    layer = viewer.add_image(np.random.default_rng(0).random((3, 64, 64), np.float32), name="s")
    model = untrained_model()
    widget = segment_with(viewer, qtbot, layer, model)
    model.history.setdefault("runs", []).append({"steps": 5})  # trained on
    widget.planes.value = CURRENT_PLANE

    widget.start()
    wait_for(qtbot, widget)

    assert any(
        "came from an earlier version of 'test model' (before its latest training)" in n
        for n in notifications.infos
    )


def test_a_users_layer_with_the_output_name_is_never_overwritten(viewer, qtbot):
    image = viewer.add_image(np.random.default_rng(0).random((64, 64)), name="cells")
    mine = viewer.add_labels(np.ones((64, 64), np.uint8), name="cells segmentation")

    segment_with(viewer, qtbot, image, untrained_model())

    assert (mine.data == 1).all()
    assert len(viewer.layers) == 3


def slow_job(viewer) -> SegmentWidget:
    """A widget set to segment a stack in many small tiles, one at a time (not started)."""
    layer = viewer.add_image(np.zeros((4, 512, 512), np.float32), name="big")
    registry_for(viewer).add(untrained_model(), "test model", "test")
    widget = SegmentWidget(viewer)
    widget.image.value = layer
    widget.tile_size.value = 32
    widget.overlap.value = 0.25
    widget.batch_size.value = 1
    widget.device.value = "cpu"
    return widget


def test_cancel_leaves_the_layers_alone(viewer, qtbot):
    widget = slow_job(viewer)

    widget.start()
    assert not widget.segment_button.isEnabled() and widget.cancel_button.isEnabled()
    widget._worker.yielded.connect(lambda _: widget.cancel())
    wait_for(qtbot, widget)

    assert [lay.name for lay in viewer.layers] == ["big"]
    assert "Cancelled" in widget.status.text()
    assert widget.segment_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert not registry_for(viewer).active.busy


def test_removing_the_image_stops_its_segmentation(viewer, qtbot):
    widget = slow_job(viewer)
    layer = widget.image.value
    progress = []

    widget.start()
    widget._worker.yielded.connect(progress.append)
    qtbot.waitUntil(lambda: len(progress) > 0, timeout=30_000)
    viewer.layers.remove(layer)
    assert widget._stop.is_set() and "removed; stopping" in widget.status.text()
    wait_for(qtbot, widget)

    assert len(viewer.layers) == 0
    assert widget.status.text() == "The image layer 'big' was removed; segmenting stopped."
    assert progress[-1].fraction < 1  # not run to the end


def test_bad_inputs_become_notifications(viewer, qtbot, notifications):
    widget = SegmentWidget(viewer)
    layer = viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="rgb")

    widget.start()
    registry_for(viewer).add(untrained_model(in_channels=2), "two channels", "test")
    widget.image.value = layer
    widget.start()
    wait_for(qtbot, widget)
    assert widget.progress.format() == "failed"  # not "starting…"
    registry_for(viewer).active.busy = True
    widget.start()

    assert len(notifications.errors) == 3
    assert "There is no model" in notifications.errors[0]
    assert "2 channel(s)" in notifications.errors[1] and "3" in notifications.errors[1]
    assert "being trained" in notifications.errors[2]
    assert [lay.name for lay in viewer.layers] == ["rgb"]
    assert widget.status.text().startswith("Not started: 'two channels' is being trained")


def test_a_channel_axis_of_a_layer_that_is_not_rgb(viewer, qtbot, notifications):
    from napari_unet import predict

    data = np.random.default_rng(1).random((2, 40, 48)).astype(np.float32)
    layer = viewer.add_image(
        data, name="two stains", scale=(1.0, 0.5, 0.25), axis_labels=("c", "y", "x")
    )
    model = untrained_model(in_channels=2)

    widget = segment_with(viewer, qtbot, layer, model, output="probabilities")

    assert not widget.channels.native.isHidden() and widget.planes.native.isHidden()
    assert widget.channel_axis(layer) == 0  # auto: the axis of the model's channel count
    result = viewer.layers["two stains probabilities"]
    expected = predict(
        model, data, channel_axis=0, tile_size=64, device="cpu", output="probabilities"
    )
    swapped = predict(
        model, data[::-1], channel_axis=0, tile_size=64, device="cpu", output="probabilities"
    )
    np.testing.assert_allclose(result.data, expected[1], atol=1e-5)
    assert np.abs(result.data - swapped[1]).max() > 1e-3
    assert tuple(result.scale) == (0.5, 0.25)
    assert tuple(result.axis_labels) == ("y", "x")
    assert not notifications.errors


def test_a_channel_axis_after_a_stack_axis_keeps_the_result_on_its_slider(viewer, qtbot):
    from napari_unet import predict

    data = np.random.default_rng(2).random((3, 2, 40, 48)).astype(np.float32)
    layer = viewer.add_image(
        data, name="timelapse", axis_labels=("t", "c", "y", "x"), scale=(1.0, 0.5, 1.0, 1.0)
    )
    viewer.dims.set_current_step(0, 1)
    model = untrained_model(in_channels=2)

    segment_with(viewer, qtbot, layer, model, planes=CURRENT_PLANE, output="probabilities")

    result = viewer.layers["timelapse probabilities"]
    # napari lines layers up by their last axes: the result keeps a one-plane "c" axis
    # that spans both channels, so the "t" slider moves both layers
    assert result.data.shape == (3, 1, 40, 48)
    assert tuple(result.axis_labels) == ("t", "c", "y", "x")
    for t in range(3):
        for c in range(2):
            shown = np.round(result.world_to_data(layer.data_to_world((t, c, 5, 7))))
            assert tuple(shown.astype(int)) == (t, 0, 5, 7)
    assert viewer.dims.range[1].stop == layer.data_to_world((0, 1, 0, 0))[1]
    expected = predict(
        model, data[1], channel_axis=0, tile_size=64, device="cpu", output="probabilities"
    )
    np.testing.assert_allclose(result.data[1, 0], expected[1], atol=1e-5)
    assert not result.data[0].any() and not result.data[2].any()

    viewer.dims.set_current_step(0, 2)  # the next plane goes into the same layer
    widget = SegmentWidget(viewer)
    widget.image.value = layer
    widget.tile_size.value = 64
    widget.device.value = "cpu"
    widget.planes.value = CURRENT_PLANE
    widget.output.value = "probabilities"
    widget.start()
    wait_for(qtbot, widget)
    assert viewer.layers["timelapse probabilities"] is result
    assert result.data[1].any() and result.data[2].any() and not result.data[0].any()


def test_the_first_result_layer_does_not_move_the_sliders(viewer, qtbot):
    data = np.random.default_rng(4).random((3, 40, 48)).astype(np.float32)
    layer = viewer.add_image(data, name="placed", scale=(2.0, 1.0, 1.0), translate=(10, 0, 0))
    viewer.dims.set_current_step(0, 1)

    segment_with(viewer, qtbot, layer, untrained_model(), planes=CURRENT_PLANE)

    assert viewer.dims.current_step[0] == 1
    result = viewer.layers["placed segmentation"]
    assert tuple(result.translate) == (10, 0, 0) and tuple(result.scale) == (2, 1, 1)


def test_the_channels_field_follows_the_image(viewer):
    first = viewer.add_image(np.zeros((4, 2, 16, 16), np.float32), name="first")
    second = viewer.add_image(
        np.zeros((2, 5, 16, 16), np.float32), name="second", axis_labels=("c", "z", "y", "x")
    )
    registry_for(viewer).add(untrained_model(in_channels=2), "two", "test")
    widget = SegmentWidget(viewer)
    widget.image.value = first
    widget.channels.value = 1

    widget.image.value = second

    assert widget.channels.value == "auto"
    assert widget.channel_axis(second) == 0
    names = [widget.channels.native.itemText(i) for i in range(widget.channels.native.count())]
    assert names == [
        "auto",
        "none: grey planes",
        "axis 0 'c' (2 channels)",
        "axis 1 'z' (5 channels)",
    ]


def test_the_overlap_field_keeps_64_pixels_until_it_is_set(viewer):
    from napari_unet.config import PredictConfig

    widget = SegmentWidget(viewer)
    assert widget.tile_size.value == PredictConfig().tile_size == 1024
    assert widget.overlap.value == pytest.approx(PredictConfig().overlap_share) == 64 / 1024
    widget.tile_size.value = 512
    assert widget.overlap.value == pytest.approx(64 / 512)  # as predict(tile_size=512)
    widget.tile_size.value = 128
    assert widget.overlap.value == pytest.approx(0.25)  # at most a quarter of the tile
    widget.tile_size.value = 1024
    widget.overlap.value = 0.125  # the user's own choice stays, whatever the tile size
    for tile in (512, 1024, 256, 576):
        widget.tile_size.value = tile
        assert widget.overlap.value == pytest.approx(0.125)


def test_channel_layouts_the_model_cannot_read_get_advice(viewer, notifications):
    grey_stack = viewer.add_image(np.zeros((3, 32, 32), np.float32), name="three planes")
    last = viewer.add_image(np.zeros((32, 32, 2), np.float32), name="channels last")
    registry_for(viewer).add(untrained_model(in_channels=2), "two", "test")
    widget = SegmentWidget(viewer)

    widget.image.value = grey_stack
    widget.start()  # auto finds no axis of 2: grey planes
    widget.channels.value = 0
    widget.start()
    widget.image.value = last
    assert widget.channels.native.isHidden()
    widget.start()
    widget.image.value = viewer.add_image(np.zeros((32, 32), np.float32), name="one plane")
    widget.start()

    assert not widget.running
    errors = notifications.errors
    assert len(errors) == 4
    assert "read as grey planes" in errors[0] and "'channels' field" in errors[0]
    assert "axis 0" in errors[1] and "has 3" in errors[1]
    assert "planes would be 32 x 2 pixels" in errors[2]
    assert "napari-unet predict --channel-axis -1" in errors[2]
    assert "napari-unet predict" in errors[3] and "Merge to Stack" in errors[3]
    assert [lay.name for lay in viewer.layers] == ["three planes", "channels last", "one plane"]


def test_a_colour_image_opened_without_rgb_is_refused(viewer, notifications):
    colour = np.zeros((40, 48, 3), np.uint8)
    layer = viewer.add_image(colour, rgb=False, name="not rgb")
    registry_for(viewer).add(untrained_model(), "grey", "test")
    widget = SegmentWidget(viewer)
    widget.image.value = layer

    widget.start()

    assert not widget.running
    assert "planes would be 48 x 3 pixels" in notifications.errors[-1]
    assert "rgb=True" in notifications.errors[-1]
    assert [lay.name for lay in viewer.layers] == ["not rgb"]  # no result written


def test_test_time_augmentation_checkbox_is_passed_on(viewer, qtbot):
    from napari_unet import predict

    model = untrained_model()
    image = np.random.default_rng(3).random((70, 90)).astype(np.float32)
    layer = viewer.add_image(image, name="cells")

    segment_with(viewer, qtbot, layer, model, tta=True, output="probabilities")

    expected = predict(model, image, tile_size=64, device="cpu", tta=True, output="probabilities")
    plain = predict(model, image, tile_size=64, device="cpu", output="probabilities")
    shown = np.asarray(viewer.layers["cells probabilities"].data)
    np.testing.assert_allclose(shown, expected[1], atol=1e-5)
    assert np.abs(shown - plain[1]).max() > 1e-3


def test_results_follow_the_rotation_of_the_image(viewer, qtbot):
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    layer = viewer.add_image(image, name="turned", rotate=30, scale=(2, 2), translate=(5, 1))

    segment_with(viewer, qtbot, layer, untrained_model())

    result = viewer.layers["turned segmentation"]
    np.testing.assert_allclose(result.data_to_world((63, 63)), layer.data_to_world((63, 63)))


@pytest.mark.parametrize("output", ["labels", "probabilities"])
def test_results_with_other_axes_than_the_image_follow_its_rotation(viewer, qtbot, output):
    """A channel axis left out, a class axis added: the plane still lies on the image."""
    data = np.random.default_rng(0).random((2, 48, 64)).astype(np.float32)
    affine = np.eye(4)
    affine[1, 2] = 0.3  # an affine of its own on top of the rotation and shear
    layer = viewer.add_image(
        data, name="stains", rotate=30, shear=[0, 0, 0.2], affine=affine, scale=(1, 2, 2)
    )
    model = untrained_model(in_channels=2, num_classes=3)

    segment_with(viewer, qtbot, layer, model, output=output)

    name = "stains segmentation" if output == "labels" else "stains probabilities"
    result = viewer.layers[name]
    lead = (0,) * (result.ndim - 2)  # the class axis of the probabilities
    for y, x in [(0, 0), (0, 63), (47, 10), (20, 30)]:
        np.testing.assert_allclose(
            result.data_to_world((*lead, y, x))[-2:], layer.data_to_world((0, y, x))[-2:]
        )


def test_closing_the_panel_cancels_the_job(viewer, qtbot):
    layer = viewer.add_image(np.zeros((6, 256, 256), np.float32), name="stack")
    registry_for(viewer).add(untrained_model(), "test model", "test")
    widget = SegmentWidget(viewer)
    dock = viewer.window.add_dock_widget(widget)
    widget.image.value = layer
    widget.tile_size.value = 64
    widget.device.value = "cpu"
    widget.start()
    viewer.window.remove_dock_widget(dock)

    assert widget._stop.is_set()
    wait_for(qtbot, widget)
    assert "stack segmentation" not in viewer.layers


def test_segmenting_a_renamed_image_updates_its_result_layer(viewer, qtbot):
    layer = viewer.add_image(np.random.default_rng(0).random((48, 48), np.float32), name="a")
    widget = segment_with(viewer, qtbot, layer, untrained_model())
    layer.name = "b"

    widget.start()
    wait_for(qtbot, widget)

    results = [x.name for x in viewer.layers if "segmentation" in x.name]
    assert results == ["b segmentation"]


def test_a_result_the_user_renamed_is_kept(viewer, qtbot):
    layer = viewer.add_image(np.random.default_rng(0).random((48, 48), np.float32), name="a")
    widget = segment_with(viewer, qtbot, layer, untrained_model())
    kept = viewer.layers["a segmentation"]
    kept.name = "first run"
    kept.data[:10, :10] = 7  # corrected by hand

    widget.start()
    wait_for(qtbot, widget)
    widget.start()  # again: the new result is replaced, the renamed one stays
    wait_for(qtbot, widget)

    assert (kept.data[:10, :10] == 7).all() and kept.name == "first run"
    results = [x.name for x in viewer.layers if x is not layer]
    assert results == ["first run", "a segmentation"]
    assert widget.status.text() == "Wrote the layer 'a segmentation'."


def test_a_result_painted_on_is_kept_and_the_next_goes_to_a_new_layer(
    viewer, qtbot, notifications
):
    layer = viewer.add_image(np.random.default_rng(0).random((48, 48), np.float32), name="a")
    widget = segment_with(viewer, qtbot, layer, untrained_model())
    corrected = viewer.layers["a segmentation"]
    corrected.paint((5, 5), 7)  # a correction with the brush

    widget.start()
    wait_for(qtbot, widget)

    assert corrected in viewer.layers and corrected.data[5, 5] == 7
    new = [x for x in viewer.layers if x not in (layer, corrected)]
    assert len(new) == 1 and new[0].name.startswith("a segmentation")
    assert any("holds your edits" in message for message in notifications.infos)
    widget.start()  # the new result, untouched, is replaced as before
    wait_for(qtbot, widget)
    assert [x for x in viewer.layers if x not in (layer, corrected)] == new


def test_boundaries_choice_is_passed_on(viewer, qtbot, monkeypatch):
    from napari_unet import predict
    from napari_unet import prediction as p

    from ..test_boundaries import _membrane_model, cells, central_gap, membrane_probability

    _, membrane, distance = cells(shape=(180, 260), count=50, seed=1)
    image = (1 - membrane_probability(distance, central_gap(membrane, distance))) * 200

    def forward(batch):
        inside = np.clip(batch[:, :1], 0, 1)
        return np.concatenate([inside, 1 - inside], axis=1)

    monkeypatch.setattr(p, "_local_forward", lambda *args: forward)
    layer = viewer.add_image(image.astype(np.float32), name="section")
    learned, unlearned = _membrane_model(), _membrane_model(None)
    closed = predict(learned, layer.data, tile_size=64)
    plain = predict(learned, layer.data, tile_size=64, close_boundaries=False)
    assert (closed != plain).any()

    widget = segment_with(viewer, qtbot, layer, learned)  # as the model learned
    assert widget.boundaries.value == "as the model learned"
    assert (np.asarray(viewer.layers["section segmentation"].data) == closed).all()
    widget.boundaries.value = "as predicted"
    widget.start()
    wait_for(qtbot, widget)
    assert (np.asarray(viewer.layers["section segmentation"].data) == plain).all()
    widget = segment_with(viewer, qtbot, layer, unlearned, boundaries="close gaps")
    assert (np.asarray(viewer.layers["section segmentation"].data) == closed).all()


def test_boundaries_field_is_for_two_class_models_only(viewer):
    from napari_unet import ModelConfig, TrainConfig, train

    from ..conftest import TINY, disks

    registry = registry_for(viewer)
    widget = SegmentWidget(viewer)
    registry.add(untrained_model(), "semantic", "test")
    widget.model.value = registry.entries[-1]
    assert widget._boundaries_apply()
    image, labels = disks()
    config = TrainConfig(mode="instances", epochs=1, patch_size=32, steps_per_epoch=1)
    instances = train(image, labels, config, model_config=ModelConfig(**TINY))
    registry.add(instances, "instances", "test")
    widget.model.value = registry.entries[-1]
    assert not widget._boundaries_apply()


def test_correcting_a_stack_plane_by_plane_keeps_one_result_layer(viewer, qtbot, notifications):
    layer = viewer.add_image(np.random.default_rng(0).random((3, 48, 48), np.float32), name="s")
    model = untrained_model()
    widget = None
    for z in range(3):  # segment a plane, correct it, go on to the next
        viewer.dims.set_current_step(0, z)
        if widget is None:
            widget = segment_with(viewer, qtbot, layer, model, planes=CURRENT_PLANE)
        else:
            widget.start()
            wait_for(qtbot, widget)
        viewer.layers["s segmentation"].paint((z, 5, 5), 7)

    result = viewer.layers["s segmentation"]
    assert [x.name for x in viewer.layers] == ["s", "s segmentation"]
    assert (result.data[:, 5, 5] == 7).all() and all(result.data[z].any() for z in range(3))
    assert not any("holds your edits" in message for message in notifications.infos)

    viewer.dims.set_current_step(0, 1)  # a corrected plane again: the result goes elsewhere
    widget.start()
    wait_for(qtbot, widget)
    assert (result.data[:, 5, 5] == 7).all() and len(viewer.layers) == 3


def test_a_result_for_image_data_replaced_meanwhile_is_not_written(viewer, qtbot, notifications):
    layer = viewer.add_image(np.random.default_rng(0).random((3, 256, 256), np.float32), name="s")
    registry_for(viewer).add(untrained_model(), "test model", "test")
    widget = SegmentWidget(viewer)
    widget.image.value = layer
    widget.tile_size.value = 64
    widget.device.value = "cpu"
    widget.start()
    layer.data = np.zeros((64, 64), np.float32)  # replaced by a script while it runs
    wait_for(qtbot, widget)

    assert "s segmentation" not in viewer.layers
    assert "changed while it was segmented" in widget.status.text()


def test_what_prediction_warns_of_is_shown(viewer, qtbot, notifications):
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.model import SegmentationModel, UNet

    encoding = LabelEncoding("semantic", ["background", "cell"], [0, 1], [0, 1], [])
    per_tile = SegmentationModel(
        UNet(1, 2, depth=2, base_channels=4, norm="instance"), encoding, Normalization()
    )
    layer = viewer.add_image(np.random.default_rng(0).random((150, 150), np.float32), name="i")
    segment_with(viewer, qtbot, layer, per_tile)  # tiles of 64: several

    assert any("tile" in message for message in notifications.warnings)
    assert "i segmentation" in viewer.layers


def test_a_long_message_scrolls_rather_than_squashing_the_fields(viewer):
    widget = SegmentWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, area="right")
    widget.status.setText("A long message. " * 60)
    dock.resize(dock.width(), 300)

    shown = [w.native for w in widget.form if w.visible]
    assert all(w.height() >= w.sizeHint().height() for w in shown)  # every field whole
    area = widget.status.parentWidget().parentWidget()  # the status box scrolls instead
    assert area.height() <= 7 * widget.status.fontMetrics().lineSpacing()
    assert widget.status.sizeHint().height() > area.height()


def test_the_model_chosen_stays_chosen_after_a_run(viewer, qtbot):
    first, second = untrained_model(), untrained_model()
    registry_for(viewer).add(first, "first", "test")
    registry_for(viewer).add(second, "second", "test")  # the active one
    layer = viewer.add_image(np.random.default_rng(0).random((48, 48), np.float32), name="a")
    widget = SegmentWidget(viewer)
    widget.model.value = registry_for(viewer).entry_of(first)
    widget.image.value, widget.tile_size.value, widget.device.value = layer, 64, "cpu"

    widget.start()
    wait_for(qtbot, widget)
    assert widget.model.value.model is first

    widget.start()  # a model loaded during a run is chosen when it ends
    third = untrained_model()
    registry_for(viewer).add(third, "third", "test")
    assert widget.model.value.model is first
    wait_for(qtbot, widget)
    assert widget.model.value.model is third
