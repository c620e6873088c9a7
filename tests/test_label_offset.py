"""Labels that sit a fraction of a pixel off the image: measured after training, applied
by prediction on every path (numpy, tiles, dask workers), kept in the model file."""

import json

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_unet import ModelConfig, TrainConfig, load_model, predict, train
from napari_unet._inference import shift_maps
from napari_unet.data import LabelEncoding, Normalization, Sample
from napari_unet.io import ModelFileError
from napari_unet.model import SegmentationModel, UNet
from napari_unet.prediction import ModelSpec
from napari_unet.training import estimate_label_offset

from .conftest import TINY, disks


@pytest.mark.parametrize("offset", [(-0.5, -0.25), (0.75, 0.0), (0.0, -0.75), (-1.0, 0.5)])
def test_shift_maps_moves_like_scipy(offset):
    maps = np.random.default_rng(0).random((2, 3, 17, 23)).astype(np.float32)
    moved = shift_maps(torch.from_numpy(maps), offset).numpy()
    expected = ndi.shift(maps, (0, 0, *offset), order=1, mode="nearest")
    np.testing.assert_allclose(moved, expected, atol=1e-6)


def _soft_disks(centres, size=96, radius=7.0):
    """Probabilities (2, Y, X) of disks drawn with soft edges at real-valued centres."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    inside = np.zeros((size, size), np.float32)
    for cy, cx in centres:
        distance = np.hypot(yy - cy, xx - cx)
        inside = np.maximum(inside, 1 / (1 + np.exp(2.0 * (distance - radius))))
    return np.stack([1 - inside, inside])


@pytest.mark.parametrize("offset", [(-0.5, 0.5), (0.5, 0.0), (0.0, -0.75), (0.0, 0.0)])
def test_the_offset_of_the_labels_is_measured(monkeypatch, offset):
    """The network draws disks at their centres in the image; the labels were drawn
    ``offset`` pixels away: the estimate finds that offset (none where there is none)."""
    import napari_unet.prediction as prediction

    rng = np.random.default_rng(1)
    centres = rng.uniform(12, 84, size=(12, 2))
    drawn = _soft_disks(centres)
    labels = (_soft_disks(centres + np.asarray(offset))[1] > 0.5).astype(np.int64)
    labels[:5] = -1  # unannotated rows are left out of the measure
    monkeypatch.setattr(prediction, "predict", lambda *args, **kwargs: drawn)
    sample = Sample(np.zeros((1, 96, 96), np.float32), labels)

    found = estimate_label_offset(UNet(**TINY), [sample])

    assert found == (None if offset == (0.0, 0.0) else offset)


def _measure(monkeypatch, probabilities, targets):
    """estimate_label_offset with the network's probabilities of each plane given."""
    import napari_unet.prediction as prediction

    given = iter(probabilities)
    monkeypatch.setattr(prediction, "predict", lambda *args, **kwargs: next(given))
    samples = [Sample(np.zeros((1, *t.shape), np.float32), t) for t in targets]
    return estimate_label_offset(UNet(**TINY), samples)


@pytest.mark.parametrize("seed", range(4))
def test_scattered_confident_mistakes_are_not_read_as_an_offset(monkeypatch, seed):
    """Moving by a fraction of a pixel also smooths, which lowers the cross-entropy of a
    confident network's scattered mistakes by itself, in some direction or other."""
    rng = np.random.default_rng(seed)
    labels = (_soft_disks(rng.uniform(12, 84, size=(12, 2)))[1] > 0.5).astype(np.int64)
    ring = (labels != ndi.binary_erosion(labels)) | (ndi.binary_dilation(labels) > labels)
    drawn = np.where(ring & (rng.random(labels.shape) < 0.3), 1 - labels, labels)
    confident = np.stack([1 - drawn, drawn]).astype(np.float32).clip(1e-6, 1 - 1e-6)
    assert _measure(monkeypatch, [confident] * 2, [labels] * 2) is None


def test_no_offset_where_every_shift_scores_the_same(monkeypatch):
    labels = (_soft_disks([(40, 40)])[1] > 0.5).astype(np.int64)
    labels[:] = 0  # an empty plane, predicted as empty with certainty: every shift is exact
    certain = np.stack([np.ones_like(labels), np.zeros_like(labels)]).astype(np.float32)
    assert _measure(monkeypatch, [certain] * 2, [labels] * 2) is None


def test_planes_that_disagree_give_no_offset(monkeypatch):
    centres = np.random.default_rng(3).uniform(12, 84, size=(12, 2))
    drawn = _soft_disks(centres)
    up, down = ((_soft_disks(centres + np.asarray(d))[1] > 0.5).astype(np.int64)
                for d in ((-0.5, 0.0), (0.5, 0.0)))  # fmt: skip
    assert _measure(monkeypatch, [drawn] * 3, [up, up, up]) == (-0.5, 0.0)
    assert _measure(monkeypatch, [drawn] * 3, [up, up, down]) is None  # 2 of 3 agree


def test_too_few_annotated_pixels_measure_no_offset(monkeypatch):
    centres = np.random.default_rng(3).uniform(12, 84, size=(12, 2))
    drawn = _soft_disks(centres)
    up = (_soft_disks(centres + np.asarray((-0.5, 0.0)))[1] > 0.5).astype(np.int64)
    assert _measure(monkeypatch, [drawn], [up]) == (-0.5, 0.0)
    scribbled = np.full_like(up, -1)
    scribbled[::10] = up[::10]  # every tenth row: 960 of 9216 pixels annotated
    assert _measure(monkeypatch, [], [scribbled]) is None  # nor predicted
    # a plane a few pixels tall is left out (never predicted), whatever its labels say
    assert _measure(monkeypatch, [], [up[:12]]) is None


def _model(offset=None) -> SegmentationModel:
    torch.manual_seed(0)
    encoding = LabelEncoding("semantic", ["background", "class 1"], [0, 1], [0, 1], [])
    network = UNet(in_channels=1, num_classes=2, depth=2, base_channels=4).eval()
    with torch.no_grad():  # outputs that follow the image rather than a flat 0.5
        network.head.weight *= 300
    return SegmentationModel(network, encoding, Normalization(0, 100), label_offset=offset)


def test_prediction_moves_probabilities_by_the_offset_on_every_path():
    image = disks(size=120)[0]
    plain = predict(_model(), image, output="probabilities")
    moved = predict(_model((-0.5, 0.25)), image, output="probabilities")
    np.testing.assert_allclose(moved, ndi.shift(plain, (0, -0.5, 0.25), order=1, mode="nearest"),
                               atol=1e-5)  # fmt: skip
    assert np.abs(moved - plain).max() > 0.01

    # in overlapping tiles, each tile is moved before blending: the same inside
    tiled = predict(_model((-0.5, 0.25)), image, output="probabilities", tile_size=64)
    assert np.abs(tiled - moved)[:, 4:-4, 4:-4].max() < 0.02

    import dask.array as da

    lazy = predict(_model((-0.5, 0.25)), da.from_array(image, chunks=60), output="probabilities")
    np.testing.assert_allclose(np.asarray(lazy), moved, atol=1e-4)

    spec = ModelSpec.from_model(_model((-0.5, 0.25)))
    assert spec.build().label_offset == (-0.5, 0.25)
    assert spec.token != ModelSpec.from_model(_model()).token


def test_the_offset_is_saved_shown_and_checked_on_load(tmp_path):
    model = _model((-0.5, 0.0))
    assert model.card()["label offset"] == "-0.50, +0.00 pixels (y, x)"
    model.save(tmp_path / "m.safetensors")
    assert load_model(tmp_path / "m.safetensors").label_offset == (-0.5, 0.0)
    _model().save(tmp_path / "none.safetensors")
    assert load_model(tmp_path / "none.safetensors").label_offset is None

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as handle:
        header = json.loads(handle.metadata()["napari_unet"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    for bad in ([3, 0], [0.5], "up", [0.5, float("nan")], [True, 0]):
        header["label_offset"] = bad
        save_file(tensors, str(tmp_path / "bad.safetensors"),
                  metadata={"napari_unet": json.dumps(header)})  # fmt: skip
        with pytest.raises(ModelFileError, match="label_offset"):
            load_model(tmp_path / "bad.safetensors")


def test_training_measures_the_offset_unless_told_not_to(monkeypatch, disk_data):
    import napari_unet.training as training

    seen = []

    def measured(network, samples, device="cpu", tile=None, least=0):
        seen.append(len(samples))
        return (-0.5, 0.0)

    monkeypatch.setattr(training, "estimate_label_offset", measured)
    images, labels = disk_data
    config = TrainConfig(epochs=1, steps_per_epoch=2, patch_size=32, batch_size=2)
    model = train(images, [m > 0 for m in labels], config, model_config=ModelConfig(**TINY))
    assert model.label_offset == (-0.5, 0.0) and seen == [3]  # a strip of each of the three planes
    assert model.history["runs"][-1]["label_offset"] == [-0.5, 0.0]

    # continued without measuring: the offset belonged to the weights before
    off = config.model_copy(update={"label_offset": False})
    events = list(training.iter_train(images, [m > 0 for m in labels], off, model=model))
    assert not any(isinstance(e, training.MeasuringLabelOffset) for e in events)
    again = events[-1].model
    assert again.label_offset is None and again.history["runs"][-1]["label_offset"] is None

    # the measuring is announced, after the last step and before the end
    events = list(training.iter_train(images, [m > 0 for m in labels], config))
    kinds = [type(e).__name__ for e in events]
    assert kinds[-3:] == ["EpochEnded", "MeasuringLabelOffset", "TrainingFinished"]
    assert seen == [3, 3]

    # without a validation part there is nothing the network has not trained on to measure
    whole = config.model_copy(update={"validation_fraction": 0.0})
    assert train(images, [m > 0 for m in labels], whole).label_offset is None
    assert seen == [3, 3]

    # a continued run that is stopped keeps none; one that fails before a step keeps it
    model.label_offset = (-0.5, 0.0)
    run = training.iter_train(images, [m > 0 for m in labels], config, model=model)
    for event in run:
        if isinstance(event, training.StepEnded):
            run.close()
    assert model.label_offset is None
    model.label_offset = (-0.5, 0.0)
    with pytest.raises(Exception, match="labels"):
        train(images, [np.zeros((3, 3), bool)] * 3, config, model=model)
    assert model.label_offset == (-0.5, 0.0)


def test_a_model_takes_only_an_offset_it_can_save():
    model = _model()
    model.label_offset = [np.float32(-0.5), 0]
    assert model.label_offset == (-0.5, 0.0) and isinstance(model.label_offset[0], float)
    for bad in ((1.0, 0.0), (0.5,), ("a", 0), (True, 0), (float("inf"), 0)):
        with pytest.raises(ValueError, match="label_offset"):
            model.label_offset = bad
