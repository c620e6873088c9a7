"""Configuration of the network, of training and of prediction.

These pydantic models are the single source of truth for the Python API, the
command line and the napari widgets: each field carries its default, its bounds
and the sentence that documents it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

LabelMode = Literal["semantic", "sparse", "instances"]
Norm = Literal["batch", "instance", "group", "none"]
Device = str  # "auto", "cpu", "cuda", "cuda:1", "mps"


def describe_error(error: ValidationError, names: dict[str, str] | None = None) -> str:
    """One line for a user: ``field: message`` for each problem of a configuration;
    ``names`` gives fields the names the user knows them by (a command's options)."""
    names = names or {}
    parts = []
    for problem in error.errors():
        where = ".".join(map(str, problem["loc"]))
        where = names.get(where, where)
        parts.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    return "; ".join(parts)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Config):
    """Architecture of the U-Net."""

    in_channels: int = Field(
        1, ge=1, le=64, description="Number of image channels (1 grey, 3 RGB)."
    )
    num_classes: int = Field(2, ge=2, le=255, description="Output classes, background included.")
    depth: int = Field(
        4, ge=1, le=6, description="Number of 2x2 poolings; inputs must be multiples of 2**depth."
    )
    base_channels: int | None = Field(
        None,
        ge=2,
        le=256,
        description="Feature channels of the first level, doubled at each level "
        "(None: 32 on a GPU, 16 on the CPU, where it trains about 4x faster).",
    )
    norm: Norm = Field(
        "batch",
        description="Normalisation after each 3x3 convolution. 'instance' and 'group' use "
        "each tile's own statistics: predictions then depend on the tile size, and empty "
        "tiles can fill with false objects.",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout before the bottleneck convs.")


class TrainConfig(_Config):
    """How to train. Either ``epochs`` or ``minutes`` bounds the run (``minutes`` wins)."""

    mode: LabelMode = Field("semantic", description="How label values are read (see docs).")
    epochs: int | None = Field(None, ge=1, description="Number of epochs (None: use minutes).")
    minutes: float | None = Field(
        None, gt=0, description="Time budget in minutes; the schedule fits into it."
    )
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Optimiser steps per epoch (None: about one pass of the pixels)."
    )
    patch_size: int = Field(
        256,
        ge=16,
        le=2048,
        description="Side of the square training patches (made just large enough where "
        "every training image is smaller).",
    )
    batch_size: int = Field(8, ge=1, le=256, description="Patches per optimiser step.")
    learning_rate: float = Field(2e-3, gt=0, lt=1, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(1e-4, ge=0, lt=1, description="AdamW weight decay.")
    augment: bool = Field(True, description="Random flips, 90 degree rotations, intensity jitter.")
    elastic: bool = Field(False, description="Also apply elastic deformations (slower).")
    zoom: float = Field(
        1.0,
        ge=1,
        le=2,
        description="With augmentation, also scale each patch by a random factor between "
        "1/zoom and zoom and rotate it by a random angle (slower steps; 1 turns it off).",
    )
    foreground_sampling: float = Field(
        0.5, ge=0, le=1, description="Share of patches centred on a non-background labelled pixel."
    )
    validation_fraction: float = Field(
        0.1,
        ge=0,
        lt=0.9,
        description="Held-out share: the last images or slices, or a strip of each where "
        "they would hold more than twice the share of the labelled pixels (or of one image).",
    )
    dice_weight: float = Field(
        0.5,
        ge=0,
        description="Weight of the Dice term of the loss (against the cross-entropy's).",
    )
    ce_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy term.")
    border_weight: float = Field(
        10.0,
        ge=0,
        description="Instances: the paper's extra cross-entropy weight (w0) on the pixels "
        "between touching objects; 0 turns it off.",
    )
    seed: int = Field(0, description="Seed of every random choice; equal seeds, equal runs.")
    device: Device = Field("auto", description="'auto' picks CUDA, then MPS, then the CPU.")
    mixed_precision: bool | None = Field(
        None, description="bf16/fp16 autocast (None: on where the device runs it fast)."
    )
    low_percentile: float = Field(1.0, ge=0, lt=50, description="Normalisation low percentile.")
    high_percentile: float = Field(
        99.8, gt=50, le=100, description="Normalisation high percentile."
    )
    label_offset: bool = Field(
        True,
        description="After training, measure on the validation planes whether the labels "
        "sit a fraction of a pixel off where the network draws them (labels drawn or "
        "resampled on a shifted grid), and move predictions by it.",
    )

    @model_validator(mode="after")
    def _one_budget(self) -> TrainConfig:
        if self.epochs is None and self.minutes is None:
            self.__dict__["epochs"] = 50
        return self

    @model_validator(mode="after")
    def _something_to_learn(self) -> TrainConfig:
        if self.dice_weight == 0 and self.ce_weight == 0:
            raise PydanticCustomError(
                "loss_weights",
                "dice_weight and ce_weight are both 0, so nothing would be learned; "
                "give at least one of them a positive weight.",
            )
        return self


OVERLAP_PIXELS = 64
"""Default overlap of neighbouring tiles in pixels; less overlap lets the tile borders
change more labels (benchmarks/tiles.py: the "changed by tiling" column)."""


class PredictConfig(_Config):
    """How to run a model on an image."""

    # Tiles of 1024 overlapping by 64 pixels compute fewer pixels twice than tiles of
    # 512 overlapping by the same 64 (1.13x against 1.34x the image on a 16384 x 16384
    # slide, 1.16x against 1.28x on 2048 x 2048), a forward pass is as fast per pixel at
    # either size, and the tiling changes fewer labels (benchmarks/tiles.py).
    tile_size: int = Field(1024, ge=16, le=8192, description="Side of the square inference tiles.")
    overlap: float | None = Field(
        None,
        ge=0,
        lt=0.5,
        description="Overlap between neighbouring tiles, as a share of a tile (None: "
        f"{OVERLAP_PIXELS} pixels, at most a quarter of the tile).",
    )
    # One tile per pass: two tiles of 1024 per pass measured 1.03x to 1.19x faster in three
    # runs of benchmarks/tiles.py (paired, noisy) and hold twice the feature maps; memory
    # comes first for whole slides on laptops.
    batch_size: int = Field(1, ge=1, le=256, description="Tiles per forward pass.")
    device: Device = Field("auto", description="'auto' picks CUDA, then MPS, then the CPU.")
    mixed_precision: bool | None = Field(
        None, description="bf16/fp16 autocast (None: on where the device runs it fast)."
    )
    tta: bool = Field(
        False, description="Average the 8 flips and 90 degree rotations of each tile (8x slower)."
    )
    output: Literal["labels", "probabilities"] = Field("labels", description="What to return.")

    @property
    def overlap_share(self) -> float:
        """``overlap``, or where it is None :data:`OVERLAP_PIXELS` as a share of the tile
        (at most a quarter)."""
        return self.overlap_of(self.tile_size)

    def overlap_of(self, tile: int) -> float:
        """The overlap as a share of a tile of ``tile`` pixels (the tile side the grid
        uses once rounded to the network's divisor, so that None stays 64 pixels)."""
        if self.overlap is not None:
            return self.overlap
        return min(0.25, OVERLAP_PIXELS / tile)
