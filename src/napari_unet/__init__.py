"""napari-unet: train and run a 2D U-Net on microscopy images, in napari or headless.

The public API is imported lazily, so ``import napari_unet`` is cheap and never
imports napari or Qt.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "UNet": "model",
    "SegmentationModel": "model",
    "ModelConfig": "config",
    "TrainConfig": "config",
    "PredictConfig": "config",
    "train": "training",
    "iter_train": "training",
    "TrainingNote": "training",
    "predict": "prediction",
    "iter_predict": "prediction",
    "predict_to_file": "prediction",
    "load_model": "io",
    "read_image": "io",
    "open_image": "io",
    "InputError": "data",
    "ModelFileError": "io",
    "evaluate": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
