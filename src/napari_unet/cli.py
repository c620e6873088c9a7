"""The ``napari-unet`` command: train, predict, evaluate, demo.

A thin layer over the Python API: parse arguments, read files, render progress
events with tqdm, write files atomically. Errors a user can fix are printed as
one line and end the command with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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


def _read_pairs(images_spec, labels_spec):
    from .io import list_images, match_labels, read_image

    images = list_images(images_spec)
    labels = match_labels(images, labels_spec)
    return [read_image(p) for p in images], [read_image(p) for p in labels], images


def run_training(images, labels, config, *, model=None, model_config=None, out=None, quiet=False):
    """Train with a progress bar; save the best model to ``out`` (also on Ctrl-C)."""
    from .training import EpochEnded, StepEnded, TrainingFinished, TrainingStarted, iter_train

    events = iter_train(images, labels, config, model=model, model_config=model_config)
    bar = None
    trained = None
    try:
        for event in events:
            if isinstance(event, TrainingStarted):
                trained = event.model
                for note in event.notes:
                    print(f"note: {note}", file=sys.stderr)
                if not quiet:
                    print(
                        f"Training on {event.train_planes} plane(s), validating on "
                        f"{event.validation_planes}, device {event.device} ({event.precision}).",
                        file=sys.stderr,
                    )
                    bar = _progress_bar(100, "train")
            elif isinstance(event, StepEnded) and bar is not None:
                bar.n = round(100 * event.progress, 1)
                bar.set_postfix_str(
                    f"epoch {event.epoch + 1} loss {event.loss:.3f}", refresh=False
                )
                bar.refresh()
            elif isinstance(event, EpochEnded) and bar is not None and event.score is not None:
                bar.set_postfix_str(
                    f"epoch {event.epoch} loss {event.loss:.3f} val dice {event.score:.3f} "
                    f"(best {event.best_score:.3f})"
                )
            elif isinstance(event, TrainingFinished):
                trained = event.model
    except KeyboardInterrupt:
        events.close()
        print("\nStopped; keeping the best weights so far.", file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
    if out is not None and trained is not None:
        trained.save(out)
        print(f"Saved model to {out}", file=sys.stderr)
    return trained


def cmd_train(args) -> int:
    from .config import ModelConfig, TrainConfig
    from .io import load_model

    images, labels, _ = _read_pairs(args.images, args.labels)
    budget = {"minutes": args.minutes} if args.minutes else {"epochs": args.epochs or 50}
    config = TrainConfig(
        mode=args.mode,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        device=args.device,
        seed=args.seed,
        validation_fraction=args.validation_fraction,
        **budget,
    )
    model = load_model(args.resume) if args.resume else None
    model_config = ModelConfig(depth=args.depth, base_channels=args.base_channels)
    trained = run_training(
        images, labels, config, model=model, model_config=model_config, out=args.out
    )
    score = trained.best_score
    print(f"Best validation Dice: {score:.4f}" if score is not None else "No validation score.")
    return 0


# ---------------------------------------------------------------------------
# predict


def _output_path(source: Path, out_dir: Path) -> Path:
    name = source.name
    if source.suffix.lower() not in (".tif", ".tiff"):
        name = source.stem + ".tif"
    return out_dir / name


def cmd_predict(args) -> int:
    from .io import list_images, load_model, read_image, write_tiff
    from .prediction import PredictionFinished, TileProgress, iter_predict

    model = load_model(args.model)
    files = list_images(args.input)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    overall = _progress_bar(len(files), "files", unit=" files") if len(files) > 1 else None
    for path in files:
        target = _output_path(path, out_dir)
        try:
            image = read_image(path, lazy=True)
            bar = _progress_bar(100, path.name)
            result = None
            for event in iter_predict(
                model,
                image,
                tile_size=args.tile_size,
                overlap=args.overlap,
                batch_size=args.batch_size,
                device=args.device,
                output="probabilities" if args.probabilities else "labels",
            ):
                if isinstance(event, TileProgress):
                    bar.n = round(100 * event.fraction, 1)
                    bar.refresh()
                elif isinstance(event, PredictionFinished):
                    result = event.result
            bar.close()
            write_tiff(target, result)
        except InputError as error:
            failures.append((str(path), str(error)))
            print(f"error: {path}: {error}", file=sys.stderr)
        if overall is not None:
            overall.update(1)
    if overall is not None:
        overall.close()
    done = len(files) - len(failures)
    print(
        f"Wrote {done} result(s) to {out_dir}"
        + (f"; {len(failures)} failed." if failures else "."),
        file=sys.stderr,
    )
    return 1 if failures else 0


# ---------------------------------------------------------------------------
# evaluate


def cmd_evaluate(args) -> int:
    from .io import load_model
    from .metrics import evaluate

    model = load_model(args.model)
    images, labels, paths = _read_pairs(args.images, args.labels)
    result = evaluate(model, images, labels, device=args.device, tile_size=args.tile_size)
    for path, scores in zip(paths, result["images"], strict=True):
        scores["file"] = path.name
    print(json.dumps(result["mean"], indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


# ---------------------------------------------------------------------------
# demo


def cmd_demo(args) -> int:
    from ._sample_data import demo_images
    from .config import ModelConfig, TrainConfig
    from .io import write_tiff
    from .metrics import foreground_dice, instance_scores
    from .prediction import predict

    if args.gui:
        from ._widgets.demo import run_demo_gui

        run_demo_gui()
        return 0
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
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "demo_model.safetensors")
    write_tiff(out / "demo_labels.tif", labels)
    print(
        f"Segmented the held-out image in {seconds:.1f} s: {scores['objects_predicted']} nuclei "
        f"found, {scores['objects_true']} annotated.\n"
        f"Score: foreground Dice {dice:.3f}, F1@0.5 {scores['f1@0.5']:.3f}, "
        f"DSB score {scores['dsb_score']:.3f}.\n"
        f"Wrote {out / 'demo_labels.tif'} and {out / 'demo_model.safetensors'}."
    )
    return 0


# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .config import PredictConfig, TrainConfig

    train_defaults, predict_defaults = TrainConfig(), PredictConfig()
    parser = argparse.ArgumentParser(
        prog="napari-unet", description="Train and run a 2D U-Net on microscopy images."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def device(p):
        p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, mps")

    def tiles(p):
        p.add_argument("--tile-size", type=int, default=predict_defaults.tile_size)
        p.add_argument(
            "--overlap",
            type=float,
            default=predict_defaults.overlap,
            help="overlap of tiles, a share of the tile (0-0.5)",
        )
        p.add_argument("--batch-size", type=int, default=predict_defaults.batch_size)

    t = sub.add_parser("train", help="train a model on images and labels")
    t.add_argument("--images", required=True, nargs="+", help="image file(s), folder or glob")
    t.add_argument(
        "--labels",
        required=True,
        nargs="+",
        help="label file(s) or folder, matched to the images by file name",
    )
    t.add_argument("--mode", choices=["semantic", "sparse", "instances"], default="semantic")
    t.add_argument("--out", required=True, help="model file to write (.safetensors)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="time budget in minutes")
    budget.add_argument("--epochs", type=int, help="number of epochs (default 50)")
    t.add_argument("--depth", type=int, default=4)
    t.add_argument("--base-channels", type=int, default=32)
    t.add_argument("--patch-size", type=int, default=train_defaults.patch_size)
    t.add_argument("--batch-size", type=int, default=train_defaults.batch_size)
    t.add_argument("--learning-rate", type=float, default=train_defaults.learning_rate)
    t.add_argument("--validation-fraction", type=float, default=train_defaults.validation_fraction)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", help="continue training this model file")
    device(t)
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="segment images with a trained model")
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True, nargs="+", help="image file(s), folder or glob")
    p.add_argument("--output", required=True, help="folder for the results (same file names)")
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="write class probabilities (float32, classes first) instead of labels",
    )
    tiles(p)
    device(p)
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="score a model against labelled images")
    e.add_argument("--model", required=True)
    e.add_argument("--images", required=True, nargs="+")
    e.add_argument("--labels", required=True, nargs="+")
    e.add_argument("--json", help="also write per-image scores to this JSON file")
    e.add_argument("--tile-size", type=int, default=predict_defaults.tile_size)
    device(e)
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="train on the bundled nuclei sample, segment, score")
    d.add_argument("--minutes", type=float, default=1.0)
    d.add_argument("--output", default="napari-unet-demo", help="folder for the results")
    d.add_argument("--gui", action="store_true", help="open napari with the sample and widgets")
    device(d)
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (InputError, ValidationError) as error:
        message = str(error).splitlines()[0] if isinstance(error, InputError) else _pydantic(error)
        print(f"napari-unet {args.command}: error: {message}", file=sys.stderr)
        return 2


def _pydantic(error) -> str:
    parts = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
