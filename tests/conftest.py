from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


def disks(size: int = 96, count: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic fluorescence-like image of bright disks and their instance labels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.uint16)
    yy, xx = np.mgrid[:size, :size]
    for k in range(1, count + 1):
        cy, cx = rng.integers(8, size - 8, 2)
        radius = rng.integers(4, 9)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = k
    image = (labels > 0) * 120.0 + rng.normal(30, 8, labels.shape)
    return image.clip(0, 255).astype(np.uint8), labels


@pytest.fixture
def disk_data():
    pairs = [disks(seed=s) for s in range(3)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@pytest.fixture
def nuclei_paths():
    return {
        "images": [DATA / "fluo_02.tif", DATA / "fluo_25.tif"],
        "labels": [DATA / "fluo_02_labels.tif", DATA / "fluo_25_labels.tif"],
        "rgb": DATA / "he_12.tif",
        "rgb_labels": DATA / "he_12_labels.tif",
    }


TINY = {"depth": 2, "base_channels": 8}
