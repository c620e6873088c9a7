import pickle

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

from napari_unet import UNet, predict, prediction
from napari_unet.data import LabelEncoding, Normalization
from napari_unet.model import SegmentationModel
from napari_unet.prediction import ModelSpec

OPTIONS = {"tile_size": 128, "device": "cpu"}


def _model(mode: str = "semantic") -> SegmentationModel:
    torch.manual_seed(0)
    names = ["background", "a", "b"]
    values = [0, 5, 9] if mode == "semantic" else [0, 1, 2]
    encoding = LabelEncoding(mode, names, values, [0, 1, 2], [])
    return SegmentationModel(
        UNet(1, 3, depth=2, base_channels=8).eval(), encoding, Normalization()
    )


@pytest.fixture
def image():
    return (np.random.default_rng(0).random((460, 530)) * 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    """Several output chunks even for small test images, so chunk borders are crossed."""
    monkeypatch.setattr(prediction, "_CHUNK_TARGET", 200)


def test_dask_input_gives_a_lazy_array_equal_to_the_numpy_result(image):
    model = _model()
    lazy_image = da.from_array(image, chunks=(200, 256))

    labels = predict(model, lazy_image, **OPTIONS)
    probabilities = predict(model, lazy_image, output="probabilities", **OPTIONS)

    assert isinstance(labels, da.Array) and labels.dtype == np.uint8
    assert len(labels.chunks[0]) > 1 and len(labels.chunks[1]) > 1
    np.testing.assert_array_equal(labels.compute(), predict(model, image, **OPTIONS))
    np.testing.assert_array_equal(
        probabilities.compute(), predict(model, image, output="probabilities", **OPTIONS)
    )
    np.testing.assert_array_equal(labels[100:300, 250:].compute(), labels.compute()[100:300, 250:])


def test_dask_stack_with_channels_last_keeps_the_layout():
    torch.manual_seed(0)
    network = UNet(3, 2, depth=2, base_channels=8).eval()
    stack = np.random.default_rng(2).random((2, 150, 260, 3)).astype(np.float32)

    lazy = predict(network, da.from_array(stack, chunks=(1, 100, 100, 3)), **OPTIONS)
    probabilities = predict(
        network, da.from_array(stack), output="probabilities", **OPTIONS
    ).compute()

    assert lazy.shape == (2, 150, 260)
    np.testing.assert_array_equal(lazy.compute(), predict(network, stack, **OPTIONS))
    assert probabilities.shape == (2, 2, 150, 260)
    np.testing.assert_array_equal(
        probabilities, predict(network, stack, output="probabilities", **OPTIONS)
    )


def test_dask_input_in_instances_mode_is_computed(image):
    model = _model("instances")

    labels = predict(model, da.from_array(image, chunks=200), **OPTIONS)

    assert isinstance(labels, np.ndarray) and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, predict(model, image, **OPTIONS))


def test_dask_input_streams_to_zarr_on_the_local_scheduler(tmp_path, image):
    model = _model()

    result = predict(model, da.from_array(image, chunks=200), out=tmp_path / "l.zarr", **OPTIONS)

    assert isinstance(result, zarr.Array)
    np.testing.assert_array_equal(result[:], predict(model, image, **OPTIONS))


def test_the_graph_ships_the_model_as_data_not_code(image):
    model = _model()
    lazy = predict(model, da.from_array(image, chunks=200), **OPTIONS)

    spec = ModelSpec.from_model(model)
    payload = pickle.dumps(spec)
    tasks = dict(lazy.__dask_graph__())
    graph = pickle.dumps(tasks)

    assert b"torch" not in payload
    assert b"torch" not in graph
    rebuilt = pickle.loads(payload).build()
    assert isinstance(rebuilt, SegmentationModel) and rebuilt.mode == "semantic"
    for key, value in model.network.state_dict().items():
        assert torch.equal(rebuilt.network.state_dict()[key], value)
    assert pickle.loads(graph).keys() == tasks.keys()

    # a small image is mirrored around to the training patch on a worker too
    model.history = {"runs": [{"config": {"patch_size": 96}}]}
    rebuilt = ModelSpec.from_model(model).build()
    assert rebuilt.patch_size == 96
    small = image[:20, :30]
    np.testing.assert_array_equal(
        predict(rebuilt, small, output="probabilities", **OPTIONS),
        predict(model, small, output="probabilities", **OPTIONS),
    )


def test_a_local_cluster_gives_the_same_labels(tmp_path, image):
    distributed = pytest.importorskip("distributed")
    model = _model()
    expected = predict(model, image, **OPTIONS)
    lazy_image = da.from_array(image, chunks=200)

    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=False,
            host="127.0.0.1",
            protocol="tcp://",
            dashboard_address=":0",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        lazy = predict(model, lazy_image, **OPTIONS)
        computed = client.compute(lazy).result()
        streamed = predict(model, lazy_image, out=tmp_path / "l.tif", **OPTIONS)

    np.testing.assert_array_equal(computed, expected)
    np.testing.assert_array_equal(streamed[:], expected)
