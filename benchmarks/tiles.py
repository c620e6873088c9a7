"""Tile size, batch and overlap of napari_unet.predict, end to end.

Each setting predicts the same 2048 x 2048 image with the trained U-Net (default
precision and forward pass); settings are interleaved, medians reported, and
each result is compared with the untiled fp32 pass and with one untiled pass of the
forward pass ``predict`` runs (what the tiling alone changes). ``waste`` is the number of
pixels the network processes per image pixel (tiles overlap and cover the border).

    python benchmarks/tiles.py --data ../shared/data
"""

from __future__ import annotations

from pathlib import Path

import _common as common
import numpy as np

SETTINGS = [  # (tile_size, batch_size, overlap)
    (256, 4, 0.125),
    (512, 1, 0.0625),
    (512, 1, 0.125),
    (512, 1, 0.25),
    (512, 4, 0.125),
    (768, 1, 0.125),
    (1024, 1, 0.0),
    (1024, 1, 0.015625),
    (1024, 1, 0.03125),
    (1024, 1, 0.0625),
    (1024, 1, 0.125),
    (1024, 2, 0.0625),
]


def untiled_labels(network, image: np.ndarray, device: str) -> np.ndarray:
    """Argmax of one pass over the whole image with the forward pass ``predict`` uses
    (same dtype and layout), so that a difference from it is the tiling's alone."""
    import torch

    from napari_unet._device import autocast_dtype, resolve_device
    from napari_unet._inference import make_forward

    target = resolve_device(device)
    forward = make_forward(network, target, autocast_dtype(target, None), softmax=True)
    d = network.divisor
    pad_y, pad_x = -image.shape[0] % d, -image.shape[1] % d
    padded = np.pad(image, ((0, pad_y), (0, pad_x)), mode="reflect")
    with torch.inference_mode():
        scores = forward(padded[None, None].astype(np.float32))[0]
    return scores[:, : image.shape[0], : image.shape[1]].argmax(0)


def measure(data: Path, *, size: int = 2048, repeats: int = 7, device: str = "cpu") -> dict:
    from napari_unet import PredictConfig, predict
    from napari_unet.tiling import TileGrid

    common.set_threads()
    model = common.trained_model(data, device=device)
    network = model.network.eval()
    image = common.mosaic(data, model, size)
    reference = common.reference_labels(network, image)
    same_pass = untiled_labels(network, image, device)
    default = PredictConfig()
    settings = list(SETTINGS)
    key = (default.tile_size, default.batch_size, default.overlap_share)
    if key not in settings:
        settings.append(key)

    def runner(tile: int, batch: int, overlap: float):
        return lambda: predict(
            network, image, tile_size=tile, batch_size=batch, overlap=overlap, device=device
        )

    runs = {setting: runner(*setting) for setting in settings}
    times, results = common.interleaved(runs, repeats)
    rows = []
    base = times[key]
    for (tile, batch, overlap), seconds in times.items():
        grid = TileGrid.plan(image.shape, tile, overlap, network.divisor)
        processed = grid.count * grid.tile_shape[0] * grid.tile_shape[1]
        rows.append(
            {
                "tile": tile,
                "batch": batch,
                "overlap": overlap,
                "tiles": grid.count,
                "waste": processed / image.size,
                "mpix_per_s": image.size / 1e6 / common.median(seconds),
                "best_mpix_per_s": image.size / 1e6 / min(seconds),
                # the median over rounds of the default's time over this row's, both from
                # the same round: robust to the machine's drift between rounds
                "paired_vs_default": common.median(
                    [b / t for b, t in zip(base, seconds, strict=True)]
                ),
                "overlap_px": grid.ramp,
                "agreement": float(np.mean(results[(tile, batch, overlap)][-1] == reference)),
                "changed_by_tiling": float(
                    np.mean(results[(tile, batch, overlap)][-1] != same_pass)
                ),
                "default": (tile, batch, overlap) == key,
            }
        )
    return {"image": list(image.shape), "repeats": repeats, "device": device, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    result = measure(args.data, size=args.size, repeats=args.repeats, device=args.device)
    common.save(result, "tiles", args.device, args.json)
    for row in result["rows"]:
        print(
            f"tile {row['tile']:5d} batch {row['batch']} overlap {row['overlap']:.4f} "
            f"tiles {row['tiles']:3d} waste {row['waste']:.2f} {row['mpix_per_s']:6.3f} MPix/s "
            f"vs default {row['paired_vs_default']:.2f}x agree {row['agreement']:.6f} "
            f"changed by tiling {row['changed_by_tiling']:.1e}"
        )


if __name__ == "__main__":
    main()
