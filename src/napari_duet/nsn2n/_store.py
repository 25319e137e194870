"""Apply a model to a volume slab by slab into an OME-Zarr or TIFF, resumable.

:func:`iter_denoise_into` is the one run behind ``duet nsn2n --model M`` (slab by slab)
and the napari widget's large layers: it opens or continues the run's stores
(:class:`~napari_duet.core.chunks.ChunkedRun`: staged beside each output, the run's
record and finished slabs in the store's attributes), denoises with
:func:`~napari_duet.nsn2n._chunked.iter_denoise_chunked`, and finishes them (pyramid,
or the TIFF written from the staged level 0) and swaps them in.
:func:`iter_denoise_to_zarr` is the widget's call of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.chunks import ChunkedRun, RunRecord
from ..core.chunks import run_signature as chunked_run_signature
from ..core.errors import DuetInputError
from ..core.io import ImageMeta, create_ome_zarr, is_zarr_path, strict_jsonable
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
    final: dict[str, Any] | None = None  # the run's final state (slab, normalizers, taus)


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
                                 model_sha256=model_fingerprint(model), tta=bool(tta),
                                 wiener=model.wiener_mode)


def create_store(path: str | Path, layout, meta: ImageMeta, slab: int,
                 signature: dict[str, Any]):
    """A new OME-Zarr for a slab-by-slab run of ``signature`` (level 0 chunked one slab
    deep along the slice axis, float32); returns its group."""
    import zarr

    chunks = [1] * len(layout.shape)
    chunks[layout.axis] = min(slab, layout.shape[layout.axis])
    for a in layout.plane_axes:
        chunks[a] = min(512, layout.shape[a])
    create_ome_zarr(path, layout.shape, np.float32, meta, chunks=tuple(chunks),
                    attributes=RunRecord.attributes(signature))
    return zarr.open_group(str(path), mode="r+")


def _level0(record: RunRecord):
    try:
        return record.group["0"]
    except KeyError:
        raise DuetInputError("the output to resume has no level 0: remove it or start "
                             "again") from None


def iter_denoise_into(
    run: ChunkedRun, model, source, layout, meta: ImageMeta, *, tta: bool,
    slab: int | None = None, runner=None, device: str | None = None,
) -> Generator[Any, None, StoreResult]:
    """Denoise ``source`` slab by slab into the stores of ``run``, yielding progress.

    Parameters
    ----------
    run : ChunkedRun
        The outputs (the denoised volume, then optionally the uncertainty: OME-Zarr or
        TIFF paths) and the run's signature; a continued run skips its finished slabs,
        a finished one is returned as it is (``reused``).
    model : NSN2NModel
    source : array-like
        The volume (dask, zarr, numpy... or a reference on dask); only slabs are read.
    layout : VolumeLayout
        :func:`~napari_duet.nsn2n._volume.layout_for` of the volume.
    meta : ImageMeta
        Axes, pixel size and units written into the stores (and the TIFF).
    slab, runner, device
        As for :func:`~napari_duet.nsn2n._chunked.iter_denoise_chunked`.

    Yields the progress of :func:`iter_denoise_chunked`, then a :class:`StoreProgress`
    ("pyramid", or "write tiff") while the outputs are finished.  Closing the generator
    between yields keeps every finished slab (the next run resumes).
    """
    unc = run.stores[1].out if len(run.stores) > 1 else None
    if run.reused:
        return StoreResult(run.store.out, run.finish(None)[0], 0, True, unc,
                           run.store.record.state)
    state = run.state
    if run.fresh:
        plane = layout.shape[layout.plane_axes[0]] * layout.shape[layout.plane_axes[1]]
        depth = slab or auto_slab(plane, model.halo)
        run.open(lambda path: create_store(path, layout, meta, depth, run.signature))
    arrays = [_level0(s.record) for s in run.stores]
    resumed = len((state or {}).get("done", []))
    final = yield from run.iter(iter_denoise_chunked(
        model, source, arrays[0], axis=layout.axis, tta=tta, slab=slab, state=state,
        save_state=run.store.record.save, uncertainty=arrays[1] if unc else None,
        runner=runner, device=device))
    zarr_out = all(is_zarr_path(s.out) for s in run.stores)
    yield StoreProgress(stage="pyramid" if zarr_out else "write tiff")
    levels = run.finish(final, pixel_info=meta.pixel_info())
    return StoreResult(run.store.out, levels[0], resumed, False, unc, final)


def iter_denoise_to_zarr(
    model, source, path: str | Path, meta: ImageMeta, *, axis: int, tta: bool,
    signature: dict[str, Any], slab: int | None = None,
    uncertainty_path: str | Path | None = None,
) -> Generator[Any, None, StoreResult]:
    """Denoise ``source`` slab by slab into the OME-Zarr ``path`` (the napari widget's
    large layers), yielding progress: :func:`iter_denoise_into` with the store staged
    beside ``path`` until it is complete.

    An interrupted run of ``signature`` is continued, a finished one returned as it is,
    and anything else at ``path`` is refused (it is never overwritten).  ``signature``:
    :func:`run_signature`; ``uncertainty_path``: with ``tta``, a second OME-Zarr for the
    spread over flips/rotations (created, resumed and finished with ``path``).
    """
    unc_path = Path(uncertainty_path) if uncertainty_path is not None and tta else None
    signature = dict(signature, uncertainty=unc_path is not None)
    layout = layout_for(tuple(int(s) for s in source.shape), axis)
    run = ChunkedRun([Path(path), *([unc_path] if unc_path else [])], signature, resume=True,
                     hint="choose another output or remove it")
    return (yield from iter_denoise_into(run, model, source, layout, meta, tta=tta, slab=slab))
