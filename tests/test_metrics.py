import numpy as np
import pytest

from napari_unet.data import InputError
from napari_unet.metrics import instance_scores
from napari_unet.tiling import TileGrid


def test_instance_scores_of_a_stack_match_objects_within_their_plane():
    truth = np.zeros((2, 32, 32), np.int32)
    truth[0, 2:10, 2:10], truth[0, 20:30, 20:30] = 1, 2
    truth[1, 2:10, 2:10], truth[1, 20:30, 20:30] = 3, 4
    predicted = np.zeros_like(truth)  # each plane numbered from 1, as prediction does
    predicted[0, 2:10, 2:10], predicted[0, 20:30, 20:30] = 1, 2
    predicted[1, 2:10, 2:10], predicted[1, 20:30, 20:30] = 1, 2

    scores = instance_scores(truth, predicted)
    assert scores["objects_true"] == scores["objects_predicted"] == 4
    assert scores["f1@0.5"] == pytest.approx(1) and scores["dsb_score"] == pytest.approx(1)


@pytest.mark.parametrize("shape", [(15, 15), (1, 40), (40, 300)])
def test_tiles_keep_at_least_two_pixels_at_the_bottleneck(shape):
    grid = TileGrid.plan(shape, tile_size=16, overlap=0.125, divisor=16)
    assert min(grid.tile_shape) >= 32


def test_a_class_absent_from_an_image_and_its_prediction_is_not_scored():
    from napari_unet.metrics import _mean_scores, class_scores

    truth = np.zeros((4, 4), np.int64)
    truth[0] = 1
    rare = truth.copy()
    rare[3] = 2  # class 2 is annotated in one image only
    never = [class_scores(truth, truth, [1, 2, 3]) for _ in range(9)]
    missed = class_scores(truth, rare, [1, 2, 3])  # ... and never predicted

    assert never[0]["2"] == {"dice": None, "iou": None}
    mean = _mean_scores(never + [missed])
    assert mean["1"]["dice"] == 1.0
    assert mean["2"]["dice"] == 0.0  # not 0.9: the nine images without it say nothing
    assert mean["3"] == {"dice": None, "iou": None}  # in no image at all


def test_instance_masks_are_scored_by_their_connected_regions():
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.metrics import evaluate
    from napari_unet.model import SegmentationModel, UNet

    model = SegmentationModel(
        UNet(in_channels=1, num_classes=3, depth=2, base_channels=4),
        LabelEncoding(
            "instances", ["background", "interior", "boundary"], [0, 1, 2], [0, 1, 2], []
        ),
        Normalization(),
    )
    ids = np.zeros((48, 48), np.int32)
    ids[4:14, 4:14], ids[20:30, 4:14], ids[30:44, 30:44] = 1, 2, 3
    image = (ids > 0).astype(np.float32)
    mask = np.where(ids > 0, 255, 0).astype(np.uint8)  # as many programs save them

    by_ids = evaluate(model, [image], [ids], tile_size=48)
    by_mask = evaluate(model, [image, image, image], [ids, mask, mask > 0], tile_size=48)

    assert by_ids["images"][0] == by_mask["images"][1] == by_mask["images"][2]
    assert by_mask["images"][1]["objects_true"] == 3  # not one object of value 255
    assert by_ids["notes"] == []
    assert by_mask["notes"] == [  # one note for all such images
        "The labels of Image #1 (and of 1 more image(s)) hold masks or class maps (one value "
        "for several objects), not one id per object: each connected region is scored as an "
        "object (touching objects count as one)."
    ]
    with pytest.raises(InputError, match="Image #0: .*no pixels"):
        evaluate(model, [np.zeros((0, 48, 48))], [np.zeros((0, 48, 48), int)], tile_size=48)


def test_sparse_test_labels_of_one_class_are_scored():
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.metrics import evaluate
    from napari_unet.model import SegmentationModel, UNet

    encoding = LabelEncoding("sparse", ["background", "class 2"], [0, 2], [1, 2], [])
    model = SegmentationModel(UNet(1, 2, depth=2, base_channels=4), encoding, Normalization())
    background_only = np.zeros((48, 48), np.uint8)
    background_only[5, :] = 1  # an image without objects: background strokes only

    scores = evaluate(model, [np.zeros((48, 48), np.float32)], [background_only], tile_size=48)
    assert set(scores["images"][0]) == {"2"}


def test_semantic_test_labels_that_are_not_whole_numbers_are_refused():
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.metrics import evaluate
    from napari_unet.model import SegmentationModel, UNet

    model = SegmentationModel(
        UNet(in_channels=1, num_classes=2, depth=2, base_channels=4),
        LabelEncoding("semantic", ["background", "class 1"], [0, 1], [0, 1], []),
        Normalization(),
    )
    label = np.zeros((32, 32), np.float32)
    label[8:20, 8:20] = 0.99  # a resampled mask: read as 0 everywhere before
    with pytest.raises(InputError, match="non-integer"):
        evaluate(model, [label], [label], tile_size=32)


def test_evaluate_refuses_unequal_numbers_of_images_and_labels_before_predicting(monkeypatch):
    from napari_unet import UNet, evaluate
    from napari_unet import prediction as p
    from napari_unet.data import InputError, LabelEncoding, Normalization
    from napari_unet.model import SegmentationModel

    encoding = LabelEncoding("semantic", ["background", "cell"], [0, 1], [0, 1], [])
    model = SegmentationModel(UNet(1, 2, depth=2, base_channels=4), encoding, Normalization())
    called = []
    monkeypatch.setattr(p, "predict", lambda *a, **k: called.append(1))
    image = np.zeros((32, 32), np.float32)
    with pytest.raises(InputError, match="Got 2 images but 1 label images"):
        evaluate(model, [image, image], [np.zeros((32, 32), np.uint8)])
    assert not called


def test_a_scribble_model_scored_against_a_mask_says_which_values_to_give():
    from napari_unet import UNet
    from napari_unet.data import InputError, LabelEncoding, Normalization
    from napari_unet.metrics import evaluate
    from napari_unet.model import SegmentationModel

    encoding = LabelEncoding("sparse", ["background", "class 2"], [0, 2], [1, 2], [])
    model = SegmentationModel(UNet(1, 2, depth=2, base_channels=4), encoding, Normalization())
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 255
    with pytest.raises(InputError, match=r"background -> 1, objects -> \[2\]"):
        evaluate(model, [np.zeros((32, 32), np.float32)], [mask])
    ones_and_twos = np.where(mask > 0, 2, 1).astype(np.uint8)
    result = evaluate(model, [np.zeros((32, 32), np.float32)], [ones_and_twos])
    assert result["mean"] and not result["notes"]
    # a 0/1 (or boolean) mask: its objects are the model's background, nothing is scored
    result = evaluate(model, [np.zeros((32, 32), np.float32)], [mask > 0])
    assert "hold only 0 and 1" in result["notes"][0] and "objects 2" in result["notes"][0]


def test_evaluate_takes_no_out_and_scores_what_predict_returns(monkeypatch):
    from napari_unet import UNet
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.metrics import evaluate
    from napari_unet.model import SegmentationModel

    encoding = LabelEncoding("semantic", ["background", "cell"], [0, 1], [0, 1], [])
    model = SegmentationModel(UNet(1, 2, depth=2, base_channels=4), encoding, Normalization())
    image, label = np.zeros((32, 32), np.float32), np.zeros((32, 32), np.uint8)
    label[:8] = 1
    with pytest.raises(TypeError, match="no out="):
        evaluate(model, [image], [label], out="e.tif")

    class OnDisk:  # a result opened read-only, as predict(out=path) returns it
        shape, dtype, ndim = label.shape, label.dtype, 2

        def __array__(self, dtype=None, copy=None):
            return label.copy()

    import napari_unet.prediction as prediction

    monkeypatch.setattr(prediction, "predict", lambda *a, **k: OnDisk())
    scores = evaluate(model, [image], [label])
    assert scores["mean"]["1"]["dice"] == 1.0


def test_evaluate_reads_image_and_label_files_given_as_paths(tmp_path):
    import tifffile

    from napari_unet import UNet
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.metrics import evaluate
    from napari_unet.model import SegmentationModel

    encoding = LabelEncoding("semantic", ["background", "cell"], [0, 1], [0, 1], [])
    model = SegmentationModel(UNet(1, 2, depth=2, base_channels=4), encoding, Normalization())
    image, label = np.zeros((32, 32), np.float32), np.zeros((32, 32), np.uint8)
    label[:8] = 1
    tifffile.imwrite(tmp_path / "i.tif", image)
    tifffile.imwrite(tmp_path / "l.tif", label)
    by_path = evaluate(model, [tmp_path / "i.tif"], [str(tmp_path / "l.tif")])
    assert by_path["mean"] == evaluate(model, [image], [label])["mean"]
