"""Training: napari_unet's training step against a plain MONAI training loop.

Both train the same architecture (napari_unet.UNet, depth 4, 32 base channels,
same initial weights) on ISBI 2012 slices 0-19 with batches of 8 patches of
128 x 128, and are validated on slices 20-24 (membrane Dice, untiled fp32 forward
pass, not timed).

* ours: ``napari_unet.training.iter_train`` as shipped (bf16 autocast where the
  CPU runs it fast, channels-last, AdamW with warm-up and cosine decay, Dice + CE);
  a step is timed from one ``StepEnded`` event to the next, sampling included.
* MONAI: fp32, NCHW, ``monai.losses.DiceCELoss(softmax=True, to_onehot_y=True)``,
  ``torch.optim.Adam(lr=1e-3)``, uniformly placed random crops with random 90 degree
  rotations and flips; a step is timed from cropping to ``optimizer.step``.

Steps alternate between the two (one of ours, one of MONAI's), so the load of a
shared machine hits both alike; each keeps its own clock. Reported: median
seconds per step, and each run's validation Dice against its own training time.

    python benchmarks/training.py --data ../shared/data --steps 40
"""

from __future__ import annotations

from pathlib import Path

import _common as common
import numpy as np
import torch

PATCH = 128
BATCH = 8
SEED = 0


def _validation_dice(network, images: np.ndarray, targets: np.ndarray) -> float:
    """Mean membrane Dice over the validation slices (fp32, whole slices)."""
    from napari_unet.training import foreground_dice

    was_training = network.training
    network.eval()
    device = next(network.parameters()).device
    with torch.inference_mode():
        logits = network(torch.from_numpy(images).to(device))
    network.train(was_training)
    predictions = logits.argmax(1).cpu().numpy()
    return float(
        np.mean([foreground_dice(p, t, 2) for p, t in zip(predictions, targets, strict=True)])
    )


class MonaiLoop:
    """A plain MONAI-style supervised loop: fp32, DiceCELoss, Adam, random crops."""

    def __init__(self, network, images: np.ndarray, targets: np.ndarray, seed: int):
        from monai.losses import DiceCELoss

        self.network = network.train()
        self.device = next(network.parameters()).device
        self.images, self.targets = images, targets
        self.rng = np.random.default_rng(seed)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        rng, (count, height, width) = self.rng, self.targets.shape
        images, targets = [], []
        for _ in range(BATCH):
            i = rng.integers(count)
            y, x = rng.integers(height - PATCH + 1), rng.integers(width - PATCH + 1)
            k, flip = rng.integers(4), rng.integers(2)
            for source, out in ((self.images, images), (self.targets, targets)):
                patch = np.rot90(source[i, y : y + PATCH, x : x + PATCH], k)
                out.append(patch[:, ::-1] if flip else patch)
        return np.stack(images)[:, None].astype(np.float32), np.stack(targets)[:, None]

    def step(self) -> float:
        images, targets = self.batch()
        x = torch.from_numpy(images).to(self.device)
        y = torch.from_numpy(targets.astype(np.int64)).to(self.device)
        loss = self.loss(self.network(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.item())


def measure(
    data: Path,
    *,
    steps: int = 40,
    every: int = 10,
    target_dice: float = 0.6,
    device: str = "cpu",
) -> dict:
    from napari_unet import ModelConfig, TrainConfig, UNet
    from napari_unet.data import Normalization
    from napari_unet.training import StepEnded, TrainingStarted, iter_train

    common.set_threads()
    volume, labels = common.load_isbi(data)
    normalization = Normalization()
    val_images = np.stack([normalization(plane[None].astype(np.float32)) for plane in volume[20:]])
    val_targets = labels[20:].astype(np.int64)

    config = TrainConfig(
        epochs=1,
        steps_per_epoch=steps,
        patch_size=PATCH,
        batch_size=BATCH,
        validation_fraction=0,
        seed=SEED,
        device=device,
    )
    ours = iter_train(
        volume[:20],
        labels[:20],
        config,
        model_config=ModelConfig(**common.ARCHITECTURE),
        channel_axis=None,
    )
    started = next(ours)
    assert isinstance(started, TrainingStarted)
    our_network = started.model.network

    torch.manual_seed(SEED)
    monai_network = UNet(**common.ARCHITECTURE)
    monai_network.load_state_dict(our_network.state_dict())  # same initial weights
    monai_network.to(device)
    train_images = np.stack(
        [normalization(plane[None].astype(np.float32))[0] for plane in volume[:20]]
    )
    monai = MonaiLoop(monai_network, train_images, labels[:20], SEED)

    clocks = {"ours": 0.0, "monai": 0.0}
    step_times: dict[str, list[float]] = {"ours": [], "monai": []}
    curves: dict[str, list[dict]] = {"ours": [], "monai": []}

    def our_step() -> None:
        for event in ours:
            if isinstance(event, StepEnded):
                return
        raise RuntimeError("napari_unet training ended early")

    for step in range(1, steps + 1):
        for name, run in (("ours", our_step), ("monai", monai.step)):
            seconds, _ = common.timed(run)
            clocks[name] += seconds
            step_times[name].append(seconds)
        if step % every == 0 or step == steps:
            for name, network in (("ours", our_network), ("monai", monai_network)):
                dice = _validation_dice(network, val_images, val_targets)
                curves[name].append({"step": step, "seconds": clocks[name], "dice": dice})
    ours.close()

    out = {
        "device": device,
        "steps": steps,
        "patch": PATCH,
        "batch": BATCH,
        "precision_ours": started.precision,
        "target_dice": target_dice,
    }
    for name in ("ours", "monai"):
        warm = step_times[name][2:] or step_times[name]
        reached = [c for c in curves[name] if c["dice"] >= target_dice]
        out[name] = {
            "median_step_s": common.median(warm),
            "steps_per_s": 1 / common.median(warm),
            "curve": curves[name],
            "final_dice": curves[name][-1]["dice"],
            "seconds_to_target": reached[0]["seconds"] if reached else None,
            "steps_to_target": reached[0]["step"] if reached else None,
        }
    out["step_speedup"] = out["monai"]["median_step_s"] / out["ours"]["median_step_s"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--target-dice", type=float, default=0.6)
    args = parser.parse_args(argv)
    result = measure(
        args.data,
        steps=args.steps,
        every=args.every,
        target_dice=args.target_dice,
        device=args.device,
    )
    common.save(result, "training", args.device, args.json)
    for name in ("ours", "monai"):
        r = result[name]
        print(
            f"{name:6s} {r['median_step_s']:.2f} s/step, final Dice {r['final_dice']:.3f}, "
            f"to Dice {result['target_dice']}: {r['seconds_to_target']} s"
        )
        print(
            "       ",
            [(c["step"], round(c["seconds"], 1), round(c["dice"], 3)) for c in r["curve"]],
        )
    print(f"step speed-up {result['step_speedup']:.2f}x")


if __name__ == "__main__":
    main()
