"""Self2Seg on stacks larger than memory: one task per plane, written into an OME-Zarr.

Planes are independent Self2Seg runs (as in :func:`~._stack.iter_self2seg_stack`),
so each plane is a task: it reads its plane, segments it with the stack's
configuration and seeds, and writes the labels and the denoised plane into
the output store (whole chunks: one plane deep), so the result equals the
in-memory stack run plane for plane, whether the tasks run here or on dask.

``duet self2seg STACK -o OUT.ome.zarr`` writes the denoised stack as the
OME-Zarr image (with a pyramid) and the labels as its NGFF label image
``labels/mask``, both with the input's axes and pixel size; the run, the
finished planes and their reports are recorded in the store's attributes
(``--resume`` skips them).  The experts' outputs are not written (only
the in-memory command writes them).

The napari widget runs large layers through :func:`iter_self2seg_into`: the
same plane reading and writing (:func:`_write_plane`), in the viewer's process,
with the engine's states and the experts kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np

from ..core.chunks import ChunkProgress, TaskRunner, resolve, worker_threads
from ..core.errors import DuetInputError
from ._config import Self2SegConfig
from ._stack import (
    Self2SegStackState,
    _plane_engine,
    _plane_regions,
    _read_plane,
    _run_plane,
    stack_layout,
)

__all__ = ["iter_self2seg_chunked", "iter_self2seg_into"]


def _write_plane(out: dict[str, Any], idx: tuple[int, ...], result) -> None:
    """Write a plane's ``labels`` and ``denoised`` (and, when ``out`` has them, its
    ``experts``: one array per class) at the leading index ``idx`` of ``out``'s arrays."""
    sel = idx if idx else ...
    out["labels"][sel] = result.labels.astype(np.uint8)
    out["denoised"][sel] = result.denoised.astype(np.float32)
    for k, arr in enumerate(out.get("experts") or ()):
        arr[sel] = result.experts[k]


def _task_plane(task, source, labels_out, denoised_out, config: Self2SegConfig,
                squeeze: bool, n_classes: int) -> dict[str, Any]:
    """Segment one plane and write its labels and denoised image; return its report."""
    from ._engine import self2seg

    number, idx, seeds = task
    worker_threads()
    image = _read_plane(resolve(source), idx, squeeze)
    try:
        res = self2seg(image, seeds, config)
    except DuetInputError as exc:
        raise DuetInputError(f"plane {idx}: {exc}" if idx else str(exc)) from None
    # The plane is whole chunks of both outputs: no other task writes them.
    _write_plane({"labels": resolve(labels_out), "denoised": resolve(denoised_out)}, idx, res)
    rep = {k: v for k, v in res.report().items() if k not in ("parameters", "versions")}
    rep["counts"] = np.bincount(res.labels.ravel(), minlength=n_classes).tolist()
    return {"index": [int(i) for i in idx], "seeded": seeds is not None, **rep}


def iter_self2seg_into(
    stack, out: dict[str, Any], indices: Sequence[tuple[int, ...]],
    regions_of: Callable[[tuple[int, ...]], np.ndarray | None],
    config: Self2SegConfig, *, rgb: bool | None = None, progress: bool = False,
) -> Generator[Any, None, list[dict]]:
    """Segment the planes ``indices`` of ``stack`` here, writing each into ``out`` when done.

    The napari widget's path for large layers: as :func:`iter_self2seg_chunked`
    one plane at a time into arrays the caller owns (memory stays at one plane),
    but in this process with the engine's states (to show each alternation and
    the finished planes) and the experts kept.  A plane's result is the same as
    :func:`~._stack.iter_self2seg_stack` gives for it.

    Parameters
    ----------
    stack : array-like (..., Y, X) or (..., Y, X, 3|4)
        Read one plane at a time (dask, zarr, numpy...).
    out : dict
        ``"labels"`` (leading shape + (Y, X), uint8), ``"denoised"`` and
        ``"experts"`` (a list of K arrays, one per class; (..., Y, X[, 3])):
        writable array-likes of the stack's leading shape.
    indices : sequence of tuple
        Leading indices of the planes to run, in order.
    regions_of : callable
        The seeds of a plane (``k + 1`` = class k) or None (automatic start).

    Yields :class:`~._stack.Self2SegStackState` (after every alternation, and
    once more per finished plane with its result, after it is written), and
    with ``progress=True`` the engine's :class:`Self2SegProgress`.  Returns the
    reports of the finished planes.  Closing the generator keeps the planes
    already written.
    """
    shape = tuple(int(s) for s in stack.shape)
    _, _, is_rgb = stack_layout(shape, rgb)
    squeeze = not is_rgb and len(shape) >= 3 and shape[-1] == 1
    engine = _plane_engine()
    n = len(indices)
    reports: list[dict] = []
    for number, idx in enumerate(indices):
        idx = tuple(int(i) for i in idx)
        image = _read_plane(stack, idx, squeeze)
        result, state = yield from _run_plane(engine, image, regions_of(idx), config, progress,
                                              number=number, n_planes=n, idx=idx)
        _write_plane(out, idx, result)
        reports.append(result.report())
        yield Self2SegStackState(plane=number, n_planes=n, index=idx, state=state, result=result)
    return reports


def iter_self2seg_chunked(
    stack, labels_out, denoised_out, regions=None, config: Self2SegConfig | None = None, *,
    rgb: bool | None = None, state: dict[str, Any] | None = None,
    save_state: Callable[[dict[str, Any]], None] | None = None,
    runner: TaskRunner | None = None,
) -> Generator[ChunkProgress, None, dict[str, Any]]:
    """Segment every plane of ``stack`` into ``labels_out`` / ``denoised_out``, plane by plane.

    Parameters
    ----------
    stack : array-like or ImageRef
        (..., Y, X) or (..., Y, X, 3|4), read one plane at a time (see
        :func:`~._stack.stack_layout`).
    labels_out, denoised_out : array-like
        Writable arrays of shape leading + (Y, X) (uint8) and the planes'
        denoised shape (float32), e.g. zarr arrays chunked one plane deep.
    regions : int array, optional
        Seeds, as for :func:`~._stack.iter_self2seg_stack`.
    state, save_state
        Resume: the finished planes (``done``) and their reports are skipped;
        ``save_state`` gets the state after every plane.
    runner : TaskRunner, optional
        Where the plane tasks run (default: here, one after the other).

    Yields ``ChunkProgress`` (stage ``"planes"``) per finished plane; returns
    the final state (``done`` and ``reports`` keyed by the plane's number).
    """
    cfg = config if config is not None else Self2SegConfig()
    if not isinstance(cfg, Self2SegConfig):
        raise DuetInputError("config must be a Self2SegConfig")
    runner = runner or TaskRunner("local")
    shape = tuple(int(s) for s in stack.shape)
    lead, plane, is_rgb = stack_layout(shape, rgb)
    squeeze = not is_rgb and len(shape) >= 3 and shape[-1] == 1
    regions_of = _plane_regions(regions, lead, plane, cfg.n_classes)
    indices = list(np.ndindex(*lead))
    state = dict(state or {})
    reports = {str(k): v for k, v in (state.get("reports") or {}).items()}
    skipped = len(reports)
    tasks = [(n, idx, regions_of(idx)) for n, idx in enumerate(indices)
             if str(n) not in reports]
    t0 = time.perf_counter()
    src = runner.ref(stack, "stack")
    lab, den = runner.ref(labels_out, "output"), runner.ref(denoised_out, "output")
    for n, (task, rep) in enumerate(runner.run(_task_plane, tasks, src, lab, den, cfg,
                                               squeeze, cfg.n_classes), start=1):
        reports[str(task[0])] = rep
        state.update(done=sorted(int(k) for k in reports), reports=reports)
        if save_state is not None:
            save_state(dict(state))
        el = time.perf_counter() - t0
        yield ChunkProgress(stage="planes", done=len(reports), total=len(indices),
                            skipped=skipped, elapsed=el, eta=el / n * (len(tasks) - n))
    state.update(done=sorted(int(k) for k in reports), reports=reports)
    return state


def summary(state: dict[str, Any], config: Self2SegConfig, shape: tuple, dtype: str,
            rgb: bool) -> dict[str, Any]:
    """The report of a chunked run, as :meth:`Self2SegStackResult.report` gives in memory."""
    from ..core.versions import versions

    reps = [state["reports"][k] for k in sorted(state["reports"], key=int)]
    counts = np.sum([r.get("counts", [0] * config.n_classes) for r in reps], axis=0)
    return {
        "method": "self2seg", "chunked": True, "parameters": config.to_dict(),
        "image": {"shape": list(shape), "dtype": dtype, "rgb": bool(rgb), "planes": len(reps)},
        "class_fractions": [float(c) / max(1, int(counts.sum())) for c in counts],
        "planes": reps, "versions": versions(),
    }
