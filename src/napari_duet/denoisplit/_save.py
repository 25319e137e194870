"""``SplitResult.save(folder)``: the files of ``duet split predict`` and "Save results…".

``mmse.tif`` and ``std.tif`` hold every structure on a channel axis ((C, Y, X),
or (T, C, Y, X) for a stack of frames); with two structures also ``a.tif``,
``b.tif``, ``std_a.tif`` and ``std_b.tif``; ``samples.tif`` the posterior
samples when the result has them; ``report.json`` the report, with the files
and their shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PREDICT_FILES = ("mmse.tif", "std.tif", "a.tif", "b.tif", "std_a.tif", "std_b.tif",
                 "samples.tif", "report.json")


def save_split(result, folder, *, pixel_info: dict[str, Any] | None = None,
               report: dict[str, Any] | None = None,
               samples_shape: list[int] | None = None, results=None) -> list[Path]:
    """Write ``result`` (a SplitResult) into ``folder`` as one set; returns the paths.

    The files are staged and moved in together, ``report.json`` (listing exactly
    these files) last (:class:`~napari_duet.core.io.ResultSet`), so the folder never
    mixes two runs.  ``results``: an open ResultSet to write into (``duet split
    predict`` streams the samples into it first; ``samples_shape`` says so);
    ``report``: extra entries for ``report.json``.
    """
    from ..core.io import ResultSet, write_json, write_tiff

    folder = Path(folder)
    if results is None:
        with ResultSet(folder, names=PREDICT_FILES) as own:
            return save_split(result, folder, pixel_info=pixel_info, report=report,
                              samples_shape=samples_shape, results=own)
    stack = result.mean.ndim == 4  # (C, T, Y, X)
    two = result.mean.shape[0] == 2
    samples = result.samples
    with_samples = samples_shape is not None or (samples is not None and len(samples) > 1)
    files: dict[str, list[int]] = {}

    def put(name, arr, axes=None):
        kw = {"axes": axes} if axes else {}
        write_tiff(results.path(name), np.ascontiguousarray(arr, dtype=np.float32),
                   pixel_info=pixel_info, **kw)
        files[name] = list(arr.shape)

    put("mmse.tif", np.moveaxis(result.mean, 0, 1) if stack else result.mean,
        "TCYX" if stack else "CYX")
    put("std.tif", np.moveaxis(result.std, 0, 1) if stack else result.std,
        "TCYX" if stack else "CYX")
    if two:
        put("a.tif", result.mean[0])
        put("b.tif", result.mean[1])
        put("std_a.tif", result.std[0])
        put("std_b.tif", result.std[1])
    if samples_shape is not None:
        files["samples.tif"] = list(samples_shape)  # written while predicting
    elif with_samples:
        put("samples.tif", samples)
    rep = result.report()
    rep["files"] = files
    rep.update(report or {})
    write_json(results.path("report.json"), rep)
    return [folder / name for name in (*files, "report.json")]
