"""Draw docs/images/label-mode-*.png: what each label mode reads and what the network learns.

Run from the repository root: ``python docs/make_label_mode_figures.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from napari_unet._sample_data import demo_images
from napari_unet.data import encode_labels
from napari_unet.losses import IGNORE

OUT = Path(__file__).parent / "images"
PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], np.uint8
)


def grey(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    low, high = np.percentile(image, [1, 99.8])
    return np.repeat((np.clip((image - low) / (high - low), 0, 1) * 255).astype(np.uint8)[..., None], 3, -1)


def colour(label: np.ndarray, ignore_grey: bool = False) -> np.ndarray:
    out = PALETTE[np.where(label > 0, (label - 1) % (len(PALETTE) - 1) + 1, 0)]
    if ignore_grey:
        out[label == IGNORE] = (90, 90, 90)
    return out


def panel(images: list[np.ndarray], titles: list[str], path: Path, scale: int = 2) -> None:
    h, w = images[0].shape[:2]
    gap, top = 8, 22
    canvas = Image.new("RGB", (len(images) * (w * scale + gap) - gap, h * scale + top), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (image, title) in enumerate(zip(images, titles, strict=True)):
        x = i * (w * scale + gap)
        canvas.paste(Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST), (x, top))
        draw.text((x + 4, 5), title, fill="black")
    canvas.save(path)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    (image, instances), _ = demo_images()
    image, instances = image[:128, :128], instances[:128, :128]
    shown = grey(image)

    mask = np.where(instances > 0, 255, 0).astype(np.uint8)
    (target,), _ = encode_labels([mask], "semantic")
    panel([shown, colour(mask // 255), colour(target)],
          ["image", "labels: 0/255 mask", "classes: background / 1"],
          OUT / "label-mode-semantic.png")

    scribbles = np.zeros_like(mask)
    scribbles[10:14, 5:120] = 1
    scribbles[100:103, 20:110] = 1
    for obj in np.unique(instances)[1:6]:
        ys, xs = np.nonzero(instances == obj)
        centre = len(ys) // 2
        scribbles[ys[centre] - 1 : ys[centre] + 2, xs[centre] - 3 : xs[centre] + 4] = 2
    scribbles[instances > 0] = np.where(scribbles[instances > 0] == 1, 0, scribbles[instances > 0])
    (target,), _ = encode_labels([scribbles], "sparse")
    overlay = shown.copy()
    overlay[scribbles > 0] = colour(scribbles)[scribbles > 0]
    classes = colour(np.where(target == IGNORE, IGNORE, target + 1), ignore_grey=True)
    panel([shown, overlay, classes],
          ["image", "labels: scribbles 1 and 2", "classes (grey: ignored)"],
          OUT / "label-mode-sparse.png")

    (target,), _ = encode_labels([instances], "instances")
    panel([shown, colour(instances.astype(np.int64)), colour(target)],
          ["image", "labels: one id per nucleus", "classes: interior / boundary"],
          OUT / "label-mode-instances.png")


if __name__ == "__main__":
    main()
