"""Speed levers of the inference forward pass, one at a time.

Each variant runs the same trained U-Net on the same batch of real image tiles
(``PredictConfig`` tile size, one tile per batch); variants are interleaved and
the median is reported, with the argmax agreement and the largest probability
difference against the plain fp32 pass. The variants are built with
``napari_unet._inference.make_forward``, the code ``predict`` runs, with one
option changed at a time; the baseline is the module as MONAI would call it
(fp32, NCHW, BatchNorm, ``torch.no_grad``).

    python benchmarks/levers.py --data ../shared/data [--device cuda]
"""

from __future__ import annotations

import time
from pathlib import Path

import _common as common
import numpy as np
import roofline
import torch
from inference import peak_probe


def _baseline(network, device: torch.device):
    network = network.to(device).eval()

    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y = network(torch.from_numpy(batch).to(device))
        return torch.softmax(y, dim=1).cpu().numpy()

    return forward


def variants(network, device: torch.device) -> dict[str, dict]:
    """name -> {"options": make_forward keywords, "dtype": autocast dtype}."""
    from napari_unet._device import autocast_dtype

    low = autocast_dtype(device, True)
    low_name = str(low).replace("torch.", "")
    separate = {"fuse_relu": False}
    table = {
        "fp32, inference_mode": {"dtype": None, "fuse": False, "channels_last": False},
        "+ BatchNorm folded": {"dtype": None, "fuse": True, "channels_last": False},
        "+ channels_last": {"dtype": None, "fuse": True, "channels_last": True, **separate},
        f"+ {low_name}": {"dtype": low, "fuse": True, "channels_last": True, **separate},
        "+ convolution and ReLU fused (default)": {
            "dtype": low,
            "fuse": True,
            "channels_last": True,
        },
        f"{low_name} without channels_last": {"dtype": low, "fuse": True, "channels_last": False},
        f"{low_name} without BatchNorm folding": {
            "dtype": low,
            "fuse": False,
            "channels_last": True,
        },
        f"{low_name} + torch.compile": {
            "dtype": low,
            "fuse": True,
            "channels_last": True,
            "compiled": True,
        },
    }
    if device.type == "cuda":
        table["fp16 autocast, channels_last, BatchNorm folded"] = {
            "dtype": torch.float16,
            "fuse": True,
            "channels_last": True,
        }
        table[f"{low_name} + torch.compile, CUDA graphs"] = {
            "dtype": low,
            "fuse": True,
            "channels_last": True,
            "compiled": True,
            "cuda_graphs": True,
        }
    return table


def measure(data: Path, *, device: str = "cpu", repeats: int = 15, batch: int = 1) -> dict:
    from napari_unet import PredictConfig
    from napari_unet._inference import make_forward

    common.set_threads()
    torch_device = torch.device(device)
    model = common.trained_model(data, device=device)
    network = model.network.eval()
    tile = PredictConfig().tile_size
    image = common.mosaic(data, model, max(2048, tile * batch))
    tiles = np.stack([image[i * tile : (i + 1) * tile, :tile] for i in range(batch)])[:, None]
    tiles = np.ascontiguousarray(tiles, dtype=np.float32)

    forwards = {"fp32, NCHW, BatchNorm, no_grad (MONAI's way)": _baseline(network, torch_device)}
    setup_seconds = {}
    dtypes = {name: "fp32" for name in forwards}
    for name, spec in variants(network, torch_device).items():
        spec = dict(spec)
        dtype = spec.pop("dtype")
        dtypes[name] = common.dtype_name(dtype)
        start = time.perf_counter()
        forward = make_forward(network, torch_device, dtype, True, **spec)
        forward(tiles)  # first call: oneDNN primitive creation, compilation
        setup_seconds[name] = time.perf_counter() - start
        forwards[name] = forward
    reference = forwards["fp32, NCHW, BatchNorm, no_grad (MONAI's way)"](tiles)

    def run(forward):
        def call():
            out = forward(tiles)
            if torch_device.type == "cuda":
                torch.cuda.synchronize()
            return out

        return call

    runs = {name: run(forward) for name, forward in forwards.items()}
    for name in sorted(set(dtypes.values())):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        runs[f"peak_{name}"] = peak_probe(dtype, torch_device)
    times, results = common.interleaved(runs, repeats)
    flops = roofline.flops_per_pixel(network.cpu())
    peaks = {name: common.median(results[f"peak_{name}"]) for name in sorted(set(dtypes.values()))}
    pixels = tiles.shape[0] * tile * tile / 1e6
    rows = []
    for name, seconds in times.items():
        if name.startswith("peak_"):
            continue
        out = results[name][-1]
        rows.append(
            {
                "variant": name,
                "dtype": dtypes[name],
                "seconds": seconds,
                "mpix_per_s": pixels / common.median(seconds),
                "best_mpix_per_s": pixels / min(seconds),
                "first_call_s": setup_seconds.get(name),
                "peak_share": pixels / common.median(seconds) * 1e6 * flops / peaks[dtypes[name]],
                "agreement": float(np.mean(out.argmax(1) == reference.argmax(1))),
                "max_abs_prob_diff": float(np.abs(out - reference).max()),
            }
        )
    return {
        "device": device,
        "tile": tile,
        "batch": batch,
        "repeats": repeats,
        "flops_per_pixel": flops,
        "peaks": peaks,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    result = measure(args.data, device=args.device, repeats=args.repeats, batch=args.batch)
    common.save(result, "levers", args.device, args.json)
    for row in result["rows"]:
        print(
            f"{row['variant']:50s} {row['mpix_per_s']:7.3f} MPix/s "
            f"agree {row['agreement']:.6f} max|dp| {row['max_abs_prob_diff']:.2g}"
        )


if __name__ == "__main__":
    main()
