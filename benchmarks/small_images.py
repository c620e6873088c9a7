"""Training on images smaller than the training patch: steps and scores in a time budget.

Scientists often train on small crops (a few cells each, cut out and annotated). The
DSB 2018 nuclei of the accuracy study's development split (its training part: 25 images
to train on, 8 to score, as in ``accuracy_levers.py``) are cut into crops of ``--crop``
pixels (100 by default: not a multiple of the network's 16), up to four per image
wherever they hold nuclei; a model trains on the training crops with the Python API's
defaults (instances mode) for ``--minutes`` and is scored on the development crops.

Run it once with the code to measure and once with the code to compare against
(``PYTHONPATH=<other checkout>/src``); each run appends a line of JSON to ``--results``.

    python benchmarks/small_images.py --label "patch holds the images"
    PYTHONPATH=/tmp/before/src python benchmarks/small_images.py --label "patch 256"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def crops(images, labels, side: int, per_image: int = 4):
    from skimage.segmentation import relabel_sequential

    out_x, out_y = [], []
    for image, label in zip(images, labels, strict=True):
        height, width = label.shape
        taken = 0
        for y0 in range(0, height - side + 1, side):
            for x0 in range(0, width - side + 1, side):
                piece = label[y0 : y0 + side, x0 : x0 + side]
                if taken == per_image or not piece.any():
                    continue
                out_x.append(np.ascontiguousarray(image[y0 : y0 + side, x0 : x0 + side]))
                out_y.append(relabel_sequential(piece)[0])
                taken += 1
    return out_x, out_y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--crop", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", required=True, help="what this run measures")
    parser.add_argument("--results", type=Path, default=Path("docs/small-images.jsonl"))
    args = parser.parse_args()

    import torch
    from accuracy import score_dsb
    from accuracy_levers import dsb_dev

    import napari_unet
    from napari_unet import predict, train

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    (images, labels, _), (dev_x, dev_y, _) = dsb_dev(args.data)
    train_x, train_y = crops(images, labels, args.crop)
    test_x, test_y = crops(dev_x, dev_y, args.crop)
    model = train(train_x, train_y, mode="instances", minutes=args.minutes, seed=args.seed)
    run = model.history["runs"][-1]
    scores = score_dsb([predict(model, x) for x in test_x], test_y)
    scores.pop("per_image")
    row = {
        "label": args.label,
        "code": str(Path(napari_unet.__file__).parent),
        "crop": args.crop,
        "training crops": len(train_x),
        "scored crops": len(test_x),
        "minutes": args.minutes,
        "seed": args.seed,
        "patch_size": run["config"]["patch_size"],
        "steps": run["steps"],
        **{k: round(v, 4) for k, v in scores.items()},
        "date": date.today().isoformat(),
    }
    print(json.dumps(row))
    with args.results.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
