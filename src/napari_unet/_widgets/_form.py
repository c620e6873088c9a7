"""Form fields built from the pydantic configs, so that the widgets show the same
defaults, bounds and descriptions as the Python API and the command line."""

from __future__ import annotations

import types
import typing

import annotated_types
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, SpinBox, Widget
from pydantic import BaseModel

_LARGE = 10**6


def _unwrap_optional(annotation):
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _bounds(metadata, step: float) -> tuple[float | None, float | None]:
    low = high = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            low = item.ge
        elif isinstance(item, annotated_types.Gt):
            low = item.gt + step
        elif isinstance(item, annotated_types.Le):
            high = item.le
        elif isinstance(item, annotated_types.Lt):
            high = item.lt - step
    return low, high


def config_field(
    config: type[BaseModel],
    name: str,
    *,
    label: str | None = None,
    value=None,
    step: float | None = None,
    choices: typing.Sequence | None = None,
) -> Widget:
    """A magicgui widget for field ``name`` of the pydantic model ``config``.

    The widget's default, bounds and tooltip come from the field; ``value`` overrides
    the default (for fields whose default is None, such as a time budget), ``step``
    sets the increment of numbers and ``choices`` those of a text field.
    """
    field = config.model_fields[name]
    annotation = _unwrap_optional(field.annotation)
    default = field.default if value is None else value
    options = {
        "name": name,
        "label": label or name.replace("_", " "),
        "tooltip": field.description,
    }
    if typing.get_origin(annotation) is typing.Literal:
        return ComboBox(choices=typing.get_args(annotation), value=default, **options)
    if choices is not None:
        return ComboBox(choices=list(choices), value=default, **options)
    if annotation is bool:
        return CheckBox(value=bool(default), **options)
    if annotation is int:
        low, high = _bounds(field.metadata, 1)
        return SpinBox(
            value=default,
            min=0 if low is None else int(low),
            max=_LARGE if high is None else int(high),
            step=int(step or 1),
            **options,
        )
    if annotation is float:
        step = step or 0.01
        low, high = _bounds(field.metadata, step)
        return FloatSpinBox(
            value=default,
            min=0.0 if low is None else low,
            max=float(_LARGE) if high is None else high,
            step=step,
            **options,
        )
    raise TypeError(f"No form widget for {config.__name__}.{name} ({field.annotation}).")


def device_choices() -> list[str]:
    """Devices this computer offers: "auto", "cpu" and any CUDA GPUs or Apple MPS."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
        if torch.cuda.device_count() > 1:
            devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


STATUS_LINES = 6
"""A widget's status message shows at most this many lines and scrolls beyond them."""


def status_area(label):
    """``label`` (a status message, word-wrapped) in a box of at most
    :data:`STATUS_LINES` lines that scrolls, so that a long message does not take the
    panel's height from its fields."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFrame, QScrollArea

    label.setWordWrap(True)
    label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
    area = QScrollArea()
    area.setWidget(label)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    line = label.fontMetrics().lineSpacing()
    area.setMinimumHeight(line + 4)
    area.setMaximumHeight(STATUS_LINES * line + 4)
    return area
