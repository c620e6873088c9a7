import numpy as np
import pytest

from napari_unet.data import (
    InputError,
    Normalization,
    PatchSampler,
    Sample,
    border_weights,
    channel_axis_of,
    convert_channels,
    encode_labels,
    instance_targets,
)
from napari_unet.losses import IGNORE


@pytest.mark.parametrize("value", [255, 1, True])
def test_two_valued_masks_read_as_background_foreground(value):
    mask = np.zeros((8, 8), type(value) if value is True else np.uint8)
    mask[2:5, 2:5] = value

    (target,), encoding = encode_labels([mask], "semantic")

    assert encoding.num_classes == 2
    assert set(np.unique(target)) == {0, 1}
    assert (target == 1).sum() == 9
    assert bool(encoding.notes) == (value == 255)


def test_semantic_classes_keep_their_values():
    label = np.array([[0, 1], [2, 3]], np.uint8)
    (target,), encoding = encode_labels([label], "semantic")
    np.testing.assert_array_equal(target, label)
    assert encoding.class_values == [0, 1, 2, 3]


def test_semantic_values_with_gaps_get_a_note_and_long_lists_are_cut():
    label = np.array([[0, 3], [200, 0]], np.uint8)
    _, encoding = encode_labels([label], "semantic")
    assert encoding.num_classes == 201 and len(encoding.notes) == 1
    assert (
        "201 classes, of which 198 ([1, 2, 4, 5, 6, 7, 8, 9, ... 190 more])" in (encoding.notes[0])
    )
    assert not encode_labels([np.array([[0, 1], [2, 0]])], "semantic")[1].notes

    model = encode_labels([np.array([[0, 1], [2, 0]])], "sparse")[1]
    ids = np.arange(100, 200).reshape(10, 10)
    with pytest.raises(
        InputError, match=r"values \[100, 101, .*, 107, ... 92 more\] \(the first.*are not"
    ):
        encode_labels([ids], "sparse", previous=model)


def test_masks_saved_as_0_255_and_as_0_1_train_together():
    boolean = np.zeros((8, 8), np.int64)
    boolean[:3] = 1
    wide = np.zeros((8, 8), np.int64)
    wide[4:] = 255
    targets, encoding = encode_labels([boolean, wide], "semantic")
    assert encoding.num_classes == 2 and "0/255" in encoding.notes[0]
    np.testing.assert_array_equal(targets[1], wide > 0)

    classes = boolean * 2  # a class 2 elsewhere: the mask's foreground is class 1
    targets, encoding = encode_labels([classes, wide], "semantic")
    assert encoding.class_values == [0, 1, 2] and set(np.unique(targets[1])) == {0, 1}
    with pytest.raises(InputError, match="0..254"):  # not a two-valued mask
        encode_labels([boolean, np.where(wide > 0, 300, 2)], "semantic")


def test_many_values_in_semantic_mode_suggest_instances():
    label = np.arange(100, dtype=np.uint16).reshape(10, 10)
    with pytest.raises(InputError, match="instances"):
        encode_labels([label], "semantic")


def _disks(values) -> np.ndarray:
    """One small square object per value, on a grid with gaps between them."""
    label = np.zeros((40, 40), np.uint8)
    for k, value in enumerate(values):
        y, x = divmod(k, 5)
        label[8 * y + 1 : 8 * y + 6, 8 * x + 1 : 8 * x + 6] = value
    return label


def test_few_object_ids_in_semantic_mode_get_a_note():
    _, encoding = encode_labels([_disks(range(1, 11))], "semantic")  # 10 ids, one region each
    assert encoding.num_classes == 11
    assert any("object ids" in note and "instances" in note for note in encoding.notes)

    # classes that each paint several objects, and few one-region classes: no such note
    assert not encode_labels([_disks([1, 2, 3, 4, 5] * 5)], "semantic")[1].notes
    assert not encode_labels([_disks(range(1, 8))], "semantic")[1].notes
    bands = np.repeat(np.arange(1, 11, dtype=np.uint8), 4)[None].repeat(40, axis=0)
    notes = encode_labels([bands], "semantic")[1].notes  # large regions: layers, organs
    assert not any("connected region" in note for note in notes)


def test_few_object_ids_in_sparse_mode_get_a_note():
    _, encoding = encode_labels([_disks(range(1, 11))], "sparse")
    assert any("object ids" in note and "instances" in note for note in encoding.notes)
    # scribbles: a few classes, each painted in several strokes
    assert not encode_labels([_disks([1, 2, 3] * 4)], "sparse")[1].notes


def test_sparse_scribbles_ignore_unpainted_and_write_background_as_zero():
    label = np.zeros((6, 6), np.uint8)
    label[0, :] = 1  # background strokes
    label[3, :] = 2  # object strokes
    label[5, :] = 4

    (target,), encoding = encode_labels([label], "sparse")

    assert (target[1] == IGNORE).all()
    assert (target[0] == 0).all() and (target[3] == 1).all() and (target[5] == 2).all()
    assert encoding.class_values == [0, 2, 4]


def test_sparse_needs_two_painted_classes():
    with pytest.raises(InputError, match="at least two"):
        encode_labels([np.ones((4, 4), np.uint8)], "sparse")
    with pytest.raises(InputError, match="No annotated pixels"):
        encode_labels([np.zeros((4, 4), np.uint8)], "sparse")
    # also when continuing: a segmentation result (0 / 2) read as scribbles paints one class
    model = encode_labels([np.array([[0, 1], [2, 0]])], "sparse")[1]
    with pytest.raises(InputError, match="Only one class is painted"):
        encode_labels([np.array([[0, 2], [2, 0]])], "sparse", previous=model)


def test_instance_labels_in_sparse_mode_are_refused():
    ids = np.arange(100, dtype=np.uint16).reshape(10, 10)
    with pytest.raises(InputError, match="look like instance labels.*'instances'"):
        encode_labels([ids], "sparse")


def test_instance_targets_separate_touching_objects():
    label = np.zeros((10, 12), np.uint16)
    label[2:8, 1:6] = 1
    label[2:8, 6:11] = 2  # touches object 1

    target = instance_targets(label)

    assert target[5, 5] == 2 and target[5, 6] == 2  # a boundary on each side of the contact
    assert target[5, 3] == 1 and target[5, 8] == 1
    assert target[0, 0] == 0


def test_border_weights_peak_between_touching_objects():
    label = np.zeros((20, 30), np.uint16)
    label[5:15, 2:12] = 1
    label[5:15, 14:24] = 2

    weights = border_weights(label, w0=10, sigma=3)

    assert weights[10, 12] > 6  # in the 2-pixel gap: 1 + 10 * exp(-9 / 18)
    assert weights[10, 28] < 2  # beside one object only
    assert weights[10, 5] == 1  # inside an object


def test_labels_must_be_integers():
    with pytest.raises(InputError, match="whole numbers"):
        encode_labels([np.full((4, 4), 0.5)], "semantic")


def test_rgb_detected_only_on_trailing_small_axis():
    assert channel_axis_of((100, 120, 3)) == 2
    assert channel_axis_of((3, 100, 120)) is None  # a stack of three planes
    assert channel_axis_of((5, 100, 120, 4)) == 3


def test_a_given_channel_axis_must_exist():
    assert channel_axis_of((3, 100, 120), 0) == 0 and channel_axis_of((100, 3, 120), -2) == 1
    assert channel_axis_of((100, 120), None) is None
    assert channel_axis_of((3, 100, 120), "none") is None
    with pytest.raises(InputError, match="give 'auto', None"):
        channel_axis_of((3, 100, 120), "first")
    with pytest.raises(InputError, match="give an axis from -3 to 2"):
        channel_axis_of((3, 100, 120), 3)
    with pytest.raises(InputError, match="a 2-D \\(grey\\) image has no channel axis"):
        channel_axis_of((100, 120), 0)


def test_float_images_spanning_more_than_float32s_range_are_normalised():
    import warnings

    from napari_unet.data import Normalization

    ramp = np.linspace(0, 1, 64 * 64).reshape(1, 64, 64)
    wide = (ramp * 6e38 - 3e38).astype(np.float32)  # finite, but max - min overflows
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on the way
        out = Normalization(0, 100)(wide)
    np.testing.assert_allclose(out, ramp, atol=1e-5)
    offset = (1e6 + 10 * ramp).astype(np.float32)  # a small range far from zero: exact too
    np.testing.assert_allclose(Normalization(0, 100)(offset), ramp, atol=1e-2)


def test_a_few_hot_pixels_do_not_set_the_range():
    from napari_unet.data import Normalization

    rng = np.random.default_rng(0)
    image = (1000 + 400 * rng.random((1, 128, 128))).astype(np.uint16)  # a dim camera
    image[0, :40, :40] = 1400  # bright, saturated nuclei: part of the signal
    stuck = rng.choice(image.size, 50, replace=False)  # 0.3% of the pixels
    normalise = Normalization()
    clean = normalise.stats(image)
    assert clean[1][0] == 1400

    for value in (65535, 30000):  # stuck at the dtype's top, or anywhere far above
        spoilt = image.copy()
        spoilt.flat[stuck] = value
        for kind in (np.uint16, np.float32):
            lows, highs = normalise.stats(spoilt.astype(kind))
            np.testing.assert_allclose((lows[0], highs[0]), (clean[0][0], clean[1][0]), rtol=1e-3)
    common = image.copy()
    common.flat[rng.choice(image.size, 2000, replace=False)] = 65535  # 12%: not a few
    assert normalise.stats(common)[1][0] == 65535
    # blocks at an extreme are part of the image: a saturated nucleus, a black border
    empty = np.stack([image[0], np.full(image.shape[1:], np.nan)]).astype(np.float32)
    assert np.isfinite(normalise.stats(empty)[1]).all()  # a channel of NaN only: no error
    blob = image.copy()
    blob[0, 60:67, 60:67] = 65535  # 49 pixels, 0.3%, all together
    assert normalise.stats(blob)[1][0] == 65535
    border = image.copy()
    border[0, :, :5] = 0  # 4% of the pixels: a border left by a stitched or shifted frame
    assert normalise.stats(border)[0][0] == 0


def test_channel_conversion():
    grey = np.ones((1, 4, 4), np.float32)
    rgba = np.ones((4, 4, 4), np.float32)
    assert convert_channels(grey, 3).shape == (3, 4, 4)
    assert convert_channels(rgba, 3).shape == (3, 4, 4)
    assert convert_channels(rgba, 1).shape == (1, 4, 4)
    with pytest.raises(InputError, match="channels"):
        convert_channels(np.ones((2, 4, 4)), 3)


def test_normalisation_scales_percentiles_and_rejects_nan_images():
    image = np.linspace(0, 1000, 10_000, dtype=np.float32).reshape(1, 100, 100)
    out = Normalization(1, 99)(image)
    assert abs(np.percentile(out, 1)) < 1e-3 and abs(np.percentile(out, 99) - 1) < 1e-3
    with pytest.raises(InputError, match="NaN"):
        Normalization()(np.full((1, 8, 8), np.nan))


def test_patch_sampler_pads_small_images_and_favours_foreground():
    rng = np.random.default_rng(0)
    target = np.zeros((20, 20), np.int64)
    target[10, 10] = 1  # one rare foreground pixel
    sample = Sample(rng.random((1, 20, 20), dtype=np.float32), target)
    sampler = PatchSampler([sample], 32, 2, foreground_sampling=1.0, rng=rng)

    images, targets, _ = sampler.batch(8, augment=True)

    assert images.shape == (8, 1, 32, 32) and targets.shape == (8, 32, 32)
    assert all((t == 1).any() for t in targets)
    assert (targets == IGNORE).any()  # padding is ignored by the loss


def test_border_weights_mark_the_contact_of_touching_objects():
    label = np.zeros((20, 30), np.uint16)
    label[5:15, 2:12] = 1
    label[5:15, 12:22] = 2  # touches object 1 along a column

    weights = border_weights(label, w0=10, sigma=5)

    assert weights[10, 11] > 9 and weights[10, 12] > 9  # the two boundary pixels at the contact
    assert weights[10, 7] == 1  # inside


def test_smallest_object_size_follows_the_scale_of_the_annotations():
    from napari_unet.data import smallest_object_size

    big = np.zeros((200, 200), np.int32)
    for i in range(20):  # twenty 10 x 10 objects
        y, x = divmod(i, 5)
        big[y * 20 : y * 20 + 10, x * 20 : x * 20 + 10] = i + 1
    spots = np.zeros((50, 50), np.int32)
    spots[::6, ::6] = np.arange(1, 82).reshape(9, 9)  # one-pixel spots

    assert smallest_object_size([big]) == 50  # half of 100 pixels
    assert smallest_object_size([spots]) == 2  # never below 2
    assert smallest_object_size([np.zeros((8, 8), np.int32)]) is None


def test_smallest_object_size_accepts_large_sparse_ids():
    from napari_unet.data import smallest_object_size

    label = np.zeros((40, 40), np.uint32)
    label[:10, :10] = 4_000_000_000  # ids such as hashes: no array of that length is made
    label[20:30, 20:30] = 7

    assert smallest_object_size([label]) == 50


def test_semantic_values_beyond_the_class_range_get_a_clear_error():
    from napari_unet.data import InputError, encode_labels

    label = np.zeros((16, 16), np.int64)
    label[2:5, 2:5], label[8:12, 8:12] = 1, 300
    with pytest.raises(InputError, match="Renumber the classes"):
        encode_labels([label], "semantic")
    # a lossy (JPEG) 0/255 mask: the list says where the values end
    lossy = np.r_[0:13, 243:256].astype(np.uint8).reshape(2, 13)  # 0/255 and JPEG's noise
    with pytest.raises(InputError, match=r"values up to 255 \(\[0, 1, .*, 7, \.\.\. 18 more\]\)"):
        encode_labels([lossy], "semantic")


def test_instances_mode_reads_a_class_map_by_its_regions():
    from napari_unet.data import InputError, instance_ids

    label = np.zeros((40, 40), np.uint8)
    for k, (y, x) in enumerate([(2, 2), (2, 20), (20, 2), (20, 20), (31, 31)]):
        label[y : y + 6, x : x + 6] = 1 if k < 3 else 2  # three nuclei of class 1, two of 2
    (ids,), notes = instance_ids([label])
    assert ids.max() == 5 and "class maps" in notes[0]

    real = np.where(label > 0, 0, 0).astype(np.uint8)
    for k, (y, x) in enumerate([(2, 2), (2, 20), (20, 2), (20, 20), (31, 31)]):
        real[y : y + 6, x : x + 6] = k + 1
    real[39, 39] = 1  # an id split by a stray pixel is still an id
    real[8, 8:10] = 0
    real[9, 9], real[8, 10] = 2, 2  # and one with a tail joined at a corner
    real[10, 10] = 2
    (kept,), notes = instance_ids([real])
    assert notes == [] and kept.max() == 5

    with pytest.raises(InputError, match="Image #0 have no background .* value 2 covers 3"):
        instance_ids([label + 1, label + 1])  # 1 = background, 2 and 3 classes (ilastik)
    # a class whose touching nuclei form one large clump beside separate ones
    clumped = label.copy()
    clumped[2:30, 2:30] = 1  # the clump, much larger than the nuclei of class 1
    clumped[34:38, 2:6], clumped[34:38, 10:14] = 1, 1
    (ids,), notes = instance_ids([clumped])
    assert ids.max() == 4 and notes  # the clump, two nuclei of class 1, one of class 2

    # dense ids without background (a crop inside a tissue) are ids
    tissue = np.repeat(np.repeat(np.arange(1, 10).reshape(3, 3), 10, 0), 10, 1)
    (cells,), notes = instance_ids([tissue])
    assert notes == [] and cells.max() == 9


@pytest.mark.parametrize("deform", ["zoom", "elastic"])
def test_geometric_augmentation_moves_image_and_labels_together(deform):
    import torch

    from napari_unet.data import elastic_deform, random_zoom

    size = 96
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    disk = (yy**2 + xx**2 < 20**2).astype(np.int64)  # a disk of radius 20 at the centre
    images = torch.from_numpy(np.stack([disk, disk])[:, None].astype(np.float32))
    targets = torch.from_numpy(np.stack([disk, disk]))
    weights = torch.ones(2, size, size)
    rng = np.random.default_rng(3)
    if deform == "zoom":
        out, labels, w = random_zoom(images, targets, weights, rng, zoom=1.5)
    else:
        out, labels, w = elastic_deform(images, targets, weights, rng)

    assert out.shape == images.shape and labels.shape == targets.shape
    assert set(labels.unique().tolist()) <= {IGNORE, 0, 1}
    for image, label in zip(out[:, 0], labels, strict=True):
        area = int((label == 1).sum())
        if deform == "zoom":  # scaled by at most 1.5 each way: area within 1/2.25 .. 2.25
            assert 1256 / 2.5 < area < 1256 * 2.5
            assert label[size // 2, size // 2] == 1  # scaled and turned about the centre
        assert area != 0
        inside = image[label == 1]
        outside = image[label == 0]
        assert inside.mean() > 0.9 and outside.mean() < 0.1  # the image moved with its labels
    assert torch.allclose(w, torch.ones_like(w))


def test_zoom_turns_patches_by_any_angle():
    import torch

    from napari_unet.data import random_zoom

    bar = np.zeros((64, 64), np.int64)
    bar[30:34, :] = 1  # a horizontal bar through the centre
    targets = torch.from_numpy(np.stack([bar] * 8))
    images = targets[:, None].float()
    _, labels, _ = random_zoom(images, targets, None, np.random.default_rng(0), zoom=1.2)
    columns = [(label == 1).any(dim=0).sum().item() for label in labels]
    rows = [(label == 1).any(dim=1).sum().item() for label in labels]
    # some bars now run off the horizontal: they cover more than 4 rows
    assert max(rows) > 10 and min(columns) > 0


def test_zoom_with_context_fills_the_patch_from_real_surroundings():
    import torch

    from napari_unet.data import PatchSampler, Sample, random_zoom, zoom_context

    rng = np.random.default_rng(1)
    image = rng.random((1, 400, 400)).astype(np.float32)
    target = np.zeros((400, 400), np.int64)  # every pixel annotated
    target[170:230, 170:230] = 1  # patches centred here stay far from the image's edges
    patch, zoom = 64, 1.5
    context = zoom_context(patch, zoom)
    with_context = PatchSampler([Sample(image, target)], patch, 2, 1.0, rng, context)
    without = PatchSampler([Sample(image, target)], patch, 2, 1.0, rng)

    x, y, _ = with_context.batch(8, augment=False)
    assert x.shape == (8, 1, patch + 2 * context, patch + 2 * context)
    x, y, _ = random_zoom(
        torch.from_numpy(x), torch.from_numpy(y), None, rng, zoom, (patch, patch)
    )
    assert x.shape == (8, 1, patch, patch) and y.shape == (8, patch, patch)
    assert not (y == IGNORE).any()  # every pixel of the patch came from the image

    x, y, _ = without.batch(8, augment=False)
    _, y, _ = random_zoom(torch.from_numpy(x), torch.from_numpy(y), None, rng, zoom)
    assert (y == IGNORE).any()  # turned in place, the corners come from outside


def test_zoom_keeps_shapes_on_non_square_windows():
    import torch

    from napari_unet.data import random_zoom

    images = torch.zeros(4, 1, 40, 80)
    images[:, :, 15:25, 30:50] = 1  # a 10 x 20 box at the centre
    targets = (images[:, 0] > 0).long()
    rng = np.random.default_rng(0)
    out, labels, _ = random_zoom(images, targets, None, rng, zoom=1.0001)
    for image, label in zip(out[:, 0], labels, strict=True):
        area = int((label == 1).sum())
        assert 150 < area < 260  # about 200: turned, not sheared or stretched
        assert image[label == 1].mean() > 0.9


def test_zoom_windows_at_an_image_corner_keep_the_chosen_pixel_in_the_patch():
    from napari_unet.data import PatchSampler, Sample, zoom_context

    rng = np.random.default_rng(2)
    image = rng.random((1, 20, 20)).astype(np.float32)  # smaller than the patch
    target = np.zeros((20, 20), np.int64)
    target[0, 0] = 1  # the only object pixel, at a corner: every patch is centred on it
    patch = 32
    context = zoom_context(patch, 1.5)
    sampler = PatchSampler([Sample(image, target)], patch, 2, 1.0, rng, context)

    _, targets, _ = sampler.batch(16, augment=False)
    assert targets.shape == (16, patch + 2 * context, patch + 2 * context)
    crop = targets[:, context : context + patch, context : context + patch]
    assert (crop == 1).sum(axis=(1, 2)).tolist() == [1] * 16


def test_zoom_mirrors_some_windows_so_the_sampler_need_not_turn_them():
    import torch

    from napari_unet.data import augment_sample, random_zoom

    size = 65
    label = np.zeros((size, size), np.int64)
    label[32, 36:56] = 1  # an arm along +x from the centre
    label[36:56, 32] = 2  # and one along +y: their cross product's sign is the handedness
    targets = torch.from_numpy(np.stack([label] * 16))
    images = targets[:, None].float()
    _, out, _ = random_zoom(images, targets, None, np.random.default_rng(0), zoom=1.0001)

    def arm(lab, cls):
        ys, xs = np.nonzero(lab == cls)
        return xs.mean() - 32, ys.mean() - 32

    signs = set()
    for lab in out.numpy():
        (x1, y1), (x2, y2) = arm(lab, 1), arm(lab, 2)
        signs.add(bool(x1 * y2 - y1 * x2 > 0))
    assert signs == {True, False}  # turned by any angle, and mirrored half of the time

    sample = Sample(label[None].astype(np.float32), label)
    kept = augment_sample(sample, np.random.default_rng(1), turn=False)
    np.testing.assert_array_equal(kept.target, label)  # no 90 degree turn or flip


@pytest.mark.parametrize(
    ("dtype", "low", "high"),
    [
        (np.uint8, 0, 256),
        (np.int8, -100, 100),
        (np.uint16, 0, 65536),
        (np.int16, -3000, 3000),
        (np.int32, 0, 2**30),  # a span too wide for a histogram: sorted instead
        (bool, 0, 2),
    ],
)
def test_integer_images_get_the_percentiles_of_sorting_from_their_histogram(dtype, low, high):
    rng = np.random.default_rng(0)
    image = rng.integers(low, high, (2, 97, 131)).astype(dtype)
    image[1] = image[1] // 7  # another distribution in the second channel
    norm = Normalization(1.0, 99.8)

    lows, highs = norm.stats(image)
    by_sorting = norm.stats(image.astype(np.float64))

    np.testing.assert_allclose(lows, by_sorting[0], rtol=1e-6)
    np.testing.assert_allclose(highs, by_sorting[1], rtol=1e-6)
    np.testing.assert_allclose(
        norm.apply(image, lows, highs), norm.apply(image.astype(np.float64), lows, highs)
    )


def test_integer_extremes_single_pixels_and_float32_ties():
    norm = Normalization()
    big = np.array([[[2**64 - 9, 2**64 - 5, 2**64 - 1]]], np.uint64)
    assert np.isfinite(norm.stats(big)[0]).all()  # no overflow near the dtype's limit
    lows, highs = norm.stats(np.array([[[7]]], np.uint16))
    assert lows.tolist() == [7.0] and highs.tolist() == [7.0]
    # percentiles that differ in int32 but not in float32 fall back to the full range
    close = np.full((1, 1, 1000), 2**25, np.int32)
    close[..., :500] += 1
    close[..., 0] += 50_000
    lows, highs = norm.stats(close)
    assert highs[0] - lows[0] >= 50_000


def test_a_flat_or_binary_integer_channel_falls_back_to_its_full_range():
    mask = np.zeros((1, 50, 50), np.uint8)
    mask[0, :2, :2] = 255  # 0.16% of the pixels: both percentiles are 0

    lows, highs = Normalization().stats(mask)
    assert lows.tolist() == [0.0] and highs.tolist() == [255.0]


def test_labels_beyond_a_continued_models_classes_name_their_image():
    from napari_unet.data import InputError, encode_labels

    good, bad = np.zeros((16, 16), np.int64), np.zeros((16, 16), np.int64)
    good[2:6, 2:6], bad[2:6, 2:6] = 1, 3
    _, semantic = encode_labels([good], "semantic")
    with pytest.raises(InputError, match=r"\[3\] \(the first in the labels of Image #1\)"):
        encode_labels([good, bad], "semantic", semantic)
    _, sparse = encode_labels([good + 1], "sparse")
    with pytest.raises(InputError, match=r"\[4\] \(the first in the labels of Image #1\)"):
        encode_labels([good + 1, bad + 1], "sparse", sparse)


def _jpeg(mask: np.ndarray, quality: int) -> np.ndarray:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer))


@pytest.mark.parametrize("quality", [50, 70, 75, 95, 100])
@pytest.mark.parametrize("name", ["fluo_02", "he_12"])
def test_masks_saved_as_jpeg_are_read_back_exactly(name, quality):
    import tifffile

    from napari_unet.data import lossy_mask_values, repair_lossy_masks

    from .conftest import DATA

    mask = np.where(tifffile.imread(DATA / f"{name}_labels.tif") > 0, 255, 0).astype(np.uint8)
    blurred = _jpeg(mask, quality)
    assert not np.array_equal(blurred, mask) and np.unique(blurred).size > 2
    # at quality 70, JPEG brings 0 back as 1 (mostly): read as 0/255 all the same
    assert lossy_mask_values(blurred) == ((1, 255) if quality == 70 else (0, 255))
    (repaired,), notes = repair_lossy_masks([blurred], owners=[3])
    assert np.array_equal(repaired, mask) and repaired.dtype == np.uint8
    assert "Image #3" in notes[0] and "0/255" in notes[0] and "PNG or TIFF" in notes[0]
    if quality != 70:  # (there, objects of 0 come back as solid patches of 1: not read)
        inverted = _jpeg(255 - mask, quality)  # white background, black objects
        assert lossy_mask_values(inverted) == (0, 255)


def test_thin_labelled_lines_are_no_jpeg_speckle():
    """Values a step or two off 0 or 255 count as JPEG's shift only where they fill flat
    areas: traced neurites beside a soma, or 1-pixel strokes on an 'ignore' 255, stay."""
    from skimage.draw import disk, line

    from napari_unet.data import lossy_mask_values

    neuron = np.zeros((256, 256), np.uint8)
    neuron[disk((128, 128), 20)] = 255  # the soma
    for r0, c0, r1, c1, value in [(128, 148, 128, 250, 1), (148, 128, 250, 40, 2),
                                  (104, 136, 96, 146, 3), (152, 120, 160, 110, 3)]:  # fmt: skip
        neuron[line(r0, c0, r1, c1)] = value  # an axon, a dendrite, spines: 1 pixel wide
    assert lossy_mask_values(neuron) is None

    strokes = np.full((256, 256), 255, np.uint8)  # 255: not annotated
    strokes[20:22, 10:246] = 0
    for k, y in enumerate(range(40, 240, 20)):
        strokes[y, 10:246] = 1 + k % 3
    assert lossy_mask_values(strokes) is None


def test_labels_that_are_not_blurred_masks_are_left_as_they_are():
    import tifffile

    from napari_unet.data import lossy_mask_values, repair_lossy_masks

    from .conftest import DATA

    ids = tifffile.imread(DATA / "fluo_02_labels.tif")
    trimap = np.zeros((96, 96), np.uint8)  # background, a boundary class, interior
    trimap[20:80, 20:80] = 255
    trimap[20:80, 20] = trimap[20:80, 79] = 128
    voc = np.zeros((96, 96), np.uint8)  # classes 1 and 2, 255 = not annotated between them
    voc[10:90, 10:50], voc[10:90, 50:90], voc[10:90, 49:51] = 1, 2, 255
    rims = np.where(trimap == 128, 1, trimap).astype(np.uint8)  # 0, 1 = rim, 255 = inside
    exact = np.where(ids > 0, 255, 0).astype(np.uint8)
    for label in (ids, ids.astype(np.uint8), trimap, voc, rims, exact, exact > 0):
        assert lossy_mask_values(label) is None
    # a blurred mask with one value far from its edge: not a lossy mask
    yy, xx = np.mgrid[:128, :128]
    disk = np.where((yy - 64) ** 2 + (xx - 64) ** 2 < 20**2, 255, 0).astype(np.uint8)
    blurred = _jpeg(disk, 75).copy()
    assert lossy_mask_values(blurred) == (0, 255)
    blurred[5, 5] = 128
    assert lossy_mask_values(blurred) is None
    # object ids: a colony of three touching cells (3, 5, 140), a clump of five (130-134)
    from skimage.draw import ellipse

    colony = np.zeros((128, 128), np.uint16)
    for value, (cy, cx) in [(140, (64, 64)), (3, (64, 52)), (5, (64, 76))]:
        colony[ellipse(cy, cx, 5, 6, shape=colony.shape)] = value
    clump = np.zeros((96, 96), np.uint8)
    centres = [(48, 48), (48, 38), (48, 58), (38, 48), (58, 48)]
    for value, (cy, cx) in zip(range(130, 135), centres, strict=True):
        clump[ellipse(cy, cx, 5, 5, shape=clump.shape)] = value
    # classes 1 and 2 inside rings of 255 ("ignore"), small and many
    rings = np.zeros((256, 256), np.uint8)
    rng = np.random.default_rng(1)
    for k in range(30):
        cy, cx = rng.integers(16, 240, 2)
        rings[ellipse(cy, cx, 10, 10, shape=rings.shape)] = 255
        rings[ellipse(cy, cx, 8, 8, shape=rings.shape)] = 1 + k % 2
    for label in (colony, clump, rings, colony.astype(np.uint64)):
        assert lossy_mask_values(label) is None
    kept, notes = repair_lossy_masks([trimap, voc])
    assert kept[0] is trimap and kept[1] is voc and notes == []


def test_grey_pictures_saved_as_colour_are_told_from_colour_ones():
    import tracemalloc

    import zarr

    from napari_unet.data import grey_of, grey_picture

    rng = np.random.default_rng(0)
    grey = (rng.random((300, 200)) * 255).astype(np.uint8)
    rgb = np.stack([grey] * 3, -1)
    assert grey_picture(rgb) and np.array_equal(grey_of(rgb), grey)
    noisy = rgb.astype(np.int16) + rng.integers(-3, 4, rgb.shape)  # a JPEG's colour noise
    noisy = np.clip(noisy, 0, 255).astype(np.uint8)
    assert grey_picture(noisy) and np.abs(grey_of(noisy).astype(int) - grey).max() <= 3
    # classes 0, 1, 2 in the red channel alone, a dim 16-bit picture: colour, not grey
    classes = np.zeros((64, 64, 3), np.uint8)
    classes[10:30, 10:30, 0], classes[40:60, 40:60, 0] = 1, 2
    assert not grey_picture(classes)
    dim = np.stack([grey.astype(np.uint16)] * 3, -1)
    dim[..., 1] += 1
    assert not grey_picture(dim)
    assert grey_picture(np.stack([grey.astype(np.uint16) * 200] * 3, -1))  # equal: grey
    # a lazy stack whose later planes are colour
    stack = np.stack([rgb, rgb, rgb])
    stack[2, ..., 1] = 255 - grey
    lazy = zarr.zeros(stack.shape, chunks=(1, 64, 64, 3), dtype=np.uint8)
    lazy[:] = stack
    assert not grey_picture(lazy) and not grey_picture(stack)
    # a large picture is compared band by band, not copied whole into wider integers
    large = np.stack([np.full((4000, 4000), 7, np.uint8)] * 3, -1)
    tracemalloc.start()
    assert grey_picture(large)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < large.nbytes / 2
