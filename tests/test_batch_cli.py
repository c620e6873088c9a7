import json
import os
import time

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_unet import UNet, cli, predict
from napari_unet.cli import main
from napari_unet.data import LabelEncoding, Normalization
from napari_unet.io import load_model
from napari_unet.model import SegmentationModel

TILES = ["--tile-size", "128", "--device", "cpu"]


@pytest.fixture
def model_path(tmp_path):
    torch.manual_seed(0)
    encoding = LabelEncoding("semantic", ["background", "cell"], [0, 1], [0, 1], [])
    model = SegmentationModel(UNet(1, 2, depth=2, base_channels=8), encoding, Normalization())
    path = tmp_path / "model.safetensors"
    model.save(path)
    return path


def _damaged(path, image):
    """A TIFF whose header reads but whose compressed tiles do not decode."""
    tifffile.imwrite(path, image, tile=(128, 128), compression="zlib")
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 3000] = b"\xff" * 3000
    path.write_bytes(bytes(data))


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = {}
    for name in ("a.tif", "b.tif"):
        images[name] = (rng.random((300, 350)) * 255).astype(np.uint8)
        tifffile.imwrite(folder / name, images[name])
    (folder / "garbage.tif").write_bytes(b"II*\x00 not a tiff")
    _damaged(folder / "damaged.tif", (rng.random((400, 400)) * 255).astype(np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder, images


def _summary(path):
    summary = json.loads(path.read_text())
    return summary, {os.path.basename(f["input"]): f for f in summary["files"]}


def test_a_batch_reports_bad_files_and_finishes_the_others(tmp_path, model_path, inputs, capsys):
    folder, images = inputs
    out = tmp_path / "out"

    code = main(
        ["predict", "--model", str(model_path), "--input", str(folder), "--output", str(out)]
        + TILES
    )

    err = capsys.readouterr().err
    assert code == 1
    summary, files = _summary(out / "summary.json")
    assert summary["counts"] == {"ok": 2, "skipped": 0, "failed": 2}
    assert files["a.tif"]["status"] == files["b.tif"]["status"] == "ok"
    assert files["a.tif"]["seconds"] > 0 and files["a.tif"]["output"] == str(out / "a.tif")
    for bad in ("garbage.tif", "damaged.tif"):
        assert files[bad]["status"] == "failed" and "Cannot read" in files[bad]["error"]
        assert len([line for line in err.splitlines() if f"error: {folder / bad}" in line]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "b.tif", "summary.json"]
    model = load_model(model_path)
    for name, image in images.items():
        np.testing.assert_array_equal(
            tifffile.imread(out / name), predict(model, image, tile_size=128, device="cpu")
        )


def test_resume_skips_complete_results_only(tmp_path, model_path, inputs):
    folder, _ = inputs
    out = tmp_path / "out"
    args = ["predict", "--model", str(model_path), "--output", str(out)] + TILES
    main(args + ["--input", str(folder / "a.tif")])
    before = (out / "a.tif").stat().st_mtime_ns
    (out / "b.tif").write_bytes(b"half a file")  # not a result: must be redone
    (out / ".b.tif.x1y2.part").write_bytes(b"left by a crash")

    code = main(
        args
        + ["--input", str(folder / "a.tif"), str(folder / "b.tif"), "--resume"]
        + ["--summary", str(tmp_path / "report.json")]
    )

    assert code == 0
    summary, files = _summary(tmp_path / "report.json")
    assert files["a.tif"]["status"] == "skipped" and files["b.tif"]["status"] == "ok"
    assert (out / "a.tif").stat().st_mtime_ns == before
    assert tifffile.imread(out / "b.tif").shape == (300, 350)


def test_globs_and_zarr_results(tmp_path, model_path, inputs):
    folder, images = inputs
    out = tmp_path / "out"

    code = main(
        ["predict", "--model", str(model_path), "--input", str(folder / "[ab].tif")]
        + ["--output", str(out), "--format", "zarr"]
        + TILES
    )

    assert code == 0
    result = zarr.open_array(str(out / "a.zarr"), mode="r")
    assert result.shape == images["a.tif"].shape and result.dtype == np.uint8
    assert _summary(out / "summary.json")[0]["counts"]["ok"] == 2


def test_same_names_from_two_folders_are_not_overwritten(tmp_path, model_path, inputs, capsys):
    folder, images = inputs
    other = tmp_path / "other"
    other.mkdir()
    tifffile.imwrite(other / "a.tif", images["a.tif"])

    code = main(
        ["predict", "--model", str(model_path), "--input", str(folder / "a.tif")]
        + [str(other / "a.tif"), "--output", str(tmp_path / "out")]
        + TILES
    )

    assert code == 1
    assert "same name" in capsys.readouterr().err


def test_names_that_differ_in_case_only_meet_where_the_output_folder_ignores_case(
    tmp_path, model_path, inputs, capsys, monkeypatch
):
    folder, images = inputs
    other = tmp_path / "other"
    other.mkdir()
    tifffile.imwrite(other / "A.tif", images["a.tif"])
    args = ["predict", "--model", str(model_path), "--input", str(folder / "a.tif")]
    args += [str(other / "A.tif")] + TILES
    assert not cli._ignores_case(tmp_path)  # this file system tells A.tif from a.tif

    assert main(args + ["--output", str(tmp_path / "out")]) == 0
    assert {p.name for p in (tmp_path / "out").glob("*.tif")} == {"a.tif", "A.tif"}
    assert not list((tmp_path / "out").glob(".napari-unet-case-probe-*"))  # cleaned up

    monkeypatch.setattr(cli, "_ignores_case", lambda folder: True)  # macOS, Windows
    assert main(args + ["--output", str(tmp_path / "mac")]) == 1
    assert "a.tif has the same name and is written to" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "mac").glob("*.tif")] == ["a.tif"]


def test_a_batch_runs_on_a_cluster_with_the_same_results(
    tmp_path, model_path, inputs, monkeypatch
):
    distributed = pytest.importorskip("distributed")
    folder, _ = inputs
    local, remote = tmp_path / "local", tmp_path / "remote"
    args = ["predict", "--model", str(model_path), "--input", str(folder)] + TILES
    main(args + ["--output", str(local)])
    # b.tif is "large": its tiles fan out to the workers instead of the whole file
    monkeypatch.setattr(cli, "_CLUSTER_TILED_PIXELS", 300 * 350 - 1)

    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        host="127.0.0.1",
        protocol="tcp://",
        dashboard_address=":0",
    ) as cluster:
        code = main(args + ["--output", str(remote), "--scheduler", cluster.scheduler_address])

    assert code == 1
    summary, files = _summary(remote / "summary.json")
    assert summary["counts"] == {"ok": 2, "skipped": 0, "failed": 2}
    assert files["damaged.tif"]["status"] == "failed"
    for name in ("a.tif", "b.tif"):
        np.testing.assert_array_equal(
            tifffile.imread(remote / name), tifffile.imread(local / name)
        )


def test_an_unreachable_scheduler_is_a_one_line_error(
    tmp_path, model_path, inputs, capsys, monkeypatch
):
    pytest.importorskip("distributed")
    monkeypatch.setattr(cli, "_CONNECT_SECONDS", 1)
    folder, _ = inputs
    code = main(
        ["predict", "--model", str(model_path), "--input", str(folder / "a.tif")]
        + ["--output", str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:1"]
    )

    err = capsys.readouterr().err
    assert code == 2
    assert len([line for line in err.splitlines() if "dask scheduler" in line]) == 1


def test_results_never_replace_the_input_images(tmp_path, model_path, inputs, capsys):
    folder, _ = inputs
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    code = main(["predict", "--model", str(model_path), "--input", str(folder),
                 "--output", str(folder), *TILES])  # fmt: skip

    assert code == 2
    err = capsys.readouterr().err
    assert "replace input images" in err and "another --output" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_results_never_replace_a_users_file_beside_the_inputs(tmp_path, model_path, fmt, capsys):
    from PIL import Image

    folder = tmp_path / "raw"
    folder.mkdir()
    image = (np.random.default_rng(0).random((64, 80)) * 255).astype(np.uint8)
    Image.fromarray(image).save(folder / "cell.png")
    theirs = folder / f"cell.{fmt}"  # the raw data the PNG was exported from
    if fmt == "tif":
        tifffile.imwrite(theirs, image)
    else:
        zarr.open_array(str(theirs), mode="w", shape=image.shape, dtype=image.dtype)[:] = image
    before = sorted(
        (p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file()
    )
    args = ["predict", "--model", str(model_path), "--input", str(folder / "*.png"),
            "--output", str(folder), "--format", fmt, *TILES]  # fmt: skip

    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"did not write (cell.{fmt})" in err and "another --output" in err
    after = sorted(
        (p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file()
    )
    assert after == before

    # an earlier result of its own is replaced, as a rerun expects
    import shutil

    shutil.rmtree(theirs) if fmt == "zarr" else theirs.unlink()
    assert main(args) == 0
    assert main(args) == 0 and theirs.exists()


def test_bad_prediction_options_fail_once_before_any_file(tmp_path, model_path, inputs, capsys):
    folder, _ = inputs
    code = main(["predict", "--model", str(model_path), "--input", str(folder),
                 "--output", str(tmp_path / "out"), "--tile-size", "10"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("error") == 1 and "--tile-size: " in err
    # an abbreviation argparse accepts is named by the option's full name
    assert main(["predict", "--model", str(model_path), "--input", str(folder),
                 "--output", str(tmp_path / "out"), "--tile", "10"]) == 2  # fmt: skip
    assert "--tile-size: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_resume_removes_what_an_interrupted_run_left(tmp_path, model_path, inputs):
    folder, _ = inputs
    out = tmp_path / "out"
    out.mkdir()
    leftover = out / ".a.tif.k3j2h1.part"
    leftover.write_bytes(b"half a result")
    an_hour_ago = time.time() - 3600
    os.utime(leftover, (an_hour_ago, an_hour_ago))
    live = out / ".a.tif.x8y7z6.part"  # another run's work in progress: written just now
    (live / "c").mkdir(parents=True)
    (live / "c" / "0").write_bytes(b"a chunk")

    main(["predict", "--model", str(model_path), "--input", str(folder / "a.tif"),
          "--output", str(out), "--resume", *TILES])  # fmt: skip

    assert not leftover.exists() and (out / "a.tif").exists()
    assert live.exists()


def test_resume_redoes_a_result_of_another_shape_or_type(tmp_path, model_path, inputs, capsys):
    folder, _ = inputs
    out = tmp_path / "out"
    args = ["predict", "--model", str(model_path), "--input", str(folder / "a.tif"),
            "--output", str(out), "--resume", *TILES]  # fmt: skip
    assert main(args + ["--probabilities"]) == 0
    assert tifffile.imread(out / "a.tif").dtype == np.float32

    assert main(args) == 0  # labels wanted now: the probabilities are not skipped

    assert tifffile.imread(out / "a.tif").dtype == np.uint8
    assert "holds (2, 300, 350) float32, not the (300, 350) uint8" in capsys.readouterr().err
    assert main(args) == 0 and _summary(out / "summary.json")[1]["a.tif"]["status"] == "skipped"


def test_a_result_whose_temporary_store_was_removed_is_not_finished(tmp_path):
    import shutil

    from napari_unet.io import open_band_writer

    writer = open_band_writer(tmp_path / "r.zarr", (64, 64), np.uint8)
    an_hour_ago = time.time() - 3600
    os.utime(writer._tmp, (an_hour_ago, an_hour_ago))
    writer.alive()  # as each batch of tiles is done: a resuming run sees it is live
    assert time.time() - writer._tmp.stat().st_mtime < 60
    writer.write((), 0, np.ones((64, 64), np.uint8))
    shutil.rmtree(writer._tmp)  # what a second run's cleanup did before the rule above
    with pytest.raises(OSError, match="was removed while it was written"):
        writer.finish()
    writer.abort()
    assert not (tmp_path / "r.zarr").exists()


def test_closing_boundaries_on_a_model_without_two_classes_fails_once(tmp_path, inputs, capsys):
    folder, _ = inputs
    encoding = LabelEncoding("semantic", ["background", "a", "b"], [0, 1, 2], [0, 1, 2], [])
    three = SegmentationModel(UNet(1, 3, depth=2, base_channels=8), encoding, Normalization())
    three.save(tmp_path / "three.safetensors")
    code = main(["predict", "--model", str(tmp_path / "three.safetensors"), "--input",
                 str(folder), "--output", str(tmp_path / "out"), "--close-boundaries"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("error") == 1 and "two classes" in err
    assert not (tmp_path / "out").exists()


def test_label_files_beside_their_images_are_not_segmented(tmp_path, model_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    image = (np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)
    tifffile.imwrite(folder / "a.tif", image)
    tifffile.imwrite(folder / "a_mask.tif", (image > 128).astype(np.uint8))
    tifffile.imwrite(folder / "b_mask.tif", image)  # no image "b": an image of its own
    args = ["predict", "--model", str(model_path)] + TILES

    assert main(args + ["--input", str(folder), "--output", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == ["a.tif", "b_mask.tif"]
    assert "left out 1 label file(s) beside their images (a_mask.tif)" in capsys.readouterr().err

    named = [str(folder / "a.tif"), str(folder / "a_mask.tif")]  # named: segmented
    assert main(args + ["--input", *named, "--output", str(tmp_path / "named")]) == 0
    assert len(list((tmp_path / "named").glob("*.tif"))) == 2


def test_arrays_of_zarr_groups_are_named_after_their_group(tmp_path, model_path):
    from napari_unet.cli import _output_path

    for name in ("a", "b"):
        group = zarr.open_group(str(tmp_path / f"{name}.ome.zarr"), mode="w")
        group.create_array("0", shape=(40, 50), dtype="uint8")[:] = 9
    arrays = [str(tmp_path / "a.ome.zarr" / "0"), str(tmp_path / "b.ome.zarr" / "0")]
    out = tmp_path / "out"

    code = main(["predict", "--model", str(model_path), "--input", *arrays, "--output",
                 str(out), "--format", "zarr"] + TILES)  # fmt: skip

    assert code == 0
    assert sorted(p.name for p in out.glob("*.zarr")) == ["a.zarr", "b.zarr"]
    assert _output_path(tmp_path / "a.ome.zarr" / "1", out).name == "a_1.tif"
    assert _output_path(tmp_path / "a.ome.zarr", out).name == "a.tif"

    # written beside its group, the result would replace the group that holds the input
    group = tmp_path / "c.zarr"
    zarr.open_group(str(group), mode="w").create_array("0", shape=(40, 50), dtype="uint8")
    code = main(["predict", "--model", str(model_path), "--input", str(group / "0"),
                 "--output", str(tmp_path), "--format", "zarr"] + TILES)  # fmt: skip
    assert code == 2 and (group / "0").exists()
    code = main(["predict", "--model", str(model_path), "--input", str(group / "0"),
                 "--output", str(group / "0" / "out")] + TILES)  # fmt: skip
    assert code == 2 and not (group / "0" / "out").exists()  # nothing written into a store


def test_unwritable_output_and_summary_fail_before_any_work(
    tmp_path, model_path, inputs, capsys, monkeypatch
):
    folder, _ = inputs
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    worked = []
    monkeypatch.setattr(cli, "_predict_one", lambda *args, **kwargs: worked.append(args))
    args = ["predict", "--model", str(model_path), "--input", str(folder / "a.tif")] + TILES

    code = main(args + ["--output", str(blocker / "out")])
    assert code == 2 and "Cannot write to the --output folder" in capsys.readouterr().err

    summary = str(blocker / "summary.json")
    code = main(args + ["--output", str(tmp_path / "out"), "--summary", summary])
    err = capsys.readouterr().err
    assert code == 2 and "Cannot write" in err and "choose another --summary" in err
    assert not worked and not list((tmp_path / "out").glob("*"))


def test_one_file_spelled_two_ways_is_segmented_once(tmp_path, model_path, inputs):
    folder, _ = inputs
    again = folder / ".." / folder.name / "a.tif"
    out = tmp_path / "out"
    args = ["predict", "--model", str(model_path), "--input", str(folder / "a.tif"), str(again)]

    assert main(args + ["--output", str(out)] + TILES) == 0
    summary, files = _summary(out / "summary.json")
    assert summary["counts"] == {"ok": 1, "skipped": 0, "failed": 0}

    # ** in a glob reaches into subfolders
    nested = tmp_path / "deep" / "er" / "est"  # two folders down: only ** reaches it
    nested.mkdir(parents=True)
    (nested / "b.tif").write_bytes((folder / "b.tif").read_bytes())
    glob_args = [
        "predict",
        "--model",
        str(model_path),
        "--input",
        str(tmp_path / "deep" / "**" / "*.tif"),
    ]
    assert main(glob_args + ["--output", str(tmp_path / "globbed")] + TILES) == 0
    assert (tmp_path / "globbed" / "b.tif").exists()


def test_evaluate_checks_its_json_path_first_and_makes_its_folder(
    tmp_path, model_path, inputs, capsys, monkeypatch
):
    import napari_unet.metrics as metrics

    folder, _ = inputs
    labels = tmp_path / "labels"
    labels.mkdir()
    tifffile.imwrite(labels / "a.tif", np.zeros((300, 350), np.uint8))
    args = ["evaluate", "--model", str(model_path), "--images", str(folder / "a.tif"),
            "--labels", str(labels / "a.tif"), "--tile-size", "128"]  # fmt: skip
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    evaluated = []
    real = metrics.evaluate
    monkeypatch.setattr(metrics, "evaluate", lambda *a, **k: evaluated.append(1) or real(*a, **k))

    code = main(args + ["--json", str(blocker / "scores.json")])
    assert code == 2 and "choose another --json" in capsys.readouterr().err and not evaluated

    report = tmp_path / "new" / "folder" / "scores.json"
    assert main(args + ["--json", str(report)]) == 0
    assert evaluated and json.loads(report.read_text())["images"][0]["file"] == "a.tif"


def test_sigterm_stops_a_batch_as_ctrl_c_does(tmp_path, model_path, inputs, monkeypatch):
    import signal

    folder, _ = inputs
    real = cli._predict_one
    done = []

    def predict_then_terminate(model, source, target, options, **kwargs):
        if done:  # the second file: a batch system's time limit arrives
            os.kill(os.getpid(), signal.SIGTERM)
        done.append(source)
        return real(model, source, target, options, **kwargs)

    monkeypatch.setattr(cli, "_predict_one", predict_then_terminate)
    out = tmp_path / "out"
    code = main(["predict", "--model", str(model_path), "--input", str(folder / "a.tif"),
                 str(folder / "b.tif"), "--output", str(out)] + TILES)  # fmt: skip

    assert code == 143  # 128 + SIGTERM, after the summary of what was done
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["ok"] == 1 and (out / "a.tif").exists()
    assert not list(out.glob(".*.part")) and not (out / "b.tif").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the command


def test_options_given_the_wrong_way_say_how(tmp_path, model_path, inputs, capsys):
    folder, _ = inputs
    args = ["predict", "--model", str(model_path), "--output", str(tmp_path / "out")]
    assert main(args + ["--input", str(folder / "a.tif"), "--overlap", "64"]) == 2
    assert "64 pixels of a 1024-pixel tile is 0.0625" in capsys.readouterr().err
    assert main(args + ["--input", str(folder / "a.tif"), "--min-size", "-3"]) == 2  # once
    assert "--min-size must be 0 or more" in capsys.readouterr().err

    nested = tmp_path / "plates"
    (nested / "plate1").mkdir(parents=True)
    tifffile.imwrite(nested / "plate1" / "a.tif", np.zeros((32, 32), np.uint8))
    assert main(args + ["--input", str(nested)]) == 2
    assert f"give '{nested}/**/*' (quoted)" in capsys.readouterr().err


def test_options_that_would_do_nothing_get_a_note(tmp_path, model_path, inputs, capsys):
    folder, _ = inputs
    image = str(folder / "a.tif")
    args = ["predict", "--model", str(model_path), "--input", image, "--device", "cpu"]
    out = ["--output", str(tmp_path / "out")]
    assert main(args + out + ["--min-size", "20"]) == 0
    err = capsys.readouterr().err
    assert "--min-size has no effect here" in err and "semantic model's classes" in err
    assert main(args + out + ["--min-size", "20", "--probabilities"]) == 0
    assert "no effect with --probabilities" in capsys.readouterr().err

    # a boundary model uses it where its gaps are closed (the default for it), not otherwise
    membranes = load_model(model_path)
    membranes.boundary_class = 1
    membranes.save(tmp_path / "membranes.safetensors")
    args[2] = str(tmp_path / "membranes.safetensors")
    assert main(args + out + ["--min-size", "20"]) == 0
    assert "note" not in capsys.readouterr().err
    assert main(args + out + ["--min-size", "20", "--no-close-boundaries"]) == 0
    assert "--min-size has no effect here" in capsys.readouterr().err

    encoding = LabelEncoding("instances", ["background", "interior", "boundary"], [0, 1, 2],
                             [0, 1, 2], [])  # fmt: skip
    nuclei = SegmentationModel(UNet(1, 3, depth=2, base_channels=8), encoding, Normalization())
    nuclei.history = {"runs": [{"config": {"patch_size": 256}}]}
    nuclei.save(tmp_path / "nuclei.safetensors")
    args[2] = str(tmp_path / "nuclei.safetensors")
    assert main(args + out + ["--min-size", "20", "--tile-size", "256"]) == 0
    assert "note" not in capsys.readouterr().err  # both used as asked
    assert main(args + out + ["--tile-size", "254"]) == 0  # tiles are rounded up to 256
    assert "note" not in capsys.readouterr().err
    assert main(args + out + ["--tile-size", "128"]) == 0
    err = capsys.readouterr().err
    assert "Tiles of 128 pixels (--tile-size) are smaller than the 256-pixel patches" in err
    assert "use --tile-size 256 or more" in err


def test_a_z_stack_named_so_by_its_file_is_not_read_as_channels(tmp_path):
    encoding = LabelEncoding("semantic", ["background", "cell"], [0, 1], [0, 1], [])
    rgb = SegmentationModel(  # a model of colour images that also takes grey ones
        UNet(3, 2, depth=2, base_channels=8), encoding, Normalization(), convert_channels=True
    )
    rgb.save(tmp_path / "rgb.safetensors")
    stack = (np.random.default_rng(0).random((3, 80, 90)) * 255).astype(np.uint8)
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "z.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    model = ["--model", str(tmp_path / "rgb.safetensors"), "--device", "cpu"]

    assert main(["predict", *model, "--input", str(folder), "--output", str(tmp_path / "o")]) == 0
    assert tifffile.imread(tmp_path / "o" / "z.tif").shape == (3, 80, 90)  # a stack out
    labels = tmp_path / "labels"
    labels.mkdir()
    tifffile.imwrite(labels / "z.tif", (stack > 128).astype(np.uint8))
    report = tmp_path / "scores.json"
    args = ["evaluate", *model, "--images", str(folder), "--labels", str(labels)]
    assert main([*args, "--json", str(report)]) == 0
    assert json.loads(report.read_text())["images"][0]["file"] == "z.tif"
    # told otherwise, the planes are channels as before
    assert main(["predict", *model, "--input", str(folder), "--output", str(tmp_path / "c"),
                 "--channel-axis", "0"]) == 0  # fmt: skip
    assert tifffile.imread(tmp_path / "c" / "z.tif").shape == (80, 90)


def test_results_never_replace_ground_truth_in_another_output_folder(tmp_path, model_path, capsys):
    """--output given as the labels folder, where the ground truth is named as its image."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(1)
    tifffile.imwrite(images / "02.tif", (rng.random((64, 64)) * 255).astype(np.uint8))
    truth = (rng.random((64, 64)) > 0.5).astype(np.uint8)
    tifffile.imwrite(labels / "02.tif", truth)
    before = (labels / "02.tif").read_bytes()
    args = ["predict", "--model", str(model_path), "--input", str(images),
            "--output", str(labels), *TILES]  # fmt: skip

    assert main(args) == 2
    err = capsys.readouterr().err
    assert "did not write (02.tif)" in err
    assert (labels / "02.tif").read_bytes() == before

    (labels / "02.tif").unlink()  # nothing of the user's there: written, and rewritten
    assert main(args) == 0
    assert main(args) == 0


def test_resume_keeps_results_written_before_they_were_marked(
    tmp_path, model_path, inputs, capsys
):
    """Results of older versions carry no mark: --resume skips the complete ones, a rerun
    without it refuses to replace them."""
    folder, _ = inputs
    out = tmp_path / "out"
    args = ["predict", "--model", str(model_path), "--input", str(folder / "a.tif"),
            "--output", str(out), *TILES]  # fmt: skip
    assert main(args) == 0
    result = tifffile.imread(out / "a.tif")
    tifffile.imwrite(out / "a.tif", result)  # as an older version wrote it: no mark
    before = (out / "a.tif").read_bytes()

    assert main([*args, "--resume", "--summary", str(tmp_path / "r.json")]) == 0
    assert "no mark of napari-unet" in capsys.readouterr().err  # it may be the user's
    _, files = _summary(tmp_path / "r.json")
    assert files["a.tif"]["status"] == "skipped" and (out / "a.tif").read_bytes() == before
    assert main(args) == 2 and (out / "a.tif").read_bytes() == before
