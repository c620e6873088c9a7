"""Lever experiments for the accuracy study, on a split inside the study's training part.

The study's held-out images (docs/accuracy.md) are never used to choose settings.
Levers are tried on a development split carved from the study's training part
instead: DSB 2018, every fourth training image (8 of 33) is held out and the model
trains on the other 25; ISBI 2012, the model trains on slices 0-14 and is scored on
15-19. One run trains with the command line (default settings plus the lever's
options) for a given number of minutes and appends a line of JSON to the results file.

    python benchmarks/accuracy_levers.py train dsb baseline 5
    python benchmarks/accuracy_levers.py train dsb lr5e-3 5 --learning-rate 5e-3
    python benchmarks/accuracy_levers.py train isbi baseline 5
    python benchmarks/accuracy_levers.py train isbi constant-lr 5 --lr-schedule constant
    python benchmarks/accuracy_levers.py train dsb contact 5 --targets contact
    python benchmarks/accuracy_levers.py seeds <work>/dsb_baseline/model.safetensors
    python benchmarks/accuracy_levers.py foreground <work>/dsb_baseline/model.safetensors
    python benchmarks/accuracy_levers.py min-size <work>/dsb_baseline/model.safetensors
    python benchmarks/accuracy_levers.py split <work>/dsb_*/model.safetensors
    python benchmarks/accuracy_levers.py shrink <work>/dsb_*/model.safetensors
    python benchmarks/accuracy_levers.py seed-size <work>/dsb_*/model.safetensors
    python benchmarks/accuracy_levers.py by-type <work>/dsb_*/model.safetensors
    python benchmarks/accuracy_levers.py close <work>/isbi_*/model.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accuracy import dsb_split, isbi_split, score_dsb, score_isbi, write_folder

WORK = Path(__file__).resolve().parent / "_work" / "accuracy_levers"


def dsb_dev(data: Path):
    """(train images, train labels, names), (dev images, dev labels, names)."""
    (images, labels, names), _ = dsb_split(data)
    dev = set(names[1::4])
    pick = [i for i, n in enumerate(names) if n not in dev]
    held = [i for i, n in enumerate(names) if n in dev]

    def take(indices):
        return (
            [images[i] for i in indices],
            [labels[i] for i in indices],
            [names[i] for i in indices],
        )

    return take(pick), take(held)


def isbi_cells(membranes: np.ndarray) -> np.ndarray:
    """ISBI membrane labels (*stack, Y, X), 1 = membrane -> the cells between them as
    instance ids per slice (the regions the Rand error scores), membranes 0."""
    from scipy import ndimage as ndi

    stack = np.asarray(membranes).reshape(-1, *membranes.shape[-2:])
    cells = np.stack([ndi.label(s == 0)[0] for s in stack]).astype(np.int32)
    return cells.reshape(membranes.shape)


def score_isbi_cells(predicted: list[np.ndarray], truth: list[np.ndarray]) -> dict:
    """Pixel and Rand error of instance predictions of the cells: membrane = no cell; the
    predicted cells are scored as they are (not as connected regions of non-membrane)."""
    from skimage.metrics import adapted_rand_error

    from napari_unet.metrics import pixel_error

    pixel = [
        pixel_error((p == 0).astype(t.dtype), t) for p, t in zip(predicted, truth, strict=True)
    ]
    rand = [
        adapted_rand_error(isbi_cells(t), p.astype(np.int32), ignore_labels=(0,))[0]
        for p, t in zip(predicted, truth, strict=True)
    ]
    return {"pixel_error": float(np.mean(pixel)), "rand_error": float(np.mean(rand))}


def isbi_dev(data: Path):
    (volume, labels), _ = isbi_split(data)
    return ([volume[:15]], [labels[:15]], ["train"]), (list(volume[15:]), list(labels[15:]))


SCHEDULES = {
    # learning-rate factor against the share of the budget used, after the same warm-up
    "constant": lambda t: 1.0,
    "steps": lambda t: 1.0 if t < 0.6 else (0.1 if t < 0.9 else 0.01),
}
"""Learning-rate schedules tried against the default (linear warm-up, cosine decay to 2%)."""


def run_cli_with_schedule(schedule: str, argv: list[str]) -> int:
    """``napari-unet`` with :data:`SCHEDULES` ``[schedule]`` in place of the default one."""
    from napari_unet import cli, training

    default = training._schedule

    def patched(progress: float, warmup: float = 0.03) -> float:
        if progress < warmup:
            return default(progress, warmup)
        return SCHEDULES[schedule]((progress - warmup) / (1 - warmup))

    training._schedule = patched
    return cli.main(argv)


def contact_targets(label: np.ndarray, radius: int = 2) -> np.ndarray:
    """Instance ids (Y, X) -> classes 0 background, 1 interior, 2 boundary, the boundary
    only where objects touch: the pixels of an object within ``radius`` pixels
    (chessboard distance) of another object, instead of every object's outer ring."""
    from scipy import ndimage as ndi

    label = np.asarray(label).astype(np.int64)
    footprint = np.ones((2 * radius + 1,) * 2, bool)
    highest = ndi.maximum_filter(label, footprint=footprint, mode="nearest")
    others = np.where(label > 0, label, np.iinfo(np.int64).max)
    lowest = ndi.minimum_filter(others, footprint=footprint, mode="nearest")
    target = (label > 0).astype(np.int64)
    target[(label > 0) & ((highest != label) | (lowest != label))] = 2
    return target


TARGETS = {"contact": contact_targets}
"""Instance targets tried against the default (:func:`napari_unet.data.instance_targets`)."""


def run_cli_with_targets(targets: str, argv: list[str]) -> int:
    """``napari-unet`` with :data:`TARGETS` ``[targets]`` in place of the instance targets."""
    from napari_unet import cli, data

    data.instance_targets = TARGETS[targets]
    return cli.main(argv)


def train(
    data_name: str,
    name: str,
    minutes: float,
    extra: list[str],
    data: Path,
    schedule: str | None = None,
    targets: str | None = None,
) -> dict:
    from napari_unet import load_model, predict

    if data_name == "dsb":
        (images, labels, names), (dev_x, dev_y, _) = dsb_dev(data)
        mode = "instances"
    elif data_name == "isbi-cells":  # the cells between the membranes as instances
        (images, labels, names), (dev_x, dev_y) = isbi_dev(data)
        labels = [isbi_cells(stack) for stack in labels]
        mode = "instances"
    else:
        (images, labels, names), (dev_x, dev_y) = isbi_dev(data)
        mode = "semantic"
    folder = WORK / f"{data_name}_{name}"
    model_path = folder / "model.safetensors"
    runner = ["-m", "napari_unet.cli"]
    if schedule:
        runner = [__file__, "--schedule-run", schedule]
    if targets:
        runner = [__file__, "--targets-run", targets]
    command = [
        sys.executable, *runner, "train",
        "--images", str(write_folder(folder / "images", names, images)),
        "--labels", str(write_folder(folder / "labels", names, labels)),
        "--mode", mode, "--minutes", str(minutes), "--out", str(model_path), *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    subprocess.run(command, env=env, check=True, stderr=subprocess.DEVNULL)
    model = load_model(model_path)
    predicted = [predict(model, image) for image in dev_x]
    if data_name == "dsb":
        scores = score_dsb(predicted, dev_y)
        scores.pop("per_image")
    elif data_name == "isbi-cells":
        scores = score_isbi_cells(predicted, dev_y)
    else:
        scores = score_isbi(np.stack(predicted), np.stack(dev_y))
    return {
        "data": data_name,
        "lever": name,
        "options": extra
        + ([f"learning-rate schedule: {schedule}"] if schedule else [])
        + ([f"instance targets: {targets}"] if targets else []),
        "minutes": minutes,
        "steps": model.history["runs"][-1]["steps"],
        **{k: round(v, 4) for k, v in scores.items()},
    }


def postprocess(
    model_path: Path, data: Path, setting: str, values: list[float], tta: bool
) -> list[dict]:
    """Score an instance post-processing setting of ``napari_unet.prediction`` (the
    watershed seed margin, or the foreground threshold) on the DSB development images
    with one model."""
    from napari_unet import load_model, predict
    from napari_unet import prediction as p

    constant, label = {
        "seeds": ("SEED_MARGIN", "seed margin"),
        "foreground": ("FOREGROUND_BELOW", "foreground: background probability below"),
        "min-size": (None, "smallest object kept (pixels)"),
    }[setting]
    (_, train_labels, _), (dev_x, dev_y, _) = dsb_dev(data)
    if setting == "min-size" and not values:
        from napari_unet.data import smallest_object_size

        learned = smallest_object_size(train_labels)  # what training now records
        values = [2, 5, 10, learned, 2 * learned, 50]
    model = load_model(model_path)
    probabilities = [predict(model, x, output="probabilities", tta=tta) for x in dev_x]
    rows = []
    default = getattr(p, constant) if constant else None
    try:
        for value in values:
            if constant:
                setattr(p, constant, value)
            size = int(value) if setting == "min-size" else 10
            predicted = [p.instances_from_probabilities(q, min_size=size) for q in probabilities]
            scores = score_dsb(predicted, dev_y)
            scores.pop("per_image")
            rows.append(
                {"data": "dsb", "lever": f"{label} {value:g}", "tta": tta,
                 "model": model_path.parent.name, **{k: round(v, 4) for k, v in scores.items()}}
            )  # fmt: skip
    finally:
        if constant:
            setattr(p, constant, default)
    return rows


def seed_size(model_paths: list[Path], data: Path, shares: list[float]) -> list[dict]:
    """Score the smallest seed kept, as a share of the smallest object size
    (``napari_unet.prediction.SEED_SHARE``), with each model on the DSB development
    images, each model with its own smallest object size."""
    from napari_unet import load_model, predict
    from napari_unet import prediction as p

    _, (dev_x, dev_y, _) = dsb_dev(data)
    default = p.SEED_SHARE
    rows = []
    try:
        for path in model_paths:
            model = load_model(path)
            size = model.min_object_size or p.DEFAULT_MIN_SIZE
            probabilities = [predict(model, x, output="probabilities") for x in dev_x]
            for share in shares:
                p.SEED_SHARE = share
                predicted = [
                    p.instances_from_probabilities(q, min_size=size) for q in probabilities
                ]
                scores = score_dsb(predicted, dev_y)
                scores.pop("per_image")
                rows.append(
                    {"data": "dsb", "lever": f"smallest seed {share:g} x the smallest object",
                     "model": path.parent.name, **{k: round(v, 4) for k, v in scores.items()}}
                )  # fmt: skip
    finally:
        p.SEED_SHARE = default
    return rows


def split_instances(probabilities: np.ndarray, h: float, source: str, min_size: int):
    """Instances as :func:`napari_unet.prediction.instances_from_probabilities` makes them,
    but with watershed seeds split at the maxima (of height ``h``) of a distance
    transform: of each seed region (``source="seeds"``), or of the foreground, kept where
    the seeds are (``source="foreground"``), the classic way to part merged round nuclei."""
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima
    from skimage.segmentation import relabel_sequential, watershed

    from napari_unet import prediction as p

    foreground, seeds, elevation = p._instance_features(probabilities)
    if source == "seeds":
        distance = ndi.distance_transform_edt(seeds)
        markers, _ = ndi.label(h_maxima(distance, h) & seeds)
        markers = watershed(-distance, markers, mask=seeds)
    else:
        distance = ndi.distance_transform_edt(foreground)
        markers, _ = ndi.label(h_maxima(distance, h) & seeds)
    markers = p._remove_small(markers, max(1, int(min_size * p.SEED_SHARE)))
    labels = watershed(elevation, markers=markers, mask=foreground)
    orphans, count = ndi.label(foreground & (labels == 0))
    if count:
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    return relabel_sequential(p._remove_small(labels, min_size))[0]


def split(model_paths: list[Path], data: Path, heights: list[float]) -> list[dict]:
    """Score seeds split at distance-transform maxima against the default seeds, with
    each model on the DSB development images (smallest object kept: the default's 22)."""
    from napari_unet import load_model, predict
    from napari_unet import prediction as p

    _, (dev_x, dev_y, _) = dsb_dev(data)
    rows = []
    for path in model_paths:
        model = load_model(path)
        probabilities = [predict(model, x, output="probabilities") for x in dev_x]
        variants = [("default seeds", lambda q: p.instances_from_probabilities(q, 22))]
        for source in ("seeds", "foreground"):
            for h in heights:
                variants.append(
                    (f"seeds split at {source} distance maxima, h={h:g}",
                     lambda q, s=source, h=h: split_instances(q, h, s, 22))
                )  # fmt: skip
        for name, segment in variants:
            scores = score_dsb([segment(q) for q in probabilities], dev_y)
            scores.pop("per_image")
            rows.append(
                {"data": "dsb", "lever": name, "model": path.parent.name,
                 **{k: round(v, 4) for k, v in scores.items()}}
            )  # fmt: skip
    return rows


def shrink(model_paths: list[Path], data: Path) -> list[dict]:
    """Score every object shrunk by its outer pixel ring against the default instances,
    with each model on the DSB development images and on its own 25 training images
    (whether a one-pixel shrink corrects the model or only suits some annotations)."""
    from skimage.segmentation import find_boundaries

    from napari_unet import load_model, predict
    from napari_unet import prediction as p

    (train_x, train_y, _), (dev_x, dev_y, _) = dsb_dev(data)

    def shrunk(labels: np.ndarray) -> np.ndarray:
        return np.where(find_boundaries(labels, mode="inner"), 0, labels)

    rows = []
    for path in model_paths:
        model = load_model(path)
        for images_name, xs, ys in (("dev", dev_x, dev_y), ("training", train_x, train_y)):
            predicted = [
                p.instances_from_probabilities(predict(model, x, output="probabilities"), 22)
                for x in xs
            ]
            for name, labels in (
                ("default instances", predicted),
                ("each object shrunk by one pixel", [shrunk(q) for q in predicted]),
            ):
                scores = score_dsb(labels, ys)
                scores.pop("per_image")
                rows.append(
                    {"data": "dsb", "images": images_name, "lever": name,
                     "model": path.parent.name, **{k: round(v, 4) for k, v in scores.items()}}
                )  # fmt: skip
    return rows


def close(model_paths: list[Path], data: Path, thresholds: list[float]) -> list[dict]:
    """Score ISBI development slices with the membranes as predicted (argmax) and with
    gaps closed by watershed lines (:func:`napari_unet.prediction.close_boundaries`) for
    each core threshold (``BOUNDARY_SEED_BELOW``)."""
    from napari_unet import load_model, predict
    from napari_unet import prediction as p

    _, (dev_x, dev_y) = isbi_dev(data)
    truth = np.stack(dev_y)
    rows = []
    default = p.BOUNDARY_SEED_BELOW
    for path in model_paths:
        model = load_model(path)
        size = model.min_object_size or p.DEFAULT_MIN_SIZE
        probabilities = [predict(model, x, output="probabilities") for x in dev_x]
        variants = [("as predicted", None)] + [
            (f"closed, cores below {t:g}", t) for t in thresholds
        ]
        try:
            for name, threshold in variants:
                if threshold is None:
                    predicted = [np.argmax(q, axis=0) for q in probabilities]
                else:
                    p.BOUNDARY_SEED_BELOW = threshold
                    predicted = [p.close_boundaries(q, 1, size) for q in probabilities]
                scores = score_isbi(np.stack(predicted).astype(truth.dtype), truth)
                rows.append(
                    {"data": "isbi", "lever": f"membranes {name}", "model": path.parent.name,
                     **{k: round(v, 4) for k, v in scores.items()}}
                )  # fmt: skip
        finally:
            p.BOUNDARY_SEED_BELOW = default
    return rows


def offset(model_paths: list[Path], data: Path) -> list[dict]:
    """Measure each model's label offset on its own validation planes (as training does
    at its end, :func:`napari_unet.training.estimate_label_offset`) and score the
    development images with predictions moved by it and not moved."""
    from napari_unet import TrainConfig, load_model, predict
    from napari_unet.training import estimate_label_offset, prepare_data

    rows = []
    for path in model_paths:
        model = load_model(path)
        if model.mode == "instances":
            (images, labels, _), (dev_x, dev_y, _) = dsb_dev(data)
        else:
            (images, labels, _), (dev_x, dev_y) = isbi_dev(data)
        prepared = prepare_data(images, labels, TrainConfig(mode=model.mode), model=model)
        found = estimate_label_offset(model.network, prepared.validation)
        for moved in (found, None) if found is not None else (None,):
            model.label_offset = moved
            predicted = [predict(model, x) for x in dev_x]
            if model.mode == "instances":
                scores = score_dsb(predicted, dev_y)
                scores.pop("per_image")
            else:
                scores = score_isbi(np.stack(predicted), np.stack(dev_y))
            rows.append(
                {"data": "dsb" if model.mode == "instances" else "isbi",
                 "lever": "predictions moved by the label offset" if moved else "not moved",
                 "label offset found": found, "model": path.parent.name,
                 **{k: round(v, 4) for k, v in scores.items()}}
            )  # fmt: skip
    return rows


def by_type(model_paths: list[Path], data: Path) -> list[dict]:
    """Score each model on the DSB development images of each type of ``index.csv``
    (grey fluorescence, colour brightfield / H&E) separately."""
    import csv

    from napari_unet import load_model, predict

    with (data / "dsb2018" / "index.csv").open() as f:
        kind = {row["index"]: row["type"] for row in csv.DictReader(f)}
    _, (dev_x, dev_y, names) = dsb_dev(data)
    rows = []
    for path in model_paths:
        model = load_model(path)
        per_image = score_dsb([predict(model, x) for x in dev_x], dev_y)["per_image"]
        row = {"data": "dsb", "lever": "scores by image type", "model": path.parent.name}
        for image_type in sorted(set(kind[n] for n in names)):
            picked = [s for s, n in zip(per_image, names, strict=True) if kind[n] == image_type]
            row[image_type] = {
                key: round(float(np.mean([s[key] for s in picked])), 4)
                for key in ("foreground_dice", "f1@0.5", "dsb_score")
            } | {"images": len(picked)}
        rows.append(row)
    return rows


def main() -> None:
    if sys.argv[1:2] == ["--schedule-run"]:
        sys.exit(run_cli_with_schedule(sys.argv[2], sys.argv[3:]))
    if sys.argv[1:2] == ["--targets-run"]:
        sys.exit(run_cli_with_targets(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", type=Path)
    parser.add_argument("--results", type=Path, default=Path("docs/accuracy-levers.jsonl"))
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train with one lever and score on the dev split")
    t.add_argument("dataset", choices=["dsb", "isbi", "isbi-cells"])
    t.add_argument("name")
    t.add_argument("minutes", type=float)
    instead = t.add_mutually_exclusive_group()
    instead.add_argument("--lr-schedule", choices=sorted(SCHEDULES), help="instead of the default")
    instead.add_argument("--targets", choices=sorted(TARGETS), help="instance targets (dsb)")
    s = sub.add_parser("seeds", help="score watershed seed margins with a trained model")
    s.add_argument("model", type=Path)
    s.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6])
    s.add_argument("--tta", action="store_true")
    f = sub.add_parser("foreground", help="score foreground thresholds with a trained model")
    f.add_argument("model", type=Path)
    f.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6])
    f.add_argument("--tta", action="store_true")
    m = sub.add_parser("min-size", help="score the smallest object size kept with a model")
    m.add_argument("model", type=Path)
    m.add_argument("--sizes", type=float, nargs="*", default=[])
    m.add_argument("--tta", action="store_true")
    sp = sub.add_parser("split", help="score seeds split at distance-transform maxima")
    sp.add_argument("models", type=Path, nargs="+")
    sp.add_argument("--heights", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    sh = sub.add_parser("shrink", help="score objects shrunk by one pixel (dev and training)")
    sh.add_argument("models", type=Path, nargs="+")
    ss = sub.add_parser("seed-size", help="score the smallest seed kept (share of min size)")
    ss.add_argument("models", type=Path, nargs="+")
    ss.add_argument("--shares", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    cl = sub.add_parser("close", help="score ISBI membranes with gaps closed (watershed lines)")
    cl.add_argument("models", type=Path, nargs="+")
    cl.add_argument("--thresholds", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    bt = sub.add_parser("by-type", help="score models on each image type of the dev split")
    bt.add_argument("models", type=Path, nargs="+")
    lo = sub.add_parser("offset", help="measure the label offset, score moved and not moved")
    lo.add_argument("models", type=Path, nargs="+")
    args, extra = parser.parse_known_args()
    torch.set_num_threads(os.cpu_count() or 2)
    started = time.strftime("%Y-%m-%d")
    if args.command == "train" and args.targets and args.dataset != "dsb":
        parser.error("--targets changes instance targets: dsb only")
    if args.command == "train":
        rows = [
            train(
                args.dataset,
                args.name,
                args.minutes,
                extra,
                args.data,
                args.lr_schedule,
                args.targets,
            )
        ]
    elif args.command == "seeds":
        rows = postprocess(args.model, args.data, "seeds", args.margins, args.tta)
    elif args.command == "foreground":
        rows = postprocess(args.model, args.data, "foreground", args.thresholds, args.tta)
    elif args.command == "split":
        rows = split(args.models, args.data, args.heights)
    elif args.command == "shrink":
        rows = shrink(args.models, args.data)
    elif args.command == "seed-size":
        if min(args.shares) < 0:
            parser.error("--shares must not be negative")
        rows = seed_size(args.models, args.data, args.shares)
    elif args.command == "close":
        rows = close(args.models, args.data, args.thresholds)
    elif args.command == "by-type":
        rows = by_type(args.models, args.data)
    elif args.command == "offset":
        rows = offset(args.models, args.data)
    else:
        rows = postprocess(args.model, args.data, "min-size", args.sizes, args.tta)
    with args.results.open("a") as f:
        for row in rows:
            row["date"] = started
            print(json.dumps(row))
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
