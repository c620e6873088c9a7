"""Inference: napari_unet.predict against MONAI sliding_window_inference.

Both run the same module (napari_unet.UNet, depth 4, 32 base channels) with the
same trained weights on the same 2048 x 2048 image. MONAI runs as its tutorials
use it: tiles of 256, overlap 0.25, gaussian blending, fp32, 4 tiles per batch,
under ``torch.no_grad``. napari-unet runs ``predict`` with its defaults. The runs
are interleaved with matrix-multiplication probes (the roofline's peak, measured
under the same load) and medians are reported. Each result's labels (argmax) are
compared with the untiled fp32 forward pass of the same module over the whole image.

    python benchmarks/inference.py --data ../shared/data [--device cuda]
"""

from __future__ import annotations

from pathlib import Path

import _common as common
import numpy as np
import roofline
import torch

MONAI_TILE = 256
MONAI_OVERLAP = 0.25
MONAI_BATCH = 4


def monai_runner(network, image: np.ndarray, device: torch.device):
    from monai.inferers import sliding_window_inference

    network = network.to(device).eval()
    tensor = torch.from_numpy(image)[None, None].to(device)

    def run() -> np.ndarray:
        with torch.no_grad():
            logits = sliding_window_inference(
                tensor,
                roi_size=(MONAI_TILE, MONAI_TILE),
                sw_batch_size=MONAI_BATCH,
                predictor=network,
                overlap=MONAI_OVERLAP,
                mode="gaussian",
            )
        return logits[0].argmax(0).cpu().numpy().astype(np.uint8)

    return run


def ours_runner(network, image: np.ndarray, device: torch.device):
    from napari_unet import predict

    def run() -> np.ndarray:
        return predict(network, image, device=str(device))

    return run


def peak_probe(dtype: torch.dtype, device: torch.device):
    return lambda: roofline.matmul_peak(dtype, str(device), repeats=3)


def by_state(network, image: np.ndarray, dtype: torch.dtype, device: torch.device, runs: int):
    """Our ``predict`` as a share of the matmul peak in each state of the machine.

    This virtual machine's bf16 matrix rate switches between two levels (about 700 and
    2100 GFLOP/s) within seconds, and a run compared with a probe taken in the other
    state says nothing about either. So each run here is bracketed by a probe right
    before and right after it and assigned to a state by its probes (:func:`classify`),
    and each run is compared with the mean of its own two probes.
    """
    pixels = image.size / 1e6
    flops = roofline.flops_per_pixel(network.cpu())
    network.to(device)
    run = ours_runner(network, image, device)
    probe = peak_probe(dtype, device)
    records = []
    for _ in range(runs):
        before = probe()
        seconds, _ = common.timed(run)
        records.append({"seconds": seconds, "probe_before": before, "probe_after": probe()})
    return {"runs": records, **classify(records, pixels, flops)}


def classify(records: list[dict], mpix: float, flops: float) -> dict:
    """Group bracketed runs by the machine's state (see :func:`by_state`).

    With probes more than 1.5x apart, the probes on each side of their geometric mean
    set the level of a state (their median); a run belongs to a state when both of its
    probes lie within 1.25x of that level, and is left out otherwise (caught during a
    change, or between the levels)."""
    probes = [r[k] for r in records for k in ("probe_before", "probe_after")]
    low, high = min(probes), max(probes)
    threshold = (low * high) ** 0.5 if high > 1.5 * low else None
    levels = (
        {"steady": common.median(probes)}
        if threshold is None
        else {
            "slow": common.median([p for p in probes if p < threshold]),
            "fast": common.median([p for p in probes if p >= threshold]),
        }
    )
    groups: dict[str, list[dict]] = {}
    for r in records:
        pair = (r["probe_before"], r["probe_after"])
        r.pop("share", None)
        for state, level in levels.items():
            if all(level / 1.25 <= p <= level * 1.25 for p in pair):
                r["share"] = mpix / r["seconds"] * 1e6 * flops / (sum(pair) / 2)
                groups.setdefault(state, []).append(r)
                break
    return {
        "threshold_flops": threshold,
        "levels_flops": levels,
        "states": {
            state: {
                "runs": len(rs),
                "mpix_per_s": mpix / common.median([r["seconds"] for r in rs]),
                "flop_rate": mpix / common.median([r["seconds"] for r in rs]) * 1e6 * flops,
                "peak_flops": common.median(
                    [(r["probe_before"] + r["probe_after"]) / 2 for r in rs]
                ),
                "share": common.median([r["share"] for r in rs]),
            }
            for state, rs in groups.items()
        },
    }


def measure(
    data: Path, *, size: int = 2048, repeats: int = 5, device: str = "cpu", state_runs: int = 48
) -> dict:
    from napari_unet import PredictConfig
    from napari_unet._device import autocast_dtype

    common.set_threads()
    torch_device = torch.device(device)
    model = common.trained_model(data, device=device)
    network = model.network.eval()
    image = common.mosaic(data, model, size)
    reference = common.reference_labels(network, image)
    ours_dtype = autocast_dtype(torch_device, None) or torch.float32
    dtypes = {"fp32": torch.float32, common.dtype_name(ours_dtype): ours_dtype}
    runs = {
        "monai": monai_runner(network, image, torch_device),
        "ours": ours_runner(network, image, torch_device),
    }
    for name, dtype in dtypes.items():
        runs[f"peak_{name}"] = peak_probe(dtype, torch_device)
    times, results = common.interleaved(runs, repeats)
    flops = roofline.flops_per_pixel(network.cpu())
    pixels = image.size / 1e6
    out = {
        "device": device,
        "image": list(image.shape),
        "repeats": repeats,
        "flops_per_pixel": flops,
        "monai_settings": {
            "tile": MONAI_TILE,
            "overlap": MONAI_OVERLAP,
            "mode": "gaussian",
            "sw_batch_size": MONAI_BATCH,
            "precision": "fp32",
        },
        "ours_settings": {
            **PredictConfig().model_dump(include={"tile_size", "batch_size"}),
            "overlap": PredictConfig().overlap_share,
            "precision": common.dtype_name(ours_dtype),
        },
        "peaks": {
            name: {
                "median_flops": common.median(results[f"peak_{name}"]),
                "best_flops": max(results[f"peak_{name}"]),
            }
            for name in dtypes
        },
    }
    for name, precision in (("monai", "fp32"), ("ours", common.dtype_name(ours_dtype))):
        seconds = times[name]
        rate = pixels / common.median(seconds)
        peak = out["peaks"][precision]
        out[name] = {
            "seconds": seconds,
            "median_s": common.median(seconds),
            "mpix_per_s": rate,
            "best_mpix_per_s": pixels / min(seconds),
            "agreement": float(np.mean(results[name][-1] == reference)),
            "precision": precision,
            "roofline_fraction": rate * 1e6 * flops / peak["median_flops"],
            "best_roofline_fraction": pixels / min(seconds) * 1e6 * flops / peak["best_flops"],
            # The most severe reading: the median run against the fastest probe of all.
            "worst_case_roofline_fraction": rate * 1e6 * flops / peak["best_flops"],
            # Each run against the probe of its own round (run right after it), median over
            # rounds: follows the machine's state when it changes between rounds.
            "paired_roofline_fraction": common.median(
                [
                    pixels / t * 1e6 * flops / probe
                    for t, probe in zip(seconds, results[f"peak_{precision}"], strict=True)
                ]
            ),
        }
    out["speedup"] = out["monai"]["median_s"] / out["ours"]["median_s"]
    if state_runs:
        out["ours"]["by_state"] = by_state(network, image, ours_dtype, torch_device, state_runs)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--state-runs", type=int, default=48, help="runs of predict bracketed by probes"
    )
    args = parser.parse_args(argv)
    result = measure(
        args.data,
        size=args.size,
        repeats=args.repeats,
        device=args.device,
        state_runs=args.state_runs,
    )
    common.save(result, "inference", args.device, args.json)
    for name in ("monai", "ours"):
        r = result[name]
        print(
            f"{name:6s} {r['mpix_per_s']:.3f} MPix/s ({r['precision']}), agreement "
            f"{r['agreement']:.6f}, {100 * r['roofline_fraction']:.1f}% of the matmul peak"
        )
    print(f"speed-up {result['speedup']:.2f}x")
    for state, g in result["ours"].get("by_state", {}).get("states", {}).items():
        print(
            f"{state}: {g['runs']} runs, {g['mpix_per_s']:.3f} MPix/s, peak "
            f"{g['peak_flops'] / 1e9:.0f} GFLOP/s, share {100 * g['share']:.1f}%"
        )


if __name__ == "__main__":
    main()
