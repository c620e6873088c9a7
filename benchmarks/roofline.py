"""The hardware limit: the U-Net's FLOPs per pixel and the machine's matmul peak.

FLOPs per pixel come from ``torch.utils.flop_counter.FlopCounterMode`` on one
forward pass (a multiply-add counts 2). The peak is the best of several large
``torch.mm`` calls in each dtype, a practical ceiling for convolutions, which
oneDNN runs as matrix multiplications. ``pixels/s x FLOPs/pixel / peak`` is the
share of that ceiling a prediction reaches.

    python benchmarks/roofline.py [--device cuda]
"""

from __future__ import annotations

import json
import time

import _common as common
import torch


def flops_per_pixel(network, size: int = 256, device: str = "cpu") -> float:
    """Forward FLOPs of ``network`` per input pixel, counted on a (1, C, size, size) input."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, network.config.in_channels, size, size, device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        network.eval()(x)
    return counter.get_total_flops() / size**2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    dtype: torch.dtype, device: str = "cpu", n: int | None = None, repeats: int = 7
) -> float:
    """Best FLOP/s of square ``torch.mm`` products in ``dtype``.

    On the CPU the best over n = 1024, 2048 and 4096 (``repeats`` products each): on the
    benchmark machine a 1024 product (in cache) runs at a steady rate while 4096 ones
    swing by 2x from one allocation to the next, so one size alone is a poor ceiling.
    On a GPU, n = 8192. ``n`` forces one size.
    """
    device = torch.device(device)
    sizes = [n] if n else ([1024, 2048, 4096] if device.type == "cpu" else [8192])
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        torch.mm(a, b)
        _sync(device)
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def measure(device: str = "cpu") -> dict:
    common.set_threads()
    from napari_unet import UNet

    network = UNet(**common.ARCHITECTURE).to(device)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if device != "cpu":
        dtypes["fp16"] = torch.float16
    peaks = {name: matmul_peak(dtype, device) for name, dtype in dtypes.items()}
    return {
        "device": device,
        "flops_per_pixel": flops_per_pixel(network, device=device),
        "matmul_peak_flops": peaks,
    }


def main(argv: list[str] | None = None) -> None:
    args = common.parser(__doc__, data=False).parse_args(argv)
    result = measure(args.device)
    common.save(result, "roofline", args.device, args.json)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
