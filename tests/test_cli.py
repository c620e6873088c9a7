import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_unet import TrainConfig
from napari_unet.cli import main

from .conftest import DATA


@pytest.fixture
def folders(tmp_path, nuclei_paths):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for image, label in zip(nuclei_paths["images"], nuclei_paths["labels"], strict=True):
        (images / image.name).write_bytes(image.read_bytes())
        # label files named like the images, with the common _labels suffix
        (labels / label.name).write_bytes(label.read_bytes())
    return images, labels


@pytest.mark.slow
def test_train_predict_evaluate_end_to_end(folders, tmp_path, capsys):
    images, labels = folders
    model = tmp_path / "model.safetensors"
    out = tmp_path / "out"

    assert (
        main(
            [
                "train",
                "--images",
                str(images),
                "--labels",
                str(labels),
                "--mode",
                "instances",
                "--out",
                str(model),
                "--epochs",
                "10",
                "--depth",
                "2",
                "--base-channels",
                "8",
                "--patch-size",
                "96",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    # Not a terminal: the progress bar redraws every 10 s, not at every step.
    err = capsys.readouterr().err
    assert err.count("train:") < 10
    assert "measuring the label offset on the validation part" in err  # no silent pause
    assert err.rstrip().splitlines()[-2].rstrip().endswith(")")  # the last epoch's scores
    assert (
        main(
            [
                "predict",
                "--model",
                str(model),
                "--input",
                str(images),
                "--output",
                str(out),
                "--tile-size",
                "64",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(model),
                "--images",
                str(images),
                "--labels",
                str(labels),
                "--json",
                str(tmp_path / "scores.json"),
            ]
        )
        == 0
    )

    written = sorted(p.name for p in out.glob("*.tif"))
    assert written == ["fluo_02.tif", "fluo_25.tif"]
    result = tifffile.imread(out / "fluo_02.tif")
    assert result.shape == (128, 128) and result.max() > 3  # several nuclei found
    scores = json.loads((tmp_path / "scores.json").read_text())["mean"]
    assert scores["foreground_dice"] > 0.6
    assert 0 <= scores["dsb_score"] <= 1 and "f1@0.5" in scores
    # evaluate scores what predict writes with the same --min-size
    evaluate = ["evaluate", "--model", str(model), "--images", str(images), "--labels",
                str(labels), "--min-size"]  # fmt: skip
    capsys.readouterr()
    assert main(evaluate + ["100000"]) == 0
    assert json.loads(capsys.readouterr().out)["objects_predicted"] == 0
    assert main(evaluate + ["-1"]) == 2
    assert "--min-size must be 0 or more" in capsys.readouterr().err


def test_predict_writes_a_stack_for_a_stack(tmp_path):
    from napari_unet import UNet
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.model import SegmentationModel

    encoding = LabelEncoding("semantic", ["background", "class 1"], [0, 1], [0, 1], [])
    model = SegmentationModel(UNet(1, 2, depth=2, base_channels=4), encoding, Normalization())
    model.save(tmp_path / "m.safetensors")
    tifffile.imwrite(tmp_path / "stack.tif", np.random.default_rng(0).random((3, 40, 50)))

    code = main(
        [
            "predict",
            "--model",
            str(tmp_path / "m.safetensors"),
            "--input",
            str(tmp_path / "stack.tif"),
            "--output",
            str(tmp_path / "out"),
        ]
    )

    assert code == 0
    assert tifffile.imread(tmp_path / "out" / "stack.tif").shape == (3, 40, 50)


def test_a_warning_is_one_line_of_its_own(tmp_path, capsys):
    import warnings

    from napari_unet import UNet
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.model import SegmentationModel

    encoding = LabelEncoding("semantic", ["background", "class 1"], [0, 1], [0, 1], [])
    network = UNet(1, 2, depth=2, base_channels=4, norm="instance")
    SegmentationModel(network, encoding, Normalization()).save(tmp_path / "m.safetensors")
    tifffile.imwrite(tmp_path / "big.tif", np.random.default_rng(0).random((100, 90)))
    args = ["predict", "--model", str(tmp_path / "m.safetensors"), "--input",
            str(tmp_path / "big.tif"), "--tile-size", "64", "--output", str(tmp_path / "o")]  # fmt: skip

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        before = warnings.showwarning
        assert main(args) == 0
        shown = warnings.showwarning
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "warning:" in line]
    assert len(lines) == 1, err
    assert lines[0].split("warning: ")[1].startswith("This model normalises with each tile")
    assert "100 x 90 image" in lines[0] and "prediction.py" not in err and "_plan(" not in err
    assert shown is before  # restored after the command


def _run(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


@pytest.fixture
def grey_model(tmp_path):
    from napari_unet import UNet
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.model import SegmentationModel

    encoding = LabelEncoding("semantic", ["background", "class 1"], [0, 1], [0, 1], [])
    model = SegmentationModel(UNet(3, 2, depth=2, base_channels=4), encoding, Normalization())
    path = tmp_path / "rgb-model.safetensors"
    model.save(path)
    return path


def test_bad_inputs_give_one_line_errors_and_nonzero_exit(
    tmp_path, capsys, nuclei_paths, grey_model
):
    image = nuclei_paths["images"][0]
    empty = tmp_path / "empty"
    empty.mkdir()
    wrong = tmp_path / "wrong.tif"
    tifffile.imwrite(wrong, np.zeros((10, 10), np.uint8))
    beyond = tmp_path / "beyond.tif"
    tifffile.imwrite(beyond, np.full((128, 128), 300, np.uint16))
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, np.full((64, 64), np.nan, np.float32))
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00garbage")
    blank64 = tmp_path / "labels64.tif"
    tifffile.imwrite(blank64, np.eye(64, dtype=np.uint8))
    blank = tmp_path / "blank.tif"
    tifffile.imwrite(blank, np.zeros((128, 128), np.uint8))
    out = str(tmp_path / "m.safetensors")
    train = ["train", "--out", out, "--epochs", "1", "--depth", "2", "--base-channels", "4"]

    cases = [
        (train + ["--images", str(image), "--labels", str(wrong)], "height and width"),
        (train + ["--images", str(empty), "--labels", str(empty)], "holds no images"),
        (
            train + ["--images", str(image), "--labels", str(blank), "--mode", "sparse"],
            "No annotated pixels",
        ),
        (train + ["--images", str(broken), "--labels", str(image)], "Cannot read"),
        (train + ["--images", str(nan), "--labels", str(blank64)], "NaN"),
        (train + ["--images", str(nan), "--labels", str(nan)], "both the image and its labels"),
        (
            train
            + ["--images", str(image), "--labels", str(nuclei_paths["labels"][0])]
            + ["--dice-weight", "0", "--ce-weight", "0"],
            "nothing would be learned",
        ),
        (
            [
                "predict",
                "--model",
                str(grey_model),
                "--input",
                str(image),
                "--output",
                str(tmp_path / "o"),
            ],
            "expects 3 channel",
        ),
        (
            [
                "predict",
                "--model",
                str(image),
                "--input",
                str(image),
                "--output",
                str(tmp_path / "o"),
            ],
            "not a napari-unet model",
        ),
        (
            [
                "evaluate",
                "--model",
                str(grey_model),
                "--images",
                str(image),
                "--labels",
                str(beyond),
            ],
            "beyond",
        ),
    ]
    for args, message in cases:
        code, err = _run(args, capsys)
        assert code != 0, args
        lines = [line for line in err.splitlines() if message in line]
        assert len(lines) == 1 and "error" in lines[0], (args, err)
    assert not (tmp_path / "m.safetensors").exists()  # nothing half-written


def test_importing_and_predicting_leaves_napari_and_qt_out():
    code = (
        "import sys, numpy as np\n"
        "import napari_unet\n"
        "from napari_unet import UNet, predict\n"
        "predict(UNet(1, 2, depth=2, base_channels=4), np.zeros((32, 32), np.float32))\n"
        "bad = [m for m in ('napari', 'qtpy', 'PyQt6', 'magicgui') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "napari_unet.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "demo" in result.stdout
    assert DATA.exists()


def test_the_command_line_lets_glibc_keep_freed_memory(monkeypatch, tmp_path, capsys):
    import napari_unet._device as device

    calls = []
    monkeypatch.setattr(device, "keep_freed_memory", lambda: calls.append(True) or True)

    code = main(["predict", "--model", str(tmp_path / "none.safetensors"), "--input",
                 str(tmp_path), "--output", str(tmp_path / "out")])  # fmt: skip

    assert code == 2 and calls == [True]
    assert "none.safetensors" in capsys.readouterr().err


def test_train_options_reach_the_training_configuration(monkeypatch, folders, tmp_path):
    import napari_unet.cli as cli

    seen = {}

    def fake_training(images, labels, config, **kwargs):
        seen["config"], seen["model_config"] = config, kwargs["model_config"]
        raise SystemExit(0)

    monkeypatch.setattr(cli, "run_training", fake_training)
    images, labels = folders
    with pytest.raises(SystemExit):
        main(["train", "--images", str(images), "--labels", str(labels), "--mode", "instances",
              "--out", str(tmp_path / "m.safetensors"), "--minutes", "1", "--elastic",
              "--border-weight", "0", "--dice-weight", "0.25", "--ce-weight", "2", "--dropout", "0.5",
              "--norm", "none", "--foreground-sampling", "0.9", "--zoom", "1.25",
              "--high-percentile", "99.99", "--no-label-offset"])  # fmt: skip

    config = seen["config"]
    assert config.elastic and config.border_weight == 0 and config.minutes == 1
    assert config.dice_weight == 0.25 and config.ce_weight == 2
    assert config.foreground_sampling == 0.9 and config.zoom == 1.25
    assert (config.low_percentile, config.high_percentile) == (1.0, 99.99)
    assert config.label_offset is False and TrainConfig().label_offset is True
    assert seen["model_config"].dropout == 0.5 and seen["model_config"].norm == "none"


def test_resuming_says_that_architecture_options_do_not_apply(monkeypatch, folders, tmp_path,
                                                             capsys):  # fmt: skip
    import napari_unet.cli as cli
    from napari_unet.config import ModelConfig
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.model import SegmentationModel, UNet

    saved = tmp_path / "m.safetensors"
    network = UNet.from_config(ModelConfig(depth=2, base_channels=4, num_classes=3))
    encoding = LabelEncoding("instances", ["background", "interior", "boundary"], [0, 1, 2],
                             [0, 1, 2], [])  # fmt: skip
    SegmentationModel(network, encoding, Normalization()).save(saved)

    def stop(*args, **kwargs):
        raise SystemExit(0)

    monkeypatch.setattr(cli, "run_training", stop)
    images, labels = folders
    command = ["train", "--images", str(images), "--labels", str(labels), "--mode", "instances",
               "--out", str(tmp_path / "n.safetensors"), "--resume", str(saved)]  # fmt: skip

    with pytest.raises(SystemExit):
        main(command)
    assert "new models only" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*command, "--norm", "none"])
    assert "--depth, --base-channels, --norm, --dropout shape new models only" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main([*command, "--high-percentile", "99"])
    err = capsys.readouterr().err
    assert "--low-percentile, --high-percentile shape new models only" in err
    assert "its own intensity scaling" in err


def _instances_model(path):
    from napari_unet.config import ModelConfig
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.model import SegmentationModel, UNet

    network = UNet.from_config(ModelConfig(depth=2, base_channels=4, num_classes=3))
    encoding = LabelEncoding("instances", ["background", "interior", "boundary"], [0, 1, 2],
                             [0, 1, 2], [])  # fmt: skip
    SegmentationModel(network, encoding, Normalization()).save(path)


def test_resuming_continues_in_the_models_mode(monkeypatch, folders, tmp_path):
    import napari_unet.cli as cli

    saved = tmp_path / "m.safetensors"
    _instances_model(saved)
    seen = {}

    def fake_training(images, labels, config, **kwargs):
        seen["mode"] = config.mode
        raise SystemExit(0)

    monkeypatch.setattr(cli, "run_training", fake_training)
    images, labels = folders
    with pytest.raises(SystemExit):
        main(["train", "--images", str(images), "--labels", str(labels), "--resume", str(saved),
              "--out", str(tmp_path / "n.safetensors"), "--epochs", "1"])  # fmt: skip
    assert seen["mode"] == "instances"


def test_an_unwritable_model_path_fails_before_training(monkeypatch, folders, tmp_path, capsys):
    import napari_unet.cli as cli

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained although the model could not be saved")

    monkeypatch.setattr(cli, "run_training", must_not_train)
    images, labels = folders
    folder = tmp_path / "model.safetensors"
    folder.mkdir()
    code = main(["train", "--images", str(images), "--labels", str(labels),
                 "--out", str(folder), "--epochs", "1"])  # fmt: skip
    assert code == 2 and "is a folder" in capsys.readouterr().err


def test_an_out_that_is_not_a_model_file_is_not_replaced(monkeypatch, folders, tmp_path, capsys):
    import napari_unet.cli as cli

    monkeypatch.setattr(cli, "run_training", lambda *a, **k: pytest.fail("trained"))
    images, labels = folders
    victim = next(images.iterdir())  # one of the training images
    before = victim.read_bytes()
    code = main(["train", "--images", str(images), "--labels", str(labels),
                 "--out", str(victim), "--epochs", "1"])  # fmt: skip
    assert code == 2 and "is not a napari-unet model file" in capsys.readouterr().err
    assert victim.read_bytes() == before


@pytest.mark.parametrize("budget", [["--minutes", "0"], ["--epochs", "0"]])
def test_a_budget_of_zero_is_an_error_not_the_default(
    monkeypatch, folders, tmp_path, capsys, budget
):
    import napari_unet.cli as cli

    monkeypatch.setattr(cli, "run_training", lambda *a, **k: pytest.fail("trained"))
    images, labels = folders
    code = main(["train", "--images", str(images), "--labels", str(labels),
                 "--out", str(tmp_path / "m.safetensors"), *budget])  # fmt: skip
    assert code == 2 and budget[0][2:] in capsys.readouterr().err


def test_a_failed_save_after_training_rescues_the_model(monkeypatch, tmp_path, capsys):
    from unittest import mock

    from napari_unet import ModelConfig, TrainConfig
    from napari_unet.cli import run_training

    from .conftest import disks

    monkeypatch.chdir(tmp_path)
    image, label = disks(64)
    config = TrainConfig(mode="instances", epochs=1, patch_size=64, batch_size=2,
                         steps_per_epoch=2)  # fmt: skip
    from safetensors import SafetensorError
    from safetensors.torch import save_file as real_save_file

    target = tmp_path / "full-disk" / "m.safetensors"

    def save_file(tensors, filename, metadata=None):
        if filename.startswith(str(target.parent)):  # what safetensors raises on a full disk
            raise SafetensorError("Error while serializing: I/O error: No space left on device")
        return real_save_file(tensors, filename, metadata=metadata)

    with mock.patch("safetensors.torch.save_file", side_effect=save_file):
        with pytest.raises(Exception, match="saved to"):
            run_training([image], [label], config, model_config=ModelConfig(depth=2, base_channels=4),
                         out=target, quiet=True)  # fmt: skip
    rescued = list(tmp_path.glob("napari-unet-rescued-*.safetensors"))
    assert len(rescued) == 1
    from napari_unet import load_model

    assert load_model(rescued[0]).mode == "instances"
    assert "No space left" in capsys.readouterr().err


def test_images_and_masks_in_one_folder_pair_up(tmp_path):
    from napari_unet.cli import _read_pairs

    rng = np.random.default_rng(0)
    for name in ("x", "y"):
        tifffile.imwrite(tmp_path / f"{name}.tif", (rng.random((32, 32)) * 255).astype(np.uint8))
        tifffile.imwrite(tmp_path / f"{name}_mask.tif", np.eye(32, dtype=np.uint8))
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((32, 32), np.uint8))  # no mask

    with pytest.raises(Exception, match="own labels"):
        _read_pairs(str(tmp_path), str(tmp_path))
    (tmp_path / "z.tif").unlink()
    images, labels, paths = _read_pairs(str(tmp_path), str(tmp_path))
    assert [p.name for p in paths] == ["x.tif", "y.tif"]
    assert all(label.max() == 1 for label in labels)


def test_ctrl_c_saves_the_model_and_only_train_exits_with_it(monkeypatch, tmp_path):
    import napari_unet.cli as cli
    import napari_unet.training as training
    from napari_unet.training import TrainingStarted

    saved = tmp_path / "m.safetensors"
    _instances_model(saved)
    from napari_unet import load_model

    model = load_model(saved)

    def interrupted(*args, **kwargs):
        yield TrainingStarted(model, 1, 0, "cpu", "fp32", [])
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "iter_train", interrupted)
    out = tmp_path / "kept.safetensors"
    assert cli.run_training([], [], None, out=out, quiet=True) is model  # the demo goes on
    assert out.exists()
    out.unlink()
    with pytest.raises(KeyboardInterrupt):
        cli.run_training([], [], None, out=out, quiet=True, reraise=True)
    assert out.exists()  # saved before the command stops


def test_training_errors_name_the_image_file(tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name, label_shape in (("a.tif", (64, 64)), ("b.tif", (64, 64)), ("c.tif", (32, 64))):
        tifffile.imwrite(images / name, np.zeros((64, 64), np.uint8))
        tifffile.imwrite(labels / name, np.ones(label_shape, np.uint8))
    out = str(tmp_path / "m.safetensors")

    code = main(["train", "--images", str(images), "--labels", str(labels), "--out", out,
                 "--epochs", "1", "--depth", "2", "--base-channels", "4"])  # fmt: skip

    assert code == 2
    assert "Image #2 (c.tif) is (64, 64) (Y, X) but its labels are (32, 64)" in (
        capsys.readouterr().err
    )


def one_pair(tmp_path, name: str, image: np.ndarray):
    """Folders images/ and labels/ holding ``image`` and a 64 x 64 label of one square."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    tifffile.imwrite(images / name, image)
    label = np.zeros((64, 64), np.uint8)
    label[20:40, 20:40] = 1
    tifffile.imwrite(labels / name, label)
    return images, labels, label


def test_training_notes_name_the_image_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    two = rng.integers(0, 255, (2, 64, 64), dtype=np.uint8)
    images, labels, _ = one_pair(tmp_path, "two.tif", two)
    out = str(tmp_path / "m.safetensors")

    code = main(["train", "--images", str(images), "--labels", str(labels), "--out", out,
                 "--epochs", "1", "--depth", "2", "--base-channels", "4",
                 "--patch-size", "32", "--batch-size", "2"])  # fmt: skip

    assert code == 0
    assert "note: Image #0 (two.tif) (2, 64, 64) has one axis more" in capsys.readouterr().err


def test_channel_axis_option_reads_channels_where_the_files_keep_them(
    tmp_path, capsys, grey_model
):
    rng = np.random.default_rng(0)
    image = tmp_path / "middle.tif"  # (Y, C, X): no rule finds these channels on its own
    tifffile.imwrite(image, rng.random((40, 3, 50)).astype(np.float32))
    truth = tmp_path / "truth.tif"
    tifffile.imwrite(truth, (rng.random((40, 50)) > 0.5).astype(np.uint8))
    predict = ["predict", "--model", str(grey_model), "--input", str(image)]

    code, err = _run(predict + ["--output", str(tmp_path / "auto")], capsys)
    assert code == 1 and "expects 3 channel" in err
    code, _ = _run(predict + ["--output", str(tmp_path / "one"), "--channel-axis", "1"], capsys)
    assert code == 0
    assert tifffile.imread(tmp_path / "one" / "middle.tif").shape == (40, 50)
    code, err = _run(predict + ["--output", str(tmp_path / "far"), "--channel-axis", "5"], capsys)
    assert code == 1 and "Channel axis 5 does not fit an image of shape (40, 3, 50)" in err
    with pytest.raises(SystemExit) as exit:
        main(predict + ["--output", str(tmp_path / "x"), "--channel-axis", "C"])
    assert exit.value.code == 2 and "give auto, none or an axis number" in capsys.readouterr().err

    evaluate = ["evaluate", "--model", str(grey_model), "--images", str(image), "--labels",
                str(truth)]  # fmt: skip
    code, err = _run(evaluate, capsys)
    assert code == 1 and "Image #0 (middle.tif): The model expects 3 channel" in err
    assert main(evaluate + ["--channel-axis", "1"]) == 0
    assert "dice" in json.loads(capsys.readouterr().out)["1"]


def test_channel_axis_option_reaches_training(tmp_path, capsys):
    rng = np.random.default_rng(0)
    # four stains, channels first: not RGBA, whichever way the axis is found
    four = rng.integers(0, 255, (4, 64, 64), dtype=np.uint8)
    images, labels, label = one_pair(tmp_path, "four.tif", four)
    out = tmp_path / "m.safetensors"
    train = ["train", "--images", str(images), "--labels", str(labels), "--out", str(out),
             "--epochs", "1", "--depth", "2", "--base-channels", "4", "--patch-size", "32",
             "--batch-size", "2"]  # fmt: skip

    code, err = _run(train + ["--channel-axis", "none"], capsys)
    assert code == 2 and "has 4 plane(s) but its labels (64, 64) have 1" in err
    assert not out.exists()
    from napari_unet.io import load_model

    for axis in ("0", "-3", "auto"):
        code, err = _run(train + ["--channel-axis", axis], capsys)
        assert code == 0 and ("one axis more" in err) == (axis == "auto")  # asked: no note
        assert load_model(out).in_channels == 4, axis

    # the option applies to every file: one that lacks the axis is named
    tifffile.imwrite(images / "grey.tif", rng.integers(0, 255, (64, 64), dtype=np.uint8))
    tifffile.imwrite(labels / "grey.tif", label)
    code, err = _run(train + ["--channel-axis", "0"], capsys)
    assert code == 2 and "(grey.tif): Channel axis 0 does not fit" in err


def test_channel_axis_option_reaches_lazy_predictions(tmp_path, grey_model):
    import napari_unet.cli as cli
    from napari_unet.io import load_model

    model = load_model(grey_model)
    image = np.random.default_rng(0).random((40, 3, 50)).astype(np.float32)
    tifffile.imwrite(tmp_path / "middle.tif", image)
    lazy = cli._as_dask(image, model, 1)
    assert lazy.chunks[1] == (3,)  # the channels stay together in every chunk

    options = {"tile_size": 64, "channel_axis": -2}
    record = cli._predict_one(
        model, tmp_path / "middle.tif", tmp_path / "lazy.tif", options, lazy=True
    )
    assert record["status"] == "ok", record
    direct = cli._predict_one(model, tmp_path / "middle.tif", tmp_path / "now.tif", options)
    assert direct["status"] == "ok", direct
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "lazy.tif"), tifffile.imread(tmp_path / "now.tif")
    )


def test_training_without_a_validation_score_says_why(tmp_path, capsys, nuclei_paths):
    out = tmp_path / "m.safetensors"
    code = main(["train", "--images", str(nuclei_paths["images"][0]), "--labels",
                 str(nuclei_paths["labels"][0]), "--mode", "instances", "--out", str(out),
                 "--epochs", "1", "--depth", "2", "--base-channels", "4", "--patch-size", "32",
                 "--batch-size", "2", "--validation-fraction", "0"])  # fmt: skip
    assert code == 0 and out.exists()
    assert "No validation score: no validation part was held out" in capsys.readouterr().out
    # continued without architecture options: no word of them
    code = main(["train", "--images", str(nuclei_paths["images"][0]), "--labels",
                 str(nuclei_paths["labels"][0]), "--out", str(out), "--resume", str(out),
                 "--epochs", "1", "--patch-size", "32", "--batch-size", "2"])  # fmt: skip
    assert code == 0 and "model_config" not in capsys.readouterr().err


def test_a_terminated_training_exits_143(monkeypatch, folders, tmp_path):
    import napari_unet.cli as cli

    def terminated(*args, **kwargs):
        raise cli.Terminated

    monkeypatch.setattr(cli, "run_training", terminated)
    images, labels = folders
    code = main(["train", "--images", str(images), "--labels", str(labels),
                 "--out", str(tmp_path / "m.safetensors"), "--epochs", "1"])  # fmt: skip
    assert code == 143


def test_the_demo_checks_its_output_folder_before_training(tmp_path, capsys, monkeypatch):
    from napari_unet import cli

    trained = []
    monkeypatch.setattr(cli, "run_training", lambda *a, **k: trained.append(1))
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")

    assert main(["demo", "--output", str(blocker)]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err and not trained

    # a folder holding a file of the user's under a result's name
    folder = tmp_path / "mine"
    folder.mkdir()
    tifffile.imwrite(folder / "demo_labels.tif", np.ones((8, 8), np.uint8))
    before = (folder / "demo_labels.tif").read_bytes()
    assert main(["demo", "--output", str(folder)]) == 2
    assert (
        "demo_labels.tif, which this version of the demo did not write" in capsys.readouterr().err
    )
    assert not trained and (folder / "demo_labels.tif").read_bytes() == before


def test_reports_never_replace_a_file_that_is_not_json(tmp_path, capsys):
    from napari_unet import UNet
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.model import SegmentationModel

    encoding = LabelEncoding("semantic", ["background", "cell"], [0, 1], [0, 1], [])
    model = SegmentationModel(UNet(1, 2, depth=2, base_channels=4), encoding, Normalization())
    model_path = tmp_path / "m.safetensors"
    model.save(model_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(tmp_path / "labels" / "a.tif", np.zeros((32, 32), np.uint8))
    before = model_path.read_bytes()
    evaluate = ["evaluate", "--model", str(model_path), "--images", str(tmp_path / "images"),
                "--labels", str(tmp_path / "labels")]  # fmt: skip

    assert main([*evaluate, "--json", str(model_path)]) == 2
    assert "is not an earlier report" in capsys.readouterr().err
    assert model_path.read_bytes() == before
    image = tmp_path / "images" / "a.tif"
    image_bytes = image.read_bytes()
    assert main(["predict", "--model", str(model_path), "--input", str(image), "--output",
                 str(tmp_path / "out"), "--summary", str(image)]) == 2  # fmt: skip
    assert "is not an earlier report" in capsys.readouterr().err
    assert image.read_bytes() == image_bytes
    # a JSON file of the user's (annotations) is no report either
    annotations = tmp_path / "annotations.json"
    annotations.write_text('{"type": "FeatureCollection", "features": []}')
    assert main([*evaluate, "--json", str(annotations)]) == 2
    assert "not an earlier report" in capsys.readouterr().err
    assert json.loads(annotations.read_text())["type"] == "FeatureCollection"
    # an earlier report is replaced
    report = tmp_path / "scores.json"
    assert main([*evaluate, "--json", str(report)]) == 0
    assert main([*evaluate, "--json", str(report)]) == 0


def test_evaluate_says_when_only_the_plane_count_differs(tmp_path, capsys):
    from napari_unet import UNet
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.model import SegmentationModel

    encoding = LabelEncoding("semantic", ["background", "cell"], [0, 1], [0, 1], [])
    model = SegmentationModel(UNet(1, 2, depth=2, base_channels=4), encoding, Normalization())
    model.save(tmp_path / "m.safetensors")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 32, 32), np.uint8))
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "labels" / "stack.tif", np.zeros((32, 32), np.uint8))

    code = main(["evaluate", "--model", str(tmp_path / "m.safetensors"), "--images",
                 str(tmp_path / "stack.tif"), "--labels", str(tmp_path / "labels")])  # fmt: skip

    assert code == 1  # nothing scored
    assert "has 2 plane(s)" in capsys.readouterr().err
    # the same number of planes, laid out otherwise: no talk of plane counts
    tifffile.imwrite(tmp_path / "labels" / "stack.tif", np.zeros((1, 2, 32, 32), np.uint8))
    assert main(["evaluate", "--model", str(tmp_path / "m.safetensors"), "--images",
                 str(tmp_path / "stack.tif"), "--labels", str(tmp_path / "labels")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "layout of their planes" in err and "plane(s)" not in err


def test_evaluate_scores_the_good_pairs_beside_a_bad_one(tmp_path, capsys):
    from napari_unet import UNet
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.model import SegmentationModel

    encoding = LabelEncoding("semantic", ["background", "cell"], [0, 1], [0, 1], [])
    model = SegmentationModel(UNet(1, 2, depth=2, base_channels=4), encoding, Normalization())
    model.save(tmp_path / "m.safetensors")
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    for name, rows in (("a", 32), ("b", 20), ("c", 32)):  # b's labels are cropped
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", rng.random((32, 32), np.float32))
        label = np.zeros((rows, 32), np.uint8)
        label[:10] = 1
        tifffile.imwrite(tmp_path / "labels" / f"{name}.tif", label)
    report = tmp_path / "scores.json"

    code = main(["evaluate", "--model", str(tmp_path / "m.safetensors"), "--images",
                 str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                 "--json", str(report)])  # fmt: skip

    assert code == 1
    captured = capsys.readouterr()
    assert "Image #1 (b.tif)" in captured.err and "differ in shape" in captured.err
    assert "1 of 3 image(s) could not be scored" in captured.err
    result = json.loads(report.read_text())
    assert [image["file"] for image in result["images"]] == ["a.tif", "b.tif", "c.tif"]
    assert "error" in result["images"][1] and "1" in result["images"][0]
    assert result["mean"]["1"]["dice"] is not None and len(result["failed"]) == 1
    assert json.loads(captured.out) == result["mean"]

    # a label file that cannot be read: reported, the others scored
    (tmp_path / "labels" / "b.tif").write_bytes(b"not a TIFF")
    code = main(["evaluate", "--model", str(tmp_path / "m.safetensors"), "--images",
                 str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                 "--json", str(report)])  # fmt: skip
    assert code == 1
    captured = capsys.readouterr()
    assert "Image #1 (b.tif): Cannot read" in captured.err
    result = json.loads(report.read_text())
    assert [image["file"] for image in result["images"]] == ["a.tif", "b.tif", "c.tif"]
    assert "Cannot read" in result["images"][1]["error"] and "1" in result["images"][2]
    assert result["failed"] == [result["images"][1]["error"]]


@pytest.mark.parametrize("score, said", [(0.0, True), (0.6, False)])
def test_a_semantic_model_that_learned_nothing_suggests_another_mode(
    tmp_path, capsys, monkeypatch, score, said
):
    from napari_unet import UNet, cli
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.model import SegmentationModel

    def trained(*args, **kwargs):
        encoding = LabelEncoding("semantic", ["background", "c1", "c2"], [0, 1, 2], [0, 1, 2], [])
        model = SegmentationModel(UNet(1, 3, depth=2, base_channels=4), encoding, Normalization())
        model.history["runs"].append({"steps": 10, "best_score": score})
        return model

    monkeypatch.setattr(cli, "run_training", trained)
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    tifffile.imwrite(tmp_path / "img" / "a.tif", np.zeros((32, 32), np.uint8))
    scribbles = np.zeros((32, 32), np.uint8)
    scribbles[4, 2:30], scribbles[16, 10:20] = 1, 2
    tifffile.imwrite(tmp_path / "lab" / "a.tif", scribbles)

    assert main(["train", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
                 "--out", str(tmp_path / "m.safetensors"), "--epochs", "1"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert ("train with --mode sparse" in err) == said


def test_evaluate_names_files_right_in_a_folder_whose_name_holds_image_and_a_number(
    tmp_path, capsys
):
    from napari_unet import UNet
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.model import SegmentationModel

    encoding = LabelEncoding("semantic", ["background", "cell"], [0, 1], [0, 1], [])
    model = SegmentationModel(UNet(1, 2, depth=2, base_channels=4), encoding, Normalization())
    model.save(tmp_path / "m.safetensors")
    images, labels = tmp_path / "Image #7", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name in ("a", "b"):
        tifffile.imwrite(images / f"{name}.tif", np.zeros((64, 64), np.float32))
        tifffile.imwrite(labels / f"{name}.tif", np.zeros((64, 64), np.uint8))
    (labels / "a.tif").write_bytes(b"not a TIFF")  # a is not read: b is the only pair read
    whole = (images / "b.tif").read_bytes()
    (images / "b.tif").write_bytes(whole[: len(whole) // 2])  # its pixels cut short

    code = main(["evaluate", "--model", str(tmp_path / "m.safetensors"), "--images",
                 str(images), "--labels", str(labels)])  # fmt: skip

    assert code == 1
    err = capsys.readouterr().err
    assert "Image #0 (a.tif): Cannot read" in err and "Image #1 (b.tif)" in err
    assert "No image could be scored." in err
