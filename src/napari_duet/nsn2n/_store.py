"""Apply a model to a lazy volume into an OME-Zarr store, resumable (for the napari widget).

:func:`iter_denoise_to_zarr` wraps :func:`~napari_duet.nsn2n._chunked.iter_denoise_chunked`:
it creates the OME-Zarr (:func:`create_store`, as ``duet nsn2n --model M`` does),
records in the store's attributes (:class:`~napari_duet.core.chunks.RunRecord`)
which run it belongs to and the slabs finished so far, continues an interrupted
run of the same input, model and options where it stopped, and adds the
pyramid once level 0 is complete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.chunks import RunRecord
from ..core.chunks import run_signature as chunked_run_signature
from ..core.errors import DuetInputError
from ..core.io import (
    ImageMeta,
    build_pyramid,
    create_ome_zarr,
    strict_jsonable,
)
from ..core.progress import Progress
from ._chunked import auto_slab, iter_denoise_chunked
from ._volume import layout_for


@dataclass(kw_only=True)
class StoreProgress(Progress):
    """The last step of :func:`iter_denoise_to_zarr`: ``stage`` "pyramid" (no count)."""


@dataclass
class StoreResult:
    """Where the result is: the store, its number of levels, and whether it was resumed."""

    path: Path
    levels: int
    resumed_slabs: int
    reused: bool  # an earlier run had already finished it: nothing was computed
    uncertainty: Path | None = None  # the TTA spread, when asked for


def model_fingerprint(model) -> str:
    """SHA-256 of a model's weights and configuration (models trained in a session
    have no file to hash)."""
    h = hashlib.sha256()
    h.update(json.dumps(strict_jsonable(model.config.to_dict()), sort_keys=True).encode())
    for name, tensor in sorted(model.net.state_dict().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensor.detach().cpu().float().numpy()).tobytes())
    return h.hexdigest()


def run_signature(model, source, *, axis: int, tta: bool, input_name: str) -> dict[str, Any]:
    """What identifies a run (:func:`napari_duet.core.chunks.run_signature`): the input
    (name, shape, dtype, a sample of its slices along ``axis``), the model and the options."""
    layout_for(tuple(int(s) for s in source.shape), axis)  # a valid slice axis
    return chunked_run_signature(source, input=input_name, axis=axis,
                                 model_sha256=model_fingerprint(model), tta=bool(tta))


def create_store(path: str | Path, layout, meta: ImageMeta, slab: int,
                 signature: dict[str, Any]):
    """A new OME-Zarr for a slab-by-slab run of ``signature`` (level 0 chunked one slab
    deep along the slice axis, float32), shared by the widget and ``duet nsn2n``;
    returns level 0."""
    chunks = [1] * len(layout.shape)
    chunks[layout.axis] = min(slab, layout.shape[layout.axis])
    for a in layout.plane_axes:
        chunks[a] = min(512, layout.shape[a])
    return create_ome_zarr(path, layout.shape, np.float32, meta, chunks=tuple(chunks),
                           attributes=RunRecord.attributes(signature))


def iter_denoise_to_zarr(
    model, source, path: str | Path, meta: ImageMeta, *, axis: int, tta: bool,
    signature: dict[str, Any], slab: int | None = None,
    uncertainty_path: str | Path | None = None,
) -> Generator[Any, None, StoreResult]:
    """Denoise ``source`` slab by slab into the OME-Zarr ``path``, yielding progress.

    Parameters
    ----------
    model : NSN2NModel
    source : array-like
        The volume (dask, zarr, numpy...); only slabs are read.
    path : path
        The ``.ome.zarr`` to write.  An existing store is continued when it is
        an interrupted run of ``signature``, returned as is when that run had
        finished, and refused otherwise (it is never overwritten).
    meta : ImageMeta
        Axes, pixel size and units written into the store.
    signature : dict
        What identifies the run (:func:`run_signature`).
    uncertainty_path : path, optional
        With ``tta``: a second OME-Zarr for the spread over flips/rotations
        (kept in step with ``path``: created, resumed and finished with it).

    Yields the progress of :func:`iter_denoise_chunked`, then a
    :class:`StoreProgress` while the pyramid is built.  Closing the generator
    between yields keeps every finished slab (the next call resumes).
    """
    import zarr

    path = Path(path)
    unc_path = Path(uncertainty_path) if uncertainty_path is not None and tta else None
    signature = dict(signature, uncertainty=unc_path is not None)
    layout = layout_for(tuple(int(s) for s in source.shape), axis)
    state, unc = None, None
    if path.exists():
        record = RunRecord.open(path, signature, hint="choose another output or remove it")
        if unc_path is not None:
            found = RunRecord.open(unc_path, signature,
                                   hint="remove the interrupted result to start again")
            if found is None:
                raise DuetInputError(f"{unc_path} is missing: remove the interrupted result "
                                     "to start again")
            unc = found.group["0"]
        if record.complete:
            return StoreResult(path, len(record.group), 0, True, unc_path)
        state = record.state or None
        out = record.group["0"]
    else:
        plane = layout.shape[layout.plane_axes[0]] * layout.shape[layout.plane_axes[1]]
        slab = slab or auto_slab(plane)
        if unc_path is not None:
            if unc_path.exists():
                raise DuetInputError(f"{unc_path} exists: choose another output or remove it")
            unc = create_store(unc_path, layout, meta, slab, signature)
        out = create_store(path, layout, meta, slab, signature)
        record = RunRecord(zarr.open_group(str(path), mode="r+"), signature)

    resumed = len((state or {}).get("done", []))
    final = yield from iter_denoise_chunked(model, source, out, axis=layout.axis, tta=tta,
                                            slab=slab, state=state, save_state=record.save,
                                            uncertainty=unc)
    yield StoreProgress(stage="pyramid")
    levels = build_pyramid(path)
    if unc_path is not None:
        build_pyramid(unc_path)
    record.finish(final)
    return StoreResult(path, levels, resumed, False, unc_path)
