"""TIFF reading (whole or lazily through tifffile's zarr interface) and writing."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DuetInputError, first_line
from .memory import CHUNKED_HINT, array_bytes, require_memory
from .meta import _TIFF_AXES, ImageMeta
from .outputs import atomic_path


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF (tifffile) or any format scikit-image reads.

    Raises
    ------
    DuetInputError
        If the file does not exist or cannot be read as an image.
    """
    path = Path(path)
    if not path.is_file():
        raise DuetInputError(f"image file not found: {path}")
    tiff = path.suffix.lower() in (".tif", ".tiff")
    with _tiff_log() as logged:
        try:
            if tiff:
                import tifffile

                with tifffile.TiffFile(str(path)) as tif:
                    series = tif.series[0] if tif.series else None
                    if series is not None:
                        # A few KiB of TIFF can declare any shape: check before allocating.
                        require_memory(array_bytes(series.shape, series.dtype),
                                       f"reading {path.name} {tuple(series.shape)}",
                                       CHUNKED_HINT)
                arr = tifffile.imread(str(path))
            else:
                from skimage.io import imread

                arr = imread(str(path))
        except (MemoryError, DuetInputError):
            raise  # not a bad file: the caller reports running out of memory
        except Exception as exc:
            if tiff:
                raise DuetInputError(_damaged_tiff(path, logged, exc)) from None
            raise DuetInputError(f"cannot read {path.name} as an image: "
                                 f"{first_line(exc)}") from None
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf" or arr.size == 0:
        if tiff and (logged or arr.size == 0):
            raise DuetInputError(_damaged_tiff(path, logged))
        raise DuetInputError(f"{path.name} holds no usable image data (dtype {arr.dtype})")
    return arr


@contextlib.contextmanager
def _tiff_log() -> Iterator[list[str]]:
    """Collect what tifffile logs while reading (a damaged file's reason) instead of
    printing it above our own one-line error."""
    import logging

    logger = logging.getLogger("tifffile")
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _damaged_tiff(path: Path, logged: list[str], exc: BaseException | None = None) -> str:
    """One line: the TIFF is damaged, and why (tifffile's reason, without its object repr)."""
    reason = first_line(exc) if exc is not None else ""
    if not reason and logged:
        reason = re.sub(r"^<[^>]*>\s*", "", logged[0])
    reason = reason or "no image in it"
    return (f"cannot read {path.name}: it is a damaged TIFF file ({reason[:100]}); "
            "export it again from the source")


def read_pixel_info(path: str | os.PathLike) -> dict[str, Any]:
    """Axes and pixel sizes a TIFF states explicitly (empty for other formats).

    Keys, each only when the file gives it: ``axes`` (e.g. ``"ZYX"``, from
    ImageJ, OME or shaped metadata), ``resolution`` ((x, y) pixels per unit)
    and ``resolutionunit`` (TIFF tags), ``spacing`` (z step) and ``unit``
    (ImageJ or shaped metadata).  Pass it to :func:`write_tiff` as
    ``pixel_info`` to keep them in outputs.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return {}
    import tifffile

    info: dict[str, Any] = {}
    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            page = tif.pages[0]
            shaped = (tif.shaped_metadata or ({},))[0] if tif.is_shaped else {}
            ij = tif.imagej_metadata or {}
            if tif.is_imagej or tif.is_ome or "axes" in shaped:
                info["axes"] = str(series.axes)
            tags = page.tags
            if "XResolution" in tags and "YResolution" in tags:
                res = tuple(float(v) for v in page.resolution)
                unit = int(page.resolutionunit)
                if res != (1.0, 1.0) or unit != 1:
                    info["resolution"], info["resolutionunit"] = res, unit
            for key in ("spacing", "unit"):
                value = ij.get(key, shaped.get(key))
                if value is not None:
                    info[key] = value
    except Exception:  # metadata is a nicety: the pixels were read by read_image
        return {}
    return info





def write_tiff(path: str | os.PathLike, array: np.ndarray, *,
               pixel_info: dict[str, Any] | None = None, **metadata: Any) -> Path:
    """Write ``array`` as a TIFF, creating parent folders; any number of dimensions round-trips.

    ``pixel_info`` (from :func:`read_pixel_info`) keeps the input's pixel size
    (resolution tags) and its ``spacing``/``unit``; its ``axes`` are kept when
    they fit the array's dimensions (or, less the trailing colour axis, for a
    mask of a colour image).
    The file is written under a temporary name and renamed when complete
    (:func:`atomic_path`): an interrupted write leaves any previous file intact.
    """
    import tifffile

    path = Path(path)
    array = np.asarray(array)
    metadata = dict(metadata)
    kwargs: dict[str, Any] = {}
    info = pixel_info or {}
    axes = info.get("axes")
    if axes and len(axes) == array.ndim + 1 and axes[-1] in "SC":
        axes = axes[:-1]
    if axes and len(axes) == array.ndim:
        metadata.setdefault("axes", axes)
    for key in ("spacing", "unit"):
        if key in info:
            metadata.setdefault(key, info[key])
    if "resolution" in info:
        kwargs["resolution"] = tuple(info["resolution"])
        kwargs["resolutionunit"] = info.get("resolutionunit", 1)
    if array.ndim >= 3 and array.shape[-1] not in (3, 4):
        # Grey planes: without this tifffile stores a leading axis of 3 or 4, e.g. a
        # (3, Y, X) stack, as the colour planes of one RGB image.
        kwargs["photometric"] = "minisblack"
    # A metadata dict (even empty) makes tifffile record the shape, so (N, 2, Y, X) reads back
    # as (N, 2, Y, X) rather than (2N, Y, X).
    with atomic_path(path) as tmp:
        tifffile.imwrite(str(tmp), array, metadata=metadata, **kwargs)
    return path


def _open_tiff(path: Path):
    import tifffile
    import zarr

    if not path.is_file():
        raise DuetInputError(f"image file not found: {path}")
    with _tiff_log() as logged:
        try:
            with tifffile.TiffFile(str(path)) as tif:
                if not tif.series or not len(tif.pages):
                    raise DuetInputError(_damaged_tiff(path, logged))
                series = tif.series[0]
                tiff_axes = str(series.axes)
                ome_sizes = _ome_physical_sizes(tif) if tif.is_ome else {}
            store = tifffile.imread(str(path), aszarr=True, series=0, level=0)
            arr = zarr.open_array(store, mode="r")
        except DuetInputError:
            raise
        except Exception as exc:
            raise DuetInputError(_damaged_tiff(path, logged, exc)) from None
    axes = tuple(_TIFF_AXES.get(a, a.lower()) for a in tiff_axes)
    if len(axes) != arr.ndim or len(set(axes)) != len(axes):
        axes = ImageMeta.default(arr.ndim).axes
    scale, units = [1.0] * arr.ndim, [None] * arr.ndim
    info = read_pixel_info(path)
    if "resolution" in info:
        rx, ry = info["resolution"]
        for name, r in (("x", rx), ("y", ry)):
            if name in axes and r > 0:
                scale[axes.index(name)] = 1.0 / float(r)
    if "spacing" in info and "z" in axes:
        scale[axes.index("z")] = float(info["spacing"])
    unit = info.get("unit")
    for name, (size, u) in ome_sizes.items():
        if name in axes:
            scale[axes.index(name)] = size
            units[axes.index(name)] = u
    if unit and not ome_sizes:
        unit = {"um": "micrometer", "µm": "micrometer", "\\u00B5m": "micrometer",
                "micron": "micrometer", "nm": "nanometer"}.get(str(unit), str(unit))
        for name in "zyx":
            if name in axes:
                units[axes.index(name)] = unit
    return arr, ImageMeta(axes, tuple(scale), tuple(units))


def _ome_physical_sizes(tif) -> dict[str, tuple[float, str | None]]:
    """PhysicalSize{X,Y,Z} of the first OME image: {axis: (size, unit)}."""
    import tifffile

    try:
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]
        image = ome["Image"][0] if isinstance(ome["Image"], list) else ome["Image"]
        pixels = image["Pixels"]
    except Exception:
        return {}
    units = {"µm": "micrometer", "um": "micrometer", "nm": "nanometer", "mm": "millimeter"}
    out = {}
    for name in "xyz":
        size = pixels.get(f"PhysicalSize{name.upper()}")
        if size is not None:
            unit = pixels.get(f"PhysicalSize{name.upper()}Unit", "µm")
            out[name] = (float(size), units.get(str(unit), str(unit)))
    return out


def write_tiff_blocks(path: str | os.PathLike, array, *, pixel_info: dict[str, Any] | None = None,
                      bigtiff: bool | None = None) -> Path:
    """Write an array-like (e.g. a zarr array) as a TIFF plane by plane (bounded memory).

    BigTIFF when the data exceed 2 GiB (or ``bigtiff`` says so); keeps
    ``pixel_info`` (see :func:`write_tiff`); written under a temporary name and
    renamed when complete.
    """
    import tifffile

    path = Path(path)
    shape, dtype = tuple(array.shape), np.dtype(array.dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if bigtiff is None:
        bigtiff = nbytes > 2**31
    info = pixel_info or {}
    metadata: dict[str, Any] = {}
    if info.get("axes") and len(info["axes"]) == len(shape):
        metadata["axes"] = info["axes"]
    for key in ("spacing", "unit"):
        if key in info:
            metadata[key] = info[key]
    kwargs: dict[str, Any] = {}
    if "resolution" in info:
        kwargs["resolution"] = tuple(info["resolution"])
        kwargs["resolutionunit"] = info.get("resolutionunit", 1)

    def planes():
        lead = shape[:-2]
        if not lead:
            yield np.ascontiguousarray(np.asarray(array[...]), dtype)
            return
        for idx in np.ndindex(*lead):
            yield np.ascontiguousarray(np.asarray(array[idx]), dtype)

    with atomic_path(path) as tmp:
        tifffile.imwrite(str(tmp), data=planes(), shape=shape, dtype=dtype, bigtiff=bigtiff,
                         photometric="minisblack", metadata=metadata, **kwargs)
    return path
