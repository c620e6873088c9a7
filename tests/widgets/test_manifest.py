"""The npe2 manifest: valid, importable, and its contributions open in a viewer."""

from __future__ import annotations

import subprocess
import sys

from npe2 import PluginManifest

from napari_unet._widgets.load import LoadWidget
from napari_unet._widgets.segment import SegmentWidget
from napari_unet._widgets.train import TrainWidget

WIDGETS = {
    "Train U-Net": TrainWidget,
    "Load U-Net model": LoadWidget,
    "Segment with U-Net": SegmentWidget,
}


def test_npe2_validate_passes():
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-unet"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_manifest_declares_widgets_and_sample_that_import():
    manifest = PluginManifest.from_distribution("napari-unet")

    manifest.validate_imports()

    assert [w.display_name for w in manifest.contributions.widgets] == list(WIDGETS)
    assert [s.key for s in manifest.contributions.sample_data] == ["nuclei"]


def test_widgets_dock_from_the_plugins_menu(make_napari_viewer):
    viewer = make_napari_viewer()

    docked = {
        name: viewer.window.add_plugin_dock_widget("napari-unet", name)[1] for name in WIDGETS
    }

    for name, widget in docked.items():
        assert isinstance(widget, WIDGETS[name])


def test_sample_opens_image_and_labels(make_napari_viewer):
    viewer = make_napari_viewer()

    viewer.open_sample("napari-unet", "nuclei")

    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei labels"]
    assert viewer.layers["nuclei labels"].data.max() > 50
    assert viewer.layers["nuclei"].data.shape == (256, 256)
