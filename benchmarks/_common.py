"""Shared pieces of the benchmarks: threads, data, trained weights, timing.

Every script pins torch to the machine's cores (2 here) so that runs are
comparable, and uses weights from a short real training on ISBI 2012, cached
under ``benchmarks/_work/`` (git-ignored), so that argmax agreement is measured
on confident, realistic outputs rather than on the near-ties of random weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
WEIGHTS = WORK / "isbi_depth4_base32.safetensors"
TRAIN_STEPS = 60
ARCHITECTURE = {"depth": 4, "base_channels": 32}
"""The network benchmarked: U-Net depth 4, 32 base channels (7.8 M parameters)."""


def set_threads(threads: int = THREADS) -> None:
    """Pin intra-op threads (2: the cores of the CPU benchmark machine; BENCH_THREADS
    overrides it) and apply the process settings of the ``napari-unet`` command.

    The command line lets glibc keep freed memory for reuse
    (:func:`napari_unet._device.keep_freed_memory`); the benchmarks do the same for
    every contender, MONAI included, unless ``BENCH_GLIBC_DEFAULT=1`` (used by
    environment.py to measure what the setting is worth).
    """
    torch.set_num_threads(threads)
    if os.environ.get("BENCH_GLIBC_DEFAULT") != "1":
        from napari_unet._device import keep_freed_memory

        keep_freed_memory()


def machine() -> str:
    """The CPU's name, its core count and the torch threads used."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores, {THREADS} torch threads)"


def load_isbi(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """ISBI 2012 training stack: images (25, 512, 512) uint8, labels (25, 512, 512) 0/1."""
    import tifffile

    root = Path(data) / "isbi2012"
    volume = tifffile.imread(root / "train-volume.tif")
    labels = tifffile.imread(root / "train-labels.tif")
    return volume, labels


def trained_model(data: Path, *, steps: int = TRAIN_STEPS, device: str = "cpu"):
    """A depth-4, 32-base-channel U-Net trained on ISBI slices 0-19 (cached on disk;
    trained on ``device`` if not)."""
    from napari_unet import ModelConfig, TrainConfig, load_model, train

    if not WEIGHTS.exists():
        volume, labels = load_isbi(data)
        # A step budget, not a time budget, so that the weights do not depend on the
        # load of the machine; small patches keep the steps short on 2 cores.
        config = TrainConfig(
            epochs=2,
            steps_per_epoch=steps // 2,
            patch_size=128,
            batch_size=8,
            seed=0,
            device=device,
        )
        model = train(
            volume[:20],
            labels[:20],
            config,
            model_config=ModelConfig(**ARCHITECTURE),
            channel_axis=None,
        )
        WORK.mkdir(parents=True, exist_ok=True)
        model.save(WEIGHTS)
    return load_model(WEIGHTS)


def mosaic(data: Path, model, size: int = 2048) -> np.ndarray:
    """A (size, size) float32 test image: ISBI slices 20-24 (not trained on), flipped and
    rotated into a mosaic, normalised as the model normalises its inputs."""
    volume, _ = load_isbi(data)
    held_out = volume[20:25]
    tile = held_out.shape[-1]
    n = -(-size // tile)
    rows = []
    for r in range(n):
        row = []
        for c in range(n):
            k = r * n + c
            plane = np.rot90(held_out[k % len(held_out)], k // len(held_out))
            row.append(plane[:, ::-1] if (r + c) % 2 else plane)
        rows.append(np.concatenate(row, axis=1))
    image = np.concatenate(rows, axis=0)[:size, :size]
    cyx = image[None].astype(np.float32)
    return model.normalization(cyx)[0]


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call, after a garbage collection."""
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def interleaved(
    runs: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list]]:
    """Call each callable ``repeats`` times, in rounds (a new order each round), so that
    load from other processes on a shared machine hits every contender alike. Returns, per name, the
    seconds and the results of every call."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, list] = {name: [] for name in runs}
    order = list(runs)
    rng = random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)  # no contender always follows the same one
        for name in order:
            fn = runs[name]
            seconds, result = timed(fn)
            times[name].append(seconds)
            results[name].append(result)
    return times, results


def median(values) -> float:
    return float(statistics.median(values))


def dtype_name(dtype: torch.dtype | None) -> str:
    """ "fp32", "bf16", "fp16"."""
    return {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[
        dtype
    ]


def padded_forward(network, image: np.ndarray) -> np.ndarray:
    """Untiled fp32 reference: logits (K, Y, X) of the whole image in one forward pass,
    reflect-padded to a multiple of the network's divisor and cropped back."""
    network = network.eval()
    height, width = image.shape
    d = network.divisor
    pad_y, pad_x = -height % d, -width % d
    padded = np.pad(image, ((0, pad_y), (0, pad_x)), mode="reflect")
    with torch.inference_mode():
        logits = network(torch.from_numpy(np.ascontiguousarray(padded))[None, None])
    return logits[0, :, :height, :width].numpy()


def reference_labels(network, image: np.ndarray) -> np.ndarray:
    """Argmax of the untiled fp32 pass, cached next to the weights it was computed with."""
    stamp = WEIGHTS.stat().st_mtime_ns
    path = WORK / f"reference_{image.shape[0]}x{image.shape[1]}_{stamp}.npy"
    if path.exists():
        return np.load(path)
    labels = padded_forward(network, image).argmax(0).astype(np.uint8)
    np.save(path, labels)
    return labels


def parser(doc: str, *, data: bool = True, cpu_only: bool = False) -> argparse.ArgumentParser:
    """The options every benchmark script takes: --data (unless ``data`` is False),
    --device (only ``cpu`` for scripts that measure the CPU alone) and --json; scripts
    add their own."""
    out = argparse.ArgumentParser(description=doc.splitlines()[0])
    if data:
        out.add_argument("--data", type=Path, default=DEFAULT_DATA)
    out.add_argument("--device", default="cpu", choices=["cpu"] if cpu_only else None)
    out.add_argument("--json", type=Path, default=None, help="where to write the result")
    return out


def save(result: dict, name: str, device: str, path: Path | None = None) -> Path:
    """Write a benchmark's result to ``path`` or ``_work/<name>_<device>.json``, where
    run_all.py reads it."""
    path = path or WORK / f"{name}_{device.split(':')[0]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path
