"""Labels that draw boundaries between regions (membranes, cell walls): the network is
recognised in training labels, and prediction closes gaps in predicted boundaries."""

import functools

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet import ModelConfig, TrainConfig, UNet, load_model, predict, train
from napari_unet import prediction as p
from napari_unet.data import LabelEncoding, Normalization, boundary_network
from napari_unet.io import ModelFileError
from napari_unet.model import SegmentationModel

from .conftest import TINY, disks


def cells(shape=(160, 200), count=40, seed=0):
    """Voronoi cells and their membranes: (cell ids, membrane mask 2-3 pixels wide,
    distance of each pixel to the nearest membrane pixel)."""
    rng = np.random.default_rng(seed)
    points = rng.uniform((0, 0), shape, (count, 2))
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    distances = (yy[..., None] - points[:, 0]) ** 2 + (xx[..., None] - points[:, 1]) ** 2
    ids = np.argmin(distances, axis=-1) + 1
    edge = np.zeros(shape, bool)
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    membrane = ndi.binary_dilation(edge)
    return ids, membrane, ndi.distance_transform_edt(~edge)


def central_gap(membrane, distance, half=6):
    """A window around the membrane pixel nearest the image centre."""
    points = np.argwhere(membrane & (distance == 0))
    centre = np.array(membrane.shape) / 2
    y, x = points[np.argmin(((points - centre) ** 2).sum(1))]
    return slice(y - half, y + half + 1), slice(x - half, x + half + 1)


def membrane_probability(distance, gap=None):
    """A boundary probability that falls off smoothly from the membranes; ``gap``: a
    (rows, cols) window where the membrane is faint (below 0.5)."""
    probability = np.exp(-(distance**2) / 4.0)
    if gap is not None:
        probability[gap] *= 0.4
    return probability.astype(np.float32)


def test_membranes_are_recognised_whichever_class_they_are():
    targets = [cells(seed=s)[1].astype(np.int64) for s in range(3)]
    found = boundary_network(targets)
    assert found is not None and found[0] == 1
    ids = cells(seed=0)[0]
    assert 2 <= found[1] <= np.bincount(ids.ravel())[1:].min()
    inverted = boundary_network([1 - t for t in targets])  # 0 = membrane, 1 = cell
    assert inverted is not None and inverted[0] == 0


def test_objects_on_a_background_are_not_boundaries():
    blobs = [(disks(seed=s, count=30)[1] > 0).astype(np.int64) for s in range(3)]
    assert boundary_network(blobs) is None  # nuclei
    assert boundary_network([1 - b for b in blobs]) is None  # and with classes swapped
    membranes = [cells(seed=s)[1].astype(np.int64) for s in range(3)]
    scribbled = [m.copy() for m in membranes]
    for m in scribbled:
        m[:10] = -1  # not painted: the network cannot be judged
    assert boundary_network(scribbled) is None
    three = [m.copy() for m in membranes]
    three[0][:5, :5] = 2
    assert boundary_network(three) is None


def vessels(size=200, branches=40, seed=0):
    """A branching tree of thin vessels, 3 pixels wide, whose branches cross into loops."""
    from skimage.draw import line

    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), bool)
    points = [(size // 2, size // 2)]
    for _ in range(branches):
        y, x = points[rng.integers(len(points))]
        angle, length = rng.uniform(0, 2 * np.pi), rng.integers(20, 60)
        y2 = int(np.clip(y + length * np.sin(angle), 0, size - 1))
        x2 = int(np.clip(x + length * np.cos(angle), 0, size - 1))
        mask[line(y, x, y2, x2)] = True
        points.append((y2, x2))
    return ndi.binary_dilation(mask).astype(np.int64)


def test_vessels_whose_branches_close_loops_are_not_boundaries():
    trees = [vessels(seed=s) for s in range(3)]
    regions = [ndi.label(t == 0)[1] for t in trees]
    assert min(regions) >= 10  # loops part the background, as membranes part cells
    assert boundary_network(trees) is None  # but most of it is one region


def test_lines_close_a_gap_in_a_membrane():
    ids, membrane, distance = cells()
    gap = central_gap(membrane, distance)
    probability = membrane_probability(distance, gap)
    probabilities = np.stack([1 - probability, probability])
    plain = np.argmax(probabilities, axis=0)
    closed = p.close_boundaries(probabilities, boundary=1, min_size=10)
    # the two cells that meet at the gap, each by its deepest pixel
    pair = np.unique(ids[gap][~membrane[gap]])
    assert len(pair) == 2
    deepest = [
        np.unravel_index(np.argmax(np.where(ids == i, distance, -1)), ids.shape) for i in pair
    ]
    regions = ndi.label(plain == 0)[0]
    assert regions[deepest[0]] == regions[deepest[1]]  # the gap merges them
    for connectivity in (1, 2):  # apart again, as 4- and as 8-connected regions
        structure = ndi.generate_binary_structure(2, connectivity)
        regions = ndi.label(closed == 0, structure=structure)[0]
        assert 0 != regions[deepest[0]] != regions[deepest[1]] != 0
    assert ndi.label(closed == 0)[1] > ndi.label(plain == 0)[1]
    added = (closed == 1) & (plain == 0)
    assert added.sum() < 40  # one-pixel lines, not thicker membranes
    assert not (closed == 0)[plain == 1].any()  # nothing predicted as boundary is lost


def test_a_line_only_where_two_cores_share_a_region():
    yy, xx = np.mgrid[:64, :64]
    ridge = (0.3 * np.exp(-((xx - 32) ** 2) / 8.0)).astype(np.float32)  # faint, below 0.5
    lines = p.boundary_lines(ridge, min_size=10)  # cores left and right of it
    assert lines.any() and (lines.sum(axis=1) == 1).all()  # one pixel per row
    assert (np.argwhere(lines)[:, 1] == 32).all()  # on the ridge
    one_core = ridge.copy()
    one_core[:, 33:] = 0.2  # the right side no longer a core
    assert not p.boundary_lines(one_core, min_size=10).any()
    assert not p.boundary_lines(np.full((64, 64), 0.3, np.float32)).any()  # no core


@pytest.mark.parametrize("band, block, halo", [(64, 128, 64), (40, 70, 96)])
def test_closing_in_windows_matches_the_whole_plane(band, block, halo):
    _, _, distance = cells(shape=(300, 420), count=120, seed=3)
    rng = np.random.default_rng(0)
    probability = membrane_probability(distance) + rng.uniform(0, 0.01, distance.shape)
    probabilities = np.stack([1 - probability, probability]).astype(np.float32)
    values = np.array([0, 255])
    whole = values[p.close_boundaries(probabilities, 1, min_size=10)]
    closer = p.BoundaryCloser(300, 420, 1, values, np.uint8, 10, band=band, block=block, halo=halo)
    out = np.full((300, 420), 7, np.uint8)
    y = 0
    for rows in (13, 64, 100, 50, 73):  # bands of any height, in order
        for y0, labels in closer.push(y, probabilities[:, y : y + rows]):
            out[y0 : y0 + len(labels)] = labels
        y += rows
    for y0, labels in closer.finish():
        out[y0 : y0 + len(labels)] = labels
    assert (out != 7).all()
    differ = out != whole
    assert differ.mean() < 0.002, differ.sum()
    assert ndi.label(out == 0)[1] == ndi.label(whole == 0)[1]


def _membrane_model(boundary_class=1):
    network = UNet(in_channels=1, num_classes=2, depth=2, base_channels=4)
    encoding = LabelEncoding(
        mode="semantic",
        class_names=["cell", "membrane"],
        class_values=[0, 1],
        source_values=[0, 1],
        notes=[],
    )
    return SegmentationModel(
        network, encoding, Normalization(0, 100), min_object_size=10,
        boundary_class=boundary_class,
    )  # fmt: skip


@pytest.fixture
def dark_membranes(monkeypatch):
    """An EM-like image (dark membranes, one faint stretch) and a forward pass that
    reads the membrane probability off the image, so that prediction is exact."""
    _, membrane, distance = cells(shape=(180, 260), count=50, seed=1)
    probability = membrane_probability(distance, central_gap(membrane, distance))
    image = ((1 - probability) * 200).astype(np.float32)

    def forward(batch):
        membrane = 1 - np.clip(batch[:, :1], 0, 1)
        return np.concatenate([1 - membrane, membrane], axis=1)

    monkeypatch.setattr(p, "_local_forward", lambda *args: forward)
    monkeypatch.setattr(p, "_forward_for", lambda *args: forward)
    return image


def test_prediction_closes_gaps_as_the_model_learned(dark_membranes, tmp_path, monkeypatch):
    image = dark_membranes
    model = _membrane_model()
    normalized = Normalization(0, 100)(image[None])[0]
    membrane = 1 - np.clip(normalized, 0, 1)
    expected = p.close_boundaries(np.stack([1 - membrane, membrane]), 1, min_size=10)

    closed = predict(model, image)
    assert (closed == expected).all()
    plain = predict(model, image, close_boundaries=False)
    assert (plain == (membrane > 0.5)).all()
    assert ndi.label(plain == 0)[1] < ndi.label(closed == 0)[1]  # the gap closed
    assert (predict(_membrane_model(None), image) == plain).all()  # not learned: plain
    assert (predict(_membrane_model(None), image, close_boundaries=True) == closed).all()
    # tiles, a file written band by band, a lazy dask array: the same lines, also where
    # windows and chunks are smaller than the image
    monkeypatch.setattr(
        p, "BoundaryCloser", functools.partial(p.BoundaryCloser, band=48, block=96, halo=48)
    )
    monkeypatch.setattr(p, "BOUNDARY_HALO", 48)
    monkeypatch.setattr(p, "_CHUNK_TARGET", 64)
    tiled = predict(model, image, tile_size=64)
    assert (tiled != closed).mean() < 0.002
    written = predict(model, image, tile_size=64, out=tmp_path / "closed.tif")
    assert (np.asarray(written) == tiled).all()
    import dask.array as da

    lazy = predict(model, da.from_array(image, chunks=(90, 130)), tile_size=64)
    assert isinstance(lazy, da.Array) and len(lazy.chunks[0]) > 1
    assert (lazy.compute() != closed).mean() < 0.002
    probabilities = predict(model, image, output="probabilities")  # untouched
    assert np.allclose(probabilities[1], membrane, atol=1e-6)


def test_closing_needs_two_classes_and_no_instances(dark_membranes):
    image = dark_membranes
    network = UNet(in_channels=1, num_classes=3, depth=2, base_channels=4)
    with pytest.raises(p.InputError, match="two classes"):
        predict(network, image, close_boundaries=True)
    encoding = LabelEncoding(
        mode="instances",
        class_names=["background", "interior", "boundary"],
        class_values=[0, 1, 2],
        source_values=[0, 1, 2],
        notes=[],
    )
    instances = SegmentationModel(network, encoding, Normalization())
    with pytest.raises(p.InputError, match="instances"):
        predict(instances, image, close_boundaries=True)


def test_training_learns_that_labels_draw_boundaries(tmp_path):
    pairs = [cells(shape=(128, 128), count=25, seed=s) for s in range(3)]
    images = [((~m) * 150 + 40).astype(np.uint8) for _, m, _ in pairs]
    labels = [m.astype(np.uint8) * 255 for _, m, _ in pairs]  # a 0/255 mask
    config = TrainConfig(epochs=1, patch_size=64, batch_size=2, steps_per_epoch=2)
    model = train(images, labels, config, model_config=ModelConfig(**TINY))
    assert model.boundary_class == 1 and model.min_object_size >= 2
    assert "closed" in model.card()["boundaries"]
    model.save(tmp_path / "membranes.safetensors")
    loaded = load_model(tmp_path / "membranes.safetensors")
    assert loaded.boundary_class == 1 and loaded.min_object_size == model.min_object_size

    images, masks = zip(*[disks(seed=s) for s in range(3)], strict=True)
    blobs = train(list(images), [m > 0 for m in masks], config, model_config=ModelConfig(**TINY))
    assert blobs.boundary_class is None


def test_a_model_file_with_a_foreign_boundary_class_is_refused(tmp_path):
    model = _membrane_model()
    model.boundary_class = 5
    model.save(tmp_path / "bad.safetensors")
    with pytest.raises(ModelFileError, match="boundary_class"):
        load_model(tmp_path / "bad.safetensors")
    encoding = LabelEncoding(
        mode="semantic", class_names=["a", "b", "c"], class_values=[0, 1, 2],
        source_values=[0, 1, 2], notes=[],
    )  # fmt: skip
    three = SegmentationModel(
        UNet(in_channels=1, num_classes=3, depth=2, base_channels=4),
        encoding,
        Normalization(),
        boundary_class=1,
    )
    three.save(tmp_path / "three.safetensors")  # closing is for two classes only
    with pytest.raises(ModelFileError, match="boundary_class"):
        load_model(tmp_path / "three.safetensors")


def test_membranes_of_a_tissue_with_empty_space_around_it_are_boundaries():
    yy, xx = np.mgrid[:200, :200]
    inside = (yy - 100) ** 2 + (xx - 100) ** 2 < 60**2  # the tissue covers 28% of the frame
    outline = inside ^ ndi.binary_erosion(inside, iterations=2)
    tissues = [
        ((cells((200, 200), 60, s)[1] & inside) | outline).astype(np.int64) for s in range(3)
    ]
    assert ndi.label(tissues[0] == 0)[1] >= 10
    found = boundary_network(tissues)
    assert found is not None and found[0] == 1
