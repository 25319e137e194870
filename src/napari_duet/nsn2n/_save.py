"""``save(folder)`` of NS-N2N results: the files "Save results…" and scripts write.

One folder per result: ``denoised.tif`` (float32, the input's shape),
``uncertainty.tif`` (with test-time augmentation), ``report.json`` (the run's
report) and, for a training result, ``model.duet`` (loadable with
``duet nsn2n --model`` or the widget's "Load model…").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

RESULT_FILES = ("denoised.tif", "uncertainty.tif", "report.json", "model.duet")


def save_result(result, folder, *, pixel_info: dict[str, Any] | None = None,
                report: dict[str, Any] | None = None) -> list[Path]:
    """Write ``result`` (a NSN2NResult or DenoiseResult) into ``folder``; returns the paths.

    ``report``: extra entries for ``report.json`` (input name, axis, ...).
    """
    from ..core.io import check_outputs, remove_stale_outputs, write_json, write_tiff

    folder = Path(folder)
    model = getattr(result, "model", None)
    names = ["denoised.tif", "report.json"]
    if result.uncertainty is not None:
        names.append("uncertainty.tif")
    if model is not None:
        names.append("model.duet")
    check_outputs([], [("folder", folder / n) for n in names], folders={"folder": folder})
    remove_stale_outputs(folder, names=RESULT_FILES, keep=names)
    written = [write_tiff(folder / "denoised.tif",
                          np.asarray(result.denoised, np.float32), pixel_info=pixel_info)]
    if result.uncertainty is not None:
        written.append(write_tiff(folder / "uncertainty.tif",
                                  np.asarray(result.uncertainty, np.float32),
                                  pixel_info=pixel_info))
    if model is not None:
        written.append(Path(model.save(folder / "model.duet")))
    rep = dict(result.report())
    rep.update(report or {})
    rep["files"] = [p.name for p in written]
    written.append(write_json(folder / "report.json", rep))
    return written
