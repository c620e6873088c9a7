"""Where the forward pass spends its time: each kind of operation of the U-Net.

Runs the forward pass ``predict`` uses (``make_forward`` with its defaults: BatchNorm
folded, channels-last, bf16 weights where the CPU runs bf16 fast, each 3x3
convolution fused with its ReLU) on one tile of the benchmark image under
``torch.profiler`` and sums the time of each operator over the pass; the rest of the
pass (softmax, copies in and out, Python, the profiler's own bookkeeping) is the
remainder of the wall time of the profiled passes. Each kind's FLOP/s is set against the matmul peak
probed right after the passes.

    python benchmarks/layers.py --data ../shared/data
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import _common as common
import numpy as np
import roofline
import torch
from torch import nn

# profiler operator -> kind of layer
KINDS = {
    "mkldnn::_convolution_pointwise": "3x3 convolution + ReLU (fused)",
    "aten::conv2d": "other convolutions (1x1 head)",
    "aten::conv_transpose2d": "2x2 up-convolution",
    "aten::cat": "skip concatenation",
    "aten::max_pool2d": "max pooling",
    "aten::relu": "ReLU",
    "aten::relu_": "ReLU",
}


def _conv_flops(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    k = module.kernel_size[0] * module.kernel_size[1]
    pixels = (x if isinstance(module, nn.ConvTranspose2d) else y)[0, 0].numel() * y.shape[0]
    return 2.0 * k * module.in_channels * module.out_channels * pixels


def layer_flops(network: nn.Module, x: torch.Tensor) -> tuple[dict, dict]:
    """FLOPs of one pass by kind, and of each 3x3 convolution by input shape."""
    by_kind: dict[str, float] = collections.defaultdict(float)
    by_shape: dict[tuple, float] = collections.defaultdict(float)

    def hook(module, args, output):
        flops = _conv_flops(module, args[0], output)
        if isinstance(module, nn.ConvTranspose2d):
            by_kind["2x2 up-convolution"] += flops
        elif module.kernel_size == (3, 3):
            by_kind["3x3 convolution + ReLU (fused)"] += flops
            by_shape[tuple(args[0].shape)] += flops
        else:
            by_kind["other convolutions (1x1 head)"] += flops

    handles = [
        m.register_forward_hook(hook)
        for m in network.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    ]
    with torch.inference_mode():
        network(x)
    for handle in handles:
        handle.remove()
    return dict(by_kind), dict(by_shape)


def measure(data: Path, *, repeats: int = 9) -> dict:
    from napari_unet import PredictConfig
    from napari_unet._device import autocast_dtype
    from napari_unet._inference import make_forward

    common.set_threads()
    model = common.trained_model(data)
    device = torch.device("cpu")
    dtype = autocast_dtype(device, None)
    forward = make_forward(model.network, device, dtype, softmax=True)
    tile = PredictConfig().tile_size
    image = common.mosaic(data, model)[:tile, :tile]
    batch = np.ascontiguousarray(image, np.float32)[None, None]

    for _ in range(2):
        forward(batch)
    with torch.profiler.profile(record_shapes=True) as profile:
        start = time.perf_counter()
        for _ in range(repeats):
            forward(batch)
        total = (time.perf_counter() - start) / repeats
    peak = roofline.matmul_peak(dtype or torch.float32, "cpu", repeats=3)

    seconds: dict[str, float] = collections.defaultdict(float)
    shapes: dict[tuple, float] = collections.defaultdict(float)
    for event in profile.key_averages(group_by_input_shape=True):
        kind = KINDS.get(event.key)
        if kind is None:
            continue
        seconds[kind] += event.cpu_time_total / 1e6 / repeats
        if event.key == "mkldnn::_convolution_pointwise":
            shapes[tuple(event.input_shapes[0])] += event.cpu_time_total / 1e6 / repeats
    x = torch.from_numpy(batch)
    flops, flops_by_shape = layer_flops(model.network.eval(), x)
    fused = "3x3 convolution + ReLU (fused)" in seconds
    if not fused:  # the fused path did not apply: every convolution is an aten::conv2d
        flops["other convolutions (1x1 head)"] += flops.pop("3x3 convolution + ReLU (fused)")
    by_kind = {k: {"seconds": v, "flops": flops.get(k, 0.0)} for k, v in seconds.items()}
    by_kind["rest (softmax, copies, Python, profiler)"] = {
        "seconds": max(total - sum(seconds.values()), 0.0),
        "flops": 0.0,
    }
    convs = {
        "x".join(map(str, shape)): {"seconds": t, "flops": flops_by_shape[shape]}
        for shape, t in shapes.items()
        if shape in flops_by_shape
    }
    return {
        "tile": tile,
        "dtype": common.dtype_name(dtype),
        "repeats": repeats,
        "fused": fused,
        "pass_seconds": total,
        "peak_flops": peak,
        "by_kind": by_kind,
        "convolutions": convs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__, cpu_only=True)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    result = measure(args.data, repeats=args.repeats)
    common.save(result, "layers", "cpu", args.json)
    peak = result["peak_flops"]
    for kind, entry in sorted(result["by_kind"].items(), key=lambda kv: -kv[1]["seconds"]):
        share = entry["seconds"] / result["pass_seconds"]
        rate = entry["flops"] / entry["seconds"] if entry["seconds"] and entry["flops"] else 0
        print(
            f"{kind:45s} {1e3 * entry['seconds']:7.1f} ms {share:6.1%} {rate / peak:6.1%} of peak"
        )


if __name__ == "__main__":
    main()
