"""The Load U-Net model widget: model card, active model, bad files."""

from __future__ import annotations

import pickle

import pytest

from napari_unet._widgets._models import registry_for
from napari_unet._widgets.load import LoadWidget
from napari_unet._widgets.segment import SegmentWidget
from napari_unet._widgets.train import TrainWidget


def test_load_shows_the_card_and_activates_the_model(make_napari_viewer, model_file):
    viewer = make_napari_viewer()
    load = LoadWidget(viewer)
    segment = SegmentWidget(viewer)
    train = TrainWidget(viewer)
    load.file.value = model_file

    model = load.load()

    card = load.card.text()
    for text in ("instances", "background, interior, boundary", "input channels", "1 plane"):
        assert text in card
    assert "validation score" in card and "trained" in card
    assert registry_for(viewer).active.source == str(model_file)
    assert segment.model.value.model is model
    assert train.continue_training.enabled
    assert "nuclei" in train.continue_training.text


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (pickle.dumps({"weights": [1, 2, 3]}), "pickle"),
        (b"this is not a model", "not a napari-unet model file"),
        (None, "No model file"),
    ],
    ids=["pickle", "garbage", "missing"],
)
def test_bad_files_give_a_clear_message(
    make_napari_viewer, tmp_path, notifications, content, expected
):
    viewer = make_napari_viewer()
    load = LoadWidget(viewer)
    path = tmp_path / "model.safetensors"
    if content is not None:
        path.write_bytes(content)

    assert load.load(path) is None

    assert len(notifications.errors) == 1
    assert expected in notifications.errors[0]
    assert registry_for(viewer).active is None
    assert "No model loaded" in load.card.text()


def test_load_without_a_file_asks_for_one(make_napari_viewer, notifications):
    load = LoadWidget(make_napari_viewer())

    assert load.load() is None

    assert "Choose a model file" in notifications.errors[0]


def test_loading_a_file_again_activates_it_rather_than_copying_it(
    make_napari_viewer, model_file, tmp_path, notifications
):
    viewer = make_napari_viewer()
    load = LoadWidget(viewer)
    registry = registry_for(viewer)
    first = load.load(model_file)
    registry.add(first.__class__(first.network, first.encoding, first.normalization), "x", "t")

    assert load.load(model_file) is first  # unchanged: the entry it has, active again
    assert len(registry.entries) == 2 and registry.active.model is first
    assert "is loaded already" in notifications.infos[-1]

    first.history.setdefault("runs", []).append({"steps": 3})  # trained on since
    again = load.load(model_file)
    assert again is not first and len(registry.entries) == 3
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(model_file.read_bytes())
    assert load.load(copy) is not again  # another file


def test_a_file_replaced_with_the_same_size_and_time_is_read_again(
    make_napari_viewer, model_file, tmp_path
):
    import os

    from napari_unet.io import load_model

    viewer = make_napari_viewer()
    load = LoadWidget(viewer)
    path = tmp_path / "m.safetensors"
    path.write_bytes(model_file.read_bytes())
    first = load.load(path)
    other = load_model(model_file)
    for weights in other.network.parameters():  # the same size, other weights
        weights.data.add_(1.0)
    times = path.stat().st_atime_ns, path.stat().st_mtime_ns
    other.save(path)
    os.utime(path, ns=times)  # saved anew (another inode), its times set back

    again = load.load(path)
    assert again is not first and len(registry_for(viewer).entries) == 2


def test_a_file_rewritten_in_place_with_its_size_and_time_is_read_again(
    make_napari_viewer, model_file, tmp_path
):
    """The same inode, size and modification time (bytes written into the file, its time
    set back, as ``cp -p`` over it does): its change time tells it apart."""
    import os
    import time

    viewer = make_napari_viewer()
    load = LoadWidget(viewer)
    path = tmp_path / "m.safetensors"
    path.write_bytes(model_file.read_bytes())
    first = load.load(path)
    before = path.stat()
    time.sleep(0.02)  # a later change time
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # another weight, the same size
    with open(path, "r+b") as f:  # in place: the same inode
        f.write(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_ino == before.st_ino and path.stat().st_mtime_ns == before.st_mtime_ns

    assert load.load(path) is not first and len(registry_for(viewer).entries) == 2


def test_home_in_a_path_is_expanded(make_napari_viewer, model_file, monkeypatch, notifications):
    viewer = make_napari_viewer()
    load = LoadWidget(viewer)
    monkeypatch.setenv("HOME", str(model_file.parent))
    model = load.load(f"~/{model_file.name}")
    assert model is not None and registry_for(viewer).active.model is model
    assert load.load(f"~/{model_file.name}") is model  # the same file, unchanged

    assert load.load("~no_such_user_of_this_machine/m.safetensors") is None
    assert "Cannot find the home directory" in notifications.errors[-1]


def test_a_file_loaded_again_while_its_model_trains_is_read_anew(make_napari_viewer, model_file):
    viewer = make_napari_viewer()
    load = LoadWidget(viewer)
    registry = registry_for(viewer)
    first = load.load(model_file)
    registry.set_busy(first, True)  # being trained on: its weights are about to change

    assert load.load(model_file) is not first and len(registry.entries) == 2
