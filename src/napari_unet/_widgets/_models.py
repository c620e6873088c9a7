"""The models a viewer's widgets share: trained in "Train U-Net", read in "Load U-Net
model", applied in "Segment with U-Net".

One :class:`ModelRegistry` exists per viewer. The most recently trained or loaded
model is the *active* one: the Segment widget selects it and the Train widget can
continue training it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from psygnal import Signal

from ..model import SegmentationModel


@dataclass(eq=False)
class ModelEntry:
    """A model with the name shown in the widgets and where it came from."""

    name: str
    model: SegmentationModel
    source: str  # "trained" or the path of the file it was loaded from
    busy: bool = field(default=False)
    stamp: tuple | None = None  # a loaded file's size and time, and the model's runs, then


class ModelRegistry:
    """The models known to one viewer; emits :attr:`changed` when one is added or
    becomes active."""

    changed = Signal()

    def __init__(self) -> None:
        self._entries: list[ModelEntry] = []
        self._active: ModelEntry | None = None

    @property
    def entries(self) -> list[ModelEntry]:
        return list(self._entries)

    @property
    def active(self) -> ModelEntry | None:
        return self._active

    def add(self, model: SegmentationModel, name: str, source: str) -> ModelEntry:
        """Register ``model`` (or rename it if known) and make it the active model."""
        entry = self.entry_of(model)
        if entry is None:
            entry = ModelEntry(self._unique(name), model, source)
            self._entries.append(entry)
        else:
            entry.source = source
        self._active = entry
        self.changed.emit()
        return entry

    def entry_of(self, model: SegmentationModel) -> ModelEntry | None:
        return next((e for e in self._entries if e.model is model), None)

    def set_busy(self, model: SegmentationModel, busy: bool) -> None:
        """Mark a model as in use by a job, so that no other job runs it meanwhile."""
        entry = self.entry_of(model)
        if entry is not None:
            entry.busy = busy

    def _unique(self, name: str) -> str:
        names = {e.name for e in self._entries}
        if name not in names:
            return name
        number = 2
        while f"{name} ({number})" in names:
            number += 1
        return f"{name} ({number})"


_registries: dict[int, ModelRegistry] = {}


def registry_for(viewer) -> ModelRegistry:
    """The :class:`ModelRegistry` of ``viewer``, created on first use and dropped with it.

    Widgets opened from the Plugins menu each get their own proxy of the viewer (npe2's
    ``PublicOnlyProxy``): the registry belongs to the viewer behind them, so that all of
    them share it and it lives as long as the viewer, not as one widget's proxy."""
    while (inner := getattr(viewer, "__wrapped__", None)) is not None:
        viewer = inner
    key = id(viewer)
    if key not in _registries:
        _registries[key] = ModelRegistry()
        weakref.finalize(viewer, _registries.pop, key, None)
    return _registries[key]
