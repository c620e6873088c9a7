import warnings

import numpy as np
import pytest
import torch

from napari_unet import UNet, predict
from napari_unet.prediction import TileDependenceWarning, _tile_dependence_message
from napari_unet.tiling import TileGrid, tile_side, tiled_apply


def identity(batch):
    return batch.copy()


@pytest.mark.parametrize("shape", [(300, 517), (64, 64), (5, 700), (1000, 33)])
@pytest.mark.parametrize("overlap", [0.0, 0.25])
def test_identity_model_reconstructs_input_exactly(shape, overlap):
    rng = np.random.default_rng(0)
    image = rng.random((2, *shape), dtype=np.float32)
    grid = TileGrid.plan(shape, tile_size=128, overlap=overlap, divisor=16)

    out = tiled_apply(image, identity, 2, grid, batch_size=3)

    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-6)


def test_every_overlap_is_at_least_the_requested_one():
    grid = TileGrid.plan((1000, 1000), tile_size=256, overlap=0.25, divisor=16)
    starts = np.array(grid.y.starts)
    assert starts[0] == 0 and starts[-1] == 752  # 1000 - 256 = 744, up to a multiple of 16
    assert (256 - np.diff(starts) >= 64).all()


@pytest.mark.parametrize("length", [513, 520, 696, 1000, 2048, 2049, 5000, 16384])
def test_tiles_shrink_to_fit_the_axis(length):
    tile, overlap, divisor = 512, 64, 16
    grid = TileGrid.plan((length, 40), tile_size=tile, overlap=overlap / tile, divisor=divisor)
    axis = grid.y
    starts = np.array(axis.starts)
    count = len(starts)

    assert axis.tile <= tile and axis.tile % divisor == 0
    assert starts[0] == 0 and (starts % divisor == 0).all()  # one pooling grid for all
    assert length <= starts[-1] + axis.tile < length + divisor  # reflected past the end
    assert (axis.tile - np.diff(starts) >= overlap).all()
    # No fewer tiles of the full size would do, and one divisor less would not cover.
    assert (count - 1) * (tile - overlap) + tile < length + (tile - overlap)
    assert count * (axis.tile - divisor) - (count - 1) * overlap < length


def test_a_2048_pixel_image_takes_tiles_of_464():
    grid = TileGrid.plan((2048, 2048), tile_size=512, overlap=0.125, divisor=16)
    assert grid.tile_shape == (464, 464) and grid.count == 25


def test_the_default_overlap_is_64_pixels_of_any_tile():
    from napari_unet.config import PredictConfig

    assert PredictConfig().overlap_share == 64 / 1024
    assert PredictConfig(tile_size=512).overlap_share == 64 / 512
    assert PredictConfig(tile_size=128).overlap_share == 0.25  # at most a quarter
    assert PredictConfig(tile_size=512, overlap=0.0).overlap_share == 0.0  # as given
    grid = TileGrid.plan((2048, 2048), 1024, PredictConfig().overlap_share, divisor=16)
    assert grid.tile_shape == (736, 736) and grid.count == 9 and grid.ramp == 64
    # a tile side the network's divisor rounds up (1000 -> 1008) keeps 64 pixels too
    tile = tile_side(1000, 16)
    grid = TileGrid.plan((4000, 4000), tile, PredictConfig().overlap_of(tile), divisor=16)
    assert tile == 1008 and grid.ramp == 64


def test_tiled_and_untiled_unet_agree(disk_data):
    torch.manual_seed(0)
    net = UNet(1, 2, depth=3, base_channels=8).eval()
    image = np.asarray(disk_data[0][0], np.float32)
    image = np.tile(image, (4, 4))[:368, :368]  # 368 = 23 * 16: the untiled pass needs no pad

    with torch.no_grad():
        reference = net(torch.from_numpy(image)[None, None]).argmax(1)[0].numpy()
    tiled = predict(net, image, tile_size=128, overlap=0.25, mixed_precision=False)

    assert (tiled == reference).mean() >= 0.999


def test_tiles_pool_on_the_grid_of_the_whole_image():
    """Tiles start at multiples of the network's divisor: away from its edges, a tile
    computes what one pass over the whole image computes there (pooling windows on
    another grid would change its whole area)."""
    torch.manual_seed(0)
    net = UNet(1, 2, depth=2, base_channels=8).eval()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter *= 3  # a network that reacts strongly to where it pools
    image = np.random.default_rng(0).random((701, 701)).astype(np.float32)
    options = {"output": "probabilities", "mixed_precision": False, "device": "cpu"}

    whole = predict(net, image, tile_size=1024, **options)[1]
    tiled = predict(net, image, tile_size=256, overlap=0.25, **options)[1]

    grid = TileGrid.plan(image.shape, 256, 0.25, net.divisor)
    assert all(s % net.divisor == 0 for s in grid.y.starts) and len(grid.y.starts) > 2
    inner = np.zeros(701, bool)  # 48 pixels inside one tile, beyond the others
    starts = grid.y.starts
    for i, start in enumerate(starts):
        lo = max(start + 48, starts[i - 1] + grid.y.tile if i else 0)
        hi = min(start + grid.y.tile - 48, starts[i + 1] if i + 1 < len(starts) else 701)
        inner[lo:hi] = True
    inner = inner[:, None] & inner[None, :]
    assert inner.mean() > 0.1
    np.testing.assert_allclose(tiled[inner], whole[inner], atol=1e-5)


def test_an_image_smaller_than_the_training_patches_is_seen_at_their_size(monkeypatch):
    """Training mirrors its images around to the patch size; prediction mirrors an image
    smaller than the patches around to their size too (a model trained on 100-pixel
    images with patches of 256 marked most of a 112-pixel tile as nuclei)."""
    import napari_unet.prediction as p
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.model import SegmentationModel

    grid = TileGrid.plan((20, 30), tile_size=1024, overlap=0.0625, divisor=16, least=64)
    assert grid.tile_shape == (64, 64) and grid.y.pad_before == 16 and grid.x.pad_before == 16
    image = np.random.default_rng(0).random((2, 20, 30), dtype=np.float32)
    np.testing.assert_array_equal(tiled_apply(image, identity, 2, grid), image)

    seen = []

    def forward(batch):
        seen.append(batch.shape)
        return np.concatenate([batch[:, :1], 1 - batch[:, :1]], axis=1)

    monkeypatch.setattr(p, "_local_forward", lambda *args: forward)
    encoding = LabelEncoding("semantic", ["background", "class 1"], [0, 1], [0, 1], [])
    history = {"runs": [{"config": {"patch_size": 64}}]}
    model = SegmentationModel(UNet(1, 2, depth=4, base_channels=4), encoding, Normalization(),
                              history=history)  # fmt: skip
    assert model.patch_size == 64
    assert predict(model, image[0]).shape == (20, 30) and seen[-1][-2:] == (64, 64)
    assert predict(model.network, image[0]).shape == (20, 30) and seen[-1][-2:] == (32, 32)


@pytest.mark.parametrize("norm", ["instance", "group"])
def test_per_tile_normalisation_warns_only_when_the_image_is_tiled(norm):
    image = np.random.default_rng(0).random((96, 96)).astype(np.float32)
    per_tile = UNet(1, 2, depth=2, base_channels=8, norm=norm).eval()
    batch = UNet(1, 2, depth=2, base_channels=8).eval()

    with pytest.warns(TileDependenceWarning, match="96 x 96 image is predicted in 16 tiles"):
        predict(per_tile, image, tile_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TileDependenceWarning)
        predict(per_tile, image)  # one tile: the statistics are the image's own
        predict(batch, image, tile_size=32)
        predict(per_tile, image, tile_size=32, _warn_tiles=False)


def test_the_tile_warning_says_how_to_predict_whole_or_that_it_cannot():
    small = TileGrid.plan((3000, 2000), 1024, 0.0625, 16)
    huge = TileGrid.plan((9000, 200), 1024, 0.0625, 16)

    assert "tile size of at least 3000" in _tile_dependence_message("instance", 3000, 2000, small)
    message = _tile_dependence_message("group", 9000, 200, huge)
    assert "cannot be predicted in one tile" in message and "--norm batch" in message


def test_small_odd_images_and_stacks_are_padded_and_kept_in_shape():
    net = UNet(1, 3, depth=3, base_channels=4).eval()
    stack = np.random.default_rng(0).random((2, 13, 29)).astype(np.float32)

    labels = predict(net, stack)
    probabilities = predict(net, stack, output="probabilities")

    assert labels.shape == (2, 13, 29)
    assert probabilities.shape == (3, 2, 13, 29)
    np.testing.assert_allclose(probabilities.sum(0), 1, atol=1e-4)


def test_test_time_augmentation_is_rotation_equivariant():
    torch.manual_seed(0)
    net = UNet(1, 2, depth=2, base_channels=4).eval()
    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)

    plain = predict(net, image, output="probabilities", mixed_precision=False)
    tta = predict(net, image, output="probabilities", tta=True, mixed_precision=False)
    turned = predict(
        net, np.rot90(image).copy(), output="probabilities", tta=True, mixed_precision=False
    )

    np.testing.assert_allclose(np.rot90(tta, axes=(1, 2)), turned, atol=1e-5)
    assert np.abs(tta - plain).max() > 1e-4  # the average differs from one pass
