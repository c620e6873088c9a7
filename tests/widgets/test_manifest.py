"""The npe2 manifest: valid, importable, and its contributions open in a viewer."""

from __future__ import annotations

import subprocess
import sys

from npe2 import PluginManifest

from napari_unet._widgets._models import registry_for
from napari_unet._widgets.load import LoadWidget
from napari_unet._widgets.segment import SegmentWidget
from napari_unet._widgets.train import TrainWidget

from .widget_helpers import untrained_model

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
    # each gets its own proxy of the viewer, but they share one list of models
    train, load, segment = docked.values()
    assert train.registry is load.registry is segment.registry
    assert train.registry is registry_for(viewer)
    model = untrained_model()
    train.registry.add(model, "trained here", "trained")
    entry = train.registry.active
    assert segment.model.value is entry and segment.model.choices == (entry,)
    import gc

    del docked, train, load, segment
    gc.collect()  # the proxies may go; the viewer's models stay
    assert registry_for(viewer).active.model is model


def test_sample_opens_image_and_labels(make_napari_viewer):
    viewer = make_napari_viewer()

    viewer.open_sample("napari-unet", "nuclei")

    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei labels"]
    assert viewer.layers["nuclei labels"].data.max() > 50
    assert viewer.layers["nuclei"].data.shape == (256, 256)
