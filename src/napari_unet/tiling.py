"""Overlapping tiles, smooth blending and stitching in bounded memory.

The image is covered by a regular grid of square tiles that overlap by a fixed
number of pixels. Each tile's output is multiplied by a separable weight that
ramps up from the tile's inner edges (sides facing a neighbour) and is flat in
the middle and on sides that touch the image border; the stitched result is the
weighted sum divided by the sum of weights. Because the grid is a Cartesian
product and the weights are separable, the sum of weights is an outer product
of two 1-D profiles and never needs a full-size buffer.

Tiles are read from the source on demand (numpy, memory-mapped TIFF, zarr or
dask all support the slicing used) and finished rows of the output are handed
out as horizontal bands as soon as no later tile touches them, so memory holds
about two rows of tiles whatever the image size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]
"""Batch (B, C, h, w) float32 -> (B, K, h, w) float32."""


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Axis:
    """Tiling of one axis: tile length and starts.

    Every tile starts at a multiple of the network's divisor (its total pooling factor),
    so that all tiles, and a prediction of the image in one piece, pool the image on the
    same grid: a U-Net's output depends on where its pooling windows fall, and tiles
    pooled on different grids would disagree over their whole area, not only at their
    edges. The last tile may reach up to ``divisor - 1`` pixels beyond the image; a tile
    is filled up to its length by reflection. The single tile of a short axis is at
    least ``least`` long (the model's training patch): the image mirrored around it on
    both sides (by a multiple of ``divisor`` before it), as training pads its images, so
    that an image smaller than the patches it was trained on is seen as in training.
    """

    length: int
    tile: int
    starts: tuple[int, ...]
    pad_before: int = 0

    @classmethod
    def plan(cls, length: int, tile: int, overlap: int, divisor: int, least: int = 0) -> Axis:
        if length <= tile:
            size = max(
                _round_up(length, divisor), 2 * divisor, min(_round_up(least, divisor), tile)
            )
            return cls(length, size, (0,), (size - length) // 2 // divisor * divisor)
        stride = max(divisor, tile - overlap)
        count = -(-(length - tile) // stride) + 1
        # The fewest tiles of at most ``tile`` pixels are ``count``; shrink them to the
        # smallest multiple of ``divisor`` that still covers the axis with overlaps of at
        # least ``overlap``, so no pixels are computed beyond what blending needs.
        most = tile
        tile = min(tile, _round_up(-(-(length + (count - 1) * overlap) // count), divisor))
        while True:
            # starts spread evenly over multiples of ``divisor`` up to the last tile's
            last = _round_up(length - tile, divisor) // divisor
            widest = -(-last // (count - 1)) * divisor  # the largest step between starts
            if widest <= tile - overlap:
                break
            if tile + divisor <= most:
                tile += divisor
            else:
                count += 1
        starts = np.round(np.linspace(0, last, count)).astype(int) * divisor
        return cls(length, tile, tuple(int(s) for s in starts))

    def valid(self, index: int) -> int:
        """The image pixels that tile ``index`` covers (the rest of it is padding)."""
        return min(self.tile - self.pad_before, self.length - self.starts[index])

    def weights(self, index: int, ramp: int) -> np.ndarray:
        """1-D blending weight of tile ``index`` over its valid (unpadded) pixels."""
        size = self.valid(index)
        w = np.ones(size, np.float32)
        if len(self.starts) == 1 or ramp <= 0:
            return w
        # Raised-cosine ramp over the real overlap with each neighbour.
        position = np.arange(size, dtype=np.float32) + 0.5
        if index > 0:
            width = min(ramp, self.starts[index - 1] + self.tile - self.starts[index])
            w *= _ramp(position, width)
        if index < len(self.starts) - 1:
            width = min(ramp, self.starts[index] + self.tile - self.starts[index + 1])
            w *= _ramp(size - position, width)
        return w

    def weight_sum(self, ramp: int) -> np.ndarray:
        total = np.zeros(self.length, np.float32)
        for i, start in enumerate(self.starts):
            total[start : start + self.valid(i)] += self.weights(i, ramp)
        return total


def tile_side(tile_size: int, divisor: int) -> int:
    """The side of the tiles :meth:`TileGrid.plan` uses for ``tile_size``: rounded up to
    the network's ``divisor``, and at least 2 x 2 pixels at the bottleneck (instance
    normalisation needs more than one)."""
    return _round_up(max(tile_size, 2 * divisor), divisor)


def _ramp(distance: np.ndarray, width: int) -> np.ndarray:
    """0 at the tile edge, 1 after ``width`` pixels, smooth in between, never exactly 0."""
    if width <= 0:
        return np.ones_like(distance)
    t = np.clip(distance / width, 0.0, 1.0)
    return np.maximum(0.5 - 0.5 * np.cos(np.pi * t), 1e-3).astype(np.float32)


@dataclass(frozen=True)
class TileGrid:
    """Tiles covering an image of ``shape`` (Y, X)."""

    y: Axis
    x: Axis
    ramp: int

    @classmethod
    def plan(
        cls, shape: tuple[int, int], tile_size: int, overlap: float, divisor: int, least: int = 0
    ) -> TileGrid:
        """Plan tiles of at most ``tile_size`` (rounded up to ``divisor``) overlapping by at
        least ``overlap`` (a share of ``tile_size``), each starting at a multiple of
        ``divisor``. Each axis gets the fewest tiles that cover it, shrunk to fit it (so a
        2048-pixel axis takes 5 tiles of 464 rather than 5 of 512). Axes shorter than a
        tile get one tile, padded by reflection to a multiple of ``divisor``, to at least
        twice it and to at least ``least`` (within ``tile_size``)."""
        if not 0 <= overlap < 0.5:
            raise ValueError(f"overlap must be in [0, 0.5), got {overlap}.")
        tile = tile_side(tile_size, divisor)
        overlap_px = _round_up(int(round(overlap * tile)), 2)
        return cls(
            Axis.plan(shape[0], tile, overlap_px, divisor, least),
            Axis.plan(shape[1], tile, overlap_px, divisor, least),
            overlap_px,
        )

    @property
    def count(self) -> int:
        return len(self.y.starts) * len(self.x.starts)

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.y.tile, self.x.tile


_ROWS_AT_ONCE = 64


@dataclass
class Band:
    """Finished output rows ``[y0, y1)``: blended values (K, y1 - y0, X) float32.

    From :func:`iter_tiled`, ``values`` is a view of the tiler's working buffer, valid
    until the next event is asked for: use it or copy it before that.
    """

    y0: int
    y1: int
    values: np.ndarray


@dataclass
class TilesDone:
    """Progress: ``done`` of ``total`` tiles processed."""

    done: int
    total: int


def tile_window(grid: TileGrid, row: int, col: int) -> tuple[slice, slice]:
    """The image rows and columns read for tile (row, col): its valid, unpadded part."""
    ys, xs = grid.y, grid.x
    y0, x0 = ys.starts[row], xs.starts[col]
    return slice(y0, y0 + ys.valid(row)), slice(x0, x0 + xs.valid(col))


def prepare_tile(block, grid: TileGrid) -> np.ndarray:
    """A tile's pixels (C, h, w) as float32, reflect-padded to the tile shape where the
    image ends within the tile (and around the single tile of a short axis)."""
    tile = np.asarray(block, dtype=np.float32)
    ys, xs = grid.y, grid.x
    pads = (
        (0, 0),
        (ys.pad_before, ys.tile - ys.pad_before - tile.shape[1]),
        (xs.pad_before, xs.tile - xs.pad_before - tile.shape[2]),
    )
    if any(p for pair in pads for p in pair):
        tile = pad_reflect(tile, pads)
    return tile


def weight_tile_output(output: np.ndarray, grid: TileGrid, row: int, col: int) -> np.ndarray:
    """Crop a tile's network output (K, tile, tile) to its valid part and apply its
    blending weight: (K, h, w) float32, ready to be summed into the image."""
    ys, xs = grid.y, grid.x
    output = output[
        :,
        ys.pad_before : ys.pad_before + ys.valid(row),
        xs.pad_before : xs.pad_before + xs.valid(col),
    ]
    weight = ys.weights(row, grid.ramp)[:, None] * xs.weights(col, grid.ramp)[None, :]
    return output * weight


def tiles_touching(grid: TileGrid, rows: slice, cols: slice) -> list[tuple[int, int]]:
    """Tiles (row, col) whose valid part meets image region [rows, cols), row-major."""
    found = []
    for row in range(len(grid.y.starts)):
        ywin = tile_window(grid, row, 0)[0]
        if ywin.start >= rows.stop or ywin.stop <= rows.start:
            continue
        for col in range(len(grid.x.starts)):
            xwin = tile_window(grid, 0, col)[1]
            if xwin.start < cols.stop and xwin.stop > cols.start:
                found.append((row, col))
    return found


def blend_region(
    grid: TileGrid, rows: slice, cols: slice, weighted: dict[tuple[int, int], np.ndarray]
) -> np.ndarray:
    """Blended output (K, h, w) of image region [rows, cols) from the weighted outputs
    (:func:`weight_tile_output`) of every tile that touches it (:func:`tiles_touching`).

    Sums in the same order and with the same factors as :func:`iter_tiled`, so a region
    blended here equals the same region of the streamed result bit for bit.
    """
    first = next(iter(weighted.values()))
    acc = np.zeros((first.shape[0], rows.stop - rows.start, cols.stop - cols.start), np.float32)
    for row, col in sorted(weighted):
        ywin, xwin = tile_window(grid, row, col)
        y0, y1 = max(ywin.start, rows.start), min(ywin.stop, rows.stop)
        x0, x1 = max(xwin.start, cols.start), min(xwin.stop, cols.stop)
        values = weighted[row, col][
            :, y0 - ywin.start : y1 - ywin.start, x0 - xwin.start : x1 - xwin.start
        ]
        acc[:, y0 - rows.start : y1 - rows.start, x0 - cols.start : x1 - cols.start] += values
    inv_y = 1.0 / grid.y.weight_sum(grid.ramp)
    inv_x = 1.0 / grid.x.weight_sum(grid.ramp)
    acc *= inv_y[rows, None] * inv_x[None, cols]
    return acc


def read_tile(source, grid: TileGrid, row: int, col: int) -> np.ndarray:
    """Read tile (row, col) of a (C, Y, X) array-like as float32, reflect-padding short axes."""
    ywin, xwin = tile_window(grid, row, col)
    return prepare_tile(source[:, ywin, xwin], grid)


def pad_reflect(array: np.ndarray, pads) -> np.ndarray:
    """Reflection padding that also works when a pad is wider than the axis."""
    mode = "reflect" if all(s > 1 for s in array.shape[1:]) else "edge"
    return np.pad(array, pads, mode=mode)


def iter_tiled(
    source,
    forward: Forward,
    num_outputs: int,
    grid: TileGrid,
    *,
    batch_size: int = 4,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[Band | TilesDone]:
    """Run ``forward`` over the tiles of ``source`` (C, Y, X) and yield finished bands.

    Parameters
    ----------
    source
        Array-like (C, Y, X) supporting basic slicing; read one tile at a time.
    forward
        Batch (B, C, h, w) float32 -> (B, num_outputs, h, w) float32.
    grid
        The tile plan (:meth:`TileGrid.plan`).
    transform
        Applied to each tile after reading (normalisation), (C, h, w) -> (C, h, w).

    Yields
    ------
    :class:`TilesDone` after each batch and :class:`Band` for each run of finished
    rows, top to bottom; the bands together cover the whole image exactly once. A
    band's values are only valid until the next event is asked for.

    Memory: one row of tiles, (num_outputs, tile, X) float32, whatever the height.
    """
    ys, xs = grid.y, grid.x
    height, width = ys.length, xs.length
    ylen = ys.valid(0)  # the rows of the tallest tiles: the first row's
    inv_x = 1.0 / xs.weight_sum(grid.ramp)
    inv_y = 1.0 / ys.weight_sum(grid.ramp)
    rows, cols = len(ys.starts), len(xs.starts)
    total = rows * cols

    # The accumulator holds the rows of one row of tiles: rows [acc_y0, acc_y0 + ylen).
    # A row of tiles is flushed before the next one is added (tiles come row by row), so
    # it never needs more; finished rows are handed out and the rest shifted up in place.
    acc_y0 = 0
    acc = np.zeros((num_outputs, ylen, width), np.float32)
    pending: list[tuple[int, int]] = []
    tiles: list[np.ndarray] = []
    done_in_row = [0] * rows
    next_row_to_flush = 0
    done = 0

    def flush() -> Iterator[Band]:
        nonlocal acc_y0, next_row_to_flush
        while next_row_to_flush < rows and done_in_row[next_row_to_flush] == cols:
            row = next_row_to_flush
            end = ys.starts[row + 1] if row + 1 < rows else height
            if end > acc_y0:
                count = end - acc_y0
                finished = acc[:, :count]
                for y in range(0, count, _ROWS_AT_ONCE):  # small temporaries for wide images
                    part = slice(acc_y0 + y, min(end, acc_y0 + y + _ROWS_AT_ONCE))
                    finished[:, y : y + _ROWS_AT_ONCE] *= inv_y[part, None] * inv_x[None, :]
                yield Band(acc_y0, end, finished)
                acc[:, : ylen - count] = acc[:, count:]
                acc[:, ylen - count :] = 0
                acc_y0 = end
            next_row_to_flush += 1

    def run_batch() -> Iterator[Band | TilesDone]:
        nonlocal done
        outputs = forward(np.stack(tiles))
        for (row, col), out in zip(pending, outputs, strict=True):
            yield from flush()
            y0, x0 = ys.starts[row], xs.starts[col]
            weighted = weight_tile_output(out, grid, row, col)
            h, w = weighted.shape[1:]
            acc[:, y0 - acc_y0 : y0 - acc_y0 + h, x0 : x0 + w] += weighted
            done_in_row[row] += 1
        done += len(pending)
        pending.clear()
        tiles.clear()
        yield TilesDone(done, total)
        yield from flush()

    for row in range(rows):
        for col in range(cols):
            tile = read_tile(source, grid, row, col)
            if transform is not None:
                tile = transform(tile)
            tiles.append(tile)
            pending.append((row, col))
            if len(tiles) == batch_size:
                yield from run_batch()
    if tiles:
        yield from run_batch()


def tiled_apply(
    source, forward: Forward, num_outputs: int, grid: TileGrid, **kwargs
) -> np.ndarray:
    """Blocking form of :func:`iter_tiled`: the whole blended output (K, Y, X) float32."""
    out = np.empty((num_outputs, grid.y.length, grid.x.length), np.float32)
    for event in iter_tiled(source, forward, num_outputs, grid, **kwargs):
        if isinstance(event, Band):
            out[:, event.y0 : event.y1] = event.values
    return out
