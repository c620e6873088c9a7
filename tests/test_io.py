import json
import os
import pickle
from unittest import mock

import numpy as np
import pytest
import tifffile
import torch

from napari_unet import ModelConfig, TrainConfig, load_model, predict, train
from napari_unet.data import Normalization
from napari_unet.io import ModelFileError, list_images, match_labels

from .conftest import TINY


@pytest.fixture(scope="module")
def model():
    from .conftest import disks

    image, label = disks(64)
    config = TrainConfig(
        mode="instances", epochs=1, patch_size=64, batch_size=2, steps_per_epoch=2
    )
    return train(image, label, config, model_config=ModelConfig(**TINY))


def test_save_load_round_trip(model, tmp_path):
    path = tmp_path / "m.safetensors"
    model.save(path)

    loaded = load_model(path)

    assert loaded.mode == "instances" and loaded.class_names == model.class_names
    assert loaded.history["runs"][0]["steps"] == 2
    assert loaded.card()["label mode"] == "instances"
    assert loaded.min_object_size == model.min_object_size is not None
    image = np.random.default_rng(0).random((48, 40)).astype(np.float32)
    np.testing.assert_array_equal(
        predict(loaded, image, output="probabilities"),
        predict(model, image, output="probabilities"),
    )


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-model-file",))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_a_model_file_that_carries_code_is_refused(tmp_path, writer, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.safetensors"
    if writer == "pickle":
        path.write_bytes(pickle.dumps({"weights": _Payload()}))
    else:
        torch.save({"weights": _Payload()}, path)

    with pytest.raises(ModelFileError, match="refused"):
        load_model(path)

    assert not (tmp_path / "pwned-by-model-file").exists()


def test_a_random_file_is_not_a_model(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("hello")
    with pytest.raises(ModelFileError, match="not a napari-unet model"):
        load_model(path)


def test_a_truncated_model_file_is_called_so(model, tmp_path):
    from napari_unet.io import is_model_file

    path = tmp_path / "m.safetensors"
    model.save(path)
    assert is_model_file(path)
    path.write_bytes(path.read_bytes()[:200])  # cut off in the header
    assert not is_model_file(path)
    with pytest.raises(ModelFileError, match="damaged or truncated"):
        load_model(path)


def test_a_failed_save_leaves_the_old_file_intact(model, tmp_path):
    path = tmp_path / "m.safetensors"
    model.save(path)
    before = path.read_bytes()

    with mock.patch("safetensors.torch.save_file", side_effect=OSError("disk full")):
        with pytest.raises(OSError, match="disk full"):
            model.save(path)

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc/self/fd")
def test_a_saved_file_reaches_the_disk_before_it_replaces_the_old_one(model, tmp_path):
    path = tmp_path / "m.safetensors"
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, target):
        events.append(("replace", str(source), str(target)))
        real_replace(source, target)

    with mock.patch("os.fsync", fsync), mock.patch("os.replace", replace):
        model.save(path)

    (rename,) = [e for e in events if e[0] == "replace"]
    synced = [e[1] for e in events if e[0] == "fsync"]
    order = events.index(rename)
    assert ("fsync", rename[1]) in events[:order]  # the new file's data first
    assert rename[2] == str(path)
    assert str(tmp_path) in synced[-1:]  # then the folder's entry for its new name


def test_a_save_that_cannot_reach_the_disk_leaves_the_old_file_intact(model, tmp_path):
    import errno

    path = tmp_path / "m.safetensors"
    model.save(path)
    before = path.read_bytes()
    model.history["runs"].append({"note": "changed"})

    with mock.patch("os.fsync", side_effect=OSError(errno.EIO, "I/O error")):
        with pytest.raises(OSError, match="I/O error"):
            model.save(path)

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_labels_are_matched_by_file_name(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for name in ["b.tif", "a.tif"]:
        (tmp_path / "img" / name).write_bytes(b"")
    (tmp_path / "lab" / "a_labels.tif").write_bytes(b"")
    (tmp_path / "lab" / "b.tif").write_bytes(b"")

    images = list_images(tmp_path / "img")
    labels = match_labels(images, tmp_path / "lab")

    assert [p.name for p in labels] == ["a_labels.tif", "b.tif"]


def test_pairs_that_would_be_guesses_are_refused(tmp_path, capsys):
    from napari_unet.data import InputError

    img, lab = tmp_path / "img", tmp_path / "lab"
    img.mkdir()
    lab.mkdir()
    for name in ["09.tif", "10.tif"]:
        (img / name).write_bytes(b"")
        (lab / name).write_bytes(b"")
    (img / "09.png").write_bytes(b"")  # another image of the same name
    with pytest.raises(InputError, match="09.png and 09.tif share one name"):
        match_labels(list_images(img), lab)
    (img / "09.png").unlink()
    (lab / "09_mask.tif").write_bytes(b"")  # two label files for 09
    with pytest.raises(InputError, match="2 label files could be the labels of 09.tif"):
        match_labels(list_images(img), lab)


def test_files_named_one_by_one_pair_in_order_where_names_do_not(tmp_path, capsys):
    from napari_unet.data import InputError

    (tmp_path / "lab").mkdir()
    images = [tmp_path / "img_00.tif", tmp_path / "img_02.tif"]
    labels = [tmp_path / "lab" / "mask_00.tif", tmp_path / "lab" / "mask_02.tif"]
    for path in images + labels:
        path.write_bytes(b"")

    with pytest.warns(UserWarning, match="paired in the order given: img_00.tif <- mask_00"):
        paired = match_labels(images, [str(p) for p in labels], [str(p) for p in images])

    assert paired == labels
    # a folder is not an order given: refused as before
    with pytest.raises(InputError, match="No labels found"):
        match_labels(images, tmp_path / "lab", [str(p) for p in images])
    with pytest.raises(InputError, match="No labels found"):  # one label for two images
        match_labels(images, [str(labels[0])], [str(p) for p in images])


def test_cellpose_masks_beside_their_images_are_matched(tmp_path):
    from napari_unet.io import without_label_files

    for name in ["cell00.png", "cell00_cp_masks.png", "cell01.png", "cell01_cp_masks.png"]:
        (tmp_path / name).write_bytes(b"")

    images = without_label_files(list_images(tmp_path))
    labels = match_labels(images, tmp_path)

    assert [p.name for p in images] == ["cell00.png", "cell01.png"]
    assert [p.name for p in labels] == ["cell00_cp_masks.png", "cell01_cp_masks.png"]


def test_a_model_whose_header_length_looks_like_a_pickle_still_loads(model, tmp_path):
    # a safetensors file starts with its header length (little-endian u64); lengths of 640
    # modulo 65536 begin with the two bytes of a protocol-2 pickle
    path = tmp_path / "m.safetensors"
    original = model.history
    try:
        pad = 0
        for _ in range(8):
            model.history = {**original, "note": "x" * pad}
            model.save(path)
            length = int.from_bytes(path.read_bytes()[:8], "little")
            if path.read_bytes()[:2] == b"\x80\x02":
                break
            pad += (640 - length) % 65536 or 8
        assert path.read_bytes()[:2] == b"\x80\x02"
    finally:
        model.history = original

    assert load_model(path).history["note"] == "x" * pad


def test_a_model_file_with_a_malformed_header_gets_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "odd.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"napari_unet": "[]"})
    with pytest.raises(ModelFileError, match="not a valid napari-unet model"):
        load_model(path)


@pytest.mark.parametrize(
    "percentiles", [{"low": 99.0, "high": 1.0}, {"low": -5, "high": 99.8}, {"low": 1, "high": "x"}]
)
def test_a_model_file_with_impossible_percentiles_is_refused(model, tmp_path, percentiles):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    model.save(path)
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()["napari_unet"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    assert load_model(path).normalization == Normalization(**header["normalization"])
    header["normalization"] = percentiles
    save_file(tensors, str(path), metadata={"napari_unet": json.dumps(header)})
    with pytest.raises(ModelFileError, match="percentile"):
        load_model(path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"history": "x"}, "history"),
        ({"min_object_size": -5}, "min_object_size"),
        ({"min_object_size": 2.5}, "min_object_size"),
        ({"encoding": "mode=bogus"}, "label mode 'bogus'"),
        ({"encoding": "one class fewer"}, "classes do not match"),
    ],
)
def test_a_model_file_with_an_impossible_field_is_refused(model, tmp_path, change, message):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    model.save(path)
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()["napari_unet"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if change.get("encoding") == "mode=bogus":
        header["encoding"]["mode"] = "bogus"
    elif change.get("encoding") == "one class fewer":
        for key in ("class_names", "class_values", "source_values"):
            header["encoding"][key] = header["encoding"][key][:-1]
    else:
        header.update(change)
    save_file(tensors, str(path), metadata={"napari_unet": json.dumps(header)})
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_saved_files_get_the_permissions_of_a_plain_file(model, tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "m.safetensors"
        model.save(path)
        assert path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o640)
        model.save(path)  # replacing keeps the file's mode
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_a_palette_png_mask_reads_as_its_indices(tmp_path):
    from PIL import Image

    from napari_unet.io import read_image

    indices = np.zeros((32, 32), np.uint8)
    indices[8:16, 8:16], indices[20:28, 4:12] = 1, 2
    picture = Image.fromarray(indices, mode="P")
    picture.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    picture.save(tmp_path / "mask.png")

    np.testing.assert_array_equal(read_image(tmp_path / "mask.png", labels=True), indices)
    assert read_image(tmp_path / "mask.png").shape == (32, 32, 3)  # as an image: its colours


def test_hidden_folders_and_files_are_not_images(tmp_path):
    import zarr

    np.save(tmp_path / "x.npy", np.zeros(2))
    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 8), np.uint8))
    zarr.open_array(str(tmp_path / ".b.tif.k3j2.part"), mode="w", shape=(8, 8), dtype="u1")
    assert [p.name for p in list_images(tmp_path)] == ["a.tif"]


def test_an_ome_zarr_group_opens_at_full_resolution(tmp_path):
    import zarr

    from napari_unet.io import list_images, open_image

    group = zarr.open_group(str(tmp_path / "plate.ome.zarr"), mode="w")
    full = group.create_array("0", shape=(1, 64, 48), dtype="uint8")
    full[:] = 7
    group.create_array("1", shape=(1, 32, 24), dtype="uint8")
    group.attrs["multiscales"] = [{"datasets": [{"path": "0"}, {"path": "1"}]}]

    assert [p.name for p in list_images(tmp_path)] == ["plate.ome.zarr"]
    image = open_image(tmp_path / "plate.ome.zarr")
    assert image.shape == (1, 64, 48) and int(image[0, 0, 0]) == 7
    assert open_image(tmp_path / "plate.ome.zarr" / "1").shape == (1, 32, 24)


def test_a_mask_saved_as_a_grey_rgb_picture_reads_as_one_value_per_pixel(tmp_path):
    from PIL import Image

    from napari_unet.io import read_image

    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 5:25] = 255
    Image.fromarray(np.stack([mask] * 3, axis=-1)).save(tmp_path / "grey.png")
    rgba = np.concatenate([np.stack([mask] * 3, -1), np.full((40, 50, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "grey_alpha.png")
    for name in ("grey.png", "grey_alpha.png"):
        label = read_image(tmp_path / name, labels=True)
        assert label.shape == (40, 50) and np.array_equal(label, mask)
        assert read_image(tmp_path / name).shape[-1] in (3, 4)  # images keep their colours
    coloured = np.stack([mask, mask // 2, np.zeros_like(mask)], axis=-1)
    Image.fromarray(coloured).save(tmp_path / "coloured.png")
    assert read_image(tmp_path / "coloured.png", labels=True).shape == (40, 50, 3)


def test_compressed_tiffs_are_read(tmp_path):
    """LZW (the compression many microscopes and Pillow write) needs imagecodecs."""
    from PIL import Image

    from napari_unet.io import open_image, read_image

    array = (np.arange(64 * 80).reshape(64, 80) % 251).astype(np.uint8)
    Image.fromarray(array).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    assert np.array_equal(read_image(tmp_path / "lzw.tif"), array)
    assert np.array_equal(np.asarray(open_image(tmp_path / "lzw.tif")[:]), array)


def test_a_missing_decoder_says_how_to_install_it():
    from napari_unet.io import _unreadable

    error = ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")
    message = _unreadable("a.tif", error, "Is it a valid TIFF file?")
    assert "pip install imagecodecs" in message and "valid TIFF" not in message


def test_order_never_overrides_names_that_pair(tmp_path):
    """A glob of images with one label missing and a stray one: refused, not shifted."""
    from napari_unet.data import InputError

    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    images = [tmp_path / "img" / f"0{k}.tif" for k in (1, 2, 3)]
    labels = [tmp_path / "lab" / f"0{k}_mask.tif" for k in (2, 3, 4)]
    for path in images + labels:
        path.write_bytes(b"")
    with pytest.raises(InputError, match=r"No labels found for 1 image\(s\), e.g. \['01.tif'\]"):
        match_labels(images, [str(p) for p in labels], [str(p) for p in images])


def test_images_of_one_name_in_several_folders_pair_as_named(tmp_path):
    from napari_unet.data import InputError

    images, labels = [], []
    for plate in ("plate1", "plate2"):
        (tmp_path / plate).mkdir()
        images.append(tmp_path / plate / "Image_001.tif")
        labels.append(tmp_path / plate / "Image_001_mask.tif")
    for path in images + labels:
        path.write_bytes(b"")

    assert match_labels(images, [str(p) for p in labels], [str(p) for p in images]) == labels
    with pytest.raises(InputError, match="share one name"):  # as folders: which is whose?
        match_labels(images, tmp_path / "plate*" / "*_mask.tif", [str(p) for p in images])


def test_a_folder_says_which_files_of_other_formats_it_leaves_out(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 8), np.uint8))
    (tmp_path / "b.czi").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image format: no word about it")
    with pytest.warns(UserWarning, match=r"Left out 1 file\(s\) .* \(b.czi\)"):
        assert [p.name for p in list_images(tmp_path)] == ["a.tif"]
