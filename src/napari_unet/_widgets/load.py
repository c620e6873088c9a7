"""The "Load U-Net model" widget: read a model file and show its model card."""

from __future__ import annotations

import html
from datetime import datetime
from pathlib import Path

from magicgui.widgets import FileEdit
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

from ..data import InputError
from ..io import load_model
from ..model import SegmentationModel
from ._models import ModelEntry, registry_for


def _local_time(value):
    """An ISO timestamp as local time without seconds; anything else unchanged."""
    try:
        return datetime.fromisoformat(str(value)).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return value


def card_html(entry: ModelEntry) -> str:
    """The model card of ``entry`` as a small HTML table."""
    rows = {"model": entry.name, "from": entry.source, **entry.model.card()}
    rows["trained"] = _local_time(rows.get("trained", "-"))
    cells = "".join(
        f"<tr><td style='padding-right:8px'><b>{html.escape(str(key))}</b></td>"
        f"<td>{html.escape(str(value))}</td></tr>"
        for key, value in rows.items()
    )
    return f"<table>{cells}</table>"


class LoadWidget(QWidget):
    """Load a napari-unet model file (``.safetensors``) and make it the active model.

    The model card of the active model (loaded or just trained) is shown: classes,
    label mode, input channels, the data it was trained on, when, and its validation
    score. The active model is the one "Segment with U-Net" uses and "Train U-Net"
    can continue training.
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.registry = registry_for(napari_viewer)

        self.file = FileEdit(
            mode="r",
            filter="U-Net model (*.safetensors)",
            label="model file",
            tooltip="A model file written by napari-unet (Save model…, or `napari-unet train`).",
        )
        self.load_button = QPushButton("Load")
        self.load_button.setToolTip("Load the chosen file and make it the active model.")
        self.load_button.clicked.connect(lambda: self.load())
        self.card = QLabel()
        self.card.setWordWrap(True)
        self.card.setTextFormat(Qt.TextFormat.RichText)
        self.card.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        layout = QVBoxLayout(self)
        layout.addWidget(self.file.native)
        layout.addWidget(self.load_button)
        layout.addWidget(self.card)
        layout.addStretch(1)

        self.registry.changed.connect(self._show_active)
        self._show_active()

    def load(self, path: str | Path | None = None) -> SegmentationModel | None:
        """Load ``path`` (default: the chosen file); a bad file gives an error notification."""
        path = Path(path) if path is not None else Path(self.file.value)
        try:
            path = path.expanduser()
        except RuntimeError:  # '~user' of no such user, or no home directory
            show_error(f"Cannot find the home directory in '{path}'; give the full path.")
            return None
        if path == Path(".") or path.is_dir():
            show_error("Choose a model file (.safetensors) first.")
            return None
        try:
            stat = path.stat()
        except OSError:
            stat = None
        # the file as it is: a replaced one (saved anew, copied over) has another inode
        # or change time, whatever its size and modification time
        stamp = (
            None
            if stat is None
            else (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        )
        source = str(path.resolve())
        same = (
            next(
                (
                    e
                    for e in self.registry.entries
                    if e.source == source
                    and not e.busy  # being trained on, about to change (or segmenting)
                    and e.stamp == (*stamp, len(e.model.history.get("runs", [])))
                ),
                None,
            )
            if stamp is not None
            else None
        )
        if same is not None:  # this file, unchanged since, and its model not trained since
            self.registry.add(same.model, same.name, same.source)
            show_info(
                f"'{path.name}' is loaded already, as '{same.name}': it is the active model."
            )
            return same.model
        try:
            model = load_model(path)
        except InputError as error:
            show_error(str(error))
            return None
        except OSError as error:
            show_error(f"Cannot read {path}: {error.strerror or error}.")
            return None
        entry = self.registry.add(model, path.stem, source)
        if stamp is not None:
            entry.stamp = (*stamp, len(model.history.get("runs", [])))
        show_info(f"Loaded '{path.name}': it is now the active model.")
        return model

    def _show_active(self, *_) -> None:
        entry = self.registry.active
        if entry is None:
            self.card.setText("No model loaded. Choose a model file and press Load.")
        else:
            self.card.setText(card_html(entry))
