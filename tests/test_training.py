import warnings

import numpy as np
import pytest
import torch

from napari_unet import ModelConfig, TrainConfig, UNet, predict, train
from napari_unet.config import PredictConfig
from napari_unet.data import InputError, Sample, instance_targets
from napari_unet.prediction import TileDependenceWarning, _plan
from napari_unet.training import (
    EpochEnded,
    StepEnded,
    TrainingFinished,
    TrainingStarted,
    _validate,
    iter_train,
)

from .conftest import TINY, disks

FAST = {"patch_size": 64, "batch_size": 4, "steps_per_epoch": 8}


def test_training_converges_on_a_synthetic_task(disk_data):
    images, labels = disk_data
    config = TrainConfig(mode="instances", epochs=12, **FAST)

    events = list(iter_train(images, labels, config, model_config=ModelConfig(**TINY)))

    epochs = [e for e in events if isinstance(e, EpochEnded)]
    steps = [e for e in events if isinstance(e, StepEnded)]
    assert isinstance(events[0], TrainingStarted) and isinstance(events[-1], TrainingFinished)
    assert len(epochs) == 12 and len(steps) == 96
    assert np.mean([s.loss for s in steps[-8:]]) < 0.7 * np.mean([s.loss for s in steps[:8]])
    assert epochs[-1].best_score > 0.5
    assert steps[-1].eta == pytest.approx(0, abs=1e-6) and steps[-1].progress == 1


def test_training_is_reproducible_with_a_seed(disk_data):
    images, labels = disk_data
    config = TrainConfig(mode="semantic", epochs=1, seed=3, **FAST)
    binary = [(label > 0).astype(np.uint8) for label in labels]

    a = train(images, binary, config, model_config=ModelConfig(**TINY))
    b = train(images, binary, config, model_config=ModelConfig(**TINY))

    for (name, p), q in zip(
        a.network.state_dict().items(), b.network.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(p, q, msg=name)


def test_zoom_augmentation_trains_and_changes_the_run(disk_data):
    images, labels = disk_data
    binary = [(label > 0).astype(np.uint8) for label in labels]
    plain = TrainConfig(mode="semantic", epochs=6, seed=3, **FAST)
    zoomed = plain.model_copy(update={"zoom": 1.5})

    a = train(images, binary, plain, model_config=ModelConfig(**TINY))
    b = train(images, binary, zoomed, model_config=ModelConfig(**TINY))

    changed = [
        not torch.equal(p, q)
        for p, q in zip(a.network.parameters(), b.network.parameters(), strict=True)
    ]
    assert all(changed)  # the zoomed patches reached the network
    assert b.history["runs"][-1]["best_score"] > 0.5
    assert b.history["runs"][-1]["config"]["zoom"] == 1.5


def test_closing_the_generator_stops_and_keeps_the_best_weights(disk_data):
    images, labels = disk_data
    config = TrainConfig(mode="instances", epochs=100, **FAST)
    events = iter_train(images, labels, config, model_config=ModelConfig(**TINY))
    model, best = None, None
    for event in events:
        if isinstance(event, TrainingStarted):
            model = event.model
        if isinstance(event, EpochEnded):
            if event.improved:
                best = {k: v.clone() for k, v in model.network.state_dict().items()}
            if event.epoch == 3:
                break
    events.close()  # the Stop button

    assert model.history["runs"][-1]["epochs"] == 3
    for key, value in best.items():
        torch.testing.assert_close(model.network.state_dict()[key], value)


def test_time_budget_ends_training():
    image, label = disks(64)
    config = TrainConfig(mode="instances", minutes=0.05, **FAST)
    events = list(iter_train([image], [label], config, model_config=ModelConfig(**TINY)))
    assert events[-1].elapsed < 15


def test_continue_training_from_a_model_keeps_classes(disk_data):
    images, labels = disk_data
    config = TrainConfig(mode="instances", epochs=1, **FAST)
    model = train(images, labels, config, model_config=ModelConfig(**TINY))

    again = train(images, labels, config, model=model)

    assert again is model and len(model.history["runs"]) == 2
    with pytest.raises(InputError, match="mode"):
        train(images, labels, config.model_copy(update={"mode": "semantic"}), model=model)


def test_instances_model_learns_the_smallest_object_size_from_its_labels(disk_data):
    from napari_unet.data import smallest_object_size

    images, labels = disk_data
    config = TrainConfig(mode="instances", epochs=1, **FAST)

    model = train(images, labels, config, model_config=ModelConfig(**TINY))

    expected = smallest_object_size(labels)
    assert model.min_object_size == expected and expected > 10  # disks of ~100+ pixels
    tiny = [label.copy() for label in labels]
    tiny[0][:2, :2] = labels[0].max() + 1  # a 4-pixel object annotated
    train(images, tiny, config, model=model)  # continuing never raises the size
    assert model.min_object_size == min(expected, smallest_object_size(tiny))


def test_sparse_scribbles_train_and_predict_painted_values():
    image, instances = disks(96, seed=1)
    scribbles = np.zeros_like(instances, np.uint8)
    scribbles[::7, :][instances[::7, :] == 0] = 1  # background strokes
    scribbles[instances > 0] = 0
    for obj in range(1, 4):  # a few pixels inside some objects
        ys, xs = np.nonzero(instances == obj)
        scribbles[ys[::3], xs[::3]] = 3
    config = TrainConfig(mode="sparse", epochs=5, **FAST)

    model = train(image, scribbles, config, model_config=ModelConfig(**TINY))
    labels = predict(model, image)

    assert set(np.unique(labels)) <= {0, 3}
    assert ((labels == 3) == (instances > 0)).mean() > 0.85


def test_mixed_channel_counts_are_converted_with_a_note(disk_data):
    images, labels = disk_data
    rgb = np.repeat(images[1][..., None], 3, axis=-1)
    config = TrainConfig(mode="instances", epochs=1, **FAST)

    events = iter_train([images[0], rgb], labels[:2], config, model_config=ModelConfig(**TINY))
    started = next(events)
    events.close()

    assert started.model.in_channels == 3
    assert any("channel" in note for note in started.notes)
    assert predict(started.model, images[2]).shape == images[2].shape  # grey accepted


def test_an_axis_the_labels_lack_is_read_as_channels(disk_data):
    images, labels = disk_data
    two = [np.stack([image, image.max() - image]) for image in images[:2]]  # (C, Y, X)
    config = TrainConfig(mode="instances", epochs=1, **FAST)

    events = iter_train(two, labels[:2], config, model_config=ModelConfig(**TINY))
    started = next(events)
    events.close()
    model = started.model

    assert model.in_channels == 2
    axis_notes = [note for note in started.notes if "read as 2 channels (axis 0)" in note]
    assert len(axis_notes) == 1 and "so are 1 more image(s)" in axis_notes[0]  # one note
    singles = [predict(model, image) for image in two]
    assert singles[0].shape == labels[0].shape
    # (Z, C, Y, X) with Z == C: prediction reads the channels where training would
    stack = predict(model, np.stack(two))
    np.testing.assert_array_equal(stack, np.stack(singles))


def test_four_channels_first_are_channels_not_rgba(disk_data):
    images, labels = disk_data
    four = [np.stack([image, image.max() - image, image, image]) for image in images[:2]]
    config = TrainConfig(mode="semantic", epochs=1, **FAST)
    binary = [(label > 0).astype(np.uint8) for label in labels[:2]]

    events = iter_train(four, binary, config, model_config=ModelConfig(**TINY))
    model = next(events).model
    events.close()

    assert model.in_channels == 4
    assert predict(model, four[0]).shape == binary[0].shape


def test_a_last_axis_of_four_is_rgba_unless_it_is_named(disk_data):
    from napari_unet.training import prepare_data

    images, labels = disk_data
    last = [np.stack([image, image.max() - image, image, image], -1) for image in images[:2]]
    binary = [(label > 0).astype(np.uint8) for label in labels[:2]]
    config = TrainConfig(mode="semantic")

    found = prepare_data(last, binary, config)
    assert found.in_channels == 3 and sum("read as RGBA" in n for n in found.notes) == 1
    for axis in (-1, 2):
        named = prepare_data(last, binary, config, channel_axis=axis)
        assert named.in_channels == 4 and not any("RGBA" in n for n in named.notes)


def test_a_stack_with_labels_for_one_plane_is_refused():
    image, label = disks(64)
    stack = np.stack([image] * 20)
    with pytest.raises(InputError, match="20 plane"):
        train(stack, label, TrainConfig(epochs=1, **FAST))


@pytest.mark.parametrize(
    ("image", "label", "expected"),
    [
        ((2, 40, 50), (40, 50), 0),  # channels first
        ((40, 50, 2), (40, 50), 2),  # channels last, not RGB
        ((5, 2, 40, 50), (5, 40, 50), 1),  # a stack of two-channel planes
        ((2, 2, 40, 50), (2, 40, 50), 1),  # either axis fits: the one nearest Y, X
        ((40, 50, 3), (40, 50), 2),  # RGB, as without labels
        ((5, 40, 50), (5, 40, 50), None),  # a stack with a label plane per plane
        ((20, 40, 50), (40, 50), None),  # too long for channels: a stack, refused later
        ((5, 40, 50), (40, 50, 7), None),  # no axis to drop: left to the shape check
    ],
)
def test_channel_axis_from_the_labels_shape(image, label, expected):
    from napari_unet.data import channel_axis_from_labels

    assert channel_axis_from_labels(image, label) == expected
    assert channel_axis_from_labels(image, label, None) is None  # an explicit choice wins


def test_prediction_reads_channels_as_training_does():
    from napari_unet.prediction import _resolve_layout

    assert _resolve_layout((2, 64, 64), 2, "auto") == 0
    assert _resolve_layout((2, 2, 64, 64), 2, "auto") == 1
    assert _resolve_layout((64, 64, 2), 2, "auto") == 2
    # a model that also takes grey images reads a grey (T, 3, Y, X) stack plane by plane
    assert _resolve_layout((10, 3, 64, 64), 3, "auto", convert=True) is None
    assert _resolve_layout((10, 3, 64, 64), 3, "auto") == 1


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((96, 96), np.uint8), "single value"),
        (np.zeros((50, 50), np.uint8), "height and width"),
        (np.full((96, 96), 7, np.uint8), "single value"),
    ],
)
def test_bad_training_input_gets_a_clear_error(labels, message):
    image, _ = disks(96)
    with pytest.raises(InputError, match=message):
        train(image, labels, TrainConfig(epochs=1, **FAST))


def test_nan_only_image_is_refused():
    _, label = disks(64)
    with pytest.raises(InputError, match="NaN"):
        train(np.full((64, 64), np.nan), label, TrainConfig(mode="instances", epochs=1, **FAST))


def test_configuration_errors_read_as_one_line():
    from pydantic import ValidationError

    from napari_unet.config import describe_error

    with pytest.raises(ValidationError) as both_zero:
        TrainConfig(dice_weight=0, ce_weight=0)
    with pytest.raises(ValidationError) as too_small:
        TrainConfig(patch_size=8)

    assert describe_error(both_zero.value).startswith("dice_weight and ce_weight are both 0")
    assert describe_error(too_small.value).startswith("patch_size: Input should be greater")


def test_the_generator_takes_config_fields_as_keywords_as_train_does():
    from napari_unet.training import EpochEnded, TrainingStarted, iter_train

    image, label = disks(size=64, seed=1)
    events = list(
        iter_train(
            image,
            label,
            mode="instances",
            epochs=2,
            steps_per_epoch=2,
            model_config=ModelConfig(**TINY),
        )  # fmt: skip
    )
    assert events[0].model.mode == "instances"
    assert isinstance(events[0], TrainingStarted)
    assert sum(isinstance(e, EpochEnded) for e in events) == 2
    with pytest.raises(TypeError, match="Unknown training option.*'epoch'"):
        next(iter_train(image, label, epoch=2))


@pytest.mark.parametrize("mode", ["semantic", "instances"])
def test_masks_saved_as_jpeg_train_as_the_masks_they_were(mode):
    from napari_unet.training import prepare_data

    from .test_data import _jpeg

    images, masks = [], []
    for seed in range(2):
        image, label = disks(size=96, count=6, seed=seed)
        images.append(image)
        masks.append(np.where(label > 0, 255, 0).astype(np.uint8))
    config = TrainConfig(mode=mode, validation_fraction=0)
    exact = prepare_data(images, masks, config)
    lossy = prepare_data(images, [_jpeg(m, 75) for m in masks], config)
    assert exact.encoding.class_names == lossy.encoding.class_names
    for a, b in zip(exact.train, lossy.train, strict=True):
        assert np.array_equal(a.target, b.target)
    assert any("lossy compression (JPEG)" in note for note in lossy.notes)
    assert not any("JPEG" in note for note in exact.notes)


def test_instances_mode_reads_a_mask_as_connected_objects():
    image, label = disks(96, seed=2)
    mask = np.where(label > 0, 255, 0).astype(np.float32)  # 0/255, stored as floats
    config = TrainConfig(mode="instances", epochs=1, **FAST)

    events = iter_train(image, mask, config, model_config=ModelConfig(**TINY))
    started = next(events)
    model = [e for e in events if isinstance(e, TrainingFinished)][0].model

    assert any("connected region" in note for note in started.notes)
    from napari_unet.data import instance_ids, smallest_object_size

    (ids,), _ = instance_ids([mask])
    assert ids.max() >= 3  # the disks, not one object of id 255
    assert model.min_object_size == smallest_object_size([ids])
    assert model.min_object_size < np.bincount(ids.ravel())[1:].min()


def test_instances_mode_takes_large_sparse_ids():
    image, label = disks(64, seed=3)
    sparse_ids = label.astype(np.uint64) * 2**33  # ids far beyond the object count
    config = TrainConfig(mode="instances", epochs=1, **FAST)
    model = train(image, sparse_ids, config, model_config=ModelConfig(**TINY))
    assert model.mode == "instances"


def test_continuing_a_model_without_a_config_keeps_its_mode(disk_data):
    images, labels = disk_data
    config = TrainConfig(mode="instances", epochs=1, **FAST)
    model = train(images, labels, config, model_config=ModelConfig(**TINY))

    events = iter_train(images, labels, model=model)  # no config: the model's mode
    assert isinstance(next(events), TrainingStarted)
    events.close()  # the default budget is minutes long; the mode is set from the start

    assert model.history["runs"][-1]["config"]["mode"] == "instances"
    with pytest.raises(InputError, match="trained in mode 'instances'"):
        train(images, [lab > 0 for lab in labels], TrainConfig(epochs=1, **FAST), model=model)


def test_a_patch_size_the_network_cannot_take_is_rounded_up_with_a_note(disk_data):
    images, labels = disk_data
    config = TrainConfig(mode="instances", epochs=1, **{**FAST, "patch_size": 20})
    events = iter_train(images, labels, config, model_config=ModelConfig(depth=3, base_channels=4))
    started = next(events)
    finished = [e for e in events if isinstance(e, TrainingFinished)][0]
    assert any("Patch size 20 -> 24" in note for note in started.notes)
    assert finished.model.history["runs"][-1]["config"]["patch_size"] == 24


def test_images_smaller_than_the_patch_get_a_patch_that_just_holds_them():
    pairs = [disks(size=45, count=3, seed=s) for s in range(3)]
    images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    images[0], labels[0] = images[0][:30], labels[0][:30]  # one narrower image
    config = TrainConfig(mode="instances", epochs=1, batch_size=2, steps_per_epoch=2)
    events = iter_train(images, labels, config, model_config=ModelConfig(**TINY))
    started = next(events)
    finished = [e for e in events if isinstance(e, TrainingFinished)][0]

    # depth 2 takes multiples of 4: the 45-pixel images fit in 48; one note, not two
    notes = [note for note in started.notes if "Patch size" in note]
    assert len(notes) == 1 and notes[0].startswith("Patch size 256 -> 48: the images trained")
    assert "at most 45 pixels across" in notes[0]
    model = finished.model
    assert model.patch_size == 48
    assert predict(model, images[1]).shape == (45, 45)
    # prediction mirrors a smaller image up to the patch, as training saw them
    assert _plan(model, images[0], PredictConfig(), None, 0).grid.tile_shape == (48, 48)

    # continuing on tinier images: at least 16, as TrainConfig takes; a run stopped before
    # its first step leaves the recorded patch as it was
    tiny_labels = [np.zeros((10, 10), np.uint8) for _ in range(3)]
    for k, label in enumerate(tiny_labels):
        label[k : k + 4, 2:6] = 1
    tiny = [(label * 150 + 30).astype(np.uint8) for label in tiny_labels]
    continued = iter_train(tiny, tiny_labels, config, model=model)
    assert any("Patch size 256 -> 16" in note for note in next(continued).notes)
    continued.close()
    assert model.patch_size == 48
    model = train(tiny, tiny_labels, config, model=model)
    assert model.patch_size == 16
    TrainConfig(**model.history["runs"][-1]["config"])  # still a valid configuration

    # a larger image trained on keeps the patch asked for; held out for validation, not
    large, large_labels = disks(size=80, count=4, seed=5)
    config = config.model_copy(update={"patch_size": 64})
    first = next(iter_train([large, *images], [large_labels, *labels], config,
                            model_config=ModelConfig(**TINY)))  # fmt: skip
    assert not any("Patch size" in note for note in first.notes)
    many, many_labels = images * 7, labels * 7  # the large image last: 14% of the pixels
    last = next(iter_train([*many, large], [*many_labels, large_labels], config,
                           model_config=ModelConfig(**TINY)))  # fmt: skip
    assert any("Patch size 64 -> 48" in n and "held out for validation" in n for n in last.notes)


def test_few_images_are_validated_on_a_strip_of_each():
    from napari_unet.training import prepare_data

    pairs = [disks(size=96, seed=s) for s in range(2)]
    images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    data = prepare_data(images, labels, TrainConfig(mode="instances"))
    # two images: one held out whole would be half the data
    assert {s.target.shape for s in data.train} <= {(80, 96), (96, 80)}
    assert {s.target.shape for s in data.validation} <= {(16, 96), (96, 16)}
    assert any(note.startswith("Validation: a strip of each plane") for note in data.notes)

    # many planes of equal size: the last ones whole, as in a stack
    data = prepare_data(images * 5, labels * 5, TrainConfig(mode="instances"))
    assert len(data.train) == 9 and len(data.validation) == 1
    assert not any("strip" in note for note in data.notes)
    # a large image last holds most of the pixels: strips again
    big, big_labels = disks(size=400, count=40, seed=9)
    data = prepare_data(
        [*images * 5, big], [*labels * 5, big_labels], TrainConfig(mode="instances")
    )
    assert len(data.train) == len(data.validation) == 11

    # strips without objects to score (scribbles far from them), or none at all (images
    # too small for one): the last image whole, as before
    scribbles = [np.zeros((96, 96), np.uint8) for _ in range(2)]
    for scribble in scribbles:
        scribble[5:10, 10:80], scribble[40:44, 30:60] = 1, 2  # 1 = background, 2 = nuclei
    config = TrainConfig(mode="sparse", validation_fraction=0.5)  # enough to score
    for scribble in scribbles:
        scribble[60:90, 10:90] = 1
    data = prepare_data(images, scribbles, config)
    assert len(data.train) == len(data.validation) == 1
    assert not any("strip" in note for note in data.notes)
    # too few painted pixels held out to choose weights by: every pixel trains
    few = [np.zeros((96, 96), np.uint8) for _ in range(2)]
    for scribble in few:
        scribble[5:10, 10:80], scribble[40:44, 30:60] = 1, 2
    data = prepare_data(images, few, TrainConfig(mode="sparse"))
    assert len(data.train) == 2 and not data.validation
    assert any("would hold only 470 annotated pixels" in note for note in data.notes)
    # scribbles only where the strips fall: the strips of the other edges hold none, and
    # the last image whole would hold most of the strokes, so every pixel trains
    bottom = [np.zeros((96, 96), np.uint8) for _ in range(2)]
    bottom[0][90:, :40], bottom[1][90:, :40] = 1, 1
    bottom[1][92:, 50:60] = 2
    data = prepare_data(images, bottom, TrainConfig(mode="sparse"))
    assert len(data.train) == 2 and not data.validation
    assert any("would hold only 0 annotated pixels" in note for note in data.notes)
    # more strokes in the first image: the last whole holds less than half, but every
    # stroke of class 2, so again every pixel trains, and the note says why
    bottom[0][76:90, :40] = 1
    data = prepare_data(images, bottom, TrainConfig(mode="sparse"))
    assert len(data.train) == 2 and not data.validation
    assert any("every annotated pixel of 'class 2'" in note for note in data.notes)
    small = [np.zeros((20, 20), np.uint8) for _ in range(2)]
    for square in small:
        square[5:12, 6:14] = 1
    data = prepare_data([s * 200 for s in small], small, TrainConfig(mode="instances"))
    assert len(data.train) == 2 and not data.validation


def test_a_single_image_is_validated_on_a_strip_that_holds_objects():
    from napari_unet.training import prepare_data

    image, label = disks(size=128, count=8, seed=3)
    label[64:] = 0  # objects only in the top half: the bottom strip would score nothing
    data = prepare_data(image, label, TrainConfig(mode="instances"))
    (train,), (held,) = data.train, data.validation
    assert held.target.shape == (16, 128) and (held.target > 0).sum() >= 64
    np.testing.assert_array_equal(held.target, instance_targets(label)[:16])  # the top strip
    assert train.target.shape == (112, 128)

    # scribbles: a strip holding a few painted nucleus pixels chooses no weights
    scribbles = np.zeros((128, 128), np.uint8)
    scribbles[20:30, 10:120], scribbles[60:64, 40:70] = 1, 2
    scribbles[120:123, 60:63] = 2  # 9 nucleus pixels at the bottom
    data = prepare_data(image, scribbles, TrainConfig(mode="sparse"))
    assert len(data.train) == 1 and not data.validation
    assert data.train[0].target.shape == (128, 128)
    assert any("too few to choose by" in note for note in data.notes)


def test_a_patch_rounded_and_shrunk_gets_one_note():
    image, label = disks(size=40, count=3)
    config = TrainConfig(mode="instances", epochs=1, patch_size=100, **{"steps_per_epoch": 1})
    started = next(iter_train([image, image], [label, label], config))  # depth 4: 16s
    notes = [note for note in started.notes if "Patch size" in note]
    assert notes == [notes[0]] and notes[0].startswith("Patch size 100 -> 48:")


def test_stopping_before_the_first_validation_keeps_what_was_learned(disk_data):
    images, labels = disk_data
    config = TrainConfig(mode="instances", epochs=1, **{**FAST, "steps_per_epoch": 20})
    events = iter_train(images, labels, config, model_config=ModelConfig(**TINY))
    model = next(events).model
    initial = {k: v.clone() for k, v in model.network.state_dict().items()}
    for event in events:
        if isinstance(event, StepEnded) and event.step == 5:
            break
    trained = {k: v.clone() for k, v in model.network.state_dict().items()}
    events.close()

    after = model.network.state_dict()
    assert any(not torch.equal(initial[k], after[k]) for k in initial)
    for key, value in trained.items():
        torch.testing.assert_close(after[key], value)


def test_class_values_beyond_16_bits_survive_prediction():
    image, instances = disks(64, seed=4)
    scribbles = np.zeros(instances.shape, np.uint32)
    scribbles[::5, :][instances[::5, :] == 0] = 1
    scribbles[(instances > 0) & (np.indices(instances.shape).sum(0) % 3 == 0)] = 70000
    config = TrainConfig(mode="sparse", epochs=3, **FAST)

    model = train(image, scribbles, config, model_config=ModelConfig(**TINY))
    labels = predict(model, image)

    assert labels.dtype == np.uint32 and 70000 in np.unique(labels)


@pytest.mark.parametrize("mode", ["semantic", "instances"])
def test_a_stack_plane_with_bad_labels_is_named_by_image_and_plane(mode):
    images = [np.zeros((32, 32), np.uint8), np.zeros((3, 32, 32), np.uint8)]
    labels = [np.ones((32, 32), np.uint8), np.ones((3, 32, 32), np.float32)]
    labels[1][2, 0, 0] = 0.5

    with pytest.raises(InputError, match=r"labels of Image #1 \(plane 2\) hold non-integer"):
        train(images, labels, TrainConfig(mode=mode, epochs=1, patch_size=32))


def test_validation_of_a_per_tile_normalised_model_does_not_warn_every_epoch():
    network = UNet(1, 2, depth=2, base_channels=8, norm="instance").eval()
    rng = np.random.default_rng(0)
    sample = Sample(rng.random((1, 96, 96)).astype(np.float32), rng.integers(0, 2, (96, 96)))

    with warnings.catch_warnings():
        warnings.simplefilter("error", TileDependenceWarning)
        score = _validate(network, [sample], "cpu", tile=32)  # 16 tiles
    assert score is not None
    with pytest.warns(TileDependenceWarning):  # users' predictions still warn
        predict(network, sample.image, tile_size=32, channel_axis=0)


def test_train_takes_config_fields_as_keywords_and_warns_its_notes(disk_data):
    from napari_unet import TrainingNote

    images, labels = disk_data
    masks = [np.where(label > 0, 255, 0).astype(np.uint8) for label in labels[:2]]
    base = TrainConfig(mode="semantic", minutes=5, seed=3, **FAST)

    with pytest.warns(TrainingNote, match="0/255"):
        model = train(images[:2], masks, base, epochs=1, model_config=ModelConfig(**TINY))

    run = model.history["runs"][-1]
    assert run["config"]["epochs"] == 1 and run["config"]["minutes"] is None  # the keyword's
    assert run["config"]["seed"] == 3 and run["config"]["patch_size"] == FAST["patch_size"]
    with pytest.raises(ValueError, match="epochs"):
        train(images[:1], masks[:1], epochs=0)
    # continuing a model of another mode with a keyword keeps the model's mode
    instances = train(images[:2], labels[:2], mode="instances", epochs=1, **FAST,
                      model_config=ModelConfig(**TINY))  # fmt: skip
    again = train(images[:2], labels[:2], model=instances, epochs=1, **FAST)
    assert again is instances and len(instances.history["runs"]) == 2


def test_labels_saved_as_an_rgb_picture_name_their_image(disk_data):
    images, labels = disk_data
    picture = np.stack([labels[1] > 0] * 3, axis=-1).astype(np.uint8) * 255
    with pytest.raises(InputError, match=r"labels of Image #1 \(96, 96, 3\) look like an RGB"):
        train(images[:2], [labels[0], picture], TrainConfig(epochs=1, **FAST))


def test_the_score_shown_is_the_last_trained_runs_and_partial_epochs_count():
    model = train(*disks(size=64, seed=2), TrainConfig(epochs=1, steps_per_epoch=2),
                  model_config=ModelConfig(**TINY))  # fmt: skip
    runs = model.history["runs"]
    runs[-1]["best_score"] = 0.9
    runs.append({"steps": 3, "best_score": None, "epochs": 1})  # continued, not validated
    assert model.best_score is None
    runs.append({"steps": 0, "best_score": None, "epochs": 0})  # stopped before a step
    assert model.best_score is None
    runs[-2]["best_score"] = 0.7
    assert model.best_score == 0.7

    from napari_unet.training import EpochEnded, iter_train

    image, label = disks(size=64, seed=3)
    config = TrainConfig(minutes=0.02, steps_per_epoch=100_000, validation_fraction=0)
    ended = [e for e in iter_train(image, label, config, model_config=ModelConfig(**TINY))
             if isinstance(e, EpochEnded)]  # fmt: skip
    assert [e.epoch for e in ended] == [1]  # the one, partial epoch of the budget


def test_validation_that_cannot_choose_weights_tries_another_split_first():
    from napari_unet.training import prepare_data

    # a strip, not the top rows that hold every pixel of class 2
    image, label = disks(size=128, count=10, seed=4)
    semantic = (label > 0).astype(np.uint8)
    semantic[112:] = 0
    semantic[2:10, 60:70] = 2
    data = prepare_data(image, semantic, TrainConfig(mode="semantic"))
    assert [s.target.shape for s in data.validation] == [(128, 16)]  # the right edge

    # scribbled planes of a stack: two held out where one holds too few pixels
    pairs = [disks(size=96, count=6, seed=10 + k) for k in range(10)]
    strokes = [np.zeros((96, 96), np.uint8) for _ in pairs]
    for s in strokes:
        s[10:20, 10:80], s[40:46, 20:60] = 1, 2
    data = prepare_data([p[0] for p in pairs], strokes, TrainConfig(mode="sparse"))
    assert (len(data.train), len(data.validation)) == (8, 2)

    # a sparsely scribbled last image of three: strips of each instead of it whole
    images = [disks(size=256, count=20, seed=k)[0] for k in range(3)]
    labels = [np.where(disks(size=256, count=20, seed=k)[1] > 0, 2, 1).astype(np.uint8)
              for k in range(3)]  # fmt: skip
    labels[2] = np.zeros_like(labels[2])
    labels[2][100:105, 10:100], labels[2][120:125, 120:140] = 1, 2
    data = prepare_data(images, labels, TrainConfig(mode="sparse"))
    assert len(data.train) == len(data.validation) == 3
    assert any("which would hold only" in note and "too few to choose by" in note
               for note in data.notes)  # fmt: skip


def test_a_model_config_given_with_a_model_to_continue_is_said_to_be_unused():
    image, label = disks(size=64, seed=5)
    model = train(image, label, TrainConfig(epochs=1, steps_per_epoch=1),
                  model_config=ModelConfig(**TINY))  # fmt: skip
    with pytest.warns(UserWarning, match="model_config is not used"):
        train(image, label, TrainConfig(epochs=1, steps_per_epoch=1), model=model,
              model_config=ModelConfig(depth=3))  # fmt: skip
    assert model.network.config.depth == TINY["depth"]


def test_strips_keep_every_class_to_train_and_the_note_says_why():
    from napari_unet.training import prepare_data

    images, labels = [], []
    for k in range(2):
        image, label = disks(size=128, count=10, seed=k)
        images.append(image)
        labels.append((label > 0).astype(np.uint8))
    third = np.zeros((128, 128), np.uint8)
    third[20:100, 20:100] = 1
    third[115:125, 50:60] = 2  # class 2 only here, near the bottom of the plane
    images.append(disks(size=128, count=10, seed=9)[0])
    labels.append(third)
    data = prepare_data(images, labels, TrainConfig(mode="semantic"))
    assert len(data.validation) == 3  # the third plane's strip from elsewhere
    assert (data.train[2].target == 2).any()
    assert any("more than twice that share" in note for note in data.notes)

    # ten planes, class 2 only in the last: strips, and the note says why
    pairs = [disks(size=128, count=10, seed=k) for k in range(10)]
    labels = [(label > 0).astype(np.uint8) for _, label in pairs]
    labels[9][115:125, 50:60] = 2
    data = prepare_data([p[0] for p in pairs], labels, TrainConfig(mode="semantic"))
    assert len(data.validation) == 10
    assert any("which would hold every annotated pixel of 'class 2'" in n for n in data.notes)


def test_the_last_plane_whole_is_never_held_out_where_it_holds_most_labels():
    from napari_unet.training import prepare_data

    # a small and a large plane, objects in their middles: strips hold too few objects,
    # and the large plane whole would hold 80% of the labels; nothing is held out, and
    # the one note says so (no note of strips that were not used)
    images, labels = [], []
    for size in (128, 256):
        label = np.zeros((size, size), np.uint8)
        c = size // 2
        label[c - 20 : c + 20, c - 20 : c + 20] = 1
        label[size - 6 : size - 3, 10:13] = 1
        images.append(np.random.default_rng(size).random((size, size)).astype(np.float32))
        labels.append(label)
    data = prepare_data(images, labels, TrainConfig(mode="semantic"))
    assert not data.validation and len(data.train) == 2
    validation_notes = [n for n in data.notes if n.startswith("Validation")]
    assert len(validation_notes) == 1, validation_notes
    assert "training uses every annotated pixel" in validation_notes[0]

    # two equal planes whose strips hold too few objects to score: one note, not two
    # that contradict each other
    small = [np.zeros((96, 96), np.uint8) for _ in range(2)]
    for label in small:
        label[40:45, 40:45], label[90:95, 40:45] = 1, 1  # one in a bottom strip
    data = prepare_data([i[:96, :96] for i in images[:1] * 2], small,
                        TrainConfig(mode="semantic"))  # fmt: skip
    validation_notes = [n for n in data.notes if n.startswith("Validation")]
    assert len(validation_notes) == 1, validation_notes


def test_a_stack_labelled_on_some_planes_says_the_others_train_as_background():
    from napari_unet.training import prepare_data

    pairs = [disks(size=64, count=4, seed=k) for k in range(4)]
    volume = np.stack([p[0] for p in pairs])
    labels = np.stack([(p[1] > 0).astype(np.uint8) for p in pairs])
    partial = labels.copy()
    partial[2:] = 0
    data = prepare_data(volume, partial, TrainConfig(mode="semantic"))
    assert any("2 plane(s) of stacked image(s) (the first: Image #0 (plane 2))" in n
               and "train as background" in n for n in data.notes)  # fmt: skip
    data = prepare_data(volume, labels, TrainConfig(mode="semantic"))
    assert not any("train as background" in n for n in data.notes)


def test_training_reads_image_and_label_files_given_as_paths(tmp_path):
    import tifffile

    from napari_unet.training import prepare_data

    image, label = disks(size=64, count=4, seed=3)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", (label > 0).astype(np.uint8) * 255)  # a 0/255 mask
    data = prepare_data(str(tmp_path / "img.tif"), tmp_path / "lab.tif", TrainConfig())
    from_arrays = prepare_data(image, (label > 0).astype(np.uint8), TrainConfig())
    assert len(data.train) == len(from_arrays.train)
    assert np.array_equal(data.train[0].target, from_arrays.train[0].target)


def test_grey_pictures_saved_as_colour_train_a_grey_model():
    from napari_unet import predict, train

    image, label = disks(size=64, count=4, seed=5)
    grey = (image / image.max() * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)  # a grey picture saved as RGB
    model = train(rgb, (label > 0).astype(np.uint8), TrainConfig(epochs=1, steps_per_epoch=2,
                  patch_size=64, batch_size=2), model_config=ModelConfig(**TINY))  # fmt: skip
    assert model.in_channels == 1
    assert predict(model, grey).shape == (64, 64)  # the plain grey image too
    again = train(
        rgb,
        (label > 0).astype(np.uint8),
        TrainConfig(epochs=1, steps_per_epoch=2, patch_size=64, batch_size=2),
        model=model,
    )  # continued on the pictures
    assert again.in_channels == 1
    # equal channels given on another axis (fluorescence): channels, not a grey picture
    stains = np.stack([grey] * 3).astype(np.uint16)
    model = train(stains, (label > 0).astype(np.uint8), TrainConfig(epochs=1, steps_per_epoch=2,
                  patch_size=64, batch_size=2), model_config=ModelConfig(**TINY),
                  channel_axis=0)  # fmt: skip
    assert model.in_channels == 3 and predict(model, stains, channel_axis=0).shape == (64, 64)
    colour = rgb.copy()
    colour[..., 0] //= 2  # a true colour picture: three channels, as before
    model = train(colour, (label > 0).astype(np.uint8), TrainConfig(epochs=1, steps_per_epoch=2,
                  patch_size=64, batch_size=2), model_config=ModelConfig(**TINY))  # fmt: skip
    assert model.in_channels == 3
