"""Helpers shared by the viewer tests."""

from __future__ import annotations

import numpy as np

from napari_unet.data import LabelEncoding, Normalization
from napari_unet.model import SegmentationModel, UNet

JOB_TIMEOUT_MS = 60_000


def untrained_model(in_channels: int = 1, num_classes: int = 2) -> SegmentationModel:
    """A semantic model with random weights: enough to check shapes and layers."""
    names = ["background"] + [f"class {i}" for i in range(1, num_classes)]
    values = list(range(num_classes))
    return SegmentationModel(
        UNet(in_channels=in_channels, num_classes=num_classes, depth=2, base_channels=8),
        LabelEncoding("semantic", names, values, values, []),
        Normalization(),
    )


def set_tiny(widget) -> None:
    """Settings for a train widget that train fast on two CPU cores."""
    widget.depth.value = 2
    widget.base_channels.value = 8
    widget.patch_size.value = 64
    widget.batch_size.value = 4
    widget.device.value = "cpu"
    widget.budget.value = "epochs"
    widget.epochs.value = 1


def wait_for(qtbot, widget, timeout: int = JOB_TIMEOUT_MS) -> None:
    """Let the event loop run until the widget's job has ended."""
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def scribbles(labels: np.ndarray) -> np.ndarray:
    """Sparse annotations drawn from dense instance labels: value 1 (background) on a few
    rows of background, value 2 (nuclei) on the middle row of a few nuclei."""
    out = np.zeros(labels.shape, np.uint8)
    background = labels == 0
    for row in range(8, labels.shape[0], 24):
        out[row][background[row]] = 1
    for index in range(1, int(labels.max()) + 1, 3):
        ys, xs = np.nonzero(labels == index)
        if ys.size:
            middle = ys.min() + (ys.max() - ys.min()) // 2
            out[middle, xs[ys == middle]] = 2
    return out
