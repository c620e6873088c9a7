"""Reading and writing images (tifffile, zarr) and model files (safetensors).

Large images are read lazily (:class:`TiffArray`, one region at a time) and results
are written band by band (:func:`open_band_writer`) to a TIFF or zarr on disk, so
memory stays bounded whatever the image size. Every output appears under its
final name only when complete.

A model file is a safetensors file: the network weights as tensors and a JSON
document in the header metadata with the architecture, label mode, classes,
normalisation and training history. Loading it never runs code; any other file
(a pickle, a PyTorch checkpoint that carries code) is refused.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from .data import InputError

FORMAT = "napari-unet/1"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
NOT_READ = (".gif", ".webp", ".jp2", ".czi", ".nd2", ".lif", ".lsm", ".ims", ".vsi", ".svs",
            ".ndpi", ".oib", ".oif", ".dv", ".stk", ".mrc", ".dm3", ".dm4")  # fmt: skip
"""Image formats a folder may hold that are not read from it (microscope formats, GIF):
listing a folder says it left them out."""
_LABEL_SUFFIXES = (
    "_labels",
    "_label",
    "_cp_masks",  # cellpose's own output, before "_masks", which it ends with
    "_masks",
    "_mask",
    "_seg",
    "-labels",
    "-mask",
)


class ModelFileError(InputError):
    """A file is not a readable napari-unet model."""


# ---------------------------------------------------------------------------
# images


def read_image(path, *, lazy: bool = False, labels: bool = False):
    """Read one image file.

    TIFF files are memory-mapped when stored uncompressed (so large files are read
    lazily, a tile at a time) and, with ``lazy=True``, opened as a zarr array
    otherwise. ``.zarr`` folders are opened as zarr arrays. Other formats (PNG, JPEG)
    are read with scikit-image; with ``labels=True`` a palette (indexed) PNG gives its
    indices, as annotation tools save label masks. :func:`open_image` reads large TIFFs in
    bounded memory.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"No such file: {path}")
    if _is_zarr(path):
        array = open_image(path)
        return array if lazy else np.asarray(array)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            if lazy:
                try:
                    image = tifffile.memmap(path, mode="r")
                except (ValueError, tifffile.TiffFileError):
                    import zarr

                    store = tifffile.imread(path, aszarr=True)
                    image = zarr.open(store, mode="r")
            else:
                image = tifffile.imread(path)
        else:
            image = _read_picture(path, labels)
    except InputError:
        raise
    except Exception as error:  # every reader has its own exception types
        raise InputError(_unreadable(path, error, "Is it a valid image file?")) from error
    if len(image.shape) < 2 or min(image.shape) == 0:
        raise InputError(f"Cannot read {path}: it holds no 2-D image data (shape {image.shape}).")
    if labels:
        image = _grey_mask(image)
    return image


def _grey_mask(image):
    """A mask saved as a grey RGB(A) picture (black / white, as some tools export masks;
    a JPEG's channels a few values apart: :func:`~napari_unet.data.grey_picture`) as its
    grey values; other arrays as they are."""
    from .data import grey_of, grey_picture

    shape = image.shape
    if len(shape) != 3 or min(shape[:2]) <= 4 or not grey_picture(image):
        return image
    return grey_of(np.asarray(image)[..., :3])


def _read_picture(path: Path, labels: bool = False) -> np.ndarray:
    """PNG, JPEG and the like. Labels in a palette (indexed) PNG, as annotation tools save
    masks, are its indices, not the colours they are shown in."""
    from PIL import Image

    if labels:
        with Image.open(path) as picture:
            if picture.mode == "P":
                return np.asarray(picture)
    from skimage.io import imread

    return imread(path)


def list_images(spec) -> list[Path]:
    """Image files named by a file, a folder, a glob pattern, or a list of those (sorted)."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    files: list[Path] = []
    for item in specs:
        item = str(item)
        path = Path(item)
        if _is_zarr(path) or path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if _is_image(p))
            unread = sorted(
                p.name
                for p in path.iterdir()
                if p.suffix.lower() in NOT_READ and not p.name.startswith(".")
            )
            if unread:
                warnings.warn(
                    f"Left out {len(unread)} file(s) in {path} of a format not read here "
                    f"({', '.join(unread[:3])}{', ...' if len(unread) > 3 else ''}): save "
                    "them as TIFF (in Fiji: File > Save As > Tiff) to use them.",
                    UserWarning,
                    stacklevel=2,
                )
            if not found:
                nested = any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())
                raise InputError(
                    f"The folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}, .zarr)"
                    + (
                        f"; its subfolders are not searched: give '{path}/**/*' (quoted) to "
                        "take the images in them."
                        if nested
                        else "."
                    )
                )
            files += found
        elif any(c in item for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if _is_image(Path(p)))
            # ** also reaches into zarr stores: an array of a group matched too is not
            # an image of its own
            matched = set(found)
            found = [p for p in found if not any(parent in matched for parent in p.parents)]
            if not found:
                raise InputError(f"No files match {item!r}.")
            files += found
        else:
            raise InputError(f"No such file or folder: {item}")
    return files


def _unreadable(path, error: Exception, advice: str) -> str:
    """The message for a file that cannot be read: a compression whose decoder is not
    installed (tifffile's LZW, JPEG 2000, ... come with imagecodecs) says how to get it."""
    if "imagecodecs" in str(error):
        return (
            f"Cannot read {path}: its compression needs the imagecodecs package "
            f"({error}); install it with `pip install imagecodecs`."
        )
    return f"Cannot read {path}: {error}. {advice}"


def _is_zarr(path: Path) -> bool:
    """A ``.zarr`` folder, or any folder that is a zarr array (``group.zarr/0``)."""
    if not path.is_dir():
        return False
    return path.suffix.lower() == ".zarr" or any(
        (path / marker).is_file() for marker in ("zarr.json", ".zarray")
    )


def _full_resolution(group, path: Path) -> str:
    """The first (full-resolution) dataset of an OME-Zarr (NGFF) group's multiscales."""
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    try:
        return str(multiscales[0]["datasets"][0]["path"])
    except (TypeError, KeyError, IndexError):
        arrays = sorted(name for name, _ in group.arrays())
        if len(arrays) == 1:
            return arrays[0]
        raise InputError(
            f"{path} is a zarr group without OME-Zarr multiscales metadata; give the path of "
            f"the array to segment (one of {arrays[:5]})."
        ) from None


def _is_image(path: Path) -> bool:
    if path.name.startswith("."):  # hidden, e.g. the .part files of a result being written
        return False
    return (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES) or _is_zarr(path)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def without_label_files(images: list[Path]) -> list[Path]:
    """``images`` less the label files among them (``NAME_labels`` / ``NAME_mask`` beside an
    image ``NAME``): images and their labels may share a folder."""
    stems = {_stem(p) for p in images}
    return [
        p
        for p in images
        if not any(
            _stem(p).endswith(suffix) and _stem(p)[: -len(suffix)] in stems
            for suffix in _LABEL_SUFFIXES
        )
    ]


def _explicit_files(spec) -> bool:
    """Whether ``spec`` names files one by one (no folder, no pattern)."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    return bool(items) and all(
        Path(item).is_file() and not any(c in str(item) for c in "*?[") for item in items
    )


def _label_of(image: Path, label: Path) -> bool:
    """Whether ``label``'s name makes it ``image``'s label file (``a.tif`` <- ``a.tif``,
    ``a_mask.png``, ...)."""
    stem, own = _stem(label), _stem(image)
    return label.resolve() != image.resolve() and (
        stem == own or any(stem == own + suffix for suffix in _LABEL_SUFFIXES)
    )


def match_labels(images: list[Path], labels_spec, images_spec=None) -> list[Path]:
    """For each image, the label file of the same name (``_labels``/``_mask`` suffixes
    allowed). Where ``images_spec`` and ``labels_spec`` both name files one by one, as many
    of each, they pair in the order given where their names agree with it (images of
    one name in several folders), or where no name pairs any of them (with a note on
    standard error). Images that share a name, or an image with several label files,
    are refused: one of the pairs would be a guess."""
    labels = list_images(labels_spec)
    if len(images) == 1 and len(labels) == 1:
        if images[0].resolve() == labels[0].resolve():
            raise InputError(f"{images[0]} is given as both the image and its labels.")
        return labels
    explicit = (
        images_spec is not None
        and len(labels) == len(images)
        and _explicit_files(images_spec)
        and _explicit_files(labels_spec)
    )
    if explicit and all(_label_of(i, lab) for i, lab in zip(images, labels, strict=True)):
        return labels  # named one by one, in an order their names agree with
    stems: dict[str, list[str]] = {}
    for path in images:
        stems.setdefault(_stem(path), []).append(path.name)
    shared = [names for names in stems.values() if len(names) > 1]
    if shared:
        raise InputError(
            f"The images {' and '.join(shared[0])} share one name, so one label file "
            "would serve both; give one of them (move the other away, or name the files "
            "to use)."
        )
    own = {p.resolve() for p in images}
    candidates: dict[str, list[Path]] = {}
    for path in labels:
        if path.resolve() in own:  # an image beside its labels is not a label file
            continue
        stem = _stem(path)
        candidates.setdefault(stem, []).append(path)
        for suffix in _LABEL_SUFFIXES:
            if stem.endswith(suffix):
                candidates.setdefault(stem[: -len(suffix)], []).append(path)
                break
    listed = {q.resolve() for q in labels}
    same = [p.name for p in images if _stem(p) not in candidates and p.resolve() in listed]
    if same:
        raise InputError(
            f"{len(same)} image(s), e.g. {same[:3]}, would be their own labels: the images and "
            "labels are in one folder and these have no `_labels` / `_mask` file. Give each "
            "image a label file `NAME_labels.tif` or `NAME_mask.tif`, or keep labels in a "
            "folder of their own."
        )
    missing = [p.name for p in images if _stem(p) not in candidates]
    if missing:
        if explicit and len(missing) == len(images):  # no name pairs any: the order does
            pairs = ", ".join(
                f"{i.name} <- {lab.name}" for i, lab in zip(images, labels, strict=True)
            )
            warnings.warn(
                f"The label files do not have their images' names; paired in the order "
                f"given: {pairs[:300]}{'...' if len(pairs) > 300 else ''}",
                UserWarning,
                stacklevel=2,
            )
            return labels
        raise InputError(
            f"No labels found for {len(missing)} image(s), e.g. {missing[:3]}; label files must "
            "have the image's file name (optionally with _labels or _mask), or name the "
            "images and their label files one by one, as many of each, in the same order."
        )
    several = [(p, candidates[_stem(p)]) for p in images if len(candidates[_stem(p)]) > 1]
    if several:
        image, found = several[0]
        raise InputError(
            f"{len(found)} label files could be the labels of {image.name}: "
            f"{', '.join(q.name for q in found[:4])}"
            + (f" (and of {len(several) - 1} more image(s))" if len(several) > 1 else "")
            + "; keep one of them where the labels are read, or name the files to use."
        )
    return [candidates[_stem(p)][0] for p in images]


@contextlib.contextmanager
def atomic_path(path, *, directory: bool = False):
    """Yield a temporary path beside ``path``; move it onto ``path`` only on success.

    With ``directory=True`` the temporary path is an empty folder (for zarr stores);
    an older folder at ``path`` is replaced as a whole.
    """
    path = Path(path)
    tmp = _temporary_beside(path, directory=directory)
    try:
        yield tmp
        _sync(tmp)  # before _give_mode: a read-only mode would keep the file from opening
        _give_mode(tmp, path)
        _replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _sync(path.parent)


def _temporary_beside(path: Path, *, directory: bool) -> Path:
    """A new empty temporary file or folder in the folder of ``path`` (created if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _give_mode(tmp: Path, path: Path) -> None:
    """mkstemp / mkdtemp make files and folders private to their owner; give ``tmp`` the
    mode of the file it replaces, or the one a plain open() or mkdir() would (the umask's)."""
    try:
        if path.is_file() and tmp.is_file():
            shutil.copymode(path, tmp)
        else:
            os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~_umask())
    except OSError:
        pass


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (os.umask can only
    be read by setting it, which would briefly affect files other threads create)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to the disk, so that the rename that
    follows (or went before) cannot leave an empty or half-written file after a power cut.

    A file that cannot be flushed (a full disk, a failing network drive) raises, so that
    the old file stays. Folders are best effort (some systems cannot open or sync them),
    and a folder (a zarr store) syncs its own entries, not the chunk files inside it.
    macOS's fsync leaves the data in the drive's cache.
    """
    folder = path.is_dir()
    try:
        # Windows flushes only handles open for writing
        fd = os.open(path, os.O_RDONLY if folder else os.O_RDWR)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as error:
        if not folder and error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise  # EINVAL / ENOTSUP: a file system that has nothing to flush
    finally:
        os.close(fd)


def _replace(source: Path, target: Path) -> None:
    if source.is_dir() and (target.is_dir() or target.is_file()):
        # os.replace cannot move a folder onto a non-empty one: move the old one aside.
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old / target.name)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


_TIFF_TILE = 256
_TILED_MIN_SIDE = 1024  # images at least this large on both sides are written in tiles
_WRITE_BUFFER_BYTES = 2**25  # tiles tifffile gathers for its compression threads


RESULT_MARK = "napari-unet"
"""The software named in the results napari-unet writes (a TIFF's Software tag, a zarr
array's ``software`` attribute), so that a batch can tell its own earlier results, which it
may replace, from a user's files of the same name."""


def written_by_us(path) -> bool:
    """Whether ``path`` is a result that napari-unet wrote (:data:`RESULT_MARK`)."""
    path = Path(path)
    try:
        if path.is_dir():
            import zarr

            return zarr.open_array(str(path), mode="r").attrs.get("software") == RESULT_MARK
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return tif.pages.first.software == RESULT_MARK
    except Exception:  # not an image of ours, whatever the reader says
        return False


def holds_data(path) -> bool:
    """Whether ``path`` holds something a result must not replace unless napari-unet
    wrote it: a folder, or a file that reads as a TIFF. A file that does not (a result
    cut short by a crash or a full disk, an empty file) holds nothing to lose."""
    path = Path(path)
    if path.is_dir():
        return True
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            tif.pages.first  # noqa: B018 - reads the first page
        return True
    except Exception:
        return False


def write_tiff(path, array, *, metadata: dict | None = None) -> None:
    """Write an array to a TIFF atomically (zlib-compressed, in 256 x 256 tiles when
    both sides are at least 1024 pixels).

    ``array`` may be any array-like with ``shape``, ``dtype`` and slicing (zarr,
    dask, :class:`TiffArray`): it is then read and written one strip of tiles (or one
    page) at a time, so the whole array is never in memory.
    """
    import tifffile

    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        array = np.asarray(array)
    shape, dtype = tuple(array.shape), np.dtype(array.dtype)
    tiled = len(shape) >= 2 and min(shape[-2:]) >= _TILED_MIN_SIDE
    if isinstance(array, np.ndarray):
        data = array
    elif tiled:
        data = _iter_tiles(array, _TIFF_TILE)
    else:
        data = (np.asarray(array[index]) for index in np.ndindex(*shape[:-2]))
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            data,
            shape=shape,
            dtype=dtype,
            compression="zlib",
            tile=(_TIFF_TILE, _TIFF_TILE) if tiled else None,
            metadata={} if metadata is None else metadata,  # {} records the shape
            software=RESULT_MARK,  # what wrote it: see written_by_us
            bigtiff=int(np.prod(shape)) * dtype.itemsize > 2**31,
            buffersize=_WRITE_BUFFER_BYTES,
        )


def _iter_tiles(array, tile: int):
    """Tiles (tile, tile) of every page of ``array`` in TIFF order, zero-padded at the edges."""
    height, width = array.shape[-2:]
    for index in np.ndindex(*array.shape[:-2]):
        for y in range(0, height, tile):
            strip = np.asarray(array[(*index, slice(y, y + tile))])
            for x in range(0, width, tile):
                block = strip[:, x : x + tile]
                if block.shape != (tile, tile):
                    block = np.pad(block, ((0, tile - block.shape[0]), (0, tile - block.shape[1])))
                yield block


class TiffArray:
    """A TIFF image (its first series, full resolution) read lazily, one region at a time.

    Behaves like a read-only numpy array for basic slicing: ``shape``, ``dtype``,
    ``ndim``, ``array[...]`` returns a numpy array of just that region. Uncompressed
    files are memory-mapped for each read only (so pages read never accumulate in the
    process's resident memory); compressed or tiled files are decoded through
    tifffile's zarr interface. Pickles as its path, so a dask graph over it can run on
    the workers of a cluster that see the same file system.
    """

    def __init__(self, path):
        import tifffile

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"No such file: {self.path}")
        try:
            with tifffile.TiffFile(self.path) as tif:
                series = tif.series[0]
                self.shape = tuple(int(s) for s in series.shape)
                self.axes = str(getattr(series, "axes", ""))  # as the file names them
                self.dtype = np.dtype(series.dtype)
                self._offset = series.dataoffset
                self._byteorder = tif.byteorder
        except Exception as error:  # tifffile raises many types for a damaged file
            raise InputError(_unreadable(self.path, error, "Is it a valid TIFF file?")) from error
        self._zarr = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        try:
            return self._read(key)
        except (IndexError, TypeError):
            raise
        except Exception as error:  # decoders raise many types for damaged data
            raise InputError(
                _unreadable(self.path, error, "The file may be damaged or truncated.")
            ) from error

    def _read(self, key) -> np.ndarray:
        if self._offset is not None:
            mapped = np.memmap(
                self.path,
                dtype=self.dtype.newbyteorder(self._byteorder),
                mode="r",
                offset=self._offset,
                shape=self.shape,
            )
            region = np.array(mapped[key], dtype=self.dtype)
            del mapped  # unmaps the file
            return region
        if self._zarr is None:
            import tifffile
            import zarr

            self._zarr = zarr.open(tifffile.imread(self.path, aszarr=True, level=0), mode="r")
        return np.asarray(self._zarr[key])

    def __array__(self, dtype=None, copy=None):
        region = self[...]
        return region if dtype is None else region.astype(dtype, copy=False)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_zarr"] = None
        return state

    def __repr__(self) -> str:
        return f"TiffArray({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


def stack_axes_only(image) -> bool:
    """Whether a file's own metadata (ImageJ, OME) names every axis of ``image`` other
    than Y and X as Z or T, so that none of them holds channels (a 3-plane Z stack is not
    an RGB image, whatever a 3-channel model would read it as)."""
    axes = getattr(image, "axes", "") or ""
    extra = set(axes) - set("YX")
    return len(axes) == getattr(image, "ndim", -1) and len(axes) >= 3 and extra <= set("ZT")


def open_image(path):
    """An image file as an array read lazily where possible: a :class:`TiffArray` for
    TIFF files, a zarr array for ``.zarr`` folders, numpy for other formats."""
    path = Path(path)
    if _is_zarr(path):
        import zarr

        try:
            node = zarr.open(str(path), mode="r")
            if isinstance(node, zarr.Group):  # OME-Zarr: the full-resolution level
                node = node[_full_resolution(node, path)]
            return node
        except InputError:
            raise
        except Exception as error:  # zarr raises many types for a damaged store
            raise InputError(f"Cannot read {path}: {error}. Is it a zarr array?") from error
    if path.suffix.lower() in (".tif", ".tiff"):
        return TiffArray(path)
    return read_image(path)


def output_layout(path) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of the result at ``path`` (a TIFF or a zarr array), or None where
    there is none that opens.

    Results are written under a temporary name and renamed when complete, so an
    existing file that opens is a whole result; its shape and type tell whether it is
    the result wanted (not probabilities for labels, nor another image's).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        if path.suffix.lower() == ".zarr":
            import zarr

            result = zarr.open_array(str(path), mode="r")
        else:
            result = TiffArray(path)
    except Exception:  # anything unreadable is incomplete
        return None
    return tuple(int(n) for n in result.shape), np.dtype(result.dtype)


def _touch(path: Path | None, every: float = 60.0) -> None:
    """Set the modification time of ``path`` to now, at most once per ``every`` seconds."""
    if path is None:
        return
    with contextlib.suppress(OSError):
        if time.time() - path.stat().st_mtime > every:
            os.utime(path)


def _check_intact(store: Path) -> None:
    """Refuse to finish a result from a temporary zarr folder whose metadata is gone:
    something removed it while it was written (a second run with --resume on the same
    output folder), and the chunks missing since would read as 0."""
    if not ((store / ".zarray").is_file() or (store / "zarr.json").is_file()):
        raise OSError(
            f"The temporary result {store} was removed while it was written (another run "
            "with --resume on the same output folder?); segment this file again."
        )


# ---------------------------------------------------------------------------
# streamed results


class BandWriter:
    """Receives a result band by band and keeps it in memory or writes it to disk.

    ``write(prefix, y0, values)`` stores ``values`` at ``result[(*prefix, y0:y0 + h)]``;
    bands of one plane must come top to bottom. ``finish()`` returns the result (an
    array, or the on-disk array opened read-only); ``abort()`` discards it.
    """

    def __init__(self, shape: tuple[int, ...], dtype):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)

    def write(self, prefix: tuple, y0: int, values: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self):
        raise NotImplementedError

    def abort(self) -> None:
        """Discard what was written."""

    def alive(self) -> None:
        """Show that the result is still being written (its temporary files' time)."""


class _ArrayBands(BandWriter):
    """Bands written straight into an array (numpy, memmap, zarr, ...)."""

    def __init__(self, array):
        super().__init__(array.shape, array.dtype)
        self.array = array

    def write(self, prefix, y0, values):
        self.array[(*prefix, slice(y0, y0 + values.shape[-2]))] = values

    def finish(self):
        return self.array


class _AlignedBands(BandWriter):
    """Collects bands into runs of whole chunk rows so each chunk is written once."""

    def __init__(self, array, rows: int):
        super().__init__(array.shape, array.dtype)
        self.array = array
        self.rows = rows
        self._prefix: tuple | None = None
        self._y0 = 0
        self._parts: list[np.ndarray] = []

    def write(self, prefix, y0, values):
        end = self._y0 + sum(p.shape[-2] for p in self._parts)
        if self._parts and (prefix != self._prefix or y0 != end):
            self._flush(everything=True)
        if not self._parts:
            self._prefix, self._y0 = prefix, y0
        self._parts.append(np.array(values, dtype=self.dtype))  # values may be a reused buffer
        self._flush(everything=False)

    def _flush(self, everything: bool) -> None:
        if not self._parts:
            return
        block = np.concatenate(self._parts, axis=-2) if len(self._parts) > 1 else self._parts[0]
        end = self._y0 + block.shape[-2]
        cut = end if everything or end == self.shape[-2] else end // self.rows * self.rows
        if cut <= self._y0:
            self._parts = [block]
            return
        count = cut - self._y0
        self.array[(*self._prefix, slice(self._y0, cut))] = block[..., :count, :]
        rest = block[..., count:, :]
        self._parts = [rest] if rest.shape[-2] else []
        self._y0 = cut

    def finish(self):
        self._flush(everything=True)
        return self.array


_ZARR_CHUNK = 512


def _zarr_chunks(shape: tuple[int, ...], rows: int, cols: int) -> tuple[int, ...]:
    return (*(1 for _ in shape[:-2]), min(rows, shape[-2]), min(cols, shape[-1]))


class _ZarrBands(_AlignedBands):
    """A zarr array on disk (chunks of 512 x 512), renamed into place when finished."""

    def __init__(self, path, shape, dtype):
        import zarr

        self.path = Path(path)
        self._tmp: Path | None = _temporary_beside(self.path, directory=True)
        chunks = _zarr_chunks(shape, _ZARR_CHUNK, _ZARR_CHUNK)
        array = zarr.open_array(
            str(self._tmp), mode="w", shape=shape, chunks=chunks, dtype=dtype, fill_value=0
        )
        array.attrs["software"] = RESULT_MARK  # what wrote it: see written_by_us
        super().__init__(array, chunks[-2])

    def finish(self):
        import zarr

        super().finish()
        _check_intact(self._tmp)
        _give_mode(self._tmp, self.path)
        _replace(self._tmp, self.path)
        self._tmp = None
        return zarr.open_array(str(self.path), mode="r")

    def abort(self):
        if self._tmp is not None:
            _remove(self._tmp)
            self._tmp = None

    def alive(self):
        _touch(self._tmp)


_MEMORY_STAGING_BYTES = 2**26


class _TiffBands(BandWriter):
    """A TIFF written when finished from bands staged in memory (small results) or in
    a temporary zarr beside it (large results, so memory stays bounded)."""

    def __init__(self, path, shape, dtype, metadata: dict | None = None):
        super().__init__(shape, dtype)
        self.path = Path(path)
        self.metadata = metadata
        self._staging_dir: Path | None = None
        if int(np.prod(shape)) * self.dtype.itemsize <= _MEMORY_STAGING_BYTES:
            self._staged: BandWriter = _ArrayBands(np.zeros(shape, dtype))
        else:
            import zarr

            self._staging_dir = _temporary_beside(self.path, directory=True)
            chunks = _zarr_chunks(shape, _TIFF_TILE, shape[-1])
            array = zarr.open_array(
                str(self._staging_dir),
                mode="w",
                shape=shape,
                chunks=chunks,
                dtype=dtype,
                fill_value=0,
            )
            self._staged = _AlignedBands(array, chunks[-2])

    def write(self, prefix, y0, values):
        self._staged.write(prefix, y0, values)

    def finish(self):
        try:
            staged = self._staged.finish()
            if self._staging_dir is not None:
                _check_intact(self._staging_dir)
            write_tiff(self.path, staged, metadata=self.metadata)
        finally:
            self.abort()
        return TiffArray(self.path)

    def abort(self):
        if self._staging_dir is not None:
            _remove(self._staging_dir)
            self._staging_dir = None

    def alive(self):
        _touch(self._staging_dir)


def open_band_writer(out, shape: tuple[int, ...], dtype) -> BandWriter:
    """Where a streamed result goes: ``None`` (a numpy array in memory), a ``.tif``/
    ``.tiff`` path, a ``.zarr`` path (a folder), or an existing array of ``shape`` to
    fill (numpy, zarr, ...)."""
    if out is None:
        return _ArrayBands(np.zeros(shape, dtype))
    if isinstance(out, (str, os.PathLike)):
        path = Path(out)
        suffix = path.suffix.lower()
        if suffix in (".tif", ".tiff"):
            return _TiffBands(path, shape, dtype)
        if suffix == ".zarr":
            return _ZarrBands(path, shape, dtype)
        raise InputError(
            f"Cannot write a result to {path}: give a path ending in .tif, .tiff or .zarr."
        )
    if not hasattr(out, "__setitem__") or tuple(out.shape) != tuple(shape):
        raise InputError(
            f"out must be a .tif/.zarr path or an array of shape {tuple(shape)}; "
            f"got {type(out).__name__} of shape {getattr(out, 'shape', None)}."
        )
    if not _holds(np.dtype(out.dtype), np.dtype(dtype)):
        raise InputError(
            f"out has dtype {np.dtype(out.dtype)}, which cannot hold the result's values "
            f"({np.dtype(dtype)}: ids or classes would wrap around or be rounded); give an "
            f"array of dtype {np.dtype(dtype)}."
        )
    return _ArrayBands(out)


def _holds(have: np.dtype, need: np.dtype) -> bool:
    """Whether an array of dtype ``have`` holds every value of ``need`` (labels: a whole
    number type reaching as high, of either sign; probabilities: a float type)."""
    if need.kind == "f":
        return have.kind == "f"
    if have.kind == "f":  # whole numbers are exact up to 2 ** (mantissa bits + 1)
        return 2.0 ** (np.finfo(have).nmant + 1) >= np.iinfo(need).max
    return have.kind in "iu" and np.iinfo(have).max >= np.iinfo(need).max


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
        "min_object_size": model.min_object_size,
        "boundary_class": model.boundary_class,
        "label_offset": None if model.label_offset is None else list(model.label_offset),
    }
    from safetensors import SafetensorError

    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={"napari_unet": json.dumps(header)})
        except SafetensorError as error:  # its I/O errors (disk full) are not OSErrors
            raise OSError(f"Cannot write {path}: {error}") from error


def is_model_file(path) -> bool:
    """Whether ``path`` is a safetensors file with a napari-unet header (read without its
    weights); False for anything else, a damaged model file included."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return "napari_unet" in (handle.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return False


def load_model(path, *, device: str = "cpu"):
    """Load a model saved by :meth:`SegmentationModel.save`.

    Only safetensors files are read, so loading never executes code from the file;
    a pickle or PyTorch checkpoint is refused with :class:`ModelFileError`.
    """
    from safetensors import SafetensorError, safe_open

    from .data import LabelEncoding, Normalization
    from .model import SegmentationModel, UNet, checked_label_offset

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"No model file at {path}.")
    # The safetensors reader never unpickles, so a file is first read as safetensors; the
    # magic bytes of a pickle or a PyTorch zip only choose the message when that fails (a
    # safetensors header length can begin with the same two bytes as a pickle).
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        try:
            with open(path, "rb") as handle:
                head = handle.read(9)
        except OSError:
            head = b""
        if (
            head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
            or head[:4] == b"PK\x03\x04"
        ):
            raise ModelFileError(
                f"{path} is a pickle / PyTorch checkpoint, which can run code when loaded; it "
                "is refused. napari-unet model files are safetensors files written by "
                "model.save()."
            ) from None
        if head[8:9] == b"{":  # a safetensors file's header length, then its JSON header
            raise ModelFileError(
                f"{path} is a damaged or truncated model file ({error}); copy it again or "
                "choose another model file."
            ) from error
        raise ModelFileError(
            f"{path} is not a napari-unet model file ({error}); choose a file written by "
            "napari-unet train or model.save()."
        ) from error
    try:
        header = json.loads(metadata["napari_unet"])
        if not isinstance(header, dict):
            raise ValueError("its napari_unet header is not a JSON object")
        if header.get("format") != FORMAT:
            raise ModelFileError(f"{path} has unknown format {header.get('format')!r}.")
        network = UNet(**header["network"])
        network.load_state_dict(tensors)
        encoding = LabelEncoding(notes=[], **header["encoding"])
        normalization = Normalization(**header["normalization"])
        boundary_class = header.get("boundary_class")
        if boundary_class is not None and (
            type(boundary_class) is not int
            or not 0 <= boundary_class < network.config.num_classes
            or network.config.num_classes != 2
            or encoding.mode == "instances"
        ):
            raise ValueError(f"boundary_class {boundary_class!r} is not a class of the model")
        label_offset = checked_label_offset(header.get("label_offset"))
        if encoding.mode not in ("semantic", "sparse", "instances"):
            raise ValueError(f"label mode {encoding.mode!r} is not one of napari-unet's")
        if len(encoding.class_values) != network.config.num_classes:
            raise ValueError("its classes do not match the network's outputs")
        if not isinstance(header.get("history") or {}, dict):
            raise ValueError("its training history is not a JSON object")
        min_object_size = header.get("min_object_size")
        if min_object_size is not None and (
            type(min_object_size) is not int or min_object_size < 0
        ):
            raise ValueError(f"min_object_size {min_object_size!r} is not a pixel count")
    except ModelFileError:
        raise
    except RuntimeError as error:  # load_state_dict: weights and header disagree
        raise ModelFileError(
            f"{path} is damaged: its weights do not match the network its header describes; "
            "choose another model file or train again."
        ) from error
    except (KeyError, TypeError, ValueError, AttributeError) as error:
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
        min_object_size=min_object_size,
        boundary_class=boundary_class,
        label_offset=label_offset,
    )
