"""Results of large layers kept on disk: zarr stores filled plane by plane, shown lazily."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.chunks import ChunkedRun, RunRecord, read_record
from ._common import data_limits


def open_plane_store(path: Path, specs: dict[str, tuple[tuple, Any]], lead: int,
                     signature: dict[str, Any]) -> dict[str, Any]:
    """Zarr arrays ``specs`` (key -> (shape, dtype)), one chunk per plane of the ``lead``
    leading axes, in the group ``path``, opened or continued by the chunked-run engine
    (:class:`~napari_duet.core.chunks.ChunkedRun`, in place: the layers show the planes
    as they are written): a store of the same ``signature`` is reopened (its planes
    kept), anything else at ``path`` is refused."""
    import zarr

    run = ChunkedRun([path], signature, resume=True, staged=False,
                     hint="choose another results folder or remove it")
    reuse = not run.fresh
    group = run.open(lambda p: zarr.open_group(str(p), mode="w")).group
    arrays = {}
    for key, (shape, dtype) in specs.items():
        if reuse and key in group and group[key].shape == tuple(shape):
            arrays[key] = group[key]
            continue
        chunks = (1,) * lead + tuple(min(s, 1024) for s in shape[lead:])
        arrays[key] = group.create_array(key, shape=tuple(shape), dtype=dtype, chunks=chunks,
                                         fill_value=0, overwrite=True)
    return arrays


def show_lazy(viewer, layer, array, *, kind: str, name: str, placement: dict,
              written: tuple | None, limits: dict, **kwargs):
    """Add a layer over an on-disk ``array`` or redraw it after the plane ``written``.

    Image contrast grows with the planes written so far (``limits`` keeps it per
    name): never computed from the whole array, which would read it all.
    """
    if layer is not None and layer in viewer.layers:
        layer.refresh()
    elif kind == "labels":
        layer = viewer.add_labels(array, name=name, **placement, **kwargs)
    else:
        layer = viewer.add_image(array, name=name, contrast_limits=(0.0, 1.0), **placement,
                                 **kwargs)
    if kind == "image" and written is not None:
        found = data_limits(np.asarray(array[written] if written else array[...]))
        if found is not None:
            lo, hi = found
            if name in limits:
                lo, hi = min(lo, limits[name][0]), max(hi, limits[name][1])
            limits[name] = (lo, hi)
            layer.contrast_limits_range = (lo, hi)
            layer.contrast_limits = (lo, hi)
    return layer


def sample_limits(array, max_bytes: int = 64 << 20) -> tuple[float, float] | None:
    """Contrast limits of an on-disk array: from all of it when small, else from its
    first, middle and last planes along the first axis (never a whole large array)."""
    nbytes = int(np.prod(array.shape, dtype=np.int64)) * np.dtype(array.dtype).itemsize
    if nbytes <= max_bytes or len(array.shape) < 3:
        return data_limits(np.asarray(array[...]))
    n = array.shape[0]
    planes = [np.asarray(array[i]) for i in sorted({0, n // 2, n - 1})]
    return data_limits(np.stack(planes))


def run_key(settings: dict[str, Any], seeds: dict[tuple, np.ndarray], data) -> str:
    """Key of what decides a plane's result: the run's signature
    (:func:`~napari_duet.core.chunks.run_signature`: the data's content and the settings)
    and the seeds, so other data under the same layer name never reuse the planes of an
    earlier run."""
    import hashlib

    from ..core.chunks import run_signature, signature_key

    h = hashlib.sha256()
    for idx in sorted(seeds):
        h.update(repr(tuple(int(i) for i in idx)).encode())
        h.update(np.ascontiguousarray(seeds[idx], np.int64).tobytes())
    return signature_key(run_signature(data, settings=settings, seeds=h.hexdigest()))


def _plane_log(path: Path, key: str) -> tuple[RunRecord, list]:
    """The store's record and the planes the run ``key`` finished (another run's list
    is cleared: its planes may be overwritten by this run)."""
    import zarr

    rec = read_record(path) or {}
    record = RunRecord(zarr.open_group(str(path), mode="r+"), rec.get("run") or {},
                       rec.get("state"))
    if record.state.get("key") != key:
        record.save({"key": key, "done": []})
    return record, list(record.state.get("done", []))


def planes_done(path: Path, key: str) -> set[tuple]:
    """The planes a run ``key`` finished in the store opened by :func:`open_plane_store`."""
    return {tuple(int(i) for i in idx) for idx in _plane_log(path, key)[1]}


def mark_plane_done(path: Path, key: str, idx: tuple) -> None:
    """Record in the store that the run ``key`` finished the plane ``idx``."""
    record, done = _plane_log(path, key)
    record.save({"key": key, "done": [*done, [int(i) for i in idx]]})
