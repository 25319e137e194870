"""Input validation and axis handling: any nD array <-> a batch of (Z, Y, X) stacks.

The chosen ``axis`` is the slice axis (z for stacks, t for time-lapses).  The
two last remaining axes are the image plane (Y, X).  Every other axis
(channels, time points of a 4D series, ...) is flattened into independent
stacks: each is normalised on its own and denoised with the same network,
which is trained on all of them (one model per run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import DuetInputError
from ..core.intensity import Normalizer, as_float_image, fit_normalizer

MIN_SLICES = 3
# Percentiles mapped to 0/1: robust to hot pixels, keeps a little headroom.
NORM_LOW, NORM_HIGH = 0.1, 99.9


@dataclass(frozen=True)
class StackLayout:
    """How a user array maps onto ``(S, Z, Y, X)`` stacks and back."""

    shape: tuple[int, ...]
    axis: int
    plane_axes: tuple[int, int]
    other_axes: tuple[int, ...]

    @property
    def n_stacks(self) -> int:
        return int(np.prod([self.shape[a] for a in self.other_axes], dtype=np.int64))

    def to_stacks(self, arr: np.ndarray) -> np.ndarray:
        order = (*self.other_axes, self.axis, *self.plane_axes)
        moved = np.transpose(arr, order)
        z, y, x = (self.shape[a] for a in (self.axis, *self.plane_axes))
        return np.ascontiguousarray(moved.reshape(self.n_stacks, z, y, x))

    def from_stacks(self, stacks: np.ndarray) -> np.ndarray:
        order = (*self.other_axes, self.axis, *self.plane_axes)
        moved = stacks.reshape(tuple(self.shape[a] for a in order))
        return np.ascontiguousarray(np.transpose(moved, np.argsort(order)))


def check_axis(ndim: int, axis: int) -> int:
    """Normalise ``axis`` for an array of ``ndim`` dimensions (DuetInputError if out of range)."""
    if not isinstance(axis, int | np.integer) or isinstance(axis, bool):
        raise DuetInputError(f"axis must be an integer, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise DuetInputError(
            f"axis {axis} is out of range for a {ndim}D array; use 0..{ndim - 1}"
        )
    return int(axis) % ndim


def layout_for(shape: tuple[int, ...], axis: int) -> StackLayout:
    """Validate ``shape``/``axis`` and return the stack layout.

    Raises
    ------
    DuetInputError
        For 2D (or lower) input, a wrong axis, fewer than 3 slices or planes
        smaller than 4 pixels.
    """
    ndim = len(shape)
    if ndim < 3:
        raise DuetInputError(
            f"NS-N2N needs a volume or time-lapse (3D or more), got a {ndim}D array {shape}"
        )
    axis = check_axis(ndim, axis)
    if shape[axis] < MIN_SLICES:
        raise DuetInputError(
            f"NS-N2N needs at least {MIN_SLICES} slices along axis {axis}, got {shape[axis]}"
        )
    rest = [a for a in range(ndim) if a != axis]
    plane = (rest[-2], rest[-1])
    if shape[plane[1]] <= 4 < 8 <= shape[plane[0]]:
        # (Y, X, C) or (Z, Y, X, C): slices of X x C pixels would be garbage.
        raise DuetInputError(
            f"the last axis ({plane[1]}, size {shape[plane[1]]}) of {tuple(shape)} looks like "
            "channels: move them first (np.moveaxis(volume, -1, 0)), each channel is then its "
            "own stack; slices need both sides > 4")
    if min(shape[plane[0]], shape[plane[1]]) < 4:
        raise DuetInputError(
            f"slices of shape {(shape[plane[0]], shape[plane[1]])} are too small (need 4x4)"
        )
    return StackLayout(tuple(int(s) for s in shape), axis, plane, tuple(rest[:-2]))


def raw_stacks(volume, axis: int) -> tuple[StackLayout, np.ndarray]:
    """Validate and move axes: the layout and the float32 stacks ``(S, Z, Y, X)``, unscaled."""
    arr = as_float_image(volume, name="volume")
    layout = layout_for(arr.shape, axis)
    return layout, layout.to_stacks(arr)


def prepare(volume, axis: int, noise=None, raw: tuple | None = None
            ) -> tuple[StackLayout, np.ndarray, list[Normalizer]]:
    """Validate, move axes, apply the noise model's transform and normalise.

    ``noise``: a fitted :class:`~napari_duet.nsn2n._noise.NoiseModel` whose
    ``forward`` (the variance-stabilising transform for photon noise, else the
    identity) is applied before the normalisation.  ``raw``: the result of
    :func:`raw_stacks` when already computed.

    Returns the layout, the normalised float32 stacks ``(S, Z, Y, X)`` and one
    :class:`Normalizer` per stack.
    """
    layout, stacks = raw if raw is not None else raw_stacks(volume, axis)
    if noise is not None:
        stacks = noise.forward(stacks)
    norms = [fit_normalizer(s, "percentile", NORM_LOW, NORM_HIGH) for s in stacks]
    out = np.empty_like(stacks)
    for i, (s, n) in enumerate(zip(stacks, norms, strict=True)):
        out[i] = n.forward(s)
    return layout, out, norms
