"""Where the forward pass spends its time: each layer of the U-Net, timed alone.

Runs the forward pass ``predict`` uses (``make_forward``'s network: BatchNorm folded,
channels-last, bf16 weights where the CPU runs bf16 fast) on one tile of the
benchmark image and times every convolution, transposed convolution, ReLU and
pooling layer with forward hooks (the CPU runs them synchronously); the rest of the
pass (concatenations of the skip connections, the softmax) is the remainder. Each
layer's FLOP/s is set against the matmul peak probed right after the passes.

    python benchmarks/layers.py --data ../shared/data
"""

from __future__ import annotations

import collections
import copy
import time
from pathlib import Path

import _common as common
import numpy as np
import roofline
import torch
from torch import nn


def _flops(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    if isinstance(module, nn.ConvTranspose2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return 2.0 * k * module.in_channels * module.out_channels * x.shape[0] * x[0, 0].numel()
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return 2.0 * k * module.in_channels * module.out_channels * y.shape[0] * y[0, 0].numel()
    return 0.0


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.ConvTranspose2d):
        return "2x2 up-convolution"
    if isinstance(module, nn.Conv2d):
        return "1x1 head" if module.kernel_size == (1, 1) else "3x3 convolution"
    if isinstance(module, nn.ReLU):
        return "ReLU"
    return "max pooling"


def measure(data: Path, *, repeats: int = 9) -> dict:
    from napari_unet import PredictConfig
    from napari_unet._device import autocast_dtype
    from napari_unet.model import fuse_batchnorm

    common.set_threads()
    model = common.trained_model(data)
    dtype = autocast_dtype(torch.device("cpu"), None) or torch.float32
    network = fuse_batchnorm(copy.deepcopy(model.network).eval())
    network = network.to(dtype).to(memory_format=torch.channels_last)
    tile = PredictConfig().tile_size
    image = common.mosaic(data, model)[:tile, :tile]
    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)

    times: dict[str, list[float]] = collections.defaultdict(list)
    flops: dict[str, float] = {}
    kinds: dict[str, str] = {}
    started: dict[str, float] = {}

    def before(name):
        def hook(module, args):
            started[name] = time.perf_counter()

        return hook

    def after(name):
        def hook(module, args, output):
            times[name].append(time.perf_counter() - started[name])
            flops[name] = _flops(module, args[0], output)

        return hook

    layer_types = (nn.Conv2d, nn.ConvTranspose2d, nn.ReLU, nn.MaxPool2d)
    for name, module in network.named_modules():
        if isinstance(module, layer_types):
            kinds[name] = _kind(module)
            module.register_forward_pre_hook(before(name))
            module.register_forward_hook(after(name))
    totals = []
    with torch.inference_mode():
        for _ in range(repeats + 2):
            start = time.perf_counter()
            torch.softmax(network(x).float(), dim=1)
            totals.append(time.perf_counter() - start)
    peak = roofline.matmul_peak(dtype, "cpu", repeats=3)
    # Samples per pass, summed over calls (the pooling layer runs once per level); the
    # first two passes are warm-up.
    passes = len(totals)
    per_pass = {}
    for name, t in times.items():
        n = len(t) // passes
        per_pass[name] = common.median([sum(t[i * n : (i + 1) * n]) for i in range(2, passes)])
    total = common.median(totals[2:])
    by_kind: dict[str, dict] = {}
    for name, seconds in per_pass.items():
        entry = by_kind.setdefault(kinds[name], {"seconds": 0.0, "flops": 0.0})
        entry["seconds"] += seconds
        entry["flops"] += flops[name] * (len(times[name]) // passes)
    accounted = sum(entry["seconds"] for entry in by_kind.values())
    by_kind["rest (skip concatenation, softmax, hooks)"] = {
        "seconds": max(total - accounted, 0.0),
        "flops": 0.0,
    }
    convs = {
        name: {"seconds": per_pass[name], "flops": flops[name]}
        for name in per_pass
        if kinds[name] == "3x3 convolution"
    }
    return {
        "tile": tile,
        "dtype": common.dtype_name(dtype),
        "repeats": repeats,
        "pass_seconds": total,
        "peak_flops": peak,
        "by_kind": by_kind,
        "convolutions": convs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    if args.device != "cpu":
        parser.error("layers.py times the CPU forward pass only (--device cpu)")
    result = measure(args.data, repeats=args.repeats)
    common.save(result, "layers", "cpu", args.json)
    peak = result["peak_flops"]
    for kind, entry in sorted(result["by_kind"].items(), key=lambda kv: -kv[1]["seconds"]):
        share = entry["seconds"] / result["pass_seconds"]
        rate = entry["flops"] / entry["seconds"] if entry["seconds"] and entry["flops"] else 0
        print(f"{kind:45s} {1e3 * entry['seconds']:7.1f} ms {share:6.1%} {rate / peak:6.1%} of peak")


if __name__ == "__main__":
    main()
