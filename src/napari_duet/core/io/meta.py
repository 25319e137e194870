"""Image metadata (axes, pixel size, units) and the path tests that pick a format."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import first_line

# ---------------------------------------------------------------------- large images
# Lazy reading (OME-Zarr, plain zarr, TIFF through tifffile's zarr interface) and
# chunked OME-Zarr writing, for data larger than memory.  zarr is imported only here.

NGFF_VERSIONS = ("0.4", "0.5")
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
# TIFF axis letters (tifffile) -> NGFF axis names; other letters keep their own name.
_TIFF_AXES = {"T": "t", "C": "c", "S": "c", "Z": "z", "Y": "y", "X": "x"}


@dataclass(frozen=True)
class ImageMeta:
    """Axes, physical pixel size and units of an image, one entry per dimension.

    ``axes`` are NGFF names (``"t"``, ``"c"``, ``"z"``, ``"y"``, ``"x"``, or the
    file's own), ``scale`` the pixel size along each axis (1.0 when unknown),
    ``units`` NGFF unit names or None.
    """

    axes: tuple[str, ...]
    scale: tuple[float, ...]
    units: tuple[str | None, ...]

    @classmethod
    def default(cls, ndim: int) -> ImageMeta:
        """Axes guessed from the number of dimensions, unit pixel size."""
        names = ("t", "c", "z", "y", "x")
        axes = names[-ndim:] if ndim <= 5 else tuple(f"dim_{i}" for i in range(ndim - 5)) + names
        return cls(tuple(axes), (1.0,) * ndim, (None,) * ndim)

    def pixel_info(self) -> dict[str, Any]:
        """The TIFF ``pixel_info`` for :func:`write_tiff` (axes, resolution, spacing, unit)."""
        info: dict[str, Any] = {"axes": "".join(
            {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}.get(a, "Q") for a in self.axes)}
        if "y" in self.axes and "x" in self.axes:
            sy, sx = self.scale[self.axes.index("y")], self.scale[self.axes.index("x")]
            if (sx, sy) != (1.0, 1.0) and sx > 0 and sy > 0:
                info["resolution"] = (1.0 / sx, 1.0 / sy)
                info["resolutionunit"] = 1
        if "z" in self.axes and self.scale[self.axes.index("z")] != 1.0:
            info["spacing"] = self.scale[self.axes.index("z")]
        unit = next((u for a, u in zip(self.axes, self.units, strict=True)
                     if u and a in "xyz"), None)
        if unit:
            info["unit"] = {"micrometer": "um"}.get(unit, unit)
        return info


def is_zarr_path(path: str | os.PathLike) -> bool:
    """True for ``*.zarr`` paths (including ``*.ome.zarr``)."""
    return str(path).rstrip("/\\").lower().endswith(".zarr")


def is_tiff_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in (".tif", ".tiff")


def _reason(exc: BaseException) -> str:
    return first_line(exc)
