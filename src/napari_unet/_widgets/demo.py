"""`napari-unet demo --gui`: napari with the nuclei sample and the three widgets."""

from __future__ import annotations

from .load import LoadWidget
from .segment import SegmentWidget
from .train import TrainWidget


def open_demo_viewer(viewer=None):
    """Load the nuclei sample into ``viewer`` (a new one if None) and dock the widgets.

    The Train widget is set up for the sample's instance labels with a small model
    and a two-minute budget, so pressing Train is enough to see the whole workflow.
    Returns ``(viewer, {"train": ..., "load": ..., "segment": ...})``.
    """
    import napari

    from .._sample_data import nuclei_sample

    if viewer is None:
        viewer = napari.Viewer(title="napari-unet demo")
    for data, kwargs, kind in nuclei_sample():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widgets = {
        "train": TrainWidget(viewer),
        "load": LoadWidget(viewer),
        "segment": SegmentWidget(viewer),
    }
    train = widgets["train"]
    train.mode.value = "instances"
    train.depth.value = 3
    train.base_channels.value = 16
    train.patch_size.value = 128
    train.minutes.value = 2.0
    viewer.window.add_dock_widget(train, name="Train U-Net", area="right")
    viewer.window.add_dock_widget(widgets["load"], name="Load U-Net model", area="right")
    # a tab beside Load, not a third panel in the column: each keeps room for its fields
    viewer.window.add_dock_widget(
        widgets["segment"], name="Segment with U-Net", area="right", tabify=True
    )
    return viewer, widgets


def run_demo_gui() -> None:
    """Open the demo viewer and run napari until its window is closed."""
    import napari

    open_demo_viewer()
    napari.run()
