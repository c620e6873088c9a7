"""Do the defaults generalise? Scribbles instead of full labels, and image types.

The accuracy study (benchmarks/accuracy.py) trains on full labels. Scientists in napari
paint a few strokes instead, and their images are not all grey fluorescence. This
script measures both on the study's data and splits, with default settings:

1. Scribbles. The study's training images get a few strokes instead of full labels,
   drawn from the full labels the way a napari user paints them (mode ``sparse``:
   1 = background, 2 = object, 0 = not painted), in two ways:

   - away from the edges: on the DSB 2018 images a brush dab (radius 3) inside one
     nucleus in three, and four straight background strokes (up to 40 pixels long, 3
     wide, stopping where they would come within 5 pixels of a nucleus) per image; on
     each ISBI 2012 training slice, fifteen strokes along the middle of a membrane (the
     piece of membrane skeleton within a 25 x 25 window) and fifteen dabs (radius 4) in
     cells, at least 6 pixels from any membrane;
   - along the edges: the same, plus background arcs 2-3.5 pixels outside half the
     outline of each dabbed nucleus (DSB), and cell pixels 3-4.5 pixels from the
     membrane beside each membrane stroke (ISBI).

   A model trains on each (``--mode sparse``) and, for reference, another on the full
   labels as plain foreground/background (``--mode semantic``), for the same minutes
   each, one after the other. All are scored on the study's held-out images against the
   full labels: foreground Dice (DSB), pixel and Rand error (ISBI), and the predicted
   over the annotated foreground area.

2. Image types (no training): the DSB held-out images of the study's last run, split by
   the type given in dsb2018/index.csv (grey fluorescence or colour brightfield/H&E),
   for napari-unet and the MONAI script, read from docs/accuracy.json.

Usage::

    python benchmarks/generality.py --data ../shared/data --minutes 5 --out docs/generality.md

Results are also written as JSON beside the markdown file.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from accuracy import dsb_split, isbi_split, start_ours

HERE = Path(__file__).resolve().parent
THREADS = 2


# ---------------------------------------------------------------------------
# scribbles


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return yy**2 + xx**2 <= radius**2


def _stamp(canvas: np.ndarray, y: int, x: int, brush: np.ndarray, allowed: np.ndarray, value):
    """Paint ``brush`` centred on (y, x) where ``allowed``."""
    r = brush.shape[0] // 2
    y0, x0 = max(0, y - r), max(0, x - r)
    y1, x1 = min(canvas.shape[0], y + r + 1), min(canvas.shape[1], x + r + 1)
    window = brush[y0 - y + r : y1 - y + r, x0 - x + r : x1 - x + r] & allowed[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1][window] = value


def _line(canvas, y, x, angle, length, brush, allowed, value) -> None:
    for t in range(length):
        yy = int(round(y + t * np.sin(angle)))
        xx = int(round(x + t * np.cos(angle)))
        if not (0 <= yy < canvas.shape[0] and 0 <= xx < canvas.shape[1]) or not allowed[yy, xx]:
            break
        _stamp(canvas, yy, xx, brush, allowed, value)


def dsb_scribbles(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dabs in one nucleus in three (2) and four background strokes (1)."""
    from scipy import ndimage as ndi

    scribbles = np.zeros(label.shape, np.uint8)
    ids = np.unique(label[label > 0])
    chosen = rng.choice(ids, size=max(1, int(np.ceil(len(ids) / 3))), replace=False)
    inside = ndi.distance_transform_edt(np.pad(label, 1))[1:-1, 1:-1]  # edge: outside
    for i in chosen:
        where = np.flatnonzero((label == i).ravel())
        y, x = np.unravel_index(where[np.argmax(inside.ravel()[where])], label.shape)
        _stamp(scribbles, y, x, _disk(3), (label == i) & (inside > 1), 2)
    far = ndi.distance_transform_edt(label == 0) > 5
    starts = np.flatnonzero(far.ravel())
    for _ in range(4):
        if starts.size == 0:
            break
        y, x = np.unravel_index(rng.choice(starts), label.shape)
        _line(scribbles, y, x, rng.uniform(0, 2 * np.pi), 40, _disk(1), far, 1)
    return scribbles


def isbi_scribbles(membrane: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fifteen strokes along membranes (2) and fifteen dabs in cells (1)."""
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize

    scribbles = np.zeros(membrane.shape, np.uint8)
    middle = skeletonize(membrane > 0)
    points = np.argwhere(middle)
    for y, x in points[rng.choice(len(points), size=min(15, len(points)), replace=False)]:
        y0, x0 = max(0, y - 12), max(0, x - 12)
        window = middle[y0 : y + 13, x0 : x + 13]
        reach, _ = ndi.label(window, structure=np.ones((3, 3)))
        part = reach == reach[y - y0, x - x0]
        scribbles[y0 : y + 13, x0 : x + 13][part] = 2
    far = ndi.distance_transform_edt(membrane == 0) > 6
    starts = np.flatnonzero(far.ravel())
    for start in rng.choice(starts, size=min(15, starts.size), replace=False):
        y, x = np.unravel_index(start, membrane.shape)
        _stamp(scribbles, y, x, _disk(4), far, 1)
    return scribbles


def dsb_edge_strokes(label: np.ndarray, scribbles: np.ndarray, rng) -> np.ndarray:
    """Add a background arc (1) 2-3 pixels outside half the outline of each dabbed nucleus."""
    from scipy import ndimage as ndi

    out = scribbles.copy()
    clear = ndi.distance_transform_edt(label == 0) > 2  # not touching another nucleus
    for i in np.unique(label[scribbles == 2]):
        ring = (ndi.distance_transform_edt(label != i) <= 3.5) & clear
        ys, xs = np.nonzero(label == i)
        yy, xx = np.nonzero(ring)
        angle = np.arctan2(yy - ys.mean(), xx - xs.mean())
        start = rng.uniform(-np.pi, np.pi)
        half = np.mod(angle - start, 2 * np.pi) < np.pi
        out[yy[half], xx[half]] = 1
    return out


def isbi_edge_strokes(membrane: np.ndarray, scribbles: np.ndarray) -> np.ndarray:
    """Add cell strokes (1) 3-4.5 pixels from the membrane on both sides of each membrane
    stroke, as far along it as the stroke goes."""
    from scipy import ndimage as ndi

    out = scribbles.copy()
    distance = ndi.distance_transform_edt(membrane == 0)
    beside = (distance > 3) & (distance <= 4.5)
    near_stroke = ndi.distance_transform_edt(scribbles != 2) <= 5
    out[beside & near_stroke & (out == 0)] = 1
    return out


# ---------------------------------------------------------------------------
# training and scoring


def train_and_predict(name, mode, train, test_images, minutes, closed: bool = False):
    """Train with the command line and predict the test images with default settings
    (with ``closed`` also with ``close_boundaries=True``, in ``info["closed"]``)."""
    from napari_unet import load_model, predict

    process, model_path, command, start = start_ours(name, mode, train, minutes, THREADS)
    if process.wait() != 0:
        raise RuntimeError(f"napari-unet train failed: {' '.join(command)}")
    model = load_model(model_path)
    predicted = [predict(model, image) for image in test_images]
    info = {
        "train_seconds": round(time.perf_counter() - start, 1),
        "steps": model.history["runs"][-1]["steps"],
        "boundaries_learned": model.boundary_class is not None,
    }
    if closed:
        info["closed"] = [predict(model, image, close_boundaries=True) for image in test_images]
    return predicted, info


def painted_share(scribbles) -> float:
    return float(sum((s > 0).sum() for s in scribbles) / sum(s.size for s in scribbles))


LABELS = {
    "scribbles": "scribbles away from the edges (`sparse`)",
    "edges": "the same plus background along the edges (`sparse`)",
    "full": "full labels (`semantic`)",
}


def study_dsb(data: Path, minutes: float, seed: int) -> dict:
    from napari_unet.metrics import foreground_dice

    (images, labels, names), (test_images, test_labels, _) = dsb_split(data)
    rng, edge_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    scribbles = [dsb_scribbles(label, rng) for label in labels]
    edges = [dsb_edge_strokes(*pair, edge_rng) for pair in zip(labels, scribbles, strict=True)]
    masks = [(label > 0).astype(np.uint8) for label in labels]
    result = {}
    for key, mode, targets in (
        ("scribbles", "sparse", scribbles),
        ("edges", "sparse", edges),
        ("full", "semantic", masks),
    ):
        predicted, info = train_and_predict(
            f"generality_dsb_{key}", mode, (images, targets, names), test_images, minutes
        )
        pairs = list(zip(predicted, test_labels, strict=True))
        result[key] = {
            "painted_share": painted_share(targets) if mode == "sparse" else 1.0,
            "foreground_dice": float(np.mean([foreground_dice(p, t) for p, t in pairs])),
            "area_ratio": float(sum((p > 0).sum() for p, _ in pairs))
            / float(sum((t > 0).sum() for _, t in pairs)),
            **info,
        }
    return result


def study_isbi(data: Path, minutes: float, seed: int) -> dict:
    from napari_unet.metrics import pixel_error, rand_error

    (volume, membranes), (test_volume, test_membranes) = isbi_split(data)
    rng = np.random.default_rng(seed)
    scribbles = np.stack([isbi_scribbles(m, rng) for m in membranes])
    edges = np.stack([isbi_edge_strokes(*pair) for pair in zip(membranes, scribbles, strict=True)])
    result = {}
    for key, mode, targets in (
        ("scribbles", "sparse", scribbles),
        ("edges", "sparse", edges),
        ("full", "semantic", membranes),
    ):
        predicted, info = train_and_predict(
            f"generality_isbi_{key}",
            mode,
            ([volume], [targets], ["train"]),
            [test_volume],
            minutes,
            closed=mode == "sparse",  # scribbles do not show the network: closed on request
        )
        closed = info.pop("closed", None)
        membrane = (predicted[0] > 0).astype(np.uint8)
        pairs = list(zip(membrane, test_membranes, strict=True))
        result[key] = {
            "painted_share": painted_share(targets) if mode == "sparse" else 1.0,
            "pixel_error": float(np.mean([pixel_error(p, t) for p, t in pairs])),
            "rand_error": float(np.mean([rand_error(p, t) for p, t in pairs])),
            "area_ratio": float(membrane.sum() / test_membranes.sum()),
            **info,
        }
        if closed is not None:
            pairs = list(zip((closed[0] > 0).astype(np.uint8), test_membranes, strict=True))
            result[key]["closed"] = {
                "pixel_error": float(np.mean([pixel_error(p, t) for p, t in pairs])),
                "rand_error": float(np.mean([rand_error(p, t) for p, t in pairs])),
            }
    return result


def image_types(data: Path, accuracy_json: Path) -> dict:
    """The DSB study's held-out scores, averaged per image type."""
    with open(data / "dsb2018" / "index.csv") as f:
        kinds = {row["index"]: row["type"] for row in csv.DictReader(f)}
    study = json.loads(accuracy_json.read_text())["dsb"]
    test_ids = study["split"]["test"]
    out = {}
    for method in ("napari-unet", "MONAI"):
        rows = study[method]["per_image"]
        for kind in sorted(set(kinds[i] for i in test_ids)):
            chosen = [r for i, r in zip(test_ids, rows, strict=True) if kinds[i] == kind]
            out.setdefault(kind, {"images": len(chosen)})[method] = {
                k: float(np.mean([r[k] for r in chosen])) for k in chosen[0]
            }
    return out


# ---------------------------------------------------------------------------
# report


def render(results: dict) -> str:
    minutes = results["minutes"]
    lines = [
        "# Generality: scribbles and image types",
        "",
        f"Generated by `python benchmarks/generality.py --data ../shared/data --minutes "
        f"{minutes:g} --out docs/generality.md` on {results['date']} ({results['machine']}, "
        f"{THREADS} threads, torch {results['torch']}). Default settings throughout; only "
        "`--mode` and `--minutes` are given.",
        "",
        *([results["note"], ""] if results.get("note") else []),
        "## Scribbles instead of full labels",
        "",
        "The accuracy study's training images ([accuracy.md](accuracy.md)) with a few strokes "
        "drawn from their labels, as a napari user paints them (label mode `sparse`: "
        "1 = background, 2 = object, 0 = not painted), in two ways:",
        "",
        "- *away from the edges*: on the DSB images a brush dab (radius 3) inside one nucleus "
        "in three and four straight background strokes (up to 40 pixels long and 3 wide, "
        "stopping where they would come within 5 pixels of a nucleus) per image; on the ISBI "
        "slices fifteen strokes along the middle of membranes (the piece of membrane skeleton "
        "within a 25 x 25 window) and fifteen dabs (radius 4) in cells, at least 6 pixels "
        "from any membrane, per slice;",
        "- *along the edges*: the same, plus background where a user outlines an object from "
        "outside: on the DSB images an arc 2-3.5 pixels outside half the outline of each "
        "dabbed nucleus, on the ISBI slices cell pixels 3-4.5 pixels from the membrane beside "
        "each membrane stroke.",
        "",
        f"Each model trains for {minutes:g} minutes (the Train widget's default budget), one "
        "after the other; the reference trains on the full labels as foreground/background "
        "(`--mode semantic`). All are scored on the study's held-out images against the full "
        "labels. Area: predicted over annotated foreground (DSB nuclei, ISBI membranes).",
        "",
        "| data | labels | painted pixels | training steps | scores on the held-out images "
        "| area |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for data, metrics in (
        ("dsb", (("foreground Dice", "foreground_dice"),)),
        ("isbi", (("pixel error", "pixel_error"), ("Rand error", "rand_error"))),
    ):
        part = results[data]
        name = {"dsb": "DSB 2018 nuclei", "isbi": "ISBI 2012 membranes"}[data]
        for key, what in LABELS.items():
            run = part[key]
            scores = ", ".join(f"{label} {run[field]:.4f}" for label, field in metrics)
            if "closed" in run:  # --close-boundaries, the Segment widget's "close gaps"
                closed = ", ".join(f"{run['closed'][f]:.4f}" for _, f in metrics)
                scores += f" (gaps closed on request: {closed})"
            elif run.get("boundaries_learned"):
                scores += " (gaps closed, as learned)"
            lines.append(
                f"| {name} | {what} | {100 * run['painted_share']:.1f}% | {run['steps']} | "
                f"{scores} | {run['area_ratio']:.2f}x |"
            )
    dsb, isbi = results["dsb"], results["isbi"]
    lines += [
        "",
        "Scribbles away from the edges leave the model to guess where objects end, and it "
        f"guesses wide: nuclei come out {dsb['scribbles']['area_ratio']:.1f}x and membranes "
        f"{isbi['scribbles']['area_ratio']:.1f}x their annotated area. Background painted "
        "along the edges tells it: foreground Dice "
        f"{dsb['scribbles']['foreground_dice']:.2f} -> {dsb['edges']['foreground_dice']:.2f} "
        f"(full labels: {dsb['full']['foreground_dice']:.2f}), ISBI pixel error "
        f"{isbi['scribbles']['pixel_error']:.3f} -> {isbi['edges']['pixel_error']:.3f} "
        f"(full labels: {isbi['full']['pixel_error']:.3f}). In napari: paint background "
        "close around a few objects, not only in open space, and where the segmentation "
        "spills over an edge, paint background there and train again. One run each: "
        "differences of a few hundredths are within the run-to-run spread of a time budget "
        "([accuracy-levers.md](accuracy-levers.md)).",
        "",
    ]
    if "closed" in isbi["scribbles"]:
        learned = isbi["full"].get("boundaries_learned")
        lines += [
            "Membranes: "
            + (
                "the model on full labels learned that they draw membranes between cells "
                "and closes gaps in its predicted membranes by itself "
                "([label-modes.md](label-modes.md#boundaries-between-regions-membranes-cell-walls)). "
                if learned
                else ""
            )
            + "Scribbles cannot show such a network, so the models trained on them close "
            "gaps only on request (`napari-unet predict --close-boundaries`, the Segment "
            "widget's *close gaps*): Rand error "
            f"{isbi['scribbles']['rand_error']:.3f} -> {isbi['scribbles']['closed']['rand_error']:.3f} "
            "away from the edges, "
            f"{isbi['edges']['rand_error']:.3f} -> {isbi['edges']['closed']['rand_error']:.3f} "
            "along them.",
            "",
        ]
    lines += [
        "## Image types",
        "",
        "The DSB held-out images of the accuracy study's last run, split by the type "
        "recorded in `dsb2018/index.csv`; one model per method, trained on both types "
        "together (10 minutes, see [accuracy.md](accuracy.md)). Two colour images are a "
        "small sample; the 45 images of the data set hold 8 colour ones in all.",
        "",
        "| image type | images | method | foreground Dice | F1@0.5 | DSB score |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    kinds = {
        "fluorescence": "grey fluorescence",
        "color_brightfield_or_HE": "colour brightfield / H&E",
    }
    for kind, part in results["image_types"].items():
        for method in ("napari-unet", "MONAI"):
            s = part[method]
            lines.append(
                f"| {kinds.get(kind, kind)} | {part['images']} | {method} | "
                f"{s['foreground_dice']:.4f} | "
                f"{s['f1@0.5']:.4f} | {s['dsb_score']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0, help="seed of the scribbles")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "generality.md")
    parser.add_argument(
        "--accuracy-json", type=Path, default=HERE.parent / "docs" / "accuracy.json"
    )
    parser.add_argument("--render-only", action="store_true", help="rewrite the markdown only")
    args = parser.parse_args(argv)
    json_path = args.out.with_suffix(".json")
    if args.render_only:
        args.out.write_text(render(json.loads(json_path.read_text())))
        return
    torch.set_num_threads(THREADS)
    results = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {THREADS} cores",
        "torch": torch.__version__,
        "minutes": args.minutes,
        "seed": args.seed,
        "image_types": image_types(args.data, args.accuracy_json),
        "dsb": study_dsb(args.data, args.minutes, args.seed),
        "isbi": study_isbi(args.data, args.minutes, args.seed),
    }
    json_path.write_text(json.dumps(results, indent=1))
    args.out.write_text(render(results))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
