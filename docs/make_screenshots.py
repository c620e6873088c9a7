"""Take the screenshots of the user guide from a real napari viewer.

Run from the repository root (on a machine without a display, under Xvfb)::

    xvfb-run -a .venv/bin/python docs/make_screenshots.py

It loads the bundled nuclei sample, trains small models with the widgets (a few
minutes on a CPU), and writes the PNG files of docs/images/.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

# Pop-up notifications other than errors would hide part of the image; napari reads this
# when it loads its settings.
os.environ["NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL"] = "error"

import napari  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from napari_unet._sample_data import demo_images  # noqa: E402
from napari_unet._widgets.load import LoadWidget  # noqa: E402
from napari_unet._widgets.segment import SegmentWidget  # noqa: E402
from napari_unet._widgets.train import TrainWidget  # noqa: E402

IMAGES = Path(__file__).parent / "images"
SIZE = (1500, 980)
MINUTES = {"instances": 3.0, "sparse": 1.5}


def wait(condition=lambda: True, seconds: float = 0.5, timeout: float = 900) -> None:
    """Run the event loop until ``condition()`` holds (and at least ``seconds``)."""
    app = QApplication.instance()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or not condition():
        app.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the widget's job did not end in time")


def shoot(viewer, name: str) -> None:
    wait(seconds=1.0)
    path = IMAGES / f"{name}.png"
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}")


def dock(viewer, widget, name: str):
    return viewer.window.add_dock_widget(widget, name=name, area="right")


def train(widget: TrainWidget, mode: str) -> None:
    widget.mode.value = mode
    widget.depth.value = 3
    widget.base_channels.value = 16
    widget.patch_size.value = 128
    widget.batch_size.value = 8
    widget.minutes.value = MINUTES[mode]
    widget.start()
    wait(lambda: not widget.running)


def scribbles(labels: np.ndarray) -> np.ndarray:
    """Strokes a person might paint: background (1) across a few rows, nuclei (2) along
    the middle row of every third nucleus."""
    out = np.zeros(labels.shape, np.uint8)
    for row in range(10, labels.shape[0], 40):
        out[row, 3:-3][labels[row, 3:-3] == 0] = 1
    for index in range(1, int(labels.max()) + 1, 3):
        ys, xs = np.nonzero(labels == index)
        if ys.size:
            middle = ys.min() + (ys.max() - ys.min()) // 2
            out[middle, xs[ys == middle]] = 2
    return np.maximum(out, np.roll(out, 1, axis=0))  # two pixels wide, like a brush


def main() -> None:
    IMAGES.mkdir(exist_ok=True)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))  # a core for the GUI thread
    (image, labels), (other, _) = demo_images()
    viewer = napari.Viewer(title="napari-unet", show=True)
    viewer.window.resize(*SIZE)

    # Train on the dense instance labels of the sample.
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels, name="nuclei labels")
    trainer = TrainWidget(viewer)
    train_dock = dock(viewer, trainer, "Train U-Net")
    train(trainer, "instances")
    viewer.layers["nuclei labels"].visible = False
    shoot(viewer, "train_widget")

    # Save the model, then load it: the card shows what it is.
    folder = Path(tempfile.gettempdir()) / "napari-unet"
    path = trainer.save_model(folder / "nuclei.safetensors")
    loader = LoadWidget(viewer)
    load_dock = dock(viewer, loader, "Load U-Net model")
    train_dock.setVisible(False)
    loader.file.value = path
    loader.load()
    shoot(viewer, "load_widget")

    # Segment a stack: the training image and an image the model has not seen.
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    stack = viewer.add_image(
        np.stack([image, other]), name="nuclei stack", axis_labels=("plane", "y", "x")
    )
    segmenter = SegmentWidget(viewer)
    load_dock.setVisible(False)
    segment_dock = dock(viewer, segmenter, "Segment with U-Net")
    segmenter.image.value = stack
    segmenter.start()
    wait(lambda: not segmenter.running)
    viewer.dims.set_current_step(0, 1)
    shoot(viewer, "segment_widget")

    # Sparse scribbles: a few strokes are enough to train a semantic model.
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    viewer.dims.set_current_step(0, 0)
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(scribbles(labels), name="scribbles")
    segment_dock.setVisible(False)
    train_dock.setVisible(True)
    trainer.reset_choices()
    trainer.labels.value = viewer.layers["scribbles"]
    train(trainer, "sparse")
    viewer.layers["scribbles"].visible = False
    viewer.layers["nuclei preview"].opacity = 0.5
    shoot(viewer, "train_scribbles_result")
    viewer.layers["scribbles"].visible = True
    viewer.layers["nuclei preview"].visible = False
    shoot(viewer, "train_scribbles")
    viewer.close()


if __name__ == "__main__":
    main()
