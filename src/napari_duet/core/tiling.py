"""Padding, tiling and cropping so networks accept any image size.

Networks with down-sampling need sizes divisible by their stride, and large
images must be processed in tiles with bounded memory.  Tiles overlap and
only each tile's inner part is kept, so seams do not show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np


def pad_to_multiple(
    image: np.ndarray, multiple: int, *, axes: tuple[int, ...] = (-2, -1), mode: str = "reflect",
    min_size: int = 0,
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Pad ``image`` on the given axes to a multiple of ``multiple``.

    Returns the padded array and the slices that crop it back.  Reflect
    padding falls back to symmetric/edge padding for tiny images.
    """
    pads = [(0, 0)] * image.ndim
    crop = [slice(None)] * image.ndim
    for ax in axes:
        ax = ax % image.ndim
        n = image.shape[ax]
        target = max(int(np.ceil(n / multiple)) * multiple, min_size)
        target = int(np.ceil(target / multiple)) * multiple
        extra = target - n
        before = extra // 2
        pads[ax] = (before, extra - before)
        crop[ax] = slice(before, before + n)
    if any(p != (0, 0) for p in pads):
        image = _pad(image, pads, mode)
    return image, tuple(crop)


def _pad(image: np.ndarray, pads, mode: str) -> np.ndarray:
    if mode == "reflect":
        # numpy's reflect needs pad < size; pad repeatedly for tiny images.
        out = image
        remaining = [list(p) for p in pads]
        while any(b or a for b, a in remaining):
            step = []
            for ax, (b, a) in enumerate(remaining):
                lim = max(out.shape[ax] - 1, 0)
                sb, sa = min(b, lim), min(a, lim)
                step.append((sb, sa))
                remaining[ax] = [b - sb, a - sa]
            if all(s == (0, 0) for s in step):
                return np.pad(out, remaining, mode="edge")
            out = np.pad(out, step, mode="reflect")
        return out
    return np.pad(image, pads, mode=mode)


@dataclass(frozen=True)
class Tile:
    """One tile: where to read it, and which part of its output to keep where."""

    read: tuple[slice, slice]  # region of the image fed to the network
    keep: tuple[slice, slice]  # part of the tile's output to keep
    write: tuple[slice, slice]  # where that part goes in the output image


def _axis_tiles(n: int, tile: int, overlap: int) -> list[tuple[slice, slice, slice]]:
    if n <= tile:
        return [(slice(0, n), slice(0, n), slice(0, n))]
    step = tile - 2 * overlap
    if step <= 0:
        raise ValueError(f"tile {tile} too small for overlap {overlap}")
    out = []
    start = 0  # first output pixel this tile is responsible for
    while start < n:
        stop = min(start + step, n)
        r0 = max(0, min(start - overlap, n - tile))
        r1 = r0 + tile
        out.append((slice(r0, r1), slice(start - r0, stop - r0), slice(start, stop)))
        start = stop
    return out


def iter_tiles(shape: tuple[int, int], tile: int, overlap: int) -> Iterator[Tile]:
    """Tiles covering a 2D ``shape``; every output pixel is written exactly once."""
    ys = _axis_tiles(shape[0], tile, overlap)
    xs = _axis_tiles(shape[1], tile, overlap)
    for ry, ky, wy in ys:
        for rx, kx, wx in xs:
            yield Tile((ry, rx), (ky, kx), (wy, wx))


def count_tiles(shape: tuple[int, int], tile: int, overlap: int) -> int:
    return len(_axis_tiles(shape[0], tile, overlap)) * len(_axis_tiles(shape[1], tile, overlap))


def apply_tiled(
    fn: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    *,
    tile: int = 256,
    overlap: int = 32,
    multiple: int = 1,
    out_channels: int | None = None,
) -> np.ndarray:
    """Apply ``fn`` to a (..., Y, X) image tile by tile.

    ``fn`` gets a (..., ty, tx) tile padded to ``multiple`` and returns
    (..., ty, tx) or, with ``out_channels``, (out_channels, ty, tx).
    """
    shape = image.shape[-2:]
    lead = image.shape[:-2] if out_channels is None else (out_channels,)
    out = np.zeros(lead + tuple(shape), dtype=np.float32)
    for t in iter_tiles(shape, tile, overlap):
        patch = image[(..., *t.read)]
        padded, crop = pad_to_multiple(patch, multiple)
        res = np.asarray(fn(padded))[(..., *crop)]
        out[(..., *t.write)] = res[(..., *t.keep)]
    return out
