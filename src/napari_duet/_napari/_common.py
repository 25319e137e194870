"""Pieces shared by the dock widgets: layer pickers, worker wiring, result layers, errors."""

from __future__ import annotations

import contextlib
import functools
import gc
import traceback
import warnings
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import create_widget
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

from ..core.devices import release_device_memory
from ..core.errors import DuetError, is_out_of_memory, out_of_memory_message

if TYPE_CHECKING:
    import napari


class EngineFailure(Exception):
    """An engine error carried out of a worker (superqt drops RuntimeErrors silently)."""

    def __init__(self, original: BaseException):
        super().__init__(str(original))
        self.original = original


class EngineWorker(GeneratorWorker):
    """A generator worker that closes its generator in its own thread and reports all errors.

    superqt leaves an aborted generator suspended, so context managers inside
    the engine (``torch.no_grad()``, ``inference_mode()``) would keep their
    thread-local state on the pool thread and break the next job there; and it
    turns a RuntimeError (most torch errors) into a silent return with no
    ``finished`` signal, which would leave the widget stuck.
    """

    def work(self):
        try:
            result = super().work()
        finally:
            self._gen.close()
        if isinstance(result, RuntimeError):
            raise EngineFailure(result)
        return result


@functools.cache
def warm_up_torch() -> None:
    """Take torch's lazy first-use imports (an optimiser step pulls in hundreds of modules).

    Imports hold the GIL; done inside a worker they stall the viewer for
    0.1-0.4 s at a time.  Called on the GUI thread when a run starts, once per
    session.
    """
    import torch

    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([p], lr=1e-3)
    (p * p).sum().backward()
    opt.step()


def error_message(exc: BaseException) -> str:
    """One line for a notification: our own errors as they are, running out of memory with
    what to change, others with their type."""
    exc = getattr(exc, "original", exc)
    if isinstance(exc, DuetError):
        return str(exc)
    if is_out_of_memory(exc):
        return out_of_memory_message(exc, tile="the tile setting, where there is one",
                                     device="the device setting, or a GPU with more memory")
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def notify_error(exc: BaseException, context: str = "") -> None:
    """Show ``exc`` as a napari error notification.

    User errors (:class:`DuetError`) and running out of memory (what to change
    is in the message) print no traceback; anything else also dumps one to the
    console.
    """
    msg = error_message(exc)
    exc = getattr(exc, "original", exc)
    if not isinstance(exc, DuetError) and not is_out_of_memory(exc):
        traceback.print_exception(exc)  # unexpected: keep the details in the console
    show_error(f"{context}: {msg}" if context else msg)


def layer_picker(viewer: napari.viewer.Viewer, annotation, label: str, nullable: bool = False):
    """A magicgui layer combobox kept in sync with the viewer's layer list.

    Returns the magicgui widget; its ``.native`` is the Qt widget.
    """
    widget = create_widget(annotation=annotation, label=label, options={"nullable": nullable})
    widget.reset_choices()
    events = viewer.layers.events

    def _refresh(*_):
        widget.reset_choices()

    for ev in (events.inserted, events.removed, events.reordered):
        ev.connect(_refresh)
    # Renames change the labels shown in the combobox.
    events.inserted.connect(lambda e: e.value.events.name.connect(_refresh))
    for layer in viewer.layers:
        layer.events.name.connect(_refresh)
    widget._duet_refresh = _refresh  # keep a reference for disconnecting
    return widget


def start_engine_worker(
    generator_function: Callable[..., Generator[Any, Any, Any]],
    *args: Any,
    desc: str,
    total: int | None,
    on_yield: Callable[[Any], None],
    on_return: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    on_finish: Callable[[], None],
):
    """Run an engine generator in a napari thread worker with an Activity-dock progress bar.

    ``on_yield`` runs on the GUI thread for every yielded state; Cancel is
    ``worker.quit()``, which stops the generator at its next ``yield``.
    """
    progress = {"desc": desc}
    if total:
        progress["total"] = int(total)
    connect = {"yielded": on_yield, "returned": on_return, "errored": on_error,
               "finished": on_finish}
    # create_worker needs the generator *function* to build a GeneratorWorker;
    # an "errored" handler stops it from re-raising in the GUI thread.
    worker = create_worker(generator_function, *args, _progress=progress, _connect=connect,
                           _start_thread=False, _worker_class=EngineWorker)
    # napari also relays errors as notifications with a traceback; ours are one line.
    relay = getattr(worker, "_relay_error", None)
    if relay is not None:
        try:
            worker.errored.disconnect(relay)
        except (TypeError, RuntimeError):
            pass
    _freeze_gc()
    worker.finished.connect(_unfreeze_gc)
    # After _unfreeze_gc: the run's tensors are garbage now; give their GPU memory back.
    worker.finished.connect(release_device_memory)
    worker.start()
    return worker


_gc_frozen_runs = 0


def _freeze_gc() -> None:
    """Keep the objects that exist now out of the cyclic garbage collector during a run.

    A full collection walks every tracked object (napari, vispy, torch: over a
    million) and held the GIL for 150-250 ms at a time while a worker trained,
    the longest stalls of the viewer.  Objects created during the run are
    still collected; everything is handed back at the end of the run.
    """
    global _gc_frozen_runs
    if _gc_frozen_runs == 0:
        gc.freeze()
    _gc_frozen_runs += 1


def _unfreeze_gc() -> None:
    global _gc_frozen_runs
    _gc_frozen_runs = max(0, _gc_frozen_runs - 1)
    if _gc_frozen_runs == 0:
        gc.unfreeze()


def set_or_add_layer(
    viewer: napari.viewer.Viewer,
    existing,
    data: np.ndarray,
    *,
    kind: str,
    name: str,
    source=None,
    **kwargs,
):
    """Update ``existing`` in place if it is still in the viewer, else add a new layer.

    New layers take the placement of ``source`` (a :class:`~._dock.SourceInfo`: scale,
    translate, axis labels, units) so results overlay the input.
    """
    if existing is not None and existing in viewer.layers:
        existing.data = data
        if kind == "image" and kwargs.get("contrast", True):
            set_data_contrast(existing, data)
        return existing
    contrast = kwargs.pop("contrast", True)
    if source is not None:
        nd = len(data.shape) - (1 if kwargs.get("rgb") else 0)
        for key, value in source.placement(nd).items():
            kwargs.setdefault(key, value)
    if kind == "labels":
        with provenance(source):
            layer = viewer.add_labels(data, name=name, **kwargs)
        tag_source(layer, source)
        return layer
    if contrast and "contrast_limits" not in kwargs:
        limits = robust_limits(data)
        if limits is not None:
            kwargs["contrast_limits"] = limits
    with provenance(source):
        layer = viewer.add_image(data, name=name, **kwargs)
    tag_source(layer, source)
    return layer


def data_limits(data) -> tuple[float, float] | None:
    """(min, max) of the finite values of ``data``; None when there are none."""
    arr = np.asarray(data)
    if arr.size == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN data
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            return None
        lo, hi = float(finite.min()), float(finite.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


#: Percentiles of the contrast limits of result layers (the slider's range stays min to max).
ROBUST_PERCENTILES = (0.5, 99.8)
_SAMPLE = 1 << 20  # values read for the percentiles of large results


def robust_limits(data) -> tuple[float, float] | None:
    """Contrast limits from robust percentiles (:data:`ROBUST_PERCENTILES`) of the finite
    values, so that a few outliers do not make a denoised result look black; min to max
    when the percentiles coincide (sparse data), None when there are no finite values."""
    arr = np.asarray(data)
    if arr.size == 0:
        return None
    flat = arr.reshape(-1)
    if flat.size > _SAMPLE:
        flat = flat[:: flat.size // _SAMPLE + 1]
    flat = flat[np.isfinite(flat)] if np.issubdtype(flat.dtype, np.floating) else flat
    if flat.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(flat, ROBUST_PERCENTILES))
    if not hi > lo:
        return data_limits(arr)
    return lo, hi


def set_data_contrast(layer, data) -> None:
    """Contrast limits of an image layer from its whole data: the slider's range is
    min to max, the limits robust percentiles (:func:`robust_limits`).

    napari's ``reset_contrast_limits`` reads the current slice, which a
    hidden layer does not update: hidden result layers kept the limits of
    their first (empty) data and showed solid white.
    """
    full = data_limits(data)
    if full is None:
        return
    layer.contrast_limits_range = full
    layer.contrast_limits = robust_limits(data) or full


def result_name(source: str, what: str) -> str:
    """The name of a result layer: what it is, first and short ("S2S mask",
    "puncta · std"), so napari's layer list shows it whole.

    The source layer's name is not part of it (long file names pushed the
    kind out of sight); it goes into the layer's metadata and tooltip
    (:func:`set_or_add_layer` with ``source``).  ``source`` is accepted so
    callers say which layer a result belongs to.
    """
    del source  # in the layer's metadata and tooltip instead
    return what


@contextlib.contextmanager
def provenance(source):
    """Layers added inside carry ``source`` (a :class:`~._dock.SourceInfo`) as napari's
    layer source, so the layer list's tooltip names the layer they were computed from."""
    if source is None:
        yield
        return
    try:
        from napari.layers._source import layer_source
    except ImportError:  # pragma: no cover - a napari without layer sources
        yield
        return
    path = str(source.path) if getattr(source, "path", None) else f"from {source.name}"
    with layer_source(path=path, reader_plugin="napari-duet"):
        yield


def tag_source(layer, source) -> None:
    """Record the source layer (name, file) in the result layer's metadata."""
    if layer is None or source is None:
        return
    layer.metadata["duet_source"] = source.name
    if getattr(source, "path", None):
        layer.metadata["duet_source_path"] = str(source.path)


def paint_pending() -> None:
    """Process pending paints now (no user input, so no re-entrant clicks)."""
    from qtpy.QtCore import QEventLoop
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)


class StagedUpdates:
    """Apply GUI updates one per event-loop turn, the newest batch replacing the rest.

    Refreshing several layers and a plot after each alternation took 100-160 ms
    of the GUI thread in one go; staged, timers and paints run in between.
    """

    def __init__(self):
        self._pending: list[Callable[[], None]] = []
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._step)

    def submit(self, steps: list[Callable[[], None]]) -> None:
        self._pending = list(steps)
        if not self._timer.isActive():
            self._timer.start()

    def flush(self) -> None:
        """Run whatever is pending now (at the end of a run)."""
        self._timer.stop()
        while self._pending:
            self._pending.pop(0)()

    def _step(self) -> None:
        if self._pending:
            self._pending.pop(0)()
        if self._pending:
            self._timer.start()

