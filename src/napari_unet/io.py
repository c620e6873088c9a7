"""Reading and writing images (tifffile) and model files (safetensors).

A model file is a safetensors file: the network weights as tensors and a JSON
document in the header metadata with the architecture, label mode, classes,
normalisation and training history. Loading it never runs code; any other file
(a pickle, a PyTorch checkpoint that carries code) is refused.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .data import InputError

FORMAT = "napari-unet/1"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
_LABEL_SUFFIXES = ("_labels", "_label", "_masks", "_mask", "_seg", "-labels", "-mask")


class ModelFileError(InputError):
    """A file is not a readable napari-unet model."""


# ---------------------------------------------------------------------------
# images


def read_image(path, *, lazy: bool = False):
    """Read one image file.

    TIFF files are memory-mapped when stored uncompressed (so large files are read
    lazily, a tile at a time) and, with ``lazy=True``, opened as a zarr array
    otherwise. Other formats (PNG, JPEG) are read with scikit-image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"No such file: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            if lazy:
                try:
                    return tifffile.memmap(path, mode="r")
                except (ValueError, tifffile.TiffFileError):
                    import zarr

                    store = tifffile.imread(path, aszarr=True)
                    return zarr.open(store, mode="r")
            return tifffile.imread(path)
        from skimage.io import imread

        return imread(path)
    except InputError:
        raise
    except Exception as error:  # every reader has its own exception types
        raise InputError(f"Cannot read {path}: {error}. Is it a valid image file?") from error


def list_images(spec) -> list[Path]:
    """Image files named by a file, a folder, a glob pattern, or a list of those (sorted)."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    files: list[Path] = []
    for item in specs:
        item = str(item)
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(
                    f"The folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})."
                )
            files += found
        elif path.is_file():
            files.append(path)
        elif any(c in item for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            if not found:
                raise InputError(f"No files match {item!r}.")
            files += found
        else:
            raise InputError(f"No such file or folder: {item}")
    return files


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def match_labels(images: list[Path], labels_spec) -> list[Path]:
    """For each image, the label file of the same name (``_labels``/``_mask`` suffixes allowed)."""
    labels = list_images(labels_spec)
    if len(images) == 1 and len(labels) == 1:
        return labels
    by_name: dict[str, Path] = {}
    for path in labels:
        stem = _stem(path)
        by_name[stem] = path
        for suffix in _LABEL_SUFFIXES:
            if stem.endswith(suffix):
                by_name.setdefault(stem[: -len(suffix)], path)
    missing = [p.name for p in images if _stem(p) not in by_name]
    if missing:
        raise InputError(
            f"No labels found for {len(missing)} image(s), e.g. {missing[:3]}; label files must "
            "have the image's file name (optionally with _labels or _mask)."
        )
    return [by_name[_stem(p)] for p in images]


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; move it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_tiff(path, array, *, metadata: dict | None = None) -> None:
    """Write an array to a TIFF atomically (compressed, tiled when large)."""
    import tifffile

    array = np.asarray(array)
    tile = (256, 256) if min(array.shape[-2:]) >= 1024 else None
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            array,
            compression="zlib",
            tile=tile,
            metadata=metadata,
            bigtiff=array.nbytes > 2**31,
        )


# ---------------------------------------------------------------------------
# model files


def save_model(model, path) -> None:
    """Write ``model`` to ``path`` atomically: a crash leaves any older file intact."""
    from safetensors.torch import save_file

    network = model.network
    tensors = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    header = {
        "format": FORMAT,
        "network": network.config.model_dump(),
        "encoding": {
            "mode": model.encoding.mode,
            "class_names": model.encoding.class_names,
            "class_values": model.encoding.class_values,
            "source_values": model.encoding.source_values,
        },
        "normalization": {"low": model.normalization.low, "high": model.normalization.high},
        "convert_channels": model.convert_channels,
        "history": model.history,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"napari_unet": json.dumps(header)})


def load_model(path, *, device: str = "cpu"):
    """Load a model saved by :meth:`SegmentationModel.save`.

    Only safetensors files are read, so loading never executes code from the file;
    a pickle or PyTorch checkpoint is refused with :class:`ModelFileError`.
    """
    from safetensors import SafetensorsError, safe_open

    from .data import LabelEncoding, Normalization
    from .model import SegmentationModel, UNet

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"No model file at {path}.")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if (
        head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
        or head[:4] == b"PK\x03\x04"
    ):
        raise ModelFileError(
            f"{path} is a pickle / PyTorch checkpoint, which can run code when loaded; it is "
            "refused. napari-unet model files are safetensors files written by model.save()."
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorsError, OSError, ValueError) as error:
        raise ModelFileError(
            f"{path} is not a napari-unet model file ({error}); choose a file written by "
            "napari-unet train or model.save()."
        ) from error
    try:
        header = json.loads(metadata["napari_unet"])
        if header.get("format") != FORMAT:
            raise ModelFileError(f"{path} has unknown format {header.get('format')!r}.")
        network = UNet(**header["network"])
        network.load_state_dict(tensors)
        encoding = LabelEncoding(notes=[], **header["encoding"])
        normalization = Normalization(**header["normalization"])
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(
            f"{path} is a safetensors file but not a valid napari-unet model ({error})."
        ) from error
    network.to(device).eval()
    return SegmentationModel(
        network,
        encoding,
        normalization,
        convert_channels=bool(header.get("convert_channels", False)),
        history=header.get("history"),
    )
