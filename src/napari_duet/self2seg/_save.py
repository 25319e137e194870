"""``save(folder)`` of Self2Seg results: the files ``duet self2seg`` and "Save results…" write.

One folder per image: ``mask.tif`` (uint8 classes), ``labels.tif`` (instance labels,
the smallest unsigned type that holds them), ``denoised.tif`` and ``expert_<k>.tif``
(float32, non-negative for a non-negative input) and ``report.json``.  The widget adds
``seeds.tif`` and ``objects.csv`` under the names of :func:`result_file`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Result name (a widget layer's key, or a part of the result) -> file name.
RESULT_FILES = {"mask": "mask.tif", "labels": "labels.tif", "objects": "labels.tif",
                "denoised": "denoised.tif", "seeds": "seeds.tif", "report": "report.json",
                "objects_csv": "objects.csv"}
EXPERT_PATTERN = r"expert_\d+\.tif"


def result_file(name: str) -> str:
    """File name of the result ``name``: ``mask``, ``labels``/``objects``, ``denoised``,
    ``expert<k>`` or ``expert_<k>``, ``seeds``, ``report``, ``objects_csv``."""
    if name.startswith("expert"):
        return f"expert_{int(name[6:].lstrip('_'))}.tif"
    return RESULT_FILES[name]


def save_self2seg(result, folder, *, pixel_info: dict[str, Any] | None = None,
                  nonnegative: bool = False, report: dict[str, Any] | None = None) -> list[Path]:
    """Write a Self2Seg (or stack) result into ``folder`` as one result set; returns the paths.

    The files are staged and moved in together, ``report.json`` (listing them) last;
    expert files of an earlier run with more classes are removed.  ``nonnegative``:
    clip the intensities at 0 (a CNN expert may undershoot a non-negative input);
    ``report``: extra entries for ``report.json`` (input name, seeds, ...).
    """
    from ..core.io import ResultSet, write_json, write_tiff

    def intensities(a):
        a = np.asarray(a, np.float32)
        return np.maximum(a, 0) if nonnegative else a

    instances = result.instances
    names: list[str] = []
    with ResultSet(folder, pattern=EXPERT_PATTERN) as results:
        def staged(name: str) -> Path:
            names.append(result_file(name))
            return results.path(names[-1])

        write_tiff(staged("mask"), result.labels.astype(np.uint8),
                   pixel_info=pixel_info)
        write_tiff(staged("labels"),
                   instances.astype(np.uint16 if instances.max(initial=0) < 2**16
                                    else np.uint32), pixel_info=pixel_info)
        write_tiff(staged("denoised"), intensities(result.denoised),
                   pixel_info=pixel_info)
        for k in range(result.experts.shape[0]):
            write_tiff(staged(f"expert{k}"), intensities(result.experts[k]),
                       pixel_info=pixel_info)
        full = result.report()
        full["objects"] = int(instances.max(initial=0))
        full.update(report or {})
        if pixel_info:
            full["pixel_info"] = pixel_info
        write_json(staged("report"), full)
    return [Path(folder) / n for n in names]
