"""Peak memory of ``napari-unet predict`` on large synthetic images.

Writes a synthetic uint8 TIFF of SIZE x SIZE pixels tile by tile (never whole in
memory), a small model (U-Net depth 2, 8 base channels, random weights: memory does
not depend on the weights), runs the command under ``/usr/bin/time -v`` and reports
the peak resident set size and the wall time as a Markdown table row, the numbers
recorded in docs/benchmarks.md ("Memory").

    python benchmarks/memory.py 16384 32768
    python benchmarks/memory.py 16384 --layout plain --mode semantic instances

``benchmarks/run_all.py`` runs it for 4096, 8192 and 16384 in both modes and writes the
Memory table of docs/benchmarks.md from its ``--json`` output.

``--layout tiled`` (default) writes a zlib-compressed tiled TIFF (read through
tifffile's zarr interface); ``plain`` an uncompressed contiguous one (memory-mapped
region by region). Files go to benchmarks/_work/ (git-ignored) unless --work says
otherwise; they are several GB for the largest sizes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TILE = 256


def synthetic_tile(y: int, x: int, size: int = TILE) -> np.ndarray:
    """Bright blobs on a noisy background; the same (y, x) always gives the same tile."""
    rng = np.random.default_rng([y, x])
    yy, xx = np.ogrid[:size, :size]
    tile = rng.normal(30, 8, (size, size)).astype(np.float32)
    for cy, cx, r in zip(*rng.integers(0, size, (2, 12)), rng.integers(4, 12, 12), strict=True):
        tile += 120 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
    return tile.clip(0, 255).astype(np.uint8)


def write_image(path: Path, size: int, layout: str) -> None:
    """A size x size uint8 TIFF, written one tile (or one strip of tiles) at a time."""
    import tifffile

    if layout == "tiled":
        tiles = (synthetic_tile(y, x) for y in range(0, size, TILE) for x in range(0, size, TILE))
        tifffile.imwrite(
            path,
            tiles,
            shape=(size, size),
            dtype=np.uint8,
            tile=(TILE, TILE),
            compression="zlib",
            bigtiff=True,
        )
        return
    tifffile.imwrite(path, shape=(size, size), dtype=np.uint8, bigtiff=True)
    image = tifffile.memmap(path, mode="r+")
    for y in range(0, size, TILE):
        image[y : y + TILE] = np.concatenate(
            [synthetic_tile(y, x) for x in range(0, size, TILE)], axis=1
        )
        image.flush()
    del image


def write_model(path: Path, mode: str) -> None:
    import torch

    from napari_unet import UNet
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.model import SegmentationModel

    torch.manual_seed(0)
    if mode == "instances":
        encoding = LabelEncoding(
            "instances", ["background", "interior", "boundary"], [0, 1, 2], [0, 1, 2], []
        )
    else:
        encoding = LabelEncoding("semantic", ["background", "class 1"], [0, 1], [0, 1], [])
    network = UNet(1, encoding.num_classes, depth=2, base_channels=8)
    SegmentationModel(network, encoding, Normalization()).save(path)


def measure(command: list[str]) -> tuple[float, float]:
    """Peak RSS (MiB) and wall time (s) of ``command`` under /usr/bin/time -v."""
    if not Path("/usr/bin/time").exists():
        sys.exit("benchmarks/memory.py needs GNU time: apt-get install time")
    start = time.perf_counter()
    run = subprocess.run(
        ["/usr/bin/time", "-v", *command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    seconds = time.perf_counter() - start
    report = run.stderr.decode(errors="replace")
    if run.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{report[-3000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", report).group(1))
    return peak_kib / 1024, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="+", type=int, help="image side(s) in pixels")
    parser.add_argument("--layout", choices=["tiled", "plain"], default="tiled")
    parser.add_argument(
        "--mode", choices=["semantic", "instances"], nargs="+", default=["semantic"]
    )
    parser.add_argument("--format", choices=["tif", "zarr"], default="tif")
    parser.add_argument("--work", type=Path, default=HERE / "_work" / "memory")
    parser.add_argument("--keep", action="store_true", help="keep the images and results")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "napari_unet.cli"]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print("| image | input TIFF | mode | output | peak RSS | wall time |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for mode in args.mode:
        model = args.work / f"model-{mode}.safetensors"
        write_model(model, mode)
        for size in args.sizes:
            image = args.work / f"synthetic-{size}-{args.layout}.tif"
            if not image.exists():
                write_image(image, size, args.layout)
            out = args.work / f"out-{size}"
            shutil.rmtree(out, ignore_errors=True)
            command = [
                *cli,
                "predict",
                "--model",
                str(model),
                "--input",
                str(image),
                "--output",
                str(out),
                "--format",
                args.format,
                "--device",
                "cpu",
            ]
            peak, seconds = measure(command)
            rows.append(
                {
                    "size": size,
                    "layout": args.layout,
                    "mode": mode,
                    "format": args.format,
                    "peak_mib": peak,
                    "seconds": seconds,
                }
            )
            print(
                f"| {size} x {size} uint8 ({size * size / 2**20:.0f} MPix) | {args.layout} | "
                f"{mode} | {args.format} | {peak:.0f} MiB | {seconds / 60:.1f} min |",
                flush=True,
            )
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    if not args.keep:  # the images serve every mode, then go
        for size in args.sizes:
            (args.work / f"synthetic-{size}-{args.layout}.tif").unlink(missing_ok=True)
    if args.json:
        from napari_unet.config import PredictConfig

        defaults = PredictConfig()
        args.json.write_text(
            json.dumps(
                {
                    "machine": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                    "date": datetime.date.today().isoformat(),
                    "tile_size": defaults.tile_size,
                    "overlap_pixels": round(defaults.overlap_share * defaults.tile_size),
                    "rows": rows,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
