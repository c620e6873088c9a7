"""The inference forward pass: a batch of tiles in, probabilities out.

Kept apart from the tiling so that the speed levers (precision, memory format,
fused normalisation, compilation) live in one place and are measured by
``benchmarks/levers.py``. Measured on a 2-core Sapphire Rapids CPU
(docs/benchmarks.md): bf16 is ~3-4x fp32 once activations are channels-last
(oneDNN runs bf16 convolutions on AMX only in NHWC: ~2.5-3x), channels-last alone is
~1.3-1.4x in fp32, BatchNorm folding ~1.05-1.1x; ``torch.compile`` gained from nothing
to 1.8x per tile depending on the state of the machine, and its first call takes
6-15 s for each ``predict`` call, so it is off by default.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ._device import autocast
from .model import UNet, fuse_batchnorm


def make_forward(
    network: UNet,
    device: torch.device,
    dtype: torch.dtype | None,
    softmax: bool,
    *,
    fuse: bool = True,
    channels_last: bool = True,
    compiled: bool = False,
    cuda_graphs: bool = False,
    tta: bool = False,
):
    """Return ``forward(batch)``: (B, C, H, W) float32 numpy -> (B, K, H, W) float32 numpy.

    Parameters
    ----------
    network
        The U-Net; it is copied, never changed.
    device
        Where the forward pass runs.
    dtype
        Autocast dtype (``torch.bfloat16``, ``torch.float16``) or None for fp32.
    softmax
        Return softmax probabilities rather than logits.
    fuse
        Fold BatchNorm into the preceding convolutions (same function, fewer passes).
    channels_last
        Run in NHWC memory format, the layout oneDNN and cuDNN convolutions prefer.
    compiled
        ``torch.compile`` the network (inductor, weights frozen as constants).
        Batches smaller than the first one are zero-padded to its size, so a
        ragged last batch reuses the compiled graph instead of recompiling.
    cuda_graphs
        With ``compiled`` on a CUDA device, replay the graph as a CUDA graph
        (one launch per batch instead of one per kernel).
    tta
        Test-time augmentation: average the softmax outputs over the 8 flips and
        90 degree rotations of each tile (4 flips for non-square tiles), as the
        U-Net paper did.
    """
    network = copy.deepcopy(network).eval()
    if fuse:
        network = fuse_batchnorm(network)
    network = network.to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    network = network.to(memory_format=memory_format)
    # bfloat16 has the range of float32, so the weights are stored in it once rather
    # than cast by autocast at every call (144 casts per forward pass of a depth-4
    # U-Net); the result is the same. float16 keeps autocast, which runs sensitive
    # layers in float32.
    weights_dtype = dtype if dtype == torch.bfloat16 else None
    if weights_dtype is not None:
        network = network.to(weights_dtype)
    model = network
    if compiled:
        options = {"freezing": True}
        if cuda_graphs and device.type == "cuda":
            options["triton.cudagraphs"] = True
        model = torch.compile(network, dynamic=False, options=options)
    fixed_batch: list[int] = []

    @torch.inference_mode()
    def forward(batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        x = torch.from_numpy(batch)
        if compiled:
            if not fixed_batch:
                fixed_batch.append(count)
            if count < fixed_batch[0]:
                x = torch.cat([x, x.new_zeros((fixed_batch[0] - count, *x.shape[1:]))])
        x = x.to(device).contiguous(memory_format=memory_format)
        if not tta:
            return run(x)[:count].cpu().numpy()
        square = x.shape[-1] == x.shape[-2]
        total = None
        for turns in (0, 1, 2, 3) if square else (0, 2):
            for flip in (False, True):
                view = torch.rot90(x, turns, dims=(-2, -1))
                view = view.flip(-1) if flip else view
                y = run(view.contiguous(memory_format=memory_format))
                y = y.flip(-1) if flip else y
                y = torch.rot90(y, -turns, dims=(-2, -1))
                total = y if total is None else total + y
        return (total[:count] / (8 if square else 4)).cpu().numpy()

    def run(x: torch.Tensor) -> torch.Tensor:
        if weights_dtype is not None:
            y = model(x.to(weights_dtype))
        else:
            with autocast(device, dtype):
                y = model(x)
        y = y.float()
        return torch.softmax(y, dim=1) if softmax else y

    return forward
