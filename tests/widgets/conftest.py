"""Fixtures for the viewer tests: tiny models, fast settings, captured notifications."""

from __future__ import annotations

import pytest
import torch
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_unet._sample_data import demo_images
from napari_unet.config import ModelConfig, TrainConfig
from napari_unet.training import train


@pytest.fixture(autouse=True)
def _few_threads():
    """One intra-op thread (overrides the suite's two): on a 2-core machine PyTorch with 2
    threads beside the busy GUI thread runs many times slower."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sample():
    """The nuclei sample: (image, instance labels), (held-out image, labels), 256x256."""
    return demo_images()


@pytest.fixture(scope="session")
def model_file(tmp_path_factory, sample):
    """A tiny instance-mode model trained for one epoch on the sample, saved to a file."""
    (image, labels), _ = sample
    model = train(
        image,
        labels,
        TrainConfig(mode="instances", epochs=1, patch_size=64, batch_size=4, device="cpu"),
        model_config=ModelConfig(depth=2, base_channels=8),
    )
    path = tmp_path_factory.mktemp("models") / "nuclei.safetensors"
    model.save(path)
    return path


class Notifications:
    """Notifications shown during a test."""

    def __init__(self):
        self.records = []

    def __call__(self, notification):
        self.records.append(notification)

    @property
    def errors(self) -> list[str]:
        return [n.message for n in self.records if n.severity == NotificationSeverity.ERROR]

    @property
    def warnings(self) -> list[str]:
        return [n.message for n in self.records if n.severity == NotificationSeverity.WARNING]

    @property
    def infos(self) -> list[str]:
        return [n.message for n in self.records if n.severity == NotificationSeverity.INFO]


@pytest.fixture
def notifications():
    """Collects every notification the widgets show (messages by severity)."""
    collector = Notifications()
    notification_manager.notification_ready.connect(collector)
    yield collector
    notification_manager.notification_ready.disconnect(collector)
