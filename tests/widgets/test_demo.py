"""`napari-unet demo --gui`: the sample and the three widgets in one viewer."""

from __future__ import annotations

import napari

from napari_unet._widgets import demo


def test_demo_gui_opens_the_sample_with_the_widgets_docked(make_napari_viewer, monkeypatch):
    viewers, runs = [], []
    monkeypatch.setattr(
        napari, "Viewer", lambda **kw: viewers.append(make_napari_viewer()) or viewers[-1]
    )
    monkeypatch.setattr(napari, "run", lambda: runs.append(True))

    demo.run_demo_gui()

    (viewer,) = viewers
    assert runs == [True]
    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei labels"]
    assert {"Train U-Net", "Load U-Net model", "Segment with U-Net"} <= set(
        viewer.window.dock_widgets
    )
    train = viewer.window.dock_widgets["Train U-Net"]
    assert train.labels.value is viewer.layers["nuclei labels"]
    assert train.mode.value == "instances"
