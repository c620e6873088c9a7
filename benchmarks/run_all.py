"""Run the speed benchmarks and rewrite the speed section of docs/benchmarks.md.

    python benchmarks/run_all.py --data ../shared/data --out docs/benchmarks.md
    python benchmarks/run_all.py --device cuda ...      # GPU section (benchmarks/gpu.sh)
    python benchmarks/run_all.py --render-only ...      # redraw from benchmarks/_work/*.json

Each benchmark runs in its own process (each well under 5 minutes on 2 cores) with
the caller's environment: OpenMP's default wait policy, as a user's ``napari-unet``
runs, unless ``OMP_WAIT_POLICY`` is set (``PASSIVE`` gives steadier numbers on a
machine shared with other jobs; see benchmarks/environment.py). Only the text between ``<!-- speed:start -->`` and ``<!-- speed:end -->``
(``speed-gpu`` for CUDA) is replaced; the rest of the file, such as the Memory
section, is left as it is. Without the markers the section is appended.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _common as common

SCRIPTS = ["roofline", "levers", "layers", "tiles", "inference", "environment", "training"]
CPU_ONLY = {"environment", "layers"}


def run(names: list[str], data: Path, device: str) -> dict:
    env = dict(os.environ)
    loads = [os.getloadavg()[0]]
    started = time.time()
    for name in names:
        print(f"== {name}", flush=True)
        command = [sys.executable, str(common.HERE / f"{name}.py"), "--device", device]
        if name != "roofline":
            command += ["--data", str(data)]
        subprocess.run(command, env=env, check=True)
        loads.append(os.getloadavg()[0])
    import monai
    import torch

    path = common.WORK / f"meta_{device.split(':')[0]}.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    everything = set(SCRIPTS) - (CPU_ONLY if device != "cpu" else set())
    if set(names) != everything and previous:
        loads = previous.get("load_averages", []) + loads  # a partial rerun adds to the record
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": common.machine(),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "monai": monai.__version__,
        "omp_wait_policy": env.get("OMP_WAIT_POLICY", "default"),
        "load_averages": loads,
        "minutes": (time.time() - started) / 60,
    }
    path.write_text(json.dumps(meta, indent=2))
    return meta


def load(name: str, device: str) -> dict | None:
    path = common.WORK / f"{name}_{device.split(':')[0]}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def render(device: str) -> str:
    dev = device.split(":")[0]
    meta = load("meta", dev) or {}
    inference, levers, tiles = load("inference", dev), load("levers", dev), load("tiles", dev)
    environment, training = load("environment", dev), load("training", dev)
    gpu = dev == "cuda"
    out = [f"## Speed{' on the GPU' if gpu else ''}", ""]
    loads = meta.get("load_averages", [])
    out += [
        f"Measured {meta.get('date', '?')} on {meta.get('machine', '?')}"
        + (f", {meta.get('device', '?')}" if gpu else "")
        + f"; torch {meta.get('torch', '?')}, MONAI {meta.get('monai', '?')}, "
        + (
            "OpenMP's default wait policy (as `napari-unet` runs)."
            if meta.get("omp_wait_policy") == "default"
            else f"`OMP_WAIT_POLICY={meta.get('omp_wait_policy', '?')}`."
        ),
    ]
    if loads and not gpu:
        out += [
            f"1-minute load average {min(loads):.1f} to {max(loads):.1f} on 2 cores while this "
            "ran (the benchmark's own threads included). The machine is a virtual machine "
            "whose speed drifts: the bf16 matmul rate probed between runs ranged over a factor "
            "of about two. Contenders therefore always ran interleaved, shares of the peak use "
            "peaks probed between the runs they are compared with, and tables give medians "
            "(and the best run where it says so).",
        ]
    out += [
        "Regenerate with `python benchmarks/run_all.py --data ../shared/data --out "
        f"docs/benchmarks.md{' --device cuda' if gpu else ''}`"
        f"{' (or `bash benchmarks/gpu.sh`)' if gpu else ''}; the weights come from a short "
        "training on ISBI 2012 slices 0-19 (60 steps, cached in `benchmarks/_work/`), the "
        "test image is a 2048 x 2048 mosaic of the held-out slices 20-24.",
        "",
    ]
    if environment and meta.get("omp_wait_policy") == "PASSIVE":
        by = {row["variant"]: row["mpix_per_s"] for row in environment["rows"]}
        spin = next(
            (v for k, v in by.items() if k.startswith("OpenMP default") and "kept" in k), None
        )
        passive = next(
            (v for k, v in by.items() if k.startswith("OMP_WAIT") and "kept" in k), None
        )
        if spin and passive:
            out += [
                "The tables run with `OMP_WAIT_POLICY=PASSIVE`, which napari-unet does not set; "
                "with OpenMP's default (spinning threads), as a user's `napari-unet predict` "
                f"runs on an otherwise idle machine, prediction was {spin / passive:.2f}x "
                "faster in the process-settings table below.",
                "",
            ]
    if inference:
        out += _inference_section(inference, load("roofline", dev))
    if levers:
        out += _levers_section(levers)
    layers = load("layers", dev) if not gpu else None
    if layers:
        out += _layers_section(layers)
    if tiles:
        out += _tiles_section(tiles)
    if environment:
        out += _environment_section(environment)
    if training:
        out += _training_section(training)
    if inference and training and not gpu:
        out += _targets_section(inference, training)
    if not gpu and load("meta", "cuda") is None:
        out += [
            "### GPU",
            "",
            "GPU numbers were not measured in this session: no GPU was available to it. "
            "`bash benchmarks/gpu.sh` runs the same benchmarks on CUDA (bf16/fp16, "
            "channels-last, `torch.compile`, CUDA graphs) in a few minutes and writes them "
            "to a section of their own in this file.",
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


def _inference_section(r: dict, roofline: dict | None) -> list[str]:
    monai, ours, m = r["monai"], r["ours"], r["monai_settings"]
    s = r["ours_settings"]
    rows = [
        [
            "MONAI `sliding_window_inference`",
            f"tile {m['tile']}, overlap {m['overlap']}, gaussian, batch {m['sw_batch_size']}, "
            "fp32, `no_grad`",
            f"{monai['mpix_per_s']:.3f}",
            f"{monai['best_mpix_per_s']:.3f}",
            f"{monai['agreement']:.5f}",
        ],
        [
            "napari-unet `predict` (defaults)",
            f"tile {s['tile_size']}, overlap {s['overlap']:g}, batch {s['batch_size']}, "
            f"{s['precision']}, channels-last, BatchNorm folded",
            f"{ours['mpix_per_s']:.3f}",
            f"{ours['best_mpix_per_s']:.3f}",
            f"{ours['agreement']:.5f}",
        ],
    ]
    lines = [
        "### Inference: `predict` against MONAI",
        "",
        f"Same module (U-Net depth 4, 32 base channels), same weights, same "
        f"{r['image'][0]} x {r['image'][1]} image, {r['repeats']} interleaved runs each. "
        "Agreement: share of pixels whose label (argmax) equals that of one untiled fp32 "
        "forward pass over the whole image.",
        "",
        table(
            ["", "settings", "MPix/s (median)", "MPix/s (best)", "agreement with untiled"], rows
        ),
        "",
        f"**napari-unet is {r['speedup']:.1f}x faster** than MONAI's sliding window on the "
        "same module.",
        "",
        "### Roofline",
        "",
        f"The U-Net costs {r['flops_per_pixel'] / 1e3:.0f} kFLOP per pixel (forward pass, "
        "`torch.utils.flop_counter`, a multiply-add counted as 2). The ceiling is the "
        "machine's `torch.mm` rate in each dtype (each probe: the best of square products of "
        "1024, 2048 and 4096 on the CPU), probed between the prediction runs so that it sees "
        "the same state of the machine.",
        "",
        table(
            ["dtype", "matmul peak (median of probes)", "best probe"],
            [
                [name, f"{p['median_flops'] / 1e9:.0f} GFLOP/s", f"{p['best_flops'] / 1e9:.0f}"]
                for name, p in r["peaks"].items()
            ],
        ),
        "",
    ]
    if roofline:
        quiet = ", ".join(
            f"{name} {flops / 1e9:.0f} GFLOP/s"
            for name, flops in roofline["matmul_peak_flops"].items()
        )
        lines += [
            f"Best of 7 products of each size in a separate run before the benchmarks: {quiet}.",
            "",
        ]
    lines += [
        table(
            [
                "",
                "dtype",
                "image pixels/s x FLOPs/pixel",
                "share of the peak (medians)",
                "best run / best probe",
                "median run / best probe",
                "each run / its round's probe (median)",
            ],
            [
                [
                    name,
                    x["precision"],
                    f"{x['mpix_per_s'] * r['flops_per_pixel'] / 1e3:.0f} GFLOP/s",
                    pct(x["roofline_fraction"]),
                    pct(x["best_roofline_fraction"]),
                    pct(x.get("worst_case_roofline_fraction", float("nan"))),
                    pct(x.get("paired_roofline_fraction", float("nan"))),
                ]
                for name, x in (("MONAI", monai), ("napari-unet", ours))
            ],
        ),
        "",
        "These count useful work only: pixels of the image, not the extra pixels computed "
        "where tiles overlap (see the tile table for that ratio). On single tiles the "
        "forward pass gets closer to the peak (levers table).",
        "",
    ]
    lines += _state_lines(ours)
    return lines


def _levers_section(r: dict) -> list[str]:
    base = r["rows"][0]["mpix_per_s"]
    by_name = {row["variant"]: row for row in r["rows"]}

    def paired(slower: str, faster: str) -> float:
        """Median over rounds of time(slower) / time(faster): both ran in the same round,
        so a change of the machine's speed between rounds cancels out."""
        a = next(v for k, v in by_name.items() if k.startswith(slower))["seconds"]
        b = next(v for k, v in by_name.items() if k.startswith(faster))["seconds"]
        return common.median([x / y for x, y in zip(a, b, strict=True)])

    rows = []
    for above, row in zip([None, *r["rows"]], r["rows"], strict=False):
        share = pct(row["peak_share"])
        first = row.get("first_call_s")
        step = (
            ""
            if above is None or "seconds" not in row
            else (f"{paired(above['variant'], row['variant']):.2f}x")
        )
        rows.append(
            [
                row["variant"],
                f"{row['mpix_per_s']:.3f}",
                f"{row.get('paired_vs_first', row['mpix_per_s'] / base):.2f}x",
                step,
                share,
                f"{row['agreement']:.5f}",
                f"{row['max_abs_prob_diff']:.1e}",
                "" if first is None else f"{first:.1f}",
            ]
        )

    low = next(
        k.split()[1] for k in by_name if k.split()[:2] in (["+", "bfloat16"], ["+", "float16"])
    )
    compiled = next(v for k, v in by_name.items() if k.endswith("+ torch.compile"))
    default_name = "+ convolution and ReLU fused (default)"
    notes = [
        f"- {low}: {paired('+ channels_last', f'+ {low}'):.1f}x fp32 (both channels-last, "
        "BatchNorm folded); kept, the default where the CPU has AMX or AVX512-BF16. On the CPU "
        f"the weights are converted to {low} once (what autocast computes, without casting "
        "them again at every call).",
        f"- channels-last: {paired('+ BatchNorm folded', '+ channels_last'):.2f}x in fp32, "
        f"{paired(f'{low} without channels_last', default_name):.1f}x in {low} (oneDNN runs "
        f"{low} convolutions on AMX only in NHWC); kept.",
        f"- BatchNorm folded into the convolutions: "
        f"{paired('fp32, inference_mode', '+ BatchNorm folded'):.2f}x in fp32, "
        f"{paired(f'{low} without BatchNorm', default_name):.2f}x in {low}; kept (the same "
        "function with fewer passes over memory).",
        f"- convolution and ReLU fused (each 3x3 convolution and its ReLU as one oneDNN call "
        f"on weights reordered once, and pooling as two elementwise maxima): "
        f"{paired(f'+ {low}', default_name):.2f}x in {low}; kept (the same function with one "
        "pass less over every feature map).",
        f"- `inference_mode` instead of `no_grad`: "
        f"{paired('fp32, NCHW', 'fp32, inference_mode'):.2f}x; kept (no cost; it skips "
        "autograd bookkeeping, so any gap either way is the drift of the machine).",
        f"- `torch.compile` (inductor, frozen weights): "
        f"{paired(default_name, f'{low} + torch.compile'):.2f}x the default per tile, but its "
        f"first call takes {compiled['first_call_s']:.0f} s and it compiles again for each "
        "`predict` call; off by default (`make_forward(..., compiled=True)`).",
    ]
    return [
        "### Levers of the forward pass",
        "",
        f"One {r['tile']} x {r['tile']} tile per batch, {r['repeats']} interleaved rounds "
        "(each round runs every row once, in table order), medians; each row changes one "
        "option of `make_forward` (`napari_unet/_inference.py`) from the row above, or from "
        "the default where it says so. Because this machine's speed changes within seconds, "
        "speed-ups are paired: the median over rounds of the time ratio of two rows in the "
        "same round (the notes below use these). Agreement and largest "
        "probability difference are against the first row. Share of the peak: tile pixels/s x "
        "FLOPs/pixel over the matmul peak in the row's dtype, probed between the runs ("
        + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in r["peaks"].items())
        + ").",
        "",
        table(
            [
                "forward pass",
                "tile MPix/s",
                "vs MONAI's way",
                "vs the row above (paired)",
                "share of peak",
                "agreement",
                "max abs diff",
                "first call (s)",
            ],
            rows,
        ),
        "",
        *notes,
        "",
    ]


def _tiles_section(r: dict) -> list[str]:
    rows = [
        [
            f"{row['tile']}" + (" (default)" if row["default"] else ""),
            row["batch"],
            f"{row['overlap']:g}" + (f" ({row['overlap_px']} px)" if "overlap_px" in row else ""),
            row["tiles"],
            f"{row['waste']:.2f}",
            f"{row['mpix_per_s']:.3f}",
            f"{row['best_mpix_per_s']:.3f}",
            f"{row['paired_vs_default']:.2f}x" if "paired_vs_default" in row else "",
            f"{row['agreement']:.5f}",
            f"{row['changed_by_tiling']:.1e}" if "changed_by_tiling" in row else "",
        ]
        for row in r["rows"]
    ]
    return [
        "### Tile size, batch and overlap",
        "",
        f"`predict` end to end on the {r['image'][0]} x {r['image'][1]} image, "
        f"{r['repeats']} interleaved runs. Computed/image: pixels the network processes per "
        "image pixel; rows with the same computed/image and batch do the same work, so "
        "the spread of their times shows the noise of the shared machine. Vs default: the median over rounds of "
        "the default's time over the row's time in the same round (above 1x: faster than "
        "the default), the figure to compare rows by. Agreement with untiled: as in the "
        "inference table (against one untiled fp32 pass); changed by tiling: the share of "
        "pixels whose label differs from one untiled pass of the same forward pass (same "
        "dtype and layout), "
        "what the tiles and their blending alone change.",
        "",
        table(
            [
                "tile",
                "batch",
                "overlap",
                "tiles",
                "computed/image",
                "MPix/s (median)",
                "best",
                "vs default (paired)",
                "agreement with untiled",
                "changed by tiling",
            ],
            rows,
        ),
        "",
    ]


def _layers_section(r: dict) -> list[str]:
    peak, total = r["peak_flops"], r["pass_seconds"]
    rows = []
    for kind, entry in sorted(r["by_kind"].items(), key=lambda kv: -kv[1]["seconds"]):
        rate = entry["flops"] / entry["seconds"] if entry["seconds"] and entry["flops"] else None
        rows.append(
            [
                kind,
                f"{1e3 * entry['seconds']:.1f}",
                pct(entry["seconds"] / total),
                "-" if rate is None else f"{rate / 1e9:.0f}",
                "-" if rate is None else pct(rate / peak),
            ]
        )
    convs = sorted(r["convolutions"].items(), key=lambda kv: kv[1]["flops"] / kv[1]["seconds"])
    slowest, fastest = convs[0], convs[-1]

    def conv_rate(item):
        return item[1]["flops"] / item[1]["seconds"] / 1e9

    return [
        "### Where the forward pass spends its time",
        "",
        f"`benchmarks/layers.py`: one {r['tile']} x {r['tile']} tile through the forward pass "
        f"`predict` runs ({r['dtype']}, channels-last, BatchNorm folded"
        + (", each 3x3 convolution fused with its ReLU" if r.get("fused") else "")
        + f"), operators timed with `torch.profiler` over {r['repeats']} passes; the rest is "
        f"the remainder of the wall time of those passes. The matmul "
        f"peak probed right after was {peak / 1e9:.0f} GFLOP/s. One pass: {1e3 * total:.0f} ms.",
        "",
        table(
            ["layers", "ms per pass", "share of the pass", "GFLOP/s", "share of the peak"], rows
        ),
        "",
        f"The 3x3 convolutions range from {conv_rate(slowest):.0f} GFLOP/s (input "
        f"{slowest[0]}) to {conv_rate(fastest):.0f} GFLOP/s (input {fastest[0]}). The "
        "operations without FLOPs (pooling, the concatenations of the skip connections) only "
        "move memory and the first convolution has a single input channel, so even with "
        "every convolution at the matmul peak the pass could not reach it.",
        "",
    ]


def _environment_section(r: dict) -> list[str]:
    base = r["rows"][0]["mpix_per_s"]
    rows = [
        [
            row["variant"],
            " ".join(f"`{k}={v}`" for k, v in row["env"].items()) or "-",
            f"{row['mpix_per_s']:.3f}",
            f"{row.get('paired_vs_first', row['mpix_per_s'] / base):.2f}x",
            pct(row["peak_share"]),
        ]
        for row in r["rows"]
    ]
    return [
        "### Process settings",
        "",
        "Read when a process starts, so each run is a fresh process predicting the 2048 x "
        f"2048 image ({r['repeats']} runs each, alternating). Spinning OpenMP threads help "
        "when the cores are free and hurt when other processes want them; napari-unet does "
        "not set the policy. With glibc's defaults, large freed feature maps go back to the kernel and the "
        "next tile pays for page faults and zeroing; the `napari-unet` command therefore "
        "raises glibc's mmap and trim thresholds when it starts (the library does not: it "
        "acts on the whole process), and the other tables run with that setting for every "
        "contender. `BENCH_GLIBC_DEFAULT=1` makes the benchmark child skip it. "
        "Share of the peak: as in the roofline table, over the median bf16 peak probed in "
        "the children, so under this run's load (compare rows with each other, not with "
        "the roofline table). Vs default: the median over rounds of the first row's time "
        "over the row's time in the same round (the order of the rows alternates from round "
        "to round).",
        "",
        table(
            ["setting", "environment", "MPix/s (median)", "vs default", "share of bf16 peak"],
            rows,
        ),
        "",
    ]


def _state_lines(ours: dict) -> list[str]:
    """The share of the peak in each state of the machine (inference.by_state)."""
    found = ours.get("by_state")
    if not found:
        return []
    dtype = ours["precision"]
    names = {"fast": "fast", "slow": "slow", "steady": "one state (probes within 1.5x)"}
    rows = [
        [
            names[state],
            g["runs"],
            f"{g['mpix_per_s']:.3f}",
            f"{g['peak_flops'] / 1e9:.0f} GFLOP/s",
            f"{g['flop_rate'] / 1e9:.0f} GFLOP/s",
            pct(g["share"]),
        ]
        for state, g in sorted(found["states"].items())
    ]
    left_out = len(found["runs"]) - sum(g["runs"] for g in found["states"].values())
    levels = found.get("levels_flops", {})
    two_states = found["threshold_flops"] is not None
    if two_states:
        how = (
            f"its {dtype} probes fell into two levels (medians {levels['slow'] / 1e9:.0f} and "
            f"{levels['fast'] / 1e9:.0f} GFLOP/s on either side of the geometric mean of the "
            "slowest and fastest probe); a run belongs to a state when both of its probes lie "
            f"within 1.25x of that state's level, so {left_out} of {len(found['runs'])} runs, "
            "caught during a change or between the levels, are left out"
        )
    else:
        how = (
            f"its {dtype} probes stayed within 1.5x of each other, so the runs count as one "
            f"state ({left_out} of {len(found['runs'])} runs with a probe more than 1.25x "
            "from the median are left out)"
        )
    lines = [
        "#### Share of the peak in each state of the machine",
        "",
        f"`predict` ran {len(found['runs'])} more times, each with a matmul probe right before "
        f"and right after it: {how}. Each run is compared with the mean of its own two probes "
        "(medians over the runs of a state).",
        "",
        table(
            [
                "state",
                "runs",
                "MPix/s (median)",
                "matmul peak (its probes)",
                "image pixels/s x FLOPs/pixel",
                "share of the peak",
            ],
            rows,
        ),
        "",
    ]
    if two_states:
        lines += [
            f"The states differ in the {dtype} matrix rate, not in memory bandwidth: in the fast "
            "state the convolutions finish sooner while the memory-bound parts of the pass "
            "(skip concatenations, up-convolutions, pooling, blending of the tiles) take as "
            "long as before, so they weigh more and the share of the peak falls. Both states "
            "count pixels of the image only, not the extra pixels computed where tiles overlap.",
            "",
        ]
    return lines


def _roofline_verdict(ours: dict) -> str:
    """Judged per state of the machine where that was measured (a run against a probe of
    the same state), else on the medians."""
    states = ours.get("by_state", {}).get("states", {})
    counted = [g for g in states.values() if g["runs"] >= 3]
    if not counted:
        medians = min(ours["roofline_fraction"], ours.get("paired_roofline_fraction", 0.0))
        return "met (medians)" if medians >= 0.5 else "**not met**"
    missed = sorted(state for state, g in states.items() if g["runs"] >= 3 and g["share"] < 0.5)
    if missed:
        return f"**not met** (in the {' and '.join(missed)} state)"
    unjudged = sorted(state for state, g in states.items() if g["runs"] < 3)
    if unjudged:  # too few runs caught in a state to say the target holds there
        met = " and ".join(sorted(s for s in states if s not in unjudged))
        return (
            f"**not shown** in the {' and '.join(unjudged)} state (fewer than 3 runs); "
            f"met in the {met} state"
        )
    return "met"


def _training_section(r: dict) -> list[str]:
    ours, monai = r["ours"], r["monai"]
    target = r["target_dice"]

    def reach(x):
        if x["seconds_to_target"] is None:
            return f"not within {r['steps']} steps"
        return f"{x['seconds_to_target']:.0f} s ({x['steps_to_target']} steps)"

    rows = [
        [
            f"napari-unet `iter_train` ({r['precision_ours']}, channels-last, AdamW)",
            f"{ours['median_step_s']:.2f}",
            f"{ours['steps_per_s']:.2f}",
            f"{ours['final_dice']:.3f}",
            reach(ours),
        ],
        [
            "plain MONAI loop (fp32, DiceCELoss, Adam)",
            f"{monai['median_step_s']:.2f}",
            f"{monai['steps_per_s']:.2f}",
            f"{monai['final_dice']:.3f}",
            reach(monai),
        ],
    ]
    curve = table(
        ["step", "napari-unet: s, Dice", "MONAI: s, Dice"],
        [
            [
                a["step"],
                f"{a['seconds']:.0f}, {a['dice']:.3f}",
                f"{b['seconds']:.0f}, {b['dice']:.3f}",
            ]
            for a, b in zip(ours["curve"], monai["curve"], strict=True)
        ],
    )
    return [
        "### Training",
        "",
        f"Same U-Net and initial weights, batches of {r['batch']} patches of {r['patch']} x "
        f"{r['patch']} from ISBI slices 0-19, {r['steps']} steps each, one step of each in "
        "turn; seconds per step are medians (first two steps left out). Validation: membrane "
        "Dice on slices 20-24 (untiled fp32 pass, not timed).",
        "",
        table(
            ["", "s/step", "steps/s", f"Dice after {r['steps']} steps", f"time to Dice {target}"],
            rows,
        ),
        "",
        f"**Training step speed-up: {r['step_speedup']:.2f}x.**",
        "",
        curve,
        "",
    ]


def _targets_section(inference: dict, training: dict) -> list[str]:
    ours, monai = inference["ours"], inference["monai"]

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    agreement_ok = ours["agreement"] >= 0.999 and ours["agreement"] >= monai["agreement"]
    ours_t, monai_t = training["ours"]["seconds_to_target"], training["monai"]["seconds_to_target"]
    if ours_t is None:
        to_target, to_target_ok = "napari-unet did not reach it", False
    elif monai_t is None:
        to_target, to_target_ok = f"{ours_t:.0f} s; MONAI did not reach it", True
    else:
        to_target = f"{ours_t:.0f} s vs {monai_t:.0f} s ({monai_t / ours_t:.1f}x)"
        to_target_ok = monai_t / ours_t >= 1.3
    rows = [
        [
            "predict >= 2x MONAI",
            f"{inference['speedup']:.1f}x",
            met(inference["speedup"] >= 2),
        ],
        [
            "agreement >= 0.999 and >= MONAI's",
            f"{ours['agreement']:.5f} (MONAI {monai['agreement']:.5f})",
            met(agreement_ok),
        ],
        [
            "predict >= 50% of the roofline in its dtype",
            f"{pct(ours['roofline_fraction'])} (median run / median probe); "
            f"{pct(ours.get('paired_roofline_fraction', float('nan')))} (each run / its round's "
            "probe, median); "
            + "; ".join(
                f"{pct(g['share'])} in the {state} state ({g['runs']} runs)"
                for state, g in sorted(ours.get("by_state", {}).get("states", {}).items())
            ),
            _roofline_verdict(ours),
        ],
        [
            "training step >= 1.3x MONAI at equal accuracy",
            f"{training['step_speedup']:.2f}x per step; time to validation Dice "
            f"{training['target_dice']}: {to_target}",
            met(training["step_speedup"] >= 1.3 and to_target_ok),
        ],
    ]
    return ["### Targets", "", table(["target", "measured", ""], rows), ""]


def write_section(path: Path, name: str, text: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text}{end}\n"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in old and end in old:
        head, rest = old.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + block + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=common.HERE.parent / "docs" / "benchmarks.md")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", choices=SCRIPTS, help="run only these")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.render_only:
        names = args.only or SCRIPTS
        if args.device != "cpu":
            names = [n for n in names if n not in CPU_ONLY]
        run(names, args.data.resolve(), args.device)
    name = "speed" if args.device == "cpu" else "speed-gpu"
    write_section(args.out, name, render(args.device))
    print(f"wrote the {name} section of {args.out}")


if __name__ == "__main__":
    main()
