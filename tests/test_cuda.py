"""The CUDA paths: training (bf16 autocast, and fp16 with a gradient scaler), prediction
and the demo on a GPU. Skipped where PyTorch sees no CUDA device (CI has none); run them on
a GPU machine with ``python -m pytest tests/test_cuda.py``."""

import numpy as np
import pytest
import torch

from napari_unet import ModelConfig, TrainConfig, iter_train, load_model, predict, train
from napari_unet.training import TrainingStarted

from .conftest import TINY, disks

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.slow,
]


def _train_on_cuda():
    pairs = [disks(seed=s) for s in range(3)]
    config = TrainConfig(mode="instances", epochs=3, steps_per_epoch=20, device="cuda")
    model = train(
        [p[0] for p in pairs], [p[1] for p in pairs], config, model_config=ModelConfig(**TINY)
    )
    return model, pairs


def test_a_model_trained_on_cuda_predicts_alike_on_cuda_and_cpu_and_after_saving(tmp_path):
    model, pairs = _train_on_cuda()
    image = pairs[0][0]

    on_gpu = predict(model, image, device="cuda", output="probabilities")
    on_cpu = predict(model, image, device="cpu", output="probabilities", mixed_precision=False)
    assert np.abs(on_gpu - on_cpu).max() < 0.05  # bf16 against fp32
    path = tmp_path / "model.safetensors"
    model.save(path)
    again = load_model(path)
    np.testing.assert_array_equal(
        predict(again, image, device="cuda"), predict(model, image, device="cuda")
    )
    assert model.history["runs"][-1]["best_score"] > 0.5  # it learned the disks


def test_float16_training_with_a_gradient_scaler_where_bf16_is_missing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    pairs = [disks(seed=s) for s in range(3)]
    config = TrainConfig(mode="instances", epochs=3, steps_per_epoch=20, device="cuda")
    events = list(
        iter_train(
            [p[0] for p in pairs], [p[1] for p in pairs], config, model_config=ModelConfig(**TINY)
        )
    )
    started = next(e for e in events if isinstance(e, TrainingStarted))
    model = started.model

    assert started.precision == "float16"
    labels = predict(model, pairs[1][0], device="cuda")
    assert labels.max() >= 3  # objects found, no NaN from fp16 overflow
    assert all(torch.isfinite(p).all() for p in model.network.parameters())


def test_the_demo_on_cuda(capsys, tmp_path):
    from napari_unet import cli

    code = cli.main(["demo", "--minutes", "0.5", "--device", "cuda", "--output", str(tmp_path)])

    out = capsys.readouterr().out
    assert code == 0
    dice = float(out.split("foreground Dice ")[1].split(",")[0])
    assert dice > 0.7, out
    assert (tmp_path / "demo_labels.tif").exists()
