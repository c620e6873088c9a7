"""Accuracy levers at a fixed number of steps, many runs at once on one GPU.

The lever runs of ``accuracy_levers.py`` train for a time budget on the CPU, so each
run's number of steps, and with it its score, varies with the state of the machine,
and one run per lever and seed is all a CPU hour holds. This script trains on the same
development split (DSB 2018: 25 training images, 8 scored; ISBI 2012: slices 0-14,
scored on 15-19) for a fixed number of optimiser steps instead, with the settings of a
CPU run (16 base channels, bf16), several runs at a time on one GPU, so that levers
can be compared over several seeds at the step counts the CPU reaches in the study's
10 minutes (about 1100, rounded to whole epochs of 16 steps; about 600 for instance normalisation, whose steps cost the CPU
about twice as much). It also trains the defaults for 2 and 4 times the steps: what a
faster CPU step would buy. A lever seen here still has to show in the CPU study.

    python benchmarks/gpu_levers.py --data ../shared/data --out levers.jsonl --workers 10 \
        --deadline 400 --stop 525
    python benchmarks/gpu_levers.py --data ../shared/data --out more.jsonl --plan followup \
        --workers 10 --deadline 200 --stop 285
    python benchmarks/gpu_levers.py --data ../shared/data --out third.jsonl --plan third \
        --workers 12 --deadline 250 --stop 400
    python benchmarks/gpu_levers.py --data ../shared/data --out fourth.jsonl --plan fourth \
        --workers 12 --deadline 30 --stop 430
    # the same runs with this code and an older one (PYTHONPATH=OLD/src), side by side:
    python benchmarks/gpu_levers.py --data ../shared/data --out again.jsonl --plan again \
        --workers 7 --threads 1 --deadline 20 --stop 200
    python benchmarks/gpu_levers.py --data ../shared/data --out smoke.jsonl --smoke
    python benchmarks/gpu_levers.py table docs/gpu-levers.jsonl   # the table of the docs

One line of JSON per run is appended to ``--out`` as soon as the run ends.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BASE = "defaults (Dice weight 1)"
"""The reference runs: the defaults of the time, the Dice term at weight 1."""

STEPS = 1100  # the study's 10 CPU minutes (1115-1137 steps in its last runs)


def _jobs(data, lever, steps, seeds, train=None, model=None, schedule=None) -> list[dict]:
    """One run per seed of a lever."""
    return [
        {
            "data": data,
            "lever": lever,
            "steps": steps,
            "seed": seed,
            # the runs of docs/gpu-levers.jsonl had the Dice weight of the time, 1,
            # wherever the lever does not set it
            "train": {"dice_weight": 1.0, **(train or {})},
            "model": model or {},
            "schedule": schedule,
        }
        for seed in seeds
    ]


def plan(steps: int = STEPS) -> list[dict]:
    """Runs in order of priority: longest first within a block, so that the pool's tail
    holds short runs."""
    jobs: list[dict] = []

    def add(*args, **kwargs):
        jobs.extend(_jobs(*args, **kwargs))

    # what more steps buy (the ceiling of a faster CPU step)
    add("dsb", BASE + " x4 steps", 4 * steps, [0])
    add("isbi", BASE + " x4 steps", 4 * steps, [0])
    add("dsb", BASE + " x2 steps", 2 * steps, [0, 1])
    add("isbi", BASE + " x2 steps", 2 * steps, [0])
    # the defaults over seeds: the spread every lever is judged against
    add("dsb", BASE, steps, [0, 1, 2, 3])
    add("isbi", BASE, steps, [0, 1, 2])
    # DSB levers
    add(
        "dsb",
        "instance norm (CPU-equal steps)",
        steps * 6 // 11,
        [0, 1, 2],
        model={"norm": "instance"},
    )
    add("dsb", "patches 128 x 32", steps, [0, 1, 2], train={"patch_size": 128, "batch_size": 32})
    add("dsb", "cross-entropy alone", steps, [0, 1, 2], train={"dice_weight": 0.0})
    add("dsb", "learning rate 5e-3", steps, [0, 1, 2], train={"learning_rate": 5e-3})
    add("dsb", "constant learning rate", steps, [0, 1, 2], schedule="constant")
    add("dsb", "border weight 5", steps, [0, 1], train={"border_weight": 5.0})
    add("dsb", "border weight 20", steps, [0, 1], train={"border_weight": 20.0})
    add("dsb", "instance norm (same steps)", steps, [0, 1], model={"norm": "instance"})
    # ISBI levers
    add("isbi", "patches 512 x 2", steps, [0, 1], train={"patch_size": 512, "batch_size": 2})
    add("isbi", "learning rate 5e-3", steps, [0, 1], train={"learning_rate": 5e-3})
    add(
        "isbi",
        "instance norm (CPU-equal steps)",
        steps * 6 // 11,
        [0, 1],
        model={"norm": "instance"},
    )
    add("isbi", "constant learning rate", steps, [0, 1], schedule="constant")
    add("isbi", "cross-entropy alone", steps, [0, 1], train={"dice_weight": 0.0})
    # if time is left: more seeds and smaller levers
    add("dsb", BASE, steps, [4, 5])
    add("isbi", BASE, steps, [3, 4])
    add("dsb", "90% of patches on objects", steps, [0, 1], train={"foreground_sampling": 0.9})
    add("dsb", "learning rate 1e-3", steps, [0, 1], train={"learning_rate": 1e-3})
    add("isbi", "learning rate 1e-3", steps, [0, 1], train={"learning_rate": 1e-3})
    add("dsb", "batches of 16 (CPU-equal steps)", steps // 2, [0, 1], train={"batch_size": 16})
    add(
        "dsb",
        "patches 128 x 32, x2 steps",
        2 * steps,
        [0],
        train={"patch_size": 128, "batch_size": 32},
    )
    return jobs


def followup(steps: int = STEPS) -> list[dict]:
    """The second call: more seeds for the loss weights, the lever the first call showed
    on both data sets (cross-entropy alone), and a Dice term at half weight."""
    half, alone = {"dice_weight": 0.5}, {"dice_weight": 0.0}
    return [
        *_jobs("dsb", "Dice at half weight", steps, [0, 1, 2, 3], train=half),
        *_jobs("isbi", "Dice at half weight", steps, [0, 1, 2], train=half),
        *_jobs("dsb", "cross-entropy alone", steps, [3, 4, 5], train=alone),
        *_jobs("isbi", "cross-entropy alone", steps, [2, 3, 4], train=alone),
        *_jobs("dsb", BASE, steps, [6, 7]),
        *_jobs("isbi", BASE, steps, [5, 6]),
    ]


HALF = "Dice at half weight"
"""The reference runs of the third call: the defaults since 2026-11-27 17:29 (Dice term
at weight 0.5)."""


def third(steps: int = STEPS) -> list[dict]:
    """The third call: the levers the first two left with too few seeds to read (DSB
    learning rate 1e-3; ISBI constant learning rate, learning rate 1e-3, patches of 512
    in batches of 2), each on top of the defaults of the time (Dice term at half
    weight), and more seeds of those defaults."""
    half = {"dice_weight": 0.5}
    levers = [  # data, lever (on top of half weight), training fields, schedule
        ("dsb", "learning rate 1e-3", {"learning_rate": 1e-3}, None),
        ("isbi", "constant learning rate", {}, "constant"),
        ("isbi", "learning rate 1e-3", {"learning_rate": 1e-3}, None),
        ("isbi", "patches 512 x 2", {"patch_size": 512, "batch_size": 2}, None),
    ]
    jobs = [
        *_jobs("dsb", HALF, steps, [4, 5, 6, 7], train=half),
        *_jobs("isbi", HALF, steps, [3, 4, 5, 6], train=half),
    ]
    for data, lever, train, schedule in levers:
        name = f"{lever}, {HALF}"
        jobs += _jobs(data, name, steps, [0, 1, 2, 3], train={**half, **train}, schedule=schedule)
    return jobs


def fourth(steps: int = STEPS) -> list[dict]:
    """The fourth call: smaller batches for proportionally more steps, which cost the CPU
    about the same time as the defaults' steps (a step's time grows with its pixels)."""
    half = {"dice_weight": 0.5}
    return [
        *_jobs(
            "dsb",
            "batches of 4, x2 steps",
            2 * steps,
            [0, 1, 2, 3],
            train={**half, "batch_size": 4},
        ),
        *_jobs(
            "isbi",
            "batches of 4, x2 steps",
            2 * steps,
            [0, 1, 2, 3],
            train={**half, "batch_size": 4},
        ),
        *_jobs(
            "dsb", "batches of 2, x4 steps", 4 * steps, [0, 1], train={**half, "batch_size": 2}
        ),
        *_jobs(
            "isbi", "batches of 2, x4 steps", 4 * steps, [0, 1], train={**half, "batch_size": 2}
        ),
    ]


def again(steps: int = STEPS) -> list[dict]:
    """ISBI reference runs (Dice term at half weight) over seven seeds: run once with the
    code of the time and once with that of the first session's runs (``PYTHONPATH``), to
    tell a change of the code from the spread of the seeds."""
    return _jobs("isbi", HALF, steps, list(range(7)), train={"dice_weight": 0.5})


_DATA: dict = {}


def _dev(name: str, data: Path):
    if name not in _DATA:
        from accuracy_levers import dsb_dev, isbi_dev

        _DATA[name] = dsb_dev(data) if name == "dsb" else isbi_dev(data)
    return _DATA[name]


def run_job(job: dict, data: Path, device: str, smoke: bool) -> dict:
    import numpy as np
    import torch
    from accuracy import score_dsb, score_isbi
    from accuracy_levers import SCHEDULES

    from napari_unet import predict, training
    from napari_unet.config import ModelConfig, TrainConfig

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    start = time.perf_counter()
    if job["data"] == "dsb":
        (images, labels, _), (dev_x, dev_y, _) = _dev("dsb", data)
        mode = "instances"
    else:
        (images, labels, _), (dev_x, dev_y) = _dev("isbi", data)
        mode = "semantic"
    if smoke:
        images, labels = images[:3], labels[:3]
        dev_x, dev_y = dev_x[:2], dev_y[:2]
    config = TrainConfig(mode=mode, seed=job["seed"], device=device, **job["train"])
    prepared = training.prepare_data(images, labels, config)
    per_epoch = training._steps_per_epoch(prepared.train, config)
    epochs = max(1, round(job["steps"] / per_epoch))
    config = config.model_copy(update={"epochs": epochs})
    model_config = ModelConfig(base_channels=16, **job["model"])

    default_schedule = training._schedule
    if job["schedule"]:
        rule = SCHEDULES[job["schedule"]]

        def patched(progress: float, warmup: float = 0.03) -> float:
            if progress < warmup:
                return default_schedule(progress, warmup)
            return rule((progress - warmup) / (1 - warmup))

        training._schedule = patched
    try:
        model = training.train(images, labels, config, model_config=model_config)
    finally:
        training._schedule = default_schedule
    trained = time.perf_counter() - start
    predicted = [predict(model, image, device=device) for image in dev_x]
    if job["data"] == "dsb":
        scores = score_dsb(predicted, dev_y)
        per_image = scores.pop("per_image")
    else:
        scores = score_isbi(np.stack(predicted), np.stack(dev_y))
        per_image = None
    run = model.history["runs"][-1]
    return {
        **{k: job[k] for k in ("data", "lever", "seed", "train", "model", "schedule")},
        "steps_asked": job["steps"],
        "steps": run["steps"],
        "epochs": run["epochs"],
        "best_validation": run["best_score"],
        "label_offset": run.get("label_offset"),
        "train_s": round(trained, 1),
        "total_s": round(time.perf_counter() - start, 1),
        **{k: round(float(v), 4) for k, v in scores.items()},
        "per_image": per_image,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "code": str(Path(training.__file__).parent.parent.parent),
    }


def _worker(args):
    job, data, device, smoke = args
    try:
        return run_job(job, data, device, smoke)
    except Exception as error:  # one failed run must not stop the others
        import traceback

        return {
            **job,
            "error": f"{type(error).__name__}: {error}",
            "trace": traceback.format_exc(),
        }


METRICS = {
    "dsb": [("foreground_dice", "fg Dice"), ("f1@0.5", "F1@0.5"), ("dsb_score", "DSB score")],
    "isbi": [("pixel_error", "pixel error"), ("rand_error", "Rand error")],
}


def table(rows: list[dict]) -> str:
    """Markdown: one line per data set and lever, the mean and standard deviation over
    its seeds."""
    import numpy as np

    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if "error" not in row:
            groups.setdefault((row["data"], row["lever"]), []).append(row)
    lines = [
        "| data | lever | steps | seeds | scores: mean (standard deviation over the seeds) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (data, lever), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != BASE)):
        parts = []
        for key, label in METRICS[data]:
            values = np.array([r[key] for r in runs])
            spread = (
                f" ({values.std(ddof=1):.{3 if data == 'dsb' else 4}f})" if len(values) > 1 else ""
            )
            parts.append(f"{label} {values.mean():.{3 if data == 'dsb' else 4}f}{spread}")
        lines.append(
            f"| {data.upper()} | {lever} | {runs[0]['steps']} | {len(runs)} | {', '.join(parts)} |"
        )
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["table"]:  # python benchmarks/gpu_levers.py table RESULTS.jsonl
        print(table([json.loads(line) for line in Path(sys.argv[2]).read_text().splitlines()]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--deadline", type=float, default=480, help="seconds: no run starts after")
    parser.add_argument("--stop", type=float, default=520, help="seconds: runs cut off after")
    parser.add_argument(
        "--plan", choices=["first", "followup", "third", "fourth", "again"], default="first"
    )
    parser.add_argument(
        "--threads", type=int, help="CPU threads per run (default: cores / workers)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny runs: 20 steps, few images")
    args = parser.parse_args()

    make = {"first": plan, "followup": followup, "third": third, "fourth": fourth, "again": again}[
        args.plan
    ]
    jobs = make(20) if args.smoke else make()
    if args.smoke:
        first = {}  # one run of each of the first four levers
        for job in jobs:
            first.setdefault((job["data"], job["lever"]), job)
        jobs = list(first.values())[:4]
    threads = args.threads or max(1, (os.cpu_count() or 2) // args.workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    print(f"{len(jobs)} runs, {args.workers} at a time, {threads} threads each", flush=True)
    start = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    context = mp.get_context("spawn")
    done = 0
    with context.Pool(args.workers, maxtasksperchild=None) as pool:
        pending = []
        queue = list(jobs)
        while queue or pending:
            while queue and len(pending) < args.workers:
                if time.perf_counter() - start > args.deadline:
                    print(f"deadline: {len(queue)} runs not started", flush=True)
                    queue.clear()
                    break
                job = queue.pop(0)
                pending.append(
                    pool.apply_async(_worker, ((job, args.data, args.device, args.smoke),))
                )
            time.sleep(0.5)
            for result in [p for p in pending if p.ready()]:
                pending.remove(result)
                row = result.get()
                done += 1
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                brief = {
                    k: row.get(k) for k in ("data", "lever", "seed", "steps", "train_s", "error")
                }
                scores = {
                    k: row[k]
                    for k in (
                        "foreground_dice",
                        "f1@0.5",
                        "dsb_score",
                        "pixel_error",
                        "rand_error",
                    )
                    if k in row
                }
                print(f"[{time.perf_counter() - start:6.0f} s] {brief} {scores}", flush=True)
            if time.perf_counter() - start > args.stop:
                print(f"stop: {len(pending)} runs cut off", flush=True)
                pool.terminate()
                break
    print(f"{done} runs in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
