"""The forward pass used for inference: a batch of tiles in, probabilities out.

Kept apart from the tiling so that the speed levers (precision, memory format,
fused normalisation) live in one place and are measured by benchmarks/.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ._device import autocast
from .model import UNet, fuse_batchnorm


def make_forward(network: UNet, device: torch.device, dtype, softmax: bool):
    """Return ``forward(batch)``: (B, C, H, W) float32 numpy -> (B, K, H, W) float32 numpy,
    softmax probabilities if ``softmax``. Works on a fused copy of ``network``."""
    network = fuse_batchnorm(copy.deepcopy(network).eval()).to(device)
    network = network.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            y = network(x)
        y = y.float()
        if softmax:
            y = torch.softmax(y, dim=1)
        return y.cpu().numpy()

    return forward
