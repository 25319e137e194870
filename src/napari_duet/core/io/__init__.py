"""Reading and writing images and reports, one module per concern.

* :mod:`.meta`: :class:`ImageMeta` (axes, pixel size, units) and the format tests;
* :mod:`.tiff`: TIFF reading (whole or lazy) and writing;
* :mod:`.ngff`: OME-Zarr (NGFF 0.4/0.5) lazy reading, chunked writing, pyramids, labels;
* :mod:`.outputs`: output safety (checked before a run, written atomically, result sets);
* :mod:`.jsonio`: strict JSON reports;
* :mod:`.memory`: memory bounds of in-memory reads;
* :mod:`.fingerprint`: a data fingerprint from the pixels.

:func:`open_image` opens any of them without loading it when the format allows.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DuetInputError
from .fingerprint import content_fingerprint
from .jsonio import strict_jsonable, write_json
from .memory import (
    CHUNKED_HINT,
    array_bytes,
    available_memory,
    format_bytes,
    read_whole,
    require_memory,
)
from .meta import NGFF_VERSIONS, ImageMeta, is_tiff_path, is_zarr_path
from .ngff import (
    _open_zarr,
    auto_levels,
    build_pyramid,
    create_ome_zarr,
    create_ome_zarr_labels,
    default_chunks,
    ngff_version,
    write_ome_zarr,
)
from .outputs import (
    IMAGE_OUTPUT_SUFFIXES,
    MANIFEST_KEY,
    ResultSet,
    atomic_path,
    check_outputs,
    remove_stale_outputs,
    replace_tree,
    require_image_suffix,
    verify_result_set,
)
from .tiff import _open_tiff, read_image, read_pixel_info, write_tiff, write_tiff_blocks

__all__ = [
    "array_bytes",
    "atomic_path",
    "auto_levels",
    "available_memory",
    "build_pyramid",
    "check_outputs",
    "CHUNKED_HINT",
    "content_fingerprint",
    "create_ome_zarr",
    "create_ome_zarr_labels",
    "default_chunks",
    "format_bytes",
    "IMAGE_OUTPUT_SUFFIXES",
    "ImageMeta",
    "is_tiff_path",
    "is_zarr_path",
    "MANIFEST_KEY",
    "ngff_version",
    "NGFF_VERSIONS",
    "open_image",
    "read_image",
    "read_pixel_info",
    "read_whole",
    "remove_stale_outputs",
    "replace_tree",
    "require_image_suffix",
    "require_memory",
    "ResultSet",
    "strict_jsonable",
    "verify_result_set",
    "write_json",
    "write_ome_zarr",
    "write_tiff",
    "write_tiff_blocks",
]


def open_image(path: str | os.PathLike):
    """Open an image for reading without loading it when the format allows.

    OME-Zarr (NGFF 0.4/0.5: level 0 of the first multiscale image) and plain
    zarr arrays give a read-only zarr array; TIFF/OME-TIFF give a zarr array over
    the file (tifffile's zarr interface, pages read on access); other formats
    scikit-image reads are read into memory.

    Returns
    -------
    array, ImageMeta
        The array (index it to read) and its axes, pixel size and units.

    Raises
    ------
    DuetInputError
        Missing file, unreadable data or metadata, unsupported dtype.
    """
    path = Path(path)
    if is_zarr_path(path):
        arr, meta = _open_zarr(path)
    elif is_tiff_path(path):
        arr, meta = _open_tiff(path)
    else:
        arr = read_image(path)
        meta = ImageMeta.default(arr.ndim)
    if np.dtype(arr.dtype).kind not in "biuf" or 0 in arr.shape or len(arr.shape) == 0:
        raise DuetInputError(f"{path.name} holds no usable image data (dtype {arr.dtype})")
    return arr, meta
