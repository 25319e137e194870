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
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise DuetInputError(f"cannot read {path.name} as an image: {reason}") from None
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf" or arr.size == 0:
        raise DuetInputError(f"{path.name} holds no usable image data (dtype {arr.dtype})")
    return arr


def write_tiff(path: str | os.PathLike, array: np.ndarray, **metadata: Any) -> Path:
    """Write ``array`` as a TIFF, creating parent folders; any number of dimensions round-trips."""
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A metadata dict (even empty) makes tifffile record the shape, so (N, 2, Y, X) reads back
    # as (N, 2, Y, X) rather than (2N, Y, X).
    tifffile.imwrite(str(path), np.asarray(array), metadata=dict(metadata))
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
