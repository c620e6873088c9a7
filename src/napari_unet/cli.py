"""The ``napari-unet`` command: train, predict, evaluate, demo.

A thin layer over the Python API: parse arguments, read files, render progress
events with tqdm, write files atomically. Errors a user can fix are printed as
one line and end the command with exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import math
import re
import signal
import sys
import threading
import time
import typing
from pathlib import Path

from .data import InputError


def _progress_bar(total: float, desc: str, unit: str = "%"):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        leave=True,
        mininterval=0.5 if sys.stderr.isatty() else 10,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}{unit} [{elapsed}<{remaining}]{postfix}",
    )


# ---------------------------------------------------------------------------
# train


def _read_pairs(images_spec, labels_spec, *, opened: bool = False):
    """(images, labels, image paths); ``opened``: images as :func:`napari_unet.io.open_image`
    gives them (TIFFs read lazily, with the axes their files name)."""
    from .io import list_images, match_labels, open_image, read_image, without_label_files

    images = without_label_files(list_images(images_spec))
    labels = match_labels(images, labels_spec, images_spec)
    read = open_image if opened else read_image
    return [read(p) for p in images], [read_image(p, labels=True) for p in labels], images


def _named(text: str, paths) -> str:
    """Give each "Image #N" of a message the name of the N-th image file."""
    if not paths:
        return text

    def name(match: re.Match) -> str:
        index = int(match.group(1))
        return f"{match.group(0)} ({paths[index].name})" if index < len(paths) else match.group(0)

    return re.sub(r"Image #(\d+)", name, text)


def run_training(
    images,
    labels,
    config,
    *,
    model=None,
    model_config=None,
    out=None,
    quiet=False,
    reraise=False,
    paths=None,
    channel_axis="auto",
):
    """Train with a progress bar; save the best model to ``out`` (also on Ctrl-C, after
    which ``reraise`` raises KeyboardInterrupt again, so that the command exits 130; and
    on SIGTERM, which is always raised again: exit 143).
    ``paths``: the image files, named in notes and errors about an image."""
    from .training import (
        EpochEnded,
        MeasuringLabelOffset,
        StepEnded,
        TrainingFinished,
        TrainingStarted,
        iter_train,
    )

    events = _naming_errors(
        iter_train(
            images,
            labels,
            config,
            model=model,
            model_config=model_config,
            channel_axis=channel_axis,
        ),
        paths,
    )
    bar = None
    trained = None
    summary = ""
    try:
        for event in events:
            if isinstance(event, TrainingStarted):
                trained = event.model
                for note in event.notes:
                    print(f"note: {_named(note, paths)}", file=sys.stderr)
                if not quiet:
                    print(
                        f"Training on {event.train_planes} plane(s), validating on "
                        f"{event.validation_planes}, device {event.device} ({event.precision}).",
                        file=sys.stderr,
                    )
                    bar = _progress_bar(100, "train")
            elif isinstance(event, StepEnded) and bar is not None:
                bar.set_postfix_str(
                    f"epoch {event.epoch + 1} loss {event.loss:.3f}", refresh=False
                )
                # update() redraws at most every mininterval (10 s in logs, not a terminal)
                bar.update(round(100 * event.progress, 1) - bar.n)
            elif isinstance(event, EpochEnded) and bar is not None and event.score is not None:
                summary = (
                    f"epoch {event.epoch} loss {event.loss:.3f} val dice {event.score:.3f} "
                    f"(best {event.best_score:.3f})"
                )
                bar.set_postfix_str(summary, refresh=False)
            elif isinstance(event, MeasuringLabelOffset) and bar is not None:
                bar.set_postfix_str("measuring the label offset on the validation part")
            elif isinstance(event, TrainingFinished):
                trained = event.model
                if bar is not None and summary:  # the last line shows the last epoch
                    bar.set_postfix_str(summary, refresh=False)
    except KeyboardInterrupt as stop:
        events.close()
        if trained is None:
            raise
        print("\nStopped; keeping the best weights so far.", file=sys.stderr)
        interrupted = stop
    else:
        interrupted = None
    finally:
        if bar is not None:
            bar.close()
    try:
        if out is not None and trained is not None:
            _save_or_rescue(trained, Path(out))
    finally:  # SIGTERM always ends the command; Ctrl-C only where reraise says so
        if interrupted is not None and (reraise or isinstance(interrupted, Terminated)):
            raise interrupted
    return trained


def _naming_errors(events, paths):
    """Pass the events on; an InputError about an image gets the image's file name."""
    try:
        yield from events
    except InputError as error:
        named = _named(str(error), paths)
        if named == str(error):
            raise
        raise InputError(named) from error


def _probe_write(path: Path) -> None:
    """Create and remove a temporary file beside ``path``: OSError where it cannot be
    written, found before the work rather than after it."""
    from .io import _remove, _temporary_beside

    _remove(_temporary_beside(path, directory=False))


def _prepare_report(path: Path, option: str, keys: tuple[str, ...]) -> None:
    """Make the folder of a JSON report and check that the file can be written there,
    before the work rather than after it; an existing file is replaced only where it is
    an earlier report (JSON with ``keys``), not the user's own JSON or anything else."""
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise InputError(f"Cannot write {path}: {blocker} is a file, not a folder; "
                         f"choose another {option}.")  # fmt: skip
    if path.is_file() and path.stat().st_size and not _is_report(path, keys):
        raise InputError(
            f"{option} {path} exists and is not an earlier report of this command (an "
            "image? a model? your own JSON?); the report would replace it. Give a new file "
            "name such as report.json."
        )
    try:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        _probe_write(path)
    except OSError as error:
        raise InputError(
            f"Cannot write {path} ({error.strerror or error}); choose another {option}."
        ) from error


def _is_report(path: Path, keys: tuple[str, ...]) -> bool:
    """Whether the file holds a JSON object with ``keys`` (an earlier report of the
    command, which a new one may replace)."""
    if path.stat().st_size > 256 * 2**20:  # no report of ours is that large
        return False
    try:
        report = json.loads(path.read_bytes())
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False
    return isinstance(report, dict) and all(key in report for key in keys)


SUMMARY_KEYS = ("model", "output", "counts", "files")  # predict's --summary
SCORES_KEYS = ("images", "mean", "notes")  # evaluate's --json


def _check_writable(out: Path) -> None:
    """Fail before training, not after it, when the model file cannot be written."""
    from .io import is_model_file

    if out.is_dir():
        raise InputError(
            f"--out {out} is a folder; give a file name such as {out}/model.safetensors."
        )
    if out.exists() and out.stat().st_size and not is_model_file(out):  # (empty: mktemp)
        raise InputError(
            f"--out {out} exists and is not a napari-unet model file (an image?); training "
            "would replace it. Give a new file name such as model.safetensors, or delete the "
            "file first if it is a damaged model (a model file is replaced once the new model "
            "is saved)."
        )
    try:
        _probe_write(out)
    except OSError as error:
        raise InputError(
            f"Cannot write the model to {out} ({error}); choose another --out."
        ) from error


def _save_or_rescue(model, out: Path) -> None:
    """Save the trained model; if that fails (disk full, permissions), save it in the working
    folder instead, so that a finished training is never lost."""
    try:
        model.save(out)
    except OSError as error:
        rescue = Path.cwd() / f"napari-unet-rescued-{time.strftime('%Y%m%d-%H%M%S')}.safetensors"
        print(f"error: cannot save the model to {out} ({error}).", file=sys.stderr)
        try:
            model.save(rescue)
        except OSError:
            raise InputError(f"Cannot save the model to {out} or {rescue}: {error}") from error
        print(f"Saved the model to {rescue} instead.", file=sys.stderr)
        raise InputError(f"the model was saved to {rescue}, not {out}.") from error
    print(f"Saved model to {out}", file=sys.stderr)


_TRAIN_NUMBERS = {
    "foreground_sampling": "share of patches centred on a labelled object or rare-class pixel",
    "border_weight": "instances: extra weight (w0) of the pixels between touching objects; "
    "0 turns it off",
    "dice_weight": "weight of the Dice term of the loss",
    "ce_weight": "weight of the cross-entropy term of the loss",
    "low_percentile": "new models: images are scaled per channel so that this percentile "
    "becomes 0",
    "high_percentile": "new models: images are scaled per channel so that this percentile "
    "becomes 1",
    "zoom": "also scale patches by a random factor between 1/ZOOM and ZOOM and rotate them "
    "by a random angle (slower steps; 1: off)",
}
"""Training options given as plain numbers on the command line: field -> help."""


def cmd_train(args) -> int:
    from .config import ModelConfig, TrainConfig
    from .io import load_model

    _check_writable(Path(args.out))
    model = load_model(args.resume) if args.resume else None
    mode = args.mode or (model.mode if model is not None else "semantic")
    images, labels, paths = _read_pairs(args.images, args.labels)
    if args.minutes is not None:
        budget = {"minutes": args.minutes}
    else:
        budget = {"epochs": 50 if args.epochs is None else args.epochs}
    config = TrainConfig(
        mode=mode,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        device=args.device,
        seed=args.seed,
        validation_fraction=args.validation_fraction,
        elastic=args.elastic,
        label_offset=args.label_offset,
        **{field: getattr(args, field) for field in _TRAIN_NUMBERS},
        **budget,
    )
    model_config = ModelConfig(
        depth=args.depth, base_channels=args.base_channels, norm=args.norm, dropout=args.dropout
    )
    if model is not None:
        given = [
            option
            for option, changed in [
                ("--depth, --base-channels, --norm, --dropout", model_config != ModelConfig()),
                (
                    "--low-percentile, --high-percentile",
                    (config.low_percentile, config.high_percentile)
                    != (TrainConfig().low_percentile, TrainConfig().high_percentile),
                ),
            ]
            if changed
        ]
        if given:
            print(
                f"Note: {' and '.join(given)} shape new models only; training continues the "
                f"network saved in {args.resume} as it is, with its own intensity scaling.",
                file=sys.stderr,
            )
    trained = run_training(
        images,
        labels,
        config,
        model=model,
        model_config=None if model is not None else model_config,  # noted above
        out=args.out,
        reraise=True,
        paths=paths,
        channel_axis=args.channel_axis,
    )
    score = trained.best_score
    print(
        f"Best validation Dice: {score:.4f}"
        if score is not None
        else "No validation score: no validation part was held out (--validation-fraction 0, "
        "too few annotated pixels for one, or images too small to cut one from), or it held "
        "no annotated foreground; the model keeps its last weights."
    )
    if score is not None and score < LOW_SCORE and trained.mode == "semantic":
        print(
            "Note: the model found next to none of the labelled classes in the validation "
            "part. If 0 in your labels means 'not annotated' (scribbles), train with --mode "
            "sparse; if each object has its own value (object ids), with --mode instances.",
            file=sys.stderr,
        )
    if trained.label_offset is not None:
        dy, dx = trained.label_offset
        print(
            f"The labels sit {dy:+.2f}, {dx:+.2f} pixels (y, x) off where the network draws "
            "them (measured on the validation planes); predictions are moved by that."
        )
    return 0


# ---------------------------------------------------------------------------
# predict


LOW_SCORE = 0.05
"""A semantic model's validation score below this, after its whole run, says that it
learned next to nothing of the labelled classes: most often labels read in the wrong
mode (scribbles or object ids read as classes), which the command line then says."""


def _output_path(source: Path, out_dir: Path, fmt: str = "tif") -> Path:
    from .io import _stem

    stem = _stem(source)
    if source.parent.name.lower().endswith(".zarr") and not source.name.lower().endswith(".zarr"):
        # an array of a zarr group (group.ome.zarr/0): named after the group
        stem = _stem(source.parent) + ("" if source.name == "0" else f"_{source.name}")
        return out_dir / (stem + (".zarr" if fmt == "zarr" else ".tif"))
    if fmt == "zarr":
        return out_dir / (stem + ".zarr")
    name = source.name
    if source.suffix.lower() not in (".tif", ".tiff"):
        name = stem + ".tif"
    return out_dir / name


_CLUSTER_TILED_PIXELS = 64 * 2**20  # larger images fan out tile by tile on a cluster
_CONNECT_SECONDS = 30


def _ignores_case(folder: Path) -> bool:
    """Whether file names in ``folder`` ignore case (as on macOS and Windows by default),
    so that A.tif and a.tif would be written to one file."""
    import os
    import tempfile

    fd, probe = tempfile.mkstemp(prefix=".napari-unet-case-probe-", dir=folder)
    os.close(fd)
    probe = Path(probe)
    try:
        return probe.with_name(probe.name.upper()).exists()
    finally:
        probe.unlink(missing_ok=True)


_STALE_PART_SECONDS = 15 * 60
"""A ``.part`` left beside a result is removed by ``--resume`` once nothing has written to
it for this long: younger ones may be another run's work in progress (several jobs
resuming one batch into one folder)."""


def _untouched_for(path: Path, seconds: float) -> bool:
    """Whether ``path`` (a file, or a folder and everything in it) was last modified more
    than ``seconds`` ago."""
    import os

    try:
        newest = path.stat().st_mtime
        if path.is_dir():
            for folder, _, names in os.walk(path):
                for name in names:
                    newest = max(newest, os.stat(os.path.join(folder, name)).st_mtime)
    except OSError:  # removed meanwhile, or unreadable: leave it
        return False
    return time.time() - newest > seconds


def _finished(model, source: Path, target: Path, options: dict, quiet: bool = False) -> bool:
    """Whether ``target`` holds a complete result of ``source`` as this run would write it:
    of its shape and type (not labels for probabilities, nor another image's result);
    ``quiet``: without the note on a result of another layout."""
    from .io import open_image, output_layout
    from .prediction import result_layout

    found = output_layout(target)
    if found is None:
        return False
    try:
        wanted = result_layout(
            model,
            open_image(source),
            output=options["output"],
            channel_axis=options.get("channel_axis", "auto"),
        )
    except Exception:  # the input cannot be read: its job reports why
        return False
    if found == wanted:
        return True
    if quiet:
        return False
    print(
        f"Note: {target} holds {found[0]} {found[1]}, not the {wanted[0]} {wanted[1]} this "
        f"run makes of {source.name} (another model's result, or probabilities for labels?); "
        "it is written again.",
        file=sys.stderr,
    )
    return False


def _record(source: Path, target: Path, status: str, seconds: float = 0.0, error=None) -> dict:
    return {
        "input": str(source),
        "output": str(target),
        "status": status,
        "error": error,
        "seconds": round(seconds, 3),
    }


def _message(error: BaseException) -> str:
    from pydantic import ValidationError

    from .config import describe_error

    if isinstance(error, ValidationError):
        return describe_error(error)
    text = str(error).strip().splitlines()
    text = text[0] if text else ""
    return text if isinstance(error, InputError) else f"{type(error).__name__}: {text}"


def _predict_one(model, source: Path, target: Path, options: dict, *, lazy=False) -> dict:
    """Segment one file into ``target`` with a progress bar; never raises for bad input."""
    from .io import open_image, stack_axes_only
    from .prediction import TileProgress, iter_predict

    start = time.perf_counter()
    bar = None
    try:
        image = open_image(source)
        if options.get("channel_axis", "auto") == "auto" and stack_axes_only(image):
            options = {**options, "channel_axis": None}  # the file names its axes Z / T
        if lazy:
            image = _as_dask(image, model, options.get("channel_axis", "auto"))
        bar = _progress_bar(100, source.name)
        for event in iter_predict(model, image, out=target, **options):
            if isinstance(event, TileProgress):
                bar.n = round(100 * event.fraction, 1)
                bar.refresh()
    except Exception as error:  # one bad file must not stop the batch
        return _record(source, target, "failed", time.perf_counter() - start, _message(error))
    finally:
        if bar is not None:
            bar.close()
    return _record(source, target, "ok", time.perf_counter() - start)


def _predict_file_task(spec, source: str, target: str, options: dict) -> dict:
    """Runs on a dask worker: segment one file (the model rebuilt from ``spec``)."""
    from .prediction import predict_to_file

    start = time.perf_counter()
    try:
        predict_to_file(spec.build(), source, target, **options)
    except Exception as error:  # reported in the summary, the batch goes on
        return _record(
            Path(source), Path(target), "failed", time.perf_counter() - start, _message(error)
        )
    return _record(Path(source), Path(target), "ok", time.perf_counter() - start)


def _as_dask(image, model, channel_axis="auto"):
    """A lazy dask array over ``image``: one chunk per 1024 x 1024 pixels of each plane."""
    import dask.array as da

    from .prediction import _resolve_layout

    shape = tuple(image.shape)
    axis = _resolve_layout(shape, model.in_channels, channel_axis, model.convert_channels)
    spatial = [a for a in range(len(shape)) if a != axis]
    chunks = [1] * len(shape)
    if axis is not None:
        chunks[axis] = shape[axis]
    for a in spatial[-2:]:
        chunks[a] = min(1024, shape[a])
    return da.from_array(image, chunks=tuple(chunks), asarray=False)


def _connect(address: str):
    try:
        from distributed import Client
    except ImportError as error:
        raise InputError(
            "--scheduler needs dask.distributed; install it with `pip install distributed`."
        ) from error
    try:
        return Client(address, timeout=_CONNECT_SECONDS)
    except (OSError, TimeoutError, ValueError) as error:
        raise InputError(
            f"Cannot reach the dask scheduler at {address!r} ({error}); start one with "
            "`dask scheduler` and workers with `dask worker ADDRESS`, or check the address."
        ) from error


def _run_on_cluster(address: str, model, jobs, options, overall, report) -> list[dict]:
    """Small files run whole on the workers, one task each; large files are segmented
    here with their tiles computed on the workers. Both share the cluster."""
    from distributed import as_completed

    from .io import open_image
    from .prediction import ModelSpec

    records = []
    with _connect(address) as client:
        spec = client.scatter(ModelSpec.from_model(model), broadcast=True)
        futures, large = [], []
        for source, target in jobs:
            try:
                pixels = math.prod(open_image(source).shape)
            except Exception:  # unreadable: let the worker report it like any other failure
                pixels = 0
            if pixels > _CLUSTER_TILED_PIXELS:
                large.append((source, target))
            else:
                futures.append(
                    client.submit(
                        _predict_file_task, spec, str(source), str(target), options, pure=False
                    )
                )
        for source, target in large:
            records.append(report(_predict_one(model, source, target, options, lazy=True)))
            overall.update(1)
        for future in as_completed(futures):
            records.append(report(future.result()))
            overall.update(1)
    return records


def _inputs(specs) -> list[Path]:
    """The image files named by ``specs`` (files, folders, globs), each once however it
    was spelled; label files beside their images in a folder or glob are left out (a
    file named on its own is kept), with a note."""
    from .io import list_images, without_label_files

    files, left_out = [], []
    for spec in specs:
        found = list_images(spec)
        kept = found if Path(spec).is_file() else without_label_files(found)
        files += kept
        chosen = set(kept)
        left_out += [path for path in found if path not in chosen]
    unique: dict[Path, Path] = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    if left_out:
        print(
            f"note: left out {len(left_out)} label file(s) beside their images "
            f"({', '.join(p.name for p in left_out[:3])}{', ...' if len(left_out) > 3 else ''}); "
            "name a file to segment it anyway.",
            file=sys.stderr,
        )
    return list(unique.values())


def _prepare_output(files: list[Path], out_dir: Path, fmt: str, finished=None):
    """Refuse an --output where results would replace inputs (or the zarr group holding
    one), or files in it that napari-unet did not write (``finished(source)``: a result
    that --resume keeps as it is, so it replaces nothing), or that lies inside an input
    zarr store, then create it. Returns how names
    compare there: ``str.casefold`` where the file system ignores case, else ``str``."""

    from .io import holds_data, written_by_us

    def unwritable(error: OSError) -> InputError:
        return InputError(
            f"Cannot write to the --output folder {out_dir} ({error.strerror or error}); "
            "choose another folder."
        )

    try:  # where the results go, names may ignore case (macOS, Windows)
        existing = next(p for p in (out_dir.resolve(), *out_dir.resolve().parents) if p.is_dir())
        fold = str.casefold if _ignores_case(existing) else str
    except OSError as error:
        raise unwritable(error) from error
    sources = {fold(str(source.resolve())) for source in files}
    # a result that would replace an input, or a zarr group holding one (a.zarr/0)
    inside = {fold(str(p)) for source in files for p in source.resolve().parents}
    stores = {fold(str(p)) for p in (out_dir.resolve(), *out_dir.resolve().parents)}
    if any(fold(str(source.resolve())) in stores for source in files if source.is_dir()):
        raise InputError(
            f"--output {out_dir} lies inside an input zarr store; choose a folder outside it."
        )
    clashes = [
        source.name
        for source in files
        if (target := fold(str(_output_path(source, out_dir, fmt).resolve()))) in sources
        or target in inside
    ]
    if clashes:
        raise InputError(
            f"The results would replace input images ({', '.join(clashes[:3])}"
            f"{', ...' if len(clashes) > 3 else ''}): --output is the input folder (or "
            "the folder of an input zarr group). Choose another --output folder."
        )
    # a file of a result's name that napari-unet did not write is the user's (cell.tif
    # beside the cell.png given, or ground truth named as its image in a labels folder):
    # replacing it would lose data
    theirs = [
        target.name
        for source in files
        if (target := _output_path(source, out_dir, fmt)).exists()
        and not written_by_us(target)
        and holds_data(target)
        and not (finished is not None and finished(source))  # --resume keeps it as it is
    ]
    if theirs:
        raise InputError(
            f"The results would replace files in {out_dir} that napari-unet did not write "
            f"({', '.join(theirs[:3])}{', ...' if len(theirs) > 3 else ''}): choose another "
            "--output folder (results written before napari-unet marked its results count "
            "as not its own: move or delete them to write there)."
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise unwritable(error) from error
    return fold


def _unused_options(model, args) -> list[str]:
    """Notes on predict options that will not do what they seem to ask for."""
    from .tiling import tile_side

    notes = []
    if args.min_size is not None:
        closing = args.close_boundaries
        if closing is None:
            closing = getattr(model, "boundary_class", None) is not None
        if getattr(args, "probabilities", False):  # evaluate scores labels
            notes.append("--min-size has no effect with --probabilities (they hold no objects).")
        elif model.mode != "instances" and not closing:
            notes.append(
                "--min-size has no effect here: it removes small objects of instances models, "
                "and small regions of boundary models (membranes, cell walls) whose gaps are "
                f"closed (--close-boundaries); this {model.mode} model's classes are written "
                "as predicted."
            )
    patch = getattr(model, "patch_size", None)
    if patch and tile_side(args.tile_size, model.network.divisor) < patch:
        notes.append(
            f"Tiles of {args.tile_size} pixels (--tile-size) are smaller than the "
            f"{patch}-pixel patches the model trained on: each tile sees less of its "
            f"surroundings than in training, which can change a few labels; use --tile-size "
            f"{patch} or more where memory allows."
        )
    return notes


def cmd_predict(args) -> int:
    from ._device import resolve_device
    from .config import PredictConfig
    from .io import _remove, atomic_path, load_model
    from .prediction import _check_closing

    model = load_model(args.model)
    files = _inputs(args.input)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--output {out_dir} is a file; give a folder for the results.")
    # bad options fail once, here, rather than once per file
    if args.min_size is not None and args.min_size < 0:
        raise InputError(f"--min-size must be 0 or more (pixels), not {args.min_size}.")
    if args.overlap is not None and args.overlap >= 1:
        raise InputError(
            f"--overlap {args.overlap:g} reads as pixels, but it is a share of the tile (0 to "
            f"below 0.5): {args.overlap:g} pixels of a {args.tile_size}-pixel tile is "
            f"{args.overlap / args.tile_size:.4g}."
        )
    PredictConfig(
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        tta=args.tta,
    )
    if not args.scheduler:  # with a scheduler the workers' devices count, not this one's
        resolve_device(args.device)
    _check_closing(model, args.close_boundaries)
    for note in _unused_options(model, args):
        print(f"note: {note}", file=sys.stderr)
    options = {
        "tile_size": args.tile_size,
        "overlap": args.overlap,
        "batch_size": args.batch_size,
        "device": args.device,
        "tta": args.tta,
        "output": "probabilities" if args.probabilities else "labels",
        "min_size": args.min_size,
        "close_boundaries": args.close_boundaries,
        "channel_axis": args.channel_axis,
    }
    from .io import written_by_us

    done: dict[Path, bool] = {}  # --resume: the complete results, skipped (not replaced)

    def finished(source: Path) -> bool:
        if source not in done:
            target = _output_path(source, out_dir, args.format)
            ours = not args.resume or written_by_us(target)
            done[source] = args.resume and _finished(model, source, target, options, not ours)
            if done[source] and not ours:  # kept, but it may be the user's own file
                print(
                    f"Note: {target} has the layout of this run's result but no mark of "
                    "napari-unet (a result of an older version, or a file of yours, such as "
                    "ground truth?); --resume keeps it as it is and the summary counts it "
                    "skipped.",
                    file=sys.stderr,
                )
        return done[source]

    fold = _prepare_output(files, out_dir, args.format, finished)
    summary_path = Path(args.summary) if args.summary else out_dir / "summary.json"
    _prepare_report(summary_path, "--summary", SUMMARY_KEYS)

    def report(record: dict) -> dict:
        if record["status"] == "failed":  # on a line of its own, not inside a progress bar
            from tqdm import tqdm

            tqdm.write(f"error: {record['input']}: {record['error']}", file=sys.stderr)
        return record

    records, jobs, owners = [], [], {}
    for source in files:
        target = _output_path(source, out_dir, args.format)
        key = fold(target.name)
        if key in owners:
            records.append(
                report(
                    _record(
                        source,
                        target,
                        "failed",
                        error=f"{owners[key]} has the same name and is written to {target}; "
                        "rename one of them or run them with different --output folders.",
                    )
                )
            )
        elif finished(source):
            records.append(_record(source, target, "skipped"))
        else:
            if args.resume:  # what an interrupted run left of this result
                for leftover in out_dir.glob(f".{glob.escape(target.name)}.*.part"):
                    if _untouched_for(leftover, _STALE_PART_SECONDS):  # not a live run's
                        _remove(leftover)
            jobs.append((source, target))
        owners.setdefault(key, source)

    overall = _progress_bar(len(files), "all files", unit=" files")
    overall.update(len(records))
    interrupted = None
    try:
        if args.scheduler:
            records += _run_on_cluster(args.scheduler, model, jobs, options, overall, report)
        else:
            for source, target in jobs:
                records.append(report(_predict_one(model, source, target, options)))
                overall.update(1)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (Terminated)
        interrupted = 143 if isinstance(stop, Terminated) else 130
        print("\nStopped; the summary lists the files done so far.", file=sys.stderr)
    finally:
        overall.close()

    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "skipped", "failed")}
    summary = {"model": str(args.model), "output": str(out_dir), "counts": counts}
    order = {str(source): i for i, source in enumerate(files)}
    summary["files"] = sorted(records, key=lambda r: order[r["input"]])
    with atomic_path(summary_path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    print(
        f"Wrote {counts['ok']} result(s) to {out_dir}; {counts['skipped']} skipped, "
        f"{counts['failed']} failed. Summary: {summary_path}",
        file=sys.stderr,
    )
    if interrupted is not None:
        return interrupted
    return 1 if counts["failed"] else 0


# ---------------------------------------------------------------------------
# evaluate


def cmd_evaluate(args) -> int:
    from .io import load_model
    from .metrics import evaluate
    from .prediction import _check_closing

    model = load_model(args.model)
    if args.min_size is not None and args.min_size < 0:
        raise InputError(f"--min-size must be 0 or more (pixels), not {args.min_size}.")
    _check_closing(model, args.close_boundaries)
    for note in _unused_options(model, args):
        print(f"note: {note}", file=sys.stderr)
    if args.json:  # fail before the work, not after it
        _prepare_report(Path(args.json), "--json", SCORES_KEYS)
    # images as predict reads them: lazily, with the axes their files name; a pair that
    # cannot be read is reported and left out, as one that cannot be scored
    from .io import list_images, match_labels, open_image, read_image, without_label_files

    paths = without_label_files(list_images(args.images))
    label_paths = match_labels(paths, args.labels, args.images)
    images, labels, failed = [], [], []
    for i, (path, label_path) in enumerate(zip(paths, label_paths, strict=True)):
        try:
            pair = open_image(path), read_image(label_path, labels=True)
        except InputError as error:
            failed.append((i, _named(f"Image #{i}: {error}", paths)))
            print(f"error: {failed[-1][1]}", file=sys.stderr)
        else:
            images.append(pair[0])
            labels.append(pair[1])
    read = [i for i in range(len(paths)) if i not in dict(failed)]

    def renumbered(text: str) -> str:  # "Image #k" of the pairs read -> of all the pairs
        text = re.sub(
            r"Image #(\d+)",
            lambda m: f"Image #{read[int(m.group(1))]}" if int(m.group(1)) < len(read) else m[0],
            text,
        )
        return _named(text, paths)

    bar = _progress_bar(len(images), "evaluate", unit=" images")

    def advance(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()

    def skip(index: int, error: Exception) -> None:  # one bad pair does not stop the rest
        text = str(error) if isinstance(error, InputError) else f"{type(error).__name__}: {error}"
        if not text.startswith("Image #"):
            text = f"Image #{index}: {text}"
        failed.append((read[index], renumbered(text)))
        bar.write(f"error: {failed[-1][1]}", file=sys.stderr)

    try:
        result = evaluate(
            model,
            images,
            labels,
            device=args.device,
            tile_size=args.tile_size,
            tta=args.tta,
            channel_axis=args.channel_axis,
            min_size=args.min_size,
            close_boundaries=args.close_boundaries,
            on_image=advance,
            on_error=skip,
        )
    finally:
        bar.close()
    scored, errors, entries = iter(result["images"]), dict(failed), []
    for i in range(len(paths)):  # the pairs read, scored or not, and those not read
        entry = next(scored) if i in read else {}
        entries.append({"error": errors[i]} if i in errors else entry)
    result["images"] = entries
    for path, scores in zip(paths, result["images"], strict=True):
        scores["file"] = path.name
    result["notes"] = [renumbered(note) for note in result["notes"]]
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if failed:
        result["failed"] = [text for _, text in sorted(failed)]
        print(
            f"{len(failed)} of {len(paths)} image(s) could not be scored (above); the means "
            "are of the others."
            if len(failed) < len(paths)
            else "No image could be scored.",
            file=sys.stderr,
        )
    print(json.dumps(result["mean"], indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if failed else 0


# ---------------------------------------------------------------------------
# demo


def cmd_demo(args) -> int:
    from ._sample_data import demo_images
    from .config import ModelConfig, TrainConfig
    from .io import is_model_file, write_tiff, written_by_us
    from .metrics import foreground_dice, instance_scores
    from .prediction import predict

    if args.gui:
        from ._widgets.demo import run_demo_gui

        run_demo_gui()
        return 0
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output {out} is a file; give a folder for the demo's results.")
    try:  # before training, not after it
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"Cannot make the --output folder {out} ({error.strerror or error}); choose "
            "another folder."
        ) from error
    labels_path, model_path = out / "demo_labels.tif", out / "demo_model.safetensors"
    theirs = [
        path.name
        for path, ours in ((labels_path, written_by_us), (model_path, is_model_file))
        if path.is_file() and path.stat().st_size and not ours(path)
    ]
    if theirs:
        raise InputError(
            f"--output {out} holds {' and '.join(theirs)}, which this version of the demo "
            "did not write (your own file, or an older version's result); the demo would "
            "replace it. Move or delete it, or choose another --output folder."
        )
    (train_image, train_labels), (test_image, test_labels) = demo_images()
    print(
        f"Demo: training a small U-Net on a {train_image.shape[0]}x{train_image.shape[1]} nuclei "
        f"image (DSB 2018, CC0) for {args.minutes} min, then segmenting a held-out image.",
        file=sys.stderr,
    )
    config = TrainConfig(
        mode="instances",
        minutes=args.minutes,
        patch_size=128,
        batch_size=8,
        device=args.device,
        validation_fraction=0.15,
    )
    model = run_training(
        [train_image], [train_labels], config, model_config=ModelConfig(depth=3, base_channels=16)
    )
    start = time.perf_counter()
    labels = predict(model, test_image, device=args.device)
    seconds = time.perf_counter() - start
    scores = instance_scores(test_labels, labels)
    dice = foreground_dice(labels, test_labels)
    model.save(model_path)
    write_tiff(labels_path, labels)
    print(
        f"Segmented the held-out image in {seconds:.2f} s: {scores['objects_predicted']} nuclei "
        f"found, {scores['objects_true']} annotated.\n"
        f"Score: foreground Dice {dice:.3f}, F1@0.5 {scores['f1@0.5']:.3f}, "
        f"DSB score {scores['dsb_score']:.3f}.\n"
        f"Wrote {labels_path} and {model_path}."
    )
    return 0


# ---------------------------------------------------------------------------


def _channel_axis(text: str):
    """``--channel-axis``: "auto", "none" or an axis number."""
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    if value == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an axis: give auto, none or an axis number such as 0 for "
            "(C, Y, X) images or -1 for (Y, X, C)"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    from .config import OVERLAP_PIXELS, ModelConfig, Norm, PredictConfig, TrainConfig

    train_defaults, predict_defaults = TrainConfig(), PredictConfig()
    model_defaults = ModelConfig()
    parser = argparse.ArgumentParser(
        prog="napari-unet", description="Train and run a 2D U-Net on microscopy images."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def device(p):
        p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, mps")

    def channels(p, auto: str):
        p.add_argument(
            "--channel-axis",
            type=_channel_axis,
            default="auto",
            metavar="AXIS",
            help="the axis of the image files that holds the channels, for every file: auto "
            f"(default: {auto}), none (every axis is spatial: a stack of grey planes), or its "
            "number, e.g. 0 for (C, Y, X) files or 1 for (Z, C, Y, X)",
        )

    found_by_model = (
        "a last axis of the model's channel count, or of 3 or 4 (colour), else a leading "
        "axis of that count; none where the TIFF file's own metadata (ImageJ, OME) names "
        "every other axis Z or T"
    )

    def objects(sub_parser) -> None:
        sub_parser.add_argument(
            "--min-size",
            type=int,
            default=None,
            help="instances mode: drop objects smaller than this many pixels (default: the "
            "size the model learned from its training labels); with boundaries closed, "
            "regions' cores under half of it are not used",
        )
        sub_parser.add_argument(
            "--close-boundaries",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="two-class semantic or sparse models of boundaries (membranes, cell walls) "
            "and regions: complete gaps in the predicted boundaries so that a faint membrane "
            "still parts two cells (default: when the model learned from its labels that they "
            "draw such boundaries; forced on, the class of the higher label value is the "
            "boundary)",
        )

    def tiles(p):
        p.add_argument("--tile-size", type=int, default=predict_defaults.tile_size)
        p.add_argument(
            "--overlap",
            type=float,
            default=predict_defaults.overlap,
            help="overlap of tiles as a share of the tile, not pixels (0 to below 0.5, e.g. "
            f"0.0625 for 64 pixels of a 1024 tile; default: {OVERLAP_PIXELS} pixels, at most a "
            "quarter of the tile)",
        )
        p.add_argument("--batch-size", type=int, default=predict_defaults.batch_size)
        p.add_argument(
            "--tta",
            action="store_true",
            help="average the 8 flips/rotations of each tile (8x slower)",
        )

    t = sub.add_parser("train", help="train a model on images and labels")
    t.add_argument("--images", required=True, nargs="+", help="image file(s), folder or glob")
    t.add_argument(
        "--labels",
        required=True,
        nargs="+",
        help="label file(s) or folder, matched to the images by file name",
    )
    t.add_argument(
        "--mode",
        choices=["semantic", "sparse", "instances"],
        help="how label values are read (default: semantic; with --resume, the model's mode)",
    )
    t.add_argument("--out", required=True, help="model file to write (.safetensors)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="time budget in minutes")
    budget.add_argument("--epochs", type=int, help="number of epochs (default 50)")
    t.add_argument("--depth", type=int, default=model_defaults.depth)
    t.add_argument(
        "--base-channels",
        type=int,
        help="width of the first level (default: 16 on the CPU, 32 on a GPU)",
    )
    t.add_argument(
        "--norm",
        choices=typing.get_args(Norm),
        default=model_defaults.norm,
        help="normalisation after each 3x3 convolution (new models); instance and group "
        "use each tile's own statistics, so tiled predictions depend on the tile size",
    )
    t.add_argument(
        "--dropout",
        type=float,
        default=model_defaults.dropout,
        help="dropout at the end of the contracting path, as in the paper (new models)",
    )
    t.add_argument("--patch-size", type=int, default=train_defaults.patch_size)
    t.add_argument("--batch-size", type=int, default=train_defaults.batch_size)
    t.add_argument("--learning-rate", type=float, default=train_defaults.learning_rate)
    t.add_argument(
        "--validation-fraction",
        type=float,
        default=train_defaults.validation_fraction,
        help="share held out to choose the best weights: the last images (planes), or a strip "
        "of each where that would hold more than twice the share of the labelled pixels; "
        "none where it would hold too few annotated pixels to choose by, or every pixel of a "
        "class (default: %(default)s)",
    )
    t.add_argument(
        "--elastic",
        action="store_true",
        help="also deform patches elastically, as the U-Net paper did (slower steps)",
    )
    t.add_argument(
        "--label-offset",
        action=argparse.BooleanOptionalAction,
        default=train_defaults.label_offset,
        help="after training, measure whether the labels sit a fraction of a pixel off the "
        "image (on the validation planes) and move predictions by it (default: on)",
    )
    for field, text in _TRAIN_NUMBERS.items():
        flag = "--" + field.replace("_", "-")
        t.add_argument(
            flag,
            type=float,
            default=getattr(train_defaults, field),
            help=f"{text} (default: %(default)s)",
        )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", help="continue training this model file")
    channels(t, "a last axis of 3 or 4 is colour, else an axis of at most 8 that the labels lack")
    device(t)
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="segment images with a trained model")
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True, nargs="+", help="image file(s), folder(s) or glob(s)")
    p.add_argument("--output", required=True, help="folder for the results (same file names)")
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="write class probabilities (float32, classes first) instead of labels",
    )
    p.add_argument(
        "--format",
        choices=["tif", "zarr"],
        default="tif",
        help="result files: TIFF (default) or zarr folders; both are written band by band",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip inputs whose result already exists (results appear only when complete)",
    )
    p.add_argument("--summary", help="JSON report of every file (default: OUTPUT/summary.json)")
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="dask.distributed scheduler (e.g. tcp://host:8786) to run the batch on; "
        "workers must see the input and output folders",
    )
    tiles(p)
    objects(p)
    channels(p, found_by_model)
    device(p)
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="score a model against labelled images")
    e.add_argument("--model", required=True)
    e.add_argument("--images", required=True, nargs="+")
    e.add_argument("--labels", required=True, nargs="+")
    e.add_argument("--json", help="also write per-image scores to this JSON file")
    e.add_argument("--tile-size", type=int, default=predict_defaults.tile_size)
    e.add_argument("--tta", action="store_true", help="average the 8 flips/rotations of each tile")
    objects(e)
    channels(e, found_by_model)
    device(e)
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="train on the bundled nuclei sample, segment, score")
    d.add_argument(
        "--minutes", type=float, default=1.0, help="training time budget (default: %(default)s)"
    )
    d.add_argument("--output", default="napari-unet-demo", help="folder for the results")
    d.add_argument("--gui", action="store_true", help="open napari with the sample and widgets")
    device(d)
    d.set_defaults(func=cmd_demo)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a warning as one line of its own, not inside a progress bar and without the
    source line Python shows by default; where it comes from is named only for warnings
    of other libraries."""
    from tqdm import tqdm

    text = f"warning: {message}"
    # no import: it may be loading
    ours = category.__name__ in ("TileDependenceWarning", "GreyPictureWarning")
    if not ours and Path(__file__).parent not in Path(filename).parents:
        text += f" ({category.__name__}, {filename}:{lineno})"
    tqdm.write(text, file=sys.stderr if file is None else file)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's time limit, ``kill``, ``docker stop``), raised where the
    work is so that it stops as after Ctrl-C: partial files removed, the best weights or
    the summary of the files done written."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:  # None: a handler not set from Python (an embedding host), left to it
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _option_names(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """The options of a command by the settings they give (tile_size: --tile-size), so that
    a setting's error names the option a user types."""
    names: dict[str, str] = {}
    for action in parser._subparsers._group_actions:  # the commands
        sub = action.choices.get(command) if isinstance(action.choices, dict) else None
        for option in getattr(sub, "_actions", []):
            long = [o for o in option.option_strings if o.startswith("--")]
            if long:
                names.setdefault(option.dest, long[0])
    return names


def main(argv: list[str] | None = None) -> int:
    import warnings

    from pydantic import ValidationError

    from .config import describe_error

    parser = build_parser()
    args = parser.parse_args(argv)
    options = _option_names(parser, args.command)
    if args.command != "demo" or not getattr(args, "gui", False):
        from ._device import keep_freed_memory

        keep_freed_memory()
    try:
        with warnings.catch_warnings(), _sigterm_as_interrupt():
            warnings.showwarning = _show_warning
            return args.func(args)
    except (InputError, ValidationError, OSError) as error:
        if isinstance(error, ValidationError):
            message = describe_error(error, options)
        elif isinstance(error, InputError):
            message = str(error).splitlines()[0]
        else:  # a file that cannot be read or written
            message = str(error)
        print(f"napari-unet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(f"\nnapari-unet {args.command}: stopped.", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
