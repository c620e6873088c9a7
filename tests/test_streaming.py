import pickle

import numpy as np
import pytest
import tifffile
import torch
import zarr
from scipy import ndimage as ndi

from napari_unet import UNet, io, predict
from napari_unet.data import InputError, LabelEncoding, Normalization, instance_targets
from napari_unet.io import TiffArray, open_image
from napari_unet.model import SegmentationModel
from napari_unet.prediction import (
    InstanceStitcher,
    PredictionFinished,
    TileProgress,
    instances_from_probabilities,
    iter_predict,
    predict_to_file,
)

OPTIONS = {"tile_size": 128, "device": "cpu"}


def _model(mode: str = "semantic", classes: int = 3) -> SegmentationModel:
    torch.manual_seed(0)
    names = [f"class {i}" for i in range(classes)]
    values = [0, 5, 9][:classes] if mode == "semantic" else list(range(classes))
    encoding = LabelEncoding(mode, names, values, list(range(classes)), [])
    network = UNet(1, classes, depth=2, base_channels=8).eval()
    return SegmentationModel(network, encoding, Normalization())


@pytest.fixture
def image():
    return (np.random.default_rng(0).random((420, 610)) * 255).astype(np.uint8)


@pytest.fixture
def staged_on_disk(monkeypatch):
    """Make every TIFF result take the large-image path: zarr staging and tiled TIFF."""
    monkeypatch.setattr(io, "_MEMORY_STAGING_BYTES", 0)
    monkeypatch.setattr(io, "_TILED_MIN_SIDE", 256)


def test_streamed_tiff_equals_in_memory_result(tmp_path, image, staged_on_disk):
    model = _model()
    expected = predict(model, image, **OPTIONS)

    result = predict(model, image, out=tmp_path / "labels.tif", **OPTIONS)

    assert isinstance(result, TiffArray)
    np.testing.assert_array_equal(result[:], expected)
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        assert tif.pages[0].is_tiled
        np.testing.assert_array_equal(tif.asarray(), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]  # no staging left


def test_streamed_probabilities_keep_classes_first_for_a_stack(tmp_path, staged_on_disk):
    model = _model()
    stack = np.random.default_rng(1).random((2, 300, 280)).astype(np.float32)
    expected = predict(model, stack, output="probabilities", **OPTIONS)

    predict(model, stack, output="probabilities", out=tmp_path / "p.tif", **OPTIONS)

    written = tifffile.imread(tmp_path / "p.tif")
    assert written.shape == (3, 2, 300, 280)
    np.testing.assert_array_equal(written, expected)


def test_zarr_output_is_read_back_lazily_and_equals_in_memory(tmp_path, image):
    model = _model()
    expected = predict(model, image, **OPTIONS)

    result = predict_to_file(model, image, tmp_path / "labels.zarr", **OPTIONS)
    again = predict(model, image, out=tmp_path / "labels.zarr", **OPTIONS)  # replaces it

    on_disk = zarr.open_array(str(result), mode="r")
    assert on_disk.chunks == (420, 512) and on_disk.dtype == np.uint8
    np.testing.assert_array_equal(on_disk[:], expected)
    assert isinstance(again, zarr.Array)
    np.testing.assert_array_equal(again[:], expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr"]


def test_out_may_be_an_array_to_fill(image):
    model = _model()
    target = np.full(image.shape, 255, np.uint8)

    result = predict(model, image, out=target, **OPTIONS)

    assert result is target
    np.testing.assert_array_equal(target, predict(model, image, **OPTIONS))


def test_out_of_an_unknown_kind_is_a_clear_error(tmp_path, image):
    with pytest.raises(InputError, match=r"\.tif, \.tiff or \.zarr"):
        predict(_model(), image, out=tmp_path / "labels.png", **OPTIONS)
    with pytest.raises(InputError, match="shape"):
        predict(_model(), image, out=np.zeros((3, 3), np.uint8), **OPTIONS)


@pytest.mark.parametrize("name", ["labels.tif", "labels.zarr"])
def test_stopping_a_streamed_prediction_leaves_no_file(tmp_path, image, name, staged_on_disk):
    events = iter_predict(_model(), image, out=tmp_path / name, **OPTIONS)
    assert isinstance(next(events), TileProgress)

    events.close()

    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("layout", ["plain", "tiled"])
def test_tiff_array_reads_regions_without_reading_the_file_whole(tmp_path, image, layout):
    path = tmp_path / "image.tif"
    if layout == "plain":
        tifffile.imwrite(path, image)
    else:
        tifffile.imwrite(path, image, tile=(128, 128), compression="zlib")

    array = open_image(path)
    copy = pickle.loads(pickle.dumps(array))

    assert isinstance(array, TiffArray) and array.shape == image.shape
    np.testing.assert_array_equal(array[100:230, 7:500:3], image[100:230, 7:500:3])
    np.testing.assert_array_equal(copy[5], image[5])
    np.testing.assert_array_equal(np.asarray(array), image)
    np.testing.assert_array_equal(
        predict(_model(), array, **OPTIONS), predict(_model(), image, **OPTIONS)
    )


def test_damaged_tiff_data_is_an_input_error(tmp_path, image):
    path = tmp_path / "damaged.tif"
    tifffile.imwrite(path, np.tile(image, (2, 2)), tile=(128, 128), compression="zlib")
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4000] = b"\xff" * 4000
    path.write_bytes(bytes(data))

    with pytest.raises(InputError, match="damaged"):
        TiffArray(path)[:]


def _touching_objects(height: int, width: int, count: int, seed: int = 0):
    """Instance labels of touching blobs and sharp class probabilities for them."""
    from skimage.segmentation import watershed

    rng = np.random.default_rng(seed)
    seeds = np.zeros((height, width), bool)
    seeds[rng.integers(0, height, count), rng.integers(0, width, count)] = True
    distance = ndi.distance_transform_edt(~seeds)
    labels = watershed(distance, ndi.label(seeds)[0], mask=distance < 14)
    classes = instance_targets(labels)
    probabilities = np.stack([(classes == c) for c in range(3)]).astype(np.float32)
    probabilities = ndi.uniform_filter(probabilities, (1, 3, 3))
    return labels, probabilities


def _stitch(probabilities: np.ndarray, step: int, **windows) -> np.ndarray:
    _, height, width = probabilities.shape
    stitcher = InstanceStitcher(height, width, **windows)
    out = np.zeros((height, width), np.int32)
    bands = [stitcher.push(y, probabilities[:, y : y + step]) for y in range(0, height, step)]
    for y0, rows in [b for band in bands for b in band] + stitcher.finish():
        out[y0 : y0 + len(rows)] = rows
    return out


def test_instances_stitched_across_windows_keep_one_id_per_object():
    labels, probabilities = _touching_objects(600, 540, 120)
    whole = instances_from_probabilities(probabilities)

    stitched = _stitch(probabilities, step=77, band=128, block=160, halo=48)

    assert stitched.max() == whole.max() == len(np.unique(stitched)) - 1
    # the same objects: each stitched id covers one object of the whole-plane result
    pairs, counts = np.unique(
        np.stack([stitched.ravel(), whole.ravel()]), axis=1, return_counts=True
    )
    best = {}
    for (ours, theirs), n in zip(pairs.T, counts, strict=True):
        if n > best.get(theirs, (0, 0))[1]:
            best[theirs] = (ours, n)
    assert sum(n for _, n in best.values()) / stitched.size >= 0.999
    # an object cut by a window border has the same id on both sides of it
    rows, cols = np.mgrid[: whole.shape[0], : whole.shape[1]]
    crossings = 0
    for coordinate, borders in ((rows, (128, 256, 384, 512)), (cols, (160, 320, 480))):
        for border in borders:
            for obj in np.unique(whole[coordinate == border]):
                inside = whole == obj
                before, after = inside & (coordinate < border), inside & (coordinate >= border)
                if obj == 0 or before.sum() < 20 or after.sum() < 20:
                    continue
                crossings += 1
                assert _majority(stitched[before]) == _majority(stitched[after])
    assert crossings > 20


def _majority(ids: np.ndarray) -> int:
    return int(np.bincount(ids).argmax())


def test_one_window_gives_the_whole_plane_result_exactly():
    _, probabilities = _touching_objects(300, 400, 40, seed=3)

    stitched = _stitch(probabilities, step=64)

    np.testing.assert_array_equal(stitched, instances_from_probabilities(probabilities))


def test_instances_streamed_to_a_file_equal_the_in_memory_result(tmp_path, image):
    model = _model("instances")
    events = list(iter_predict(model, image, out=tmp_path / "ids.tif", **OPTIONS))

    assert isinstance(events[-1], PredictionFinished)
    written = tifffile.imread(tmp_path / "ids.tif")
    assert written.dtype == np.int32
    np.testing.assert_array_equal(written, predict(model, image, **OPTIONS))


def test_a_weak_interior_bridge_does_not_merge_two_objects():
    # Two square objects joined by a strip where the network is unsure (interior 0.5,
    # boundary 0.4): the strip is foreground but no seed, so the objects stay apart.
    probabilities = np.zeros((3, 40, 60), np.float32)
    probabilities[0] = 1.0
    for x0 in (5, 35):
        probabilities[:, 10:30, x0 : x0 + 20] = np.array([0.05, 0.9, 0.05])[:, None, None]
    probabilities[:, 18:22, 25:35] = np.array([0.1, 0.5, 0.4])[:, None, None]

    labels = instances_from_probabilities(probabilities)

    assert len(np.unique(labels[labels > 0])) == 2
    assert (labels[18:22, 25:35] > 0).all()  # the strip is shared out, not dropped


def test_a_speck_of_seed_does_not_split_an_object():
    # One object with a large confident core and, inside the same foreground, a speck of
    # confident interior (6 pixels): seeds smaller than half the smallest object size
    # (SEED_SHARE of min_size=20: 10 pixels) are dropped, so the object stays whole. A
    # second core of 12 pixels is a seed of its own and parts the object in two.
    def probabilities(speck_rows: slice):
        p = np.zeros((3, 40, 60), np.float32)
        p[0] = 1.0
        p[:, 5:35, 5:55] = np.array([0.1, 0.3, 0.6])[:, None, None]  # foreground, no seed
        p[:, 10:30, 8:28] = np.array([0.05, 0.9, 0.05])[:, None, None]  # the core
        p[:, speck_rows, 45:48] = np.array([0.05, 0.9, 0.05])[:, None, None]
        return p

    speck = instances_from_probabilities(probabilities(slice(18, 20)), min_size=20)
    core = instances_from_probabilities(probabilities(slice(16, 20)), min_size=20)

    assert len(np.unique(speck[speck > 0])) == 1
    assert (speck[5:35, 5:55] > 0).all()  # the whole object, speck included
    assert len(np.unique(core[core > 0])) == 2


@pytest.mark.parametrize("shape", [(0, 64, 64), (64, 0), (2, 0, 64), (32, 32, 0), (64,)])
def test_an_image_without_pixels_is_refused(shape):
    with pytest.raises(InputError, match="holds no pixels"):
        predict(_model(), np.zeros(shape, np.float32), tile_size=64)


def test_channels_between_y_and_x_get_the_channel_axis_hint():
    two = SegmentationModel(
        UNet(2, 2, depth=2, base_channels=4),
        LabelEncoding("semantic", ["background", "cell"], [0, 1], [0, 1], []),
        Normalization(),
    )
    image = np.zeros((64, 2, 64), np.float32)  # (Y, C, X)
    with pytest.raises(InputError, match=r"give --channel-axis 1 .*channel_axis=1"):
        predict(two, image, tile_size=64)
    assert predict(two, image, tile_size=64, channel_axis=1).shape == (64, 64)


def test_a_grey_picture_saved_as_rgb_is_read_as_grey_by_a_grey_model(tmp_path):
    from napari_unet.prediction import GreyPictureWarning

    model = _model()
    grey = (np.random.default_rng(0).random((80, 96)) * 255).astype(np.uint8)
    expected = predict(model, grey, tile_size=64)
    for picture in (np.stack([grey] * 3, -1), np.dstack([grey] * 3 + [np.full_like(grey, 255)])):
        with pytest.warns(GreyPictureWarning, match="colour channels are equal"):
            np.testing.assert_array_equal(predict(model, picture, tile_size=64), expected)
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([grey] * 3, -1), tile=(32, 32))
    with pytest.warns(GreyPictureWarning):  # read lazily: a central crop is looked at
        np.testing.assert_array_equal(
            predict(model, open_image(tmp_path / "rgb.tif"), tile_size=64), expected
        )
    colour = np.stack([grey, grey // 2, 255 - grey], -1)  # a colour picture stays refused
    with pytest.raises(InputError, match=r"expects 1 channel\(s\) \(grey\) but the image has 3"):
        predict(model, colour, tile_size=64)


def test_the_api_never_writes_a_result_over_its_input(tmp_path):
    from napari_unet import predict_to_file

    path = tmp_path / "image.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8))
    store = tmp_path / "image.zarr"
    zarr.open_array(str(store), mode="w", shape=(64, 64), dtype="u1")

    group = zarr.open_group(str(tmp_path / "plate.zarr"), mode="w")
    group.create_array("0", shape=(64, 64), dtype="u1")

    with pytest.raises(InputError, match="replace its input"):
        predict_to_file(_model(), path, tmp_path / "." / "image.tif", tile_size=64)
    with pytest.raises(InputError, match="would replace its input"):
        predict(_model(), open_image(store), out=store, tile_size=64)
    with pytest.raises(InputError, match="a folder or store holding it"):  # the whole group
        predict(_model(), group["0"], out=tmp_path / "plate.zarr", tile_size=64)
    assert tifffile.imread(path).dtype == np.uint8 and zarr.open_array(str(store)).dtype == "u1"
    assert list(zarr.open_group(str(tmp_path / "plate.zarr")).array_keys()) == ["0"]

    beside = tmp_path / "plate.zarr" / "labels.zarr"  # beside the image in its group: fine
    predict(_model(), group["0"], out=beside, tile_size=64)
    in_memory = zarr.zeros((64, 64), dtype="u1")  # no file: nothing to protect
    predict(_model(), in_memory, out=tmp_path / "from_memory.zarr", tile_size=64)


def test_an_out_array_that_cannot_hold_the_result_is_refused():
    image = np.zeros((64, 64), np.float32)
    instances = _model("instances")
    with pytest.raises(InputError, match="cannot hold.*int32"):
        predict(instances, image, out=np.zeros((64, 64), np.uint8), tile_size=64)
    with pytest.raises(InputError, match="cannot hold"):
        predict(_model(), image, out=np.zeros((3, 64, 64), np.int32), output="probabilities")
    predict(instances, image, out=np.zeros((64, 64), np.int64), tile_size=64)  # wide enough
    predict(instances, image, out=np.zeros((64, 64), np.float64), tile_size=64)  # exact ids
    with pytest.raises(InputError, match="cannot hold"):  # float32: exact only up to 2**24
        predict(instances, image, out=np.zeros((64, 64), np.float32), tile_size=64)
    predict(_model(), image, out=np.zeros((64, 64), np.float32), tile_size=64)  # classes
    with pytest.raises(InputError, match="min_size"):
        predict(instances, image, min_size=-5, tile_size=64)


def test_predict_takes_the_path_of_an_image_file(tmp_path):
    model = _model()
    image = (np.random.default_rng(0).random((70, 90)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "image.tif", image)
    expected = predict(model, image, tile_size=64)
    for path in (tmp_path / "image.tif", str(tmp_path / "image.tif")):
        np.testing.assert_array_equal(predict(model, path, tile_size=64), expected)
    with pytest.raises(InputError, match="would replace its input"):
        predict(model, tmp_path / "image.tif", tile_size=64, out=tmp_path / "image.tif")
    with pytest.raises(InputError, match="No such file"):
        predict(model, tmp_path / "missing.tif")


def test_out_never_replaces_data_napari_unet_did_not_write(tmp_path, image):
    """A raw image or a zarr store of the user's under the result's name, or the input's
    own array, is refused; an earlier result of its own is replaced."""
    model = _model()
    raw = tmp_path / "raw.tif"
    tifffile.imwrite(raw, image)
    before = raw.read_bytes()
    with pytest.raises(InputError, match="napari-unet did not write"):
        predict(model, tifffile.imread(raw), out=raw, **OPTIONS)
    assert raw.read_bytes() == before

    store = tmp_path / "precious.zarr"
    theirs = zarr.open_array(str(store), mode="w", shape=image.shape, dtype=np.uint16)
    theirs[:] = 7
    with pytest.raises(InputError, match="napari-unet did not write"):
        predict(model, image, out=store, **OPTIONS)
    assert (zarr.open_array(str(store), mode="r")[:] == 7).all()
    with pytest.raises(InputError, match="input image's own array"):
        predict(model, theirs, out=theirs, **OPTIONS)

    ours = tmp_path / "labels.tif"
    predict(model, image, out=ours, **OPTIONS)
    result = predict(model, image, out=ours, **OPTIONS)  # a rerun replaces its own
    np.testing.assert_array_equal(np.asarray(result), predict(model, image, **OPTIONS))
