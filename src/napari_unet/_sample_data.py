"""Bundled sample: real fluorescence nuclei with instance labels (DSB 2018, CC0)."""

from __future__ import annotations

from importlib.resources import files

import numpy as np

_SOURCE = "DSB 2018 / BBBC038v1 (CC0), Caicedo et al. 2019"


def _read(name: str) -> np.ndarray:
    import tifffile

    with files("napari_unet").joinpath("sample_data", f"{name}.tif").open("rb") as handle:
        return tifffile.imread(handle)


def demo_images() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train image, labels), (held-out image, labels): two 256x256 nuclei images."""
    return (
        (_read("nuclei_a"), _read("nuclei_a_labels")),
        (_read("nuclei_b"), _read("nuclei_b_labels")),
    )


def nuclei_sample() -> list[tuple]:
    """napari sample-data provider: the nuclei image and its instance labels."""
    image, labels = _read("nuclei_a"), _read("nuclei_a_labels")
    return [
        (image, {"name": "nuclei", "metadata": {"source": _SOURCE}}, "image"),
        (labels, {"name": "nuclei labels", "metadata": {"source": _SOURCE}}, "labels"),
    ]
