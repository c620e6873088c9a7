"""The inference forward pass: a batch of tiles in, probabilities out.

Kept apart from the tiling so that the speed levers (precision, memory format,
fused normalisation, compilation) live in one place and are measured by
``benchmarks/levers.py``. Measured on a 2-core Sapphire Rapids CPU
(docs/benchmarks.md): bf16 is ~3-4x fp32 once activations are channels-last
(oneDNN runs bf16 convolutions on AMX only in NHWC: ~2.5-3x), channels-last alone is
~1.3-1.4x in fp32, BatchNorm folding ~1.05-1.1x; ``torch.compile`` gained from nothing
to 1.8x per tile depending on the state of the machine, and its first call takes
6-15 s for each ``predict`` call, so it is off by default. On the CPU each 3x3
convolution and the ReLU after it run as one oneDNN call on weights reordered once
(:func:`fused_unet_forward`), which gets most of what ``torch.compile`` gains
without compiling.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from ._device import autocast
from .model import DoubleConv, UNet, fuse_batchnorm


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
    fuse_relu: bool = True,
    offset: tuple[float, float] | None = None,
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
    fuse_relu
        On the CPU, run each 3x3 convolution with the ReLU after it as one oneDNN
        call (:func:`fused_unet_forward`) where the network allows it (BatchNorm
        folded or no normalisation, channels-last, bf16 or fp32). Same function;
        ignored where it does not apply.
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
    if (
        fuse_relu
        and not compiled
        and channels_last
        and device.type == "cpu"
        and (dtype is None or dtype == torch.bfloat16)
    ):
        model = fused_unet_forward(network) or network
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
            return shift_maps(run(x)[:count], offset).cpu().numpy()
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
        return shift_maps(total[:count] / (8 if square else 4), offset).cpu().numpy()

    def run(x: torch.Tensor) -> torch.Tensor:
        if weights_dtype is not None:
            y = model(x.to(weights_dtype))
        else:
            with autocast(device, dtype):
                y = model(x)
        y = y.float()
        return torch.softmax(y, dim=1) if softmax else y

    return forward


def shift_maps(maps: torch.Tensor, offset: tuple[float, float] | None) -> torch.Tensor:
    """Move (..., H, W) maps by ``offset`` = (dy, dx) pixels: ``out[y, x] = maps[y - dy,
    x - dx]``, linearly interpolated, with the edge rows and columns repeated (what
    ``scipy.ndimage.shift(..., order=1, mode="nearest")`` does)."""
    if offset is None:
        return maps
    for axis, shift in ((-2, offset[0]), (-1, offset[1])):
        if not shift:
            continue
        size = maps.shape[axis]
        whole = math.floor(-shift)
        part = -shift - whole
        index = torch.arange(size, device=maps.device) + whole
        low = maps.index_select(axis, index.clamp(0, size - 1))
        high = maps.index_select(axis, (index + 1).clamp(0, size - 1))
        maps = low * (1 - part) + high * part if part else low
    return maps


def _fusable_convs(block: nn.Module) -> list[nn.Conv2d] | None:
    """The two convolutions of a DoubleConv that reads (conv, ReLU, conv, ReLU) once
    its no-ops (folded BatchNorm, dropout in eval mode) are left out; else None."""
    if not isinstance(block, DoubleConv):
        return None
    no_ops = (nn.Identity, nn.Dropout2d, nn.Dropout)
    layers = [layer for layer in block if not isinstance(layer, no_ops)]
    kinds = [type(layer) for layer in layers]
    if kinds != [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU]:
        return None  # e.g. instance or group normalisation between conv and ReLU
    return [layers[0], layers[2]]


def fused_unet_forward(network: UNet):
    """A forward pass of an eval-mode U-Net with each 3x3 convolution and its ReLU fused.

    Each (3x3 convolution, ReLU) pair runs as one oneDNN convolution with a ReLU
    post-op, on weights reordered into oneDNN's blocked layout once per input shape
    (what ``torch.compile`` with frozen weights does for convolutions, without
    compiling). This saves one pass over every feature map; 2x2 max pooling of
    channels-last maps runs as two elementwise maxima. The result is the same
    function as ``network(x)``. Returns None where it does not apply: no oneDNN, a
    normalisation between convolution and ReLU (instance, group, unfolded BatchNorm),
    or a network that is not a :class:`~napari_unet.model.UNet`. If the fused call
    fails at run time, the returned function falls back to ``network`` for good.
    """
    ops = getattr(torch.ops, "mkldnn", None)
    if not (
        isinstance(network, UNet)
        and torch.backends.mkldnn.is_available()
        and hasattr(ops, "_convolution_pointwise")
        and hasattr(ops, "_reorder_convolution_weight")
    ):
        return None
    blocks = [*network.encoders, network.bottleneck, *(d.conv for d in network.decoders)]
    pairs = [_fusable_convs(block) for block in blocks]
    if any(p is None for p in pairs):
        return None
    for conv in (c for p in pairs for c in p):
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.groups != 1:
            return None
    packed: dict[tuple, torch.Tensor] = {}
    broken: list[Exception] = []
    geometry = ([1, 1], [1, 1], [1, 1], 1)  # padding, stride, dilation, groups

    def conv_relu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        key = (id(conv), tuple(x.shape), x.dtype)
        weight = packed.get(key)
        if weight is None:
            if len(packed) > 64 * len(pairs):  # many shapes seen: keep memory bounded
                packed.clear()
            weight = ops._reorder_convolution_weight(conv.weight, *geometry[:3], 1, list(x.shape))
            packed[key] = weight
        return ops._convolution_pointwise(x, weight, conv.bias, *geometry, "relu", [], "")

    def double(convs, x):
        return conv_relu(convs[1], conv_relu(convs[0], x))

    def pool(x: torch.Tensor) -> torch.Tensor:
        """2x2 max pooling of a channels-last tensor as two elementwise maxima over
        views (exactly ``max_pool2d``; 1.2-1.7x faster than it on bf16 NHWC here)."""
        if not x.is_contiguous(memory_format=torch.channels_last):
            return network.pool(x)
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2 * c)
        columns = torch.maximum(rows[:, :, 0], rows[:, :, 1])  # (n, h/2, w/2, 2c)
        return torch.maximum(columns[..., :c], columns[..., c:]).permute(0, 3, 1, 2)

    def fused(x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if (
            height % network.divisor
            or width % network.divisor
            or x.dtype != network.head.weight.dtype
        ):
            return network(x)  # the module's own checks and messages
        skips = []
        for pair in pairs[: len(network.encoders)]:
            x = double(pair, x)
            skips.append(x)
            x = pool(x)
        x = double(pairs[len(network.encoders)], x)
        for decoder, pair, skip in zip(
            network.decoders, pairs[len(network.encoders) + 1 :], reversed(skips), strict=True
        ):
            x = double(pair, torch.cat([skip, decoder.up(x)], dim=1))
        return network.head(x)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if broken:
            return network(x)
        try:
            return fused(x)
        except RuntimeError as error:  # an op this build of torch lacks for this input
            broken.append(error)
            return network(x)

    return forward
