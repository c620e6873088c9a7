"""Process-wide settings that change prediction speed without touching the code.

Two settings are read only when a process starts, so each variant runs
``napari_unet.predict`` on the 2048 x 2048 benchmark image in a fresh child
process (one warm-up on a crop, then one timed call); children of the different
variants alternate, and medians are reported.

* ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads sleep at the end of a parallel
  region instead of spinning. Spinning is a little faster on an idle machine and
  much slower when other processes want the same cores.
* glibc's handling of freed memory: by default blocks of more than a few MiB are
  unmapped when freed, so the kernel must fault in and zero fresh pages for the next
  tile's feature maps. The ``napari-unet`` command raises glibc's mmap and trim
  thresholds at start (``napari_unet._device.keep_freed_memory``), and so do the
  other benchmarks; ``BENCH_GLIBC_DEFAULT=1`` turns that off here.

    python benchmarks/environment.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _common as common
import roofline

GLIBC_DEFAULT = {"BENCH_GLIBC_DEFAULT": "1"}
VARIANTS = {
    "OpenMP default (spin), glibc default": {**GLIBC_DEFAULT},
    "OMP_WAIT_POLICY=PASSIVE, glibc default": {"OMP_WAIT_POLICY": "PASSIVE", **GLIBC_DEFAULT},
    "OpenMP default (spin), freed memory kept (as the CLI)": {},
    "OMP_WAIT_POLICY=PASSIVE, freed memory kept (as the CLI)": {"OMP_WAIT_POLICY": "PASSIVE"},
}


def child(data: Path, device: str) -> None:
    """Run in the child: print the seconds of one predict call on the benchmark image, the
    dtype it ran in, and that dtype's matmul peak measured right after it."""
    import torch

    from napari_unet import predict
    from napari_unet._device import autocast_dtype

    common.set_threads()
    model = common.trained_model(data, device=device)
    network = model.network.eval()
    image = common.mosaic(data, model)
    predict(network, image[:1024, :1024], device=device)
    start = time.perf_counter()
    predict(network, image, device=device)
    seconds = time.perf_counter() - start
    dtype = autocast_dtype(torch.device(device), None) or torch.float32
    peak = roofline.matmul_peak(dtype, device, repeats=3)
    flops = roofline.flops_per_pixel(network)
    result = {"seconds": seconds, "pixels": image.size, "peak": peak, "flops_per_pixel": flops}
    print(json.dumps(result))


def measure(data: Path, *, repeats: int = 7, device: str = "cpu") -> dict:
    common.trained_model(data, device=device)  # train once, before the children
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", *GLIBC_DEFAULT)}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    peaks: list[float] = []
    pixels = flops = 0
    for round_ in range(repeats):
        order = list(VARIANTS.items())
        for name, extra in order if round_ % 2 == 0 else order[::-1]:
            done = subprocess.run(
                [sys.executable, __file__, "--child", "--data", str(data), "--device", device],
                env={**base, **extra},
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            times[name].append(result["seconds"])
            peaks.append(result["peak"])
            pixels, flops = result["pixels"], result["flops_per_pixel"]
    rows = [
        {
            "variant": name,
            "env": VARIANTS[name],
            "mpix_per_s": pixels / 1e6 / common.median(seconds),
            "best_mpix_per_s": pixels / 1e6 / min(seconds),
            # the first variant's time over this one's in the same round, median over rounds
            "paired_vs_first": common.median(
                [a / b for a, b in zip(next(iter(times.values())), seconds, strict=True)]
            ),
            # One denominator for all variants: the median peak probed across the children.
            "peak_share": pixels / common.median(seconds) * flops / common.median(peaks),
        }
        for name, seconds in times.items()
    ]
    return {"device": device, "repeats": repeats, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.data, args.device)
        return
    result = measure(args.data, repeats=args.repeats, device=args.device)
    common.save(result, "environment", args.device, args.json)
    for row in result["rows"]:
        print(f"{row['variant']:48s} {row['mpix_per_s']:.3f} MPix/s")


if __name__ == "__main__":
    main()
