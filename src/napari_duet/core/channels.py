"""Channel axes of input images: found, named by the user, or refused; never misread.

A (Y, X, C) or (Z, Y, X, C) array read as (Z, Y, X) gives frames of X x C
pixels: garbage without an error.  The commands therefore look for a channel
axis before any work, in this order:

1. the user's ``--channel-axis N`` (``none``: there is none);
2. the axes the file states (TIFF ImageJ/OME/shaped metadata, OME-Zarr):
   ``C``, or ``S`` (TIFF samples, e.g. RGB);
3. the shape: a last axis of at most :data:`MAX_GUESSED_CHANNELS` after two
   axes of at least :data:`MIN_PLANE_SIDE` pixels is taken as channels.

Each command then handles the channels (one stack per channel) or refuses the
input with a message naming the axis.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import DuetInputError

__all__ = ["MAX_GUESSED_CHANNELS", "find_channel_axis", "refuse_channels",
           "stated_axes"]

#: A last axis this short after a plane is read as channels (RGB(A), a few stains).
MAX_GUESSED_CHANNELS = 4
#: Both plane sides of an image whose last axis is guessed to be channels are at least this.
MIN_PLANE_SIDE = 8
CHANNEL_AXIS_HELP = ("the input's channel axis, or none (default: the axis the file names C, "
                     "else a last axis of at most 4 after a larger image plane)")


def find_channel_axis(shape: Sequence[int], *, axes: Sequence[str] | str | None = None,
                      given: int | str | None = "auto") -> int | None:
    """The channel axis of an array of ``shape`` (non-negative), or None.

    Parameters
    ----------
    shape : sequence of int
        The array's shape.
    axes : str or sequence of str, optional
        Axis names the file states (one letter or name per axis; ``c``/``s``
        mark channels).  None: not stated, the shape decides.
    given : int, "auto", "none" or None
        The user's choice (``--channel-axis``); ``"auto"``/None look it up.

    Raises
    ------
    DuetInputError
        If ``given`` is not an axis of ``shape``.
    """
    ndim = len(shape)
    if given == "none":
        return None
    if given not in (None, "auto"):
        c = int(given)
        if not -ndim <= c < ndim:
            raise DuetInputError(
                f"--channel-axis {given} is not an axis of the input (shape {tuple(shape)})")
        return c % ndim
    if axes is not None and len(axes) == ndim:
        named = [i for i, a in enumerate(axes) if str(a).lower() in ("c", "s")]
        return named[0] if named else None
    if (ndim >= 3 and shape[-1] <= MAX_GUESSED_CHANNELS
            and min(shape[-3], shape[-2]) >= MIN_PLANE_SIDE):
        return ndim - 1
    return None


def stated_axes(path, meta=None) -> str | tuple[str, ...] | None:
    """The axes a file states: ``meta.axes`` of a zarr store, a TIFF's ImageJ/OME/shaped
    axes, else None (the shape decides)."""
    from .io import is_zarr_path, read_pixel_info

    if meta is not None and is_zarr_path(path):
        return tuple(meta.axes)
    return read_pixel_info(path).get("axes")


def refuse_channels(name: str, shape: Sequence[int], axis: int | None, what: str) -> None:
    """Raise a one-line :class:`DuetInputError` when ``axis`` (a channel axis) is not None.

    ``what`` says what the command needs instead (e.g. "give one channel").
    """
    if axis is None:
        return
    raise DuetInputError(
        f"{name} has a channel axis (axis {axis} of shape {tuple(int(s) for s in shape)}, "
        f"{int(shape[axis])} channels): {what}")
