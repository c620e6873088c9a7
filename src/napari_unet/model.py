"""The classic 2D U-Net (Ronneberger, Fischer and Brox, 2015).

A contracting path of two 3x3 convolutions per level followed by 2x2 max
pooling, an expanding path of 2x2 transposed convolutions whose output is
concatenated with the encoder features of the same level before two more 3x3
convolutions, and a 1x1 head. Convolutions are padded, so the output has the
size of the input.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from .config import ModelConfig, Norm


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class DoubleConv(nn.Sequential):
    """Two (3x3 conv, normalisation, ReLU) blocks: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm, dropout: float = 0.0):
        bias = norm == "none"
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        layers += [
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
        ]
        super().__init__(*layers)


class Up(nn.Module):
    """2x2 transposed conv halving the channels, skip concatenation, then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """2D U-Net returning per-class logits.

    Parameters
    ----------
    in_channels
        Channels of the input image (1 for grey, 3 for RGB).
    num_classes
        Output channels (classes, background included).
    depth
        Number of 2x2 poolings. Height and width of the input must be multiples
        of ``2**depth``; :func:`napari_unet.predict` pads images by itself.
    base_channels
        Feature channels at the first level, doubled at each level. Depth 4 with
        64 base channels is the network of the paper (31.0 M parameters).
    norm
        ``"batch"``, ``"instance"``, ``"group"`` or ``"none"``. Batch normalisation
        predicts with statistics learned in training; instance and group
        normalisation with those of each tile, so their results depend on the tile
        size (see docs/accuracy-levers.md, "Normalisation per image").
    dropout
        Dropout probability inside the bottleneck block.

    Shapes
    ------
    (B, in_channels, H, W) float -> (B, num_classes, H, W) float logits.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 4,
        base_channels: int = 32,
        norm: Norm = "batch",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.config = ModelConfig(
            in_channels=in_channels,
            num_classes=num_classes,
            depth=depth,
            base_channels=base_channels,
            norm=norm,
            dropout=dropout,
        )
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.encoders.append(DoubleConv(channels, width, norm))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], norm, dropout)
        self.decoders = nn.ModuleList(
            Up(widths[level + 1], widths[level], norm) for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    @classmethod
    def from_config(cls, config: ModelConfig) -> UNet:
        return cls(**config.model_dump())

    @property
    def divisor(self) -> int:
        """Height and width of inputs must be multiples of this number."""
        return 2**self.config.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        d = self.divisor
        if height % d or width % d:
            padded = (-(-height // d) * d, -(-width // d) * d)
            raise ValueError(
                f"U-Net of depth {self.config.depth} needs height and width divisible by {d}; "
                f"got {(height, width)}. Pad the input to {padded} "
                "(napari_unet.predict pads by itself)."
            )
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for decoder, skip in zip(self.decoders, reversed(skips), strict=True):
            x = decoder(x, skip)
        return self.head(x)


def fuse_batchnorm(network: UNet) -> UNet:
    """Fold each eval-mode BatchNorm into the convolution before it, in place.

    Used for inference only: the fused network computes the same function with
    one pass over each feature map less.
    """
    if network.config.norm != "batch":
        return network
    for block in network.modules():
        if not isinstance(block, DoubleConv):
            continue
        children = list(block.children())
        for i, (conv, bn) in enumerate(zip(children, children[1:], strict=False)):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding
            ).to(conv.weight.device)
            with torch.no_grad():
                fused.weight.copy_(conv.weight * scale[:, None, None, None])
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
            block[i] = fused
            block[i + 1] = nn.Identity()
    return network


def checked_label_offset(value) -> tuple[float, float] | None:
    """``value`` as a label offset, (dy, dx) floats below one pixel, or None; ValueError
    for anything else (also what a model file's header is checked against)."""
    if value is None:
        return None
    try:
        values = tuple(value)
    except TypeError:
        values = ()
    if len(values) != 2 or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 1
        for v in values
    ):
        raise ValueError(f"label_offset {value!r} is not two shifts below a pixel")
    return float(values[0]), float(values[1])


class SegmentationModel:
    """A trained U-Net with everything needed to apply it to new images.

    Holds the network, the label mode and classes, the normalisation, the number
    of input channels and the training history. Save it with :meth:`save`, load it
    with :func:`napari_unet.load_model`, apply it with :func:`napari_unet.predict`.
    """

    def __init__(
        self,
        network: UNet,
        encoding,
        normalization,
        *,
        convert_channels: bool = False,
        history: dict | None = None,
        min_object_size: int | None = None,
        boundary_class: int | None = None,
        label_offset: tuple[float, float] | None = None,
    ):
        self.network = network
        self.encoding = encoding
        self.normalization = normalization
        self.convert_channels = convert_channels
        self.history: dict = history if history is not None else {"runs": []}
        # instances mode: objects smaller than this are dropped by default when predicting
        # (napari_unet.data.smallest_object_size of the training labels); None: 10 pixels
        # (semantic models whose boundary class has gaps closed: the smallest region)
        self.min_object_size = min_object_size
        # semantic mode: the class index that the training labels drew as boundaries
        # between regions (napari_unet.data.boundary_network); prediction closes its gaps
        self.boundary_class = boundary_class
        # (dy, dx) pixels, below one: how far the training labels sit from where the
        # network draws them (napari_unet.training.estimate_label_offset); prediction
        # moves its probabilities by it. None: no offset found
        self.label_offset = label_offset

    @property
    def label_offset(self) -> tuple[float, float] | None:
        return self._label_offset

    @label_offset.setter
    def label_offset(self, value) -> None:
        self._label_offset = checked_label_offset(value)

    @property
    def mode(self) -> str:
        return self.encoding.mode

    @property
    def class_names(self) -> list[str]:
        return list(self.encoding.class_names)

    @property
    def in_channels(self) -> int:
        return self.network.config.in_channels

    @property
    def num_classes(self) -> int:
        return self.network.config.num_classes

    @property
    def patch_size(self) -> int | None:
        """The patch size of the model's last training that took steps (None: not
        recorded)."""
        runs = [r for r in self.history.get("runs", []) if r.get("steps", 1)]
        size = runs[-1].get("config", {}).get("patch_size") if runs else None
        return int(size) if isinstance(size, int | float) and size > 0 else None

    @property
    def best_score(self) -> float | None:
        """The best validation score of the last run that trained (None where it was not
        validated): the weights are that run's, whatever earlier runs scored."""
        runs = [r for r in self.history.get("runs", []) if r.get("steps", 1)]
        return runs[-1].get("best_score") if runs else None

    def card(self) -> dict:
        """A short summary for people: classes, mode, channels, data, date, score."""
        runs = self.history.get("runs", [])
        last = runs[-1] if runs else {}
        return {
            "label mode": self.mode,
            "classes": ", ".join(self.class_names),
            "input channels": self.in_channels,
            "network": f"U-Net depth {self.network.config.depth}, "
            f"{self.network.config.base_channels} base channels",
            "trained on": last.get("data", "-"),
            "trained": last.get("finished", "-"),
            "epochs": sum(r.get("epochs", 0) for r in runs),
            "validation score": "-" if self.best_score is None else f"{self.best_score:.3f}",
            **(
                {"smallest object kept": f"{self.min_object_size} pixels"}
                if self.mode == "instances" and self.min_object_size
                else {}
            ),
            **(
                {"boundaries": f"gaps in '{self.class_names[self.boundary_class]}' are closed"}
                if self.boundary_class is not None
                else {}
            ),
            **(
                {"label offset": "{:+.2f}, {:+.2f} pixels (y, x)".format(*self.label_offset)}
                if self.label_offset is not None
                else {}
            ),
        }

    def save(self, path) -> None:
        """Write the model to one file (safetensors), atomically."""
        from .io import save_model

        save_model(self, path)

    def __repr__(self) -> str:
        return (
            f"SegmentationModel(mode={self.mode!r}, classes={self.class_names}, "
            f"in_channels={self.in_channels}, depth={self.network.config.depth}, "
            f"base_channels={self.network.config.base_channels})"
        )
