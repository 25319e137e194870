"""Reading and writing images and reports for the CLI and benchmarks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import DuetInputError


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
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(str(path))
        else:
            from skimage.io import imread

            arr = imread(str(path))
    except MemoryError:
        raise  # not a bad file: the caller reports running out of memory
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise DuetInputError(f"cannot read {path.name} as an image: {reason}") from None
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf" or arr.size == 0:
        raise DuetInputError(f"{path.name} holds no usable image data (dtype {arr.dtype})")
    return arr


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
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    tifffile.imwrite(str(path), array, metadata=metadata, **kwargs)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON with numpy values converted, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
