"""The base of the three dock widgets: one owner of the run and of the source layer's data.

:class:`EngineDock` owns the worker, the job, the progress bar, the status line,
Cancel, the end of a run (result, error, cancel) and the file dialogs; a widget
declares its controls, builds its engine call and turns results into layers
through a few hooks.  :func:`layer_data` and :class:`SourceInfo` are the one
way the widgets read a layer (level 0 of a multiscale layer, lazily) and place
results over it (scale, translate, axis labels, units).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QUrl
from qtpy.QtGui import QDesktopServices
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..core.devices import run_with_threads
from ..core.errors import DuetInputError
from ._common import error_message, notify_error, start_engine_worker

if TYPE_CHECKING:
    import napari

#: Layers whose level 0 is not a numpy array, or is larger than this, are processed
#: chunk by chunk (where the engine can) instead of being loaded whole.
LARGE_LAYER_BYTES = 1 << 30
_BAR_STEPS = 1000
#: Where each widget's "?" button leads (the section of docs/napari.md about it).
DOCS_URL = "https://github.com/napari-duet/napari-duet/blob/main/docs/napari.md"


# ---------------------------------------------------------------------------- layer data
def layer_data(layer) -> Any:
    """The layer's full-resolution data as it is stored: level 0 of a multiscale layer
    (other levels are never touched), a dask/zarr array left lazy, a numpy array as is.
    RGB layers keep their colour axis last (see :attr:`SourceInfo.rgb`)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def data_nbytes(data) -> int:
    """Bytes ``data`` would take in memory, from its shape and dtype (never loads it)."""
    return int(np.prod(data.shape, dtype=np.int64)) * np.dtype(data.dtype).itemsize


def is_large(data, limit: int | None = None) -> bool:
    """True for data to process chunk by chunk: not a numpy array (dask, zarr, a
    multiscale level) or larger than ``limit`` bytes (default :data:`LARGE_LAYER_BYTES`)."""
    limit = LARGE_LAYER_BYTES if limit is None else limit
    return not isinstance(data, np.ndarray) or data_nbytes(data) > limit


def source_path(layer) -> Path | None:
    """The file or folder the layer was opened from (None for layers made in memory)."""
    path = getattr(getattr(layer, "source", None), "path", None)
    return Path(path) if path else None


def _default_labels(labels: tuple) -> bool:
    return all(str(a).lstrip("-").isdigit() for a in labels)


@dataclass(frozen=True)
class SourceInfo:
    """What result layers need of their source layer, captured when a run starts
    (deleting or renaming the source during the run changes nothing)."""

    name: str
    key: int
    scale: tuple
    translate: tuple
    axis_labels: tuple
    units: tuple
    rgb: bool
    shape: tuple  # level-0 shape, colour axis included
    path: Path | None = None

    @classmethod
    def of(cls, layer) -> SourceInfo:
        data = layer_data(layer)
        return cls(
            name=layer.name, key=id(layer), scale=tuple(layer.scale),
            translate=tuple(layer.translate), axis_labels=tuple(layer.axis_labels),
            units=tuple(getattr(layer, "units", ()) or ()), rgb=bool(getattr(layer, "rgb", False)),
            shape=tuple(int(s) for s in data.shape), path=source_path(layer),
        )

    def placement(self, ndim: int, lead: str = "sample") -> dict[str, Any]:
        """``scale``, ``translate``, ``axis_labels`` and ``units`` for a result with
        ``ndim`` spatial dimensions (colour excluded) over the source's last dims.

        A result with fewer dimensions (one plane) takes the source's last ones; a
        result with more (posterior samples in front) gets unit scale, no offset
        and the label ``lead`` for each extra leading dimension.
        """
        n = len(self.scale)
        extra = max(0, ndim - n)
        take = min(ndim, n)
        scale = (1.0,) * extra + self.scale[n - take:]
        translate = (0.0,) * extra + self.translate[n - take:]
        out: dict[str, Any] = {"scale": scale, "translate": translate}
        if len(self.units) == n:
            out["units"] = ("pixel",) * extra + self.units[n - take:]
        if len(self.axis_labels) == n and not _default_labels(self.axis_labels):
            names = [lead if extra == 1 else f"{lead} {i}" for i in range(extra)]
            out["axis_labels"] = (*names, *self.axis_labels[n - take:])
        return out


# ---------------------------------------------------------------------------- progress
def progress_fraction(item) -> float | None:
    """Share of the run done, from the engines' common progress fields (None: unknown).

    Every engine's progress type extends :class:`napari_duet.core.progress.Progress`
    (``fraction``); the fallbacks read the older field names.
    """
    if hasattr(item, "fraction"):
        frac = item.fraction
    elif getattr(item, "iterations", None):  # NS-N2N training before the common fields
        frac = item.iteration / item.iterations
    elif getattr(item, "steps_per_epoch", None) and getattr(item, "epochs", None):
        frac = ((max(item.epoch, 1) - 1) * item.steps_per_epoch + item.step) / (
            item.epochs * item.steps_per_epoch)
    elif getattr(item, "total", None):
        frac = getattr(item, "done", 0) / item.total
    else:
        frac = None
    if frac is None or not np.isfinite(frac):
        return None
    return float(min(max(frac, 0.0), 1.0))


def eta_text(seconds) -> str:
    """"ETA 12 s", or "ETA …" while there is no estimate yet."""
    try:
        ok = seconds is not None and np.isfinite(seconds) and seconds > 0
    except TypeError:
        ok = False
    return f"ETA {seconds:.0f} s" if ok else "ETA …"


@dataclass(kw_only=True)
class Job:
    """One run of a widget: what it works on, captured at start.

    ``kind`` names the action (``"train"``, ``"denoise"``, ``"split"``...);
    widgets subclass this to carry what their results need.
    """

    kind: str
    source: SourceInfo | None = None
    started: float = field(default_factory=time.perf_counter)
    outcome: str = ""  # "returned" or "failed" once known
    losses: dict = field(default_factory=dict)
    last_plot: float = 0.0

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


# ---------------------------------------------------------------------------- layout pieces
class Collapsible(QWidget):
    """A titled section that folds away ("Advanced"); folded by default.

    Its controls go into :attr:`form` (a QFormLayout) or :attr:`body`.
    """

    def __init__(self, title: str, parent=None, folded: bool = True):
        super().__init__(parent)
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setChecked(not folded)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setAutoRaise(True)
        self.toggle.setToolTip(f"Show or hide the {title.lower()} settings")
        self.content = QWidget()
        self.form = QFormLayout(self.content)
        self.form.setContentsMargins(12, 0, 0, 0)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.toggle)
        lay.addWidget(self.content)
        self.toggle.toggled.connect(self._apply)
        self._apply(not folded)

    @property
    def folded(self) -> bool:
        return not self.toggle.isChecked()

    def _apply(self, open_: bool) -> None:
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if open_ else Qt.ArrowType.RightArrow)
        self.content.setVisible(open_)


def declare(widget, cls: type, name: str, *, extra: str = "", auto: str | None = None) -> str:
    """Give a control the label and tooltip of config field ``name`` of ``cls`` (the
    declaration the CLI help reads, :func:`napari_duet.core.config.param`); returns the label.

    ``auto``: the control shows this text ("auto") at its minimum, the value that
    means "automatic".  ``extra``: widget-specific words added to the tooltip.
    """
    from ..core.config import param_help, param_label

    text = param_help(cls, name, extra=extra)
    label = param_label(cls, name)
    native = getattr(widget, "native", widget)
    if hasattr(widget, "tooltip"):
        widget.tooltip = text
    else:
        native.setToolTip(text)
    if auto is not None:
        set_auto_text(widget, auto)
    if hasattr(widget, "label"):
        try:
            widget.label = label
        except Exception:  # pragma: no cover - a widget without a settable label
            pass
    return label


# ---------------------------------------------------------------------------- parameters
#: Upper bounds of spin boxes whose parameter declares none (a control needs one).
_INT_MAX, _FLOAT_MAX = 2**31 - 1, 1e6


def param_control(cls: type, name: str, *, number: type | None = None, auto_text: str = "auto",
                  **overrides: Any):
    """The magicgui control of config field ``name`` of ``cls``, built from its declaration
    (:func:`napari_duet.core.config.param`): a combo box for choices, a check box for a
    switch, a spin box within the declared bounds for a number; label and tooltip as
    :func:`declare` gives them.  A number that may be None ("auto") shows "auto" at 0.
    ``number``: the type a field of mixed type ("auto" or seconds) is shown as, with its
    "auto" at 0 too; ``auto_text``: what 0 shows ("no limit" where None means that).
    ``overrides``: magicgui keywords for this widget only (tighter
    bounds, the device names of this machine, a check box's text)."""
    import dataclasses

    from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, LineEdit, SpinBox

    from ..core.config import param_info, param_type

    info = param_info(cls, name)
    base, optional = param_type(cls, name)
    default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    auto: dict[str, Any] = {}  # the value 0 stands for, when the control has one
    if base is object and number is not None:
        base, auto["value"] = number, default
    elif optional and base in (int, float):
        auto["value"] = None
    if "choices" in info or "choices" in overrides:
        kwargs = {"choices": list(info.get("choices", ())), "value": default}
        widget_type = ComboBox
    elif base is bool:
        kwargs, widget_type = {"value": bool(default)}, CheckBox
    elif base in (int, float):
        lo = 0 if auto else info.get("lo", 0)
        hi = info.get("hi", _INT_MAX if base is int else _FLOAT_MAX)
        shows_auto = default is None or (auto and default == auto["value"])
        kwargs = {"min": lo, "max": hi, "value": lo if shows_auto else default}
        widget_type = SpinBox if base is int else FloatSpinBox
    else:
        kwargs, widget_type = {"value": default}, LineEdit
    kwargs.update(overrides)
    if widget_type is ComboBox and kwargs.get("value") not in kwargs["choices"]:
        kwargs["value"] = kwargs["choices"][0]
    if kwargs.get("min", 0) != 0:  # no 0 to show "auto" at (CPU threads from 1)
        auto.clear()
    # A check box's text is its label, unless the widget gives one.
    widget = widget_type(**({} if "text" in kwargs else {"label": name}), **kwargs)
    widget.param_name = name
    if auto:
        widget.auto_value = auto["value"]
    declare(widget, cls, name, auto=auto_text if auto else None,
            extra=f"Shown as {auto_text} at 0." if auto else "")
    return widget


def control_values(cls: type, controls: dict[str, Any]) -> dict[str, Any]:
    """The parameters the controls show (0 in an "auto" spin box is None, or "auto")."""
    from ..core.config import param_type

    values = {}
    for name, widget in controls.items():
        base, optional = param_type(cls, name)
        value = widget.value
        if not value and not isinstance(value, bool):
            if hasattr(widget, "auto_value"):
                value = widget.auto_value
            elif optional and base in (int, float):
                value = None
        values[name] = value
    return values


def set_controls(cls: type, controls: dict[str, Any], values: dict[str, Any]) -> None:
    """Show ``values`` (parameters by name) in the controls; a value a control cannot show
    (outside its range, a device this machine lacks) raises DuetInputError and changes none."""
    from ..core.config import param_label, param_type

    staged = []
    for name, value in values.items():
        widget = controls.get(name)
        if widget is None:
            continue
        base, optional = param_type(cls, name)
        numeric = hasattr(widget, "min") and hasattr(widget, "max")
        # None / "auto" show as 0 in a number control (its "auto" text).
        shown = 0 if (numeric and (value is None or value == "auto")) else value
        choices = getattr(widget, "choices", None)
        if choices is not None and shown not in choices:
            raise DuetInputError(f"{param_label(cls, name)}: {shown!r} is not available here "
                                 f"(choices: {', '.join(map(str, choices))})")
        if numeric and not isinstance(shown, bool) and (
                not isinstance(shown, int | float) or shown < widget.min or shown > widget.max):
            raise DuetInputError(f"{param_label(cls, name)}: {shown!r} is outside "
                                 f"{widget.min:g}..{widget.max:g}")
        staged.append((widget, shown))
    for widget, shown in staged:
        widget.value = shown


def set_auto_text(widget, text: str = "auto") -> None:
    """Show ``text`` instead of the minimum of a spin box (the "automatic" value).

    Qt's spin boxes have ``setSpecialValueText``; superqt's large-integer spin box
    (magicgui's integer SpinBox) ignores it, so its text update is wrapped here.
    """
    native = getattr(widget, "native", widget)
    if hasattr(native, "setSpecialValueText"):
        native.setSpecialValueText(text)
    if hasattr(native, "_updateEdit") and hasattr(native, "_interpret"):
        update, interpret = native._updateEdit, native._interpret

        def _update_edit():
            if native.value() == native.minimum():
                if native.lineEdit().text() != text:
                    native.lineEdit().setText(text)
                return
            update()

        def _interpret(policy):
            if native.lineEdit().displayText().strip() in (text, ""):
                native.lineEdit().setText(str(native.minimum()))
            interpret(policy)

        native._updateEdit = _update_edit
        native._interpret = _interpret
        _update_edit()


def _call_generator(fn, args, kwargs):
    """Delegate to an engine generator (keyword arguments through ``create_worker``)."""
    return (yield from fn(*args, **kwargs))


# ---------------------------------------------------------------------------- the dock
class EngineDock(QWidget):
    """Base of the dock widgets: the run, its progress, Cancel, errors and dialogs.

    Subclasses set :attr:`engine_name` (the prefix of notifications), add
    ``self.progress`` and ``self.status`` to their layout, call :meth:`start`
    and override the hooks :meth:`update_controls`, :meth:`show_progress`,
    :meth:`show_result`, :meth:`after_cancel`, :meth:`after_error` and
    :meth:`after_run` as they need.  Every hook runs on the GUI thread; an
    exception in one becomes a notification, never a traceback in the viewer.
    """

    engine_name = "napari-duet"
    cancel_message = "Cancelling…"
    #: The section of the docs the "?" button opens (an anchor of docs/napari.md).
    docs_anchor = ""
    #: Layers over this size (or not in memory) are processed chunk by chunk where the
    #: engine can, and refused where it needs the whole image in memory.
    large_layer_bytes = LARGE_LAYER_BYTES

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.job: Job | None = None
        self.progress = QProgressBar()
        self.progress.setRange(0, _BAR_STEPS)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        # Where results of large layers go (widgets that write them add it to their layout).
        self.output_folder = QLineEdit()
        self.output_folder.setPlaceholderText("beside the source file")
        self.output_folder.setToolTip(
            "Folder for the results of large layers (dask/zarr-backed, multiscale or over "
            "1 GiB), which are processed chunk by chunk into OME-Zarr/zarr stores and opened "
            "lazily; empty: beside the source file (asked when there is none)")

    # ------------------------------------------------------------------ layout
    def scroll_layout(self) -> QVBoxLayout:
        """The widget's frame: a "?" button, a scroll area whose layout is returned
        (the widget adds its controls there) and, always visible below it, the
        progress bar and the status line.  So the panel fits a laptop screen."""
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        top = QHBoxLayout()
        top.addStretch(1)
        self.help_btn = QToolButton()
        self.help_btn.setText("?")
        self.help_btn.setToolTip(f"Open the {self.engine_name} page of the napari-duet "
                                 "documentation in a web browser")
        self.help_btn.clicked.connect(self.open_docs)
        top.addWidget(self.help_btn)
        outer.addLayout(top)
        body = QWidget()
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(body)
        self._body = body
        outer.addWidget(self.scroll, 1)
        self.progress.setToolTip("Progress of the current run (also in napari's Activity dock)")
        self.status.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        outer.addWidget(self.progress)
        outer.addWidget(self.status)
        return QVBoxLayout(body)

    def minimumSizeHint(self):  # noqa: N802 - Qt API
        """At least as wide as the controls (they scroll only vertically), from the
        first layout on, so the dock never cuts them at the right."""
        hint = super().minimumSizeHint()
        body = getattr(self, "_body", None)
        if body is not None:
            bar = self.scroll.verticalScrollBar().sizeHint().width()
            margins = self.layout().contentsMargins()
            width = (body.minimumSizeHint().width() + bar + 4 + margins.left()
                     + margins.right())
            hint.setWidth(max(hint.width(), width))
        return hint

    def docs_url(self) -> str:
        return DOCS_URL + (f"#{self.docs_anchor}" if self.docs_anchor else "")

    def open_docs(self) -> bool:
        """Open this widget's documentation page in the web browser."""
        return bool(QDesktopServices.openUrl(QUrl(self.docs_url())))

    # ------------------------------------------------------------------ hooks
    def update_controls(self, running: bool) -> None:
        """Enable or disable the widget's buttons (a run starts or ends)."""

    def show_progress(self, job: Job, item) -> None:
        """Show a yielded item (status line, plots, previews); the bar is already set."""

    def show_result(self, job: Job, result) -> None:
        """Turn the engine's return value into layers."""

    def after_cancel(self, job: Job) -> None:
        self.status.setText(f"Cancelled ({job.kind}); input layers are unchanged.")

    def after_error(self, job: Job, exc: BaseException) -> None:
        """Clean up after a failed run (the notification is already shown)."""

    def after_run(self, job: Job) -> None:
        """Runs after every run, whatever its end (remove helper layers...)."""

    def fraction_of(self, job: Job, item) -> float | None:
        """Share of the run done after ``item`` (None: unknown, a busy bar)."""
        return progress_fraction(item)

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, job: Job, generator_function: Callable[..., Generator], *args,
              threads: int | None = None, desc: str | None = None, **kwargs):
        """Run ``generator_function(*args, **kwargs)`` in a worker for ``job``.

        ``threads``: torch CPU threads inside the worker (restored at the end).
        Returns the worker, or None when a run is already going.
        """
        if self.worker is not None:
            return None
        self.job = job
        self.set_fraction(0.0)
        self.update_controls(True)
        try:
            self.worker = start_engine_worker(
                run_with_threads, threads if threads is not None else "auto",
                _call_generator, generator_function, args, kwargs,
                desc=desc or f"{self.engine_name} {job.kind}", total=None,
                on_yield=self._on_yield, on_return=self._on_return, on_error=self._on_error,
                on_finish=self._on_finish,
            )
        except Exception as exc:
            self.worker = None
            self.update_controls(False)
            self.report(exc)
            return None
        return self.worker

    def cancel(self) -> None:
        """Stop the running job at its next step (what it finished is kept)."""
        if self.worker is not None:
            self.status.setText(self.cancel_message)
            self.worker.quit()

    def set_fraction(self, fraction: float | None) -> None:
        """Move the bar; None shows a busy bar (the share done is unknown)."""
        if fraction is None:
            self.progress.setRange(0, 0)
            return
        if self.progress.maximum() != _BAR_STEPS:
            self.progress.setRange(0, _BAR_STEPS)
        self.progress.setValue(int(round(_BAR_STEPS * min(max(fraction, 0.0), 1.0))))

    def _guarded(self, hook: Callable, *args) -> bool:
        try:
            hook(*args)
        except Exception as exc:  # a result that cannot be shown: say so, keep going
            self.report(exc)
            return False
        return True

    def _on_yield(self, item) -> None:
        job = self.job
        if job is None:
            return
        try:
            self.set_fraction(self.fraction_of(job, item))
        except Exception:  # an odd progress object must not stop the run
            self.set_fraction(None)
        self._guarded(self.show_progress, job, item)

    def _on_return(self, result) -> None:
        job = self.job
        if job is None:
            return
        job.outcome = "returned"
        if self._guarded(self.show_result, job, result):
            self.set_fraction(1.0)
        else:
            self.status.setText("Finished, but the result could not be shown.")

    def _on_error(self, exc: BaseException) -> None:
        job = self.job
        self.report(exc)
        self.status.setText(f"Failed: {error_message(exc)}")
        self.set_fraction(0.0)
        if job is not None:
            job.outcome = "failed"
            self._guarded(self.after_error, job, exc)

    def _on_finish(self) -> None:
        worker, self.worker = self.worker, None
        job = self.job
        if job is not None:
            if worker is not None and worker.abort_requested and not job.outcome:
                if self.progress.maximum() == 0:
                    self.set_fraction(0.0)
                self._guarded(self.after_cancel, job)
            self._guarded(self.after_run, job)
        self.update_controls(False)

    # ------------------------------------------------------------------ large results
    def results_folder(self, source: SourceInfo) -> Path | None:
        """The folder for on-disk results of ``source``: the chosen one, else beside the
        source file, else asked (None: the user chose none)."""
        folder = self.output_folder.text().strip()
        if not folder and source.path is not None:
            folder = str(source.path.parent)
        if not folder:
            folder = self.ask_folder(f"Folder for the results of {source.name}") or ""
            if not folder:
                return None
            self.output_folder.setText(folder)
        return Path(folder)

    @staticmethod
    def free_store(folder: Path, stem: str, suffix: str, signature: dict[str, Any]) -> Path:
        """``folder/<stem><suffix>``, or with a number when that (or its staging store)
        holds anything but a run of ``signature`` (:func:`~napari_duet.core.chunks.run_fits`):
        results never overwrite other data."""
        from ..core.chunks import run_fits

        stem = "".join(c if c.isalnum() or c in "-_. " else "_" for c in stem).strip()
        for n in range(1, 1000):
            path = folder / (stem + (f" {n}" if n > 1 else "") + suffix)
            if run_fits(path, signature):
                return path
        raise DuetInputError(f"no free output name for {stem}{suffix} in {folder}")

    # ------------------------------------------------------------------ errors, dialogs
    def report(self, exc: BaseException, context: str | None = None) -> None:
        """One-line error notification (no traceback for user errors)."""
        notify_error(exc, self.engine_name if context is None else context)

    def ask_save_path(self, title: str, default: str, filters: str) -> str | None:
        path, _ = QFileDialog.getSaveFileName(self, title, default, filters)
        return path or None

    def ask_open_path(self, title: str, filters: str) -> str | None:
        path, _ = QFileDialog.getOpenFileName(self, title, "", filters)
        return path or None

    def ask_folder(self, title: str) -> str | None:
        return QFileDialog.getExistingDirectory(self, title) or None

    def save_results_dialog(self, title: str) -> list[Path] | None:
        """Ask for a folder and write the last results into it (:meth:`save_results`)."""
        from napari.utils.notifications import show_info

        folder = self.ask_folder(title)
        if not folder:
            return None
        try:
            paths = self.save_results(folder)
        except Exception as exc:
            self.report(exc, "Save results")
            return None
        show_info(f"Saved {len(paths)} files to {folder}")
        return paths

    def save_with_dialog(self, title: str, default: str, filters: str,
                         save: Callable[[str], Any], context: str = "Save") -> Any:
        """Ask for a path and call ``save(path)``; a failure is a notification."""
        path = self.ask_save_path(title, default, filters)
        if not path:
            return None
        try:
            return save(path)
        except Exception as exc:
            self.report(exc, context)
            return None

    # ------------------------------------------------------------------ parameters
    #: The widget's parameter controls by config field (widgets that offer Save/Load
    #: parameters fill it) and the config class they build.
    param_controls: dict[str, Any] = {}
    param_class: type | None = None
    PARAM_FILTER = "napari-duet parameters (*.json);;All files (*)"

    def param_buttons(self) -> tuple[QPushButton, QPushButton]:
        """"Save parameters…" and "Load parameters…" buttons, wired to the dialogs."""
        save = QPushButton("Save parameters…")
        save.setToolTip("Write these parameters to a JSON file; `duet <command> --config FILE` "
                        "runs them on a cluster, Load parameters… brings them back here.")
        load = QPushButton("Load parameters…")
        load.setToolTip("Set the controls from a parameter file (Save parameters…).")
        save.clicked.connect(lambda: self.save_with_dialog(
            "Save parameters", f"{self.engine_name.lower()}-parameters.json",
            self.PARAM_FILTER, self.save_parameters, "Save parameters"))
        load.clicked.connect(self._load_parameters_dialog)
        return save, load

    def param_config(self):
        """The ``param_class`` configuration the controls show (what Save parameters…
        writes); the widget's ``config()`` unless the widget says otherwise."""
        return self.config()

    def param_sections(self) -> dict[str, Any]:
        """Entries a parameter file holds beside the parameters (none unless a widget
        has settings outside ``param_class``, such as denoiSplit's network preset)."""
        return {}

    def apply_param_sections(self, sections: dict[str, Any]) -> Callable[[], None]:
        """Check a parameter file's other entries (:meth:`param_sections`) and return
        what shows them in the controls (run only when the whole file is valid); raise
        DuetInputError for a value the widget cannot show."""
        return lambda: None

    def save_parameters(self, path: str | Path) -> Path:
        """Write the controls' configuration as a parameter file
        (:func:`napari_duet.core.config.save_params`)."""
        from ..core.config import save_params

        return save_params(path, self.param_config(), **self.param_sections())

    def load_parameters(self, path: str | Path) -> bool:
        """Set the controls from a parameter file; a bad file (not JSON, another engine's,
        an unknown parameter or a bad value) is one notification and changes nothing."""
        from ..core.config import read_params

        try:
            values, sections = read_params(path, self.param_class)
            self.param_class().replace(**values)  # every value valid, before any control moves
            show_sections = self.apply_param_sections(sections)
            set_controls(self.param_class, self.param_controls, values)
            show_sections()
        except Exception as exc:
            self.report(exc, f"{self.engine_name}: cannot load parameters from "
                             f"{Path(path).name}")
            return False
        return True

    def _load_parameters_dialog(self) -> bool:
        path = self.ask_open_path("Load parameters", self.PARAM_FILTER)
        return bool(path) and self.load_parameters(path)

    def load_model_file(self, loader: Callable[..., Any], path: str | Path,
                        device: str) -> Any | None:
        """``loader(path, device=device)``; a damaged or foreign file gives one
        notification line and None (the widget keeps its current model)."""
        try:
            return loader(path, device=device)
        except Exception as exc:
            self.report(exc, f"{self.engine_name}: cannot load {Path(path).name}")
            return None


MODEL_FILTER = "napari-duet model (*.duet);;All files (*)"
