"""The napari widgets: thin Qt views over :func:`~napari_unet.iter_train` and
:func:`~napari_unet.iter_predict`.

Each widget lives in its own module (``train``, ``load``, ``segment``); the models
they share are kept per viewer by :mod:`._models`, and the work runs in napari
thread workers (:mod:`._workers`) so the viewer never freezes.
"""
