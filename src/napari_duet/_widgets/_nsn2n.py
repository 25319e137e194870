"""NS-N2N dock widget: "Slice denoising (NS-N2N)".

Train & denoise runs :func:`napari_duet.nsn2n.iter_train` in a thread worker
(live loss plot, preview of the current slice, progress); a trained or loaded
model denoises any image layer through :meth:`NSN2NModel.iter_denoise`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..devices import available_devices, max_threads, resolve_threads, run_with_threads
from ._common import (
    EngineRunnerMixin,
    layer_picker,
    notify_error,
    set_or_add_layer,
    start_engine_worker,
    warm_up_torch,
)
from ._curves import CurvePlot
from ._models import load_model_or_notify

if TYPE_CHECKING:
    import napari

_PLOT_EVERY_S = 0.4  # redraw the loss plot at most this often


@dataclass
class _Job:
    source_name: str
    source_key: int
    scale: tuple
    translate: tuple
    rgb: bool
    kind: str  # "train" or "denoise"
    started: float = field(default_factory=time.perf_counter)
    last_plot: float = 0.0
    losses: dict = field(default_factory=dict)
    result: Any = None


def as_volume(layer: Image, axis: int) -> tuple[np.ndarray, int, bool]:
    """Layer data as an engine volume; RGB channels become a leading stack axis."""
    data = layer.data[0] if layer.multiscale else layer.data
    arr = np.asarray(data)
    if layer.rgb:
        return np.moveaxis(arr, -1, 0), axis + 1, True
    return arr, axis, False


def from_volume(arr: np.ndarray, rgb: bool) -> np.ndarray:
    return np.moveaxis(arr, 0, -1) if rgb else arr


class NSN2NWidget(EngineRunnerMixin, QWidget):
    """Train NS-N2N on a stack or time-lapse, or apply a saved model."""

    context = "NS-N2N"

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        from ..nsn2n import NSN2NConfig

        self.viewer = napari_viewer
        self.worker = None
        self._helper_layers: set[str] = set()  # preview, weight maps: removed after a run
        self.job: _Job | None = None
        self.model = None
        self._results: dict[int, dict] = {}
        d = NSN2NConfig()

        self.image_picker = layer_picker(napari_viewer, Image, "image")
        self.axis = ComboBox(label="slice axis", choices=[])
        self.budget = SpinBox(label="time budget (s)", value=0, min=0, max=86_400)
        self.iterations = SpinBox(label="iterations", value=0, min=0, max=1_000_000)
        self.width = SpinBox(label="network width", value=0, min=0, max=256)
        self.context = ComboBox(label="network input", choices=["2.5d", "2d"], value=d.context)
        self.guide = ComboBox(label="guide filter", choices=["gaussian", "nlm"], value=d.guide)
        self.lambda_rc = FloatSpinBox(label="λ regional consistency", value=d.lambda_rc,
                                      min=0, max=100, step=0.1)
        self.lambda_ic = FloatSpinBox(label="λ inter-slice continuity", value=d.lambda_ic,
                                      min=0, max=100, step=0.1)
        self.tta = CheckBox(text="test-time augmentation (mean + uncertainty)", value=d.tta)
        self.device = ComboBox(label="device", choices=["auto", *available_devices()],
                               value="auto")
        self.seed = SpinBox(label="seed", value=d.seed, min=0, max=2**31 - 1)
        self.threads = SpinBox(label="CPU threads",
                               value=resolve_threads("auto", napari_open=True),
                               min=1, max=max_threads())
        self.show_uncertainty = CheckBox(text="add uncertainty layer (hidden)", value=True)
        self.budget.tooltip = ("Training time in seconds; 0 = auto (by device and volume size: "
                               "about 4 min on a CPU for 48 x 256 x 256, 40 s on a GPU).")
        self.iterations.tooltip = ("Exact number of optimiser steps (reproducible); 0 = train "
                                   "for the time budget.")
        self.width.tooltip = "U-Net width; 0 = auto (24 on a CPU, 48 on a GPU)."
        self.context.tooltip = ("2.5d: neighbouring slices are inputs too, split so that no "
                                "target is an input (better); 2d: the paper's one-slice network.")
        self.guide.tooltip = "Low-pass filter for the guide images: gaussian (fast) or nlm."

        self.check_btn = QPushButton("Check noise")
        self.check_btn.setToolTip("Measure in-plane noise correlation and slice matching, and "
                                  "recommend NS-N2N or a single-image denoiser")
        self.weights_btn = QPushButton("Show weight map")
        self.weights_btn.setToolTip("Matched-region map W of the slice on screen and the next")
        self.train_btn = QPushButton("Train && denoise")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.save_btn = QPushButton("Save model…")
        self.save_btn.setEnabled(False)
        self.load_btn = QPushButton("Load model…")
        self.denoise_btn = QPushButton("Denoise layer")
        self.denoise_btn.setEnabled(False)
        self.model_label = QLabel("No model loaded.")
        self.recommendation = QLabel("")
        self.recommendation.setWordWrap(True)
        self.pairs_label = QLabel("")
        self.pairs_label.setWordWrap(True)
        self.pair_plot = CurvePlot("Matched fraction per slice pair", "matched")
        self.pair_plot.setVisible(False)
        self.pairs: list[dict] = []
        self.status = QLabel("Choose a stack or time-lapse and press Train & denoise.")
        self.status.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.plot = CurvePlot("Training losses", "loss")
        self._build_layout()

        self.image_picker.changed.connect(lambda *_: self._update_axes())
        self.check_btn.clicked.connect(self.check_noise)
        self.weights_btn.clicked.connect(self.show_weight_map)
        self.train_btn.clicked.connect(self.train)
        self.cancel_btn.clicked.connect(self.cancel)
        self.save_btn.clicked.connect(self._save_dialog)
        self.load_btn.clicked.connect(self._load_dialog)
        self.denoise_btn.clicked.connect(self.denoise)
        self._update_axes()

    def _build_layout(self):
        layout = QVBoxLayout(self)
        data = QGroupBox("Data")
        form = QFormLayout(data)
        form.addRow("image", self.image_picker.native)
        form.addRow("slice axis", self.axis.native)
        row = QHBoxLayout()
        row.addWidget(self.check_btn)
        row.addWidget(self.weights_btn)
        form.addRow(row)
        form.addRow(self.recommendation)
        form.addRow(self.pairs_label)
        form.addRow(self.pair_plot)
        layout.addWidget(data)
        params = QGroupBox("Training")
        pform = QFormLayout(params)
        for w in (self.budget, self.iterations, self.context, self.width, self.guide,
                  self.lambda_rc, self.lambda_ic, self.device, self.seed, self.threads):
            pform.addRow(w.label, w.native)
        pform.addRow(self.tta.native)
        pform.addRow(self.show_uncertainty.native)
        layout.addWidget(params)
        run = QHBoxLayout()
        run.addWidget(self.train_btn)
        run.addWidget(self.cancel_btn)
        layout.addLayout(run)
        models = QGroupBox("Model")
        mrow = QVBoxLayout(models)
        buttons = QHBoxLayout()
        buttons.addWidget(self.save_btn)
        buttons.addWidget(self.load_btn)
        buttons.addWidget(self.denoise_btn)
        mrow.addLayout(buttons)
        mrow.addWidget(self.model_label)
        layout.addWidget(models)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        layout.addStretch(1)

    # ------------------------------------------------------------------ inputs
    def _update_axes(self):
        layer = self.image_picker.value
        if layer is None or layer.ndim < 3:
            self.axis.choices = []
            return
        choices = [(f"axis {i} (size {layer.data.shape[i]})", i) for i in range(layer.ndim - 2)]
        self.axis.choices = choices
        # Default: the first axis the viewer is not displaying (the slider axis).
        offset = self.viewer.dims.ndim - layer.ndim
        for world_axis in self.viewer.dims.not_displayed:
            if 0 <= world_axis - offset < layer.ndim - 2:
                self.axis.value = world_axis - offset
                break

    def config(self):
        from ..nsn2n import NSN2NConfig

        iters = self.iterations.value or None
        return NSN2NConfig(
            iterations=iters, budget=self.budget.value or "auto",
            width=self.width.value or None, context=self.context.value, guide=self.guide.value,
            lambda_rc=self.lambda_rc.value, lambda_ic=self.lambda_ic.value,
            tta=self.tta.value, device=self.device.value, seed=self.seed.value,
            preview_index=self._current_index(),
            # About 20 previews per run with fixed steps; every 50 steps with a budget.
            preview_every=max(1, iters // 20) if iters else 50,
        )

    def _layer_and_axis(self) -> tuple[Image, int]:
        from .._errors import DuetInputError

        layer = self.image_picker.value
        if layer is None:
            raise DuetInputError("choose an image layer first")
        if layer.ndim < 3 or self.axis.value is None:
            raise DuetInputError(
                f"{layer.name} is 2D: NS-N2N needs a stack or time-lapse with at least 3 slices")
        return layer, int(self.axis.value)

    def _current_index(self) -> int | None:
        layer = self.image_picker.value
        if layer is None or self.axis.value is None:
            return None
        point = layer.world_to_data(self.viewer.dims.point)
        n = layer.data.shape[self.axis.value]
        return int(np.clip(round(point[self.axis.value]), 0, n - 1))

    # ------------------------------------------------------------ diagnostics
    def check_noise(self):
        """Recommend NS-N2N, BM4D or a single-image denoiser; show the pairs' matching."""
        from ..nsn2n import pair_diagnostics, recommend_method

        try:
            layer, axis = self._layer_and_axis()
            volume, axis, _ = as_volume(layer, axis)
            method, reason = recommend_method(volume, axis)
            pairs = pair_diagnostics(volume, axis)
        except Exception as exc:
            notify_error(exc, "NS-N2N")
            return None
        name = {"nsn2n": "NS-N2N", "bm4d": "BM4D (not part of napari-duet)"}.get(
            method, "a single-image denoiser (Noise2Fast)")
        self.recommendation.setText(f"Recommended: {name}. {reason}.")
        self.show_pairs(pairs)
        return method, reason

    def show_pairs(self, pairs: list[dict]) -> None:
        """Plot the matched fraction of every slice pair (first stack) and name poor pairs."""
        from ..nsn2n import summarize_pairs

        self.pairs = pairs
        first = [p["matched"] for p in pairs if p["stack"] == 0]
        self.pair_plot.setVisible(bool(first))
        self.pair_plot.plot({"matched": first}, xlabel="pair (z, z+1)")
        line = summarize_pairs(pairs)
        self.pairs_label.setText(line + "." if line else
                                 f"All {len(pairs)} slice pairs match well.")

    def show_weight_map(self):
        """Add/update a layer with W for the slice on screen and the next one."""
        from ..nsn2n import weight_map

        try:
            layer, axis = self._layer_and_axis()
            volume, vaxis, _ = as_volume(layer, axis)
            index = min(self._current_index() or 0, layer.data.shape[axis] - 2)
            w = weight_map(volume, vaxis, index, self.config())
        except Exception as exc:
            notify_error(exc, "NS-N2N")
            return None
        name = f"{layer.name} [NS-N2N weight map]"
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        self._helper_layers.add(name)  # removed after the next run
        return set_or_add_layer(
            self.viewer, existing, w, kind="image", name=name, colormap="green",
            blending="additive", opacity=0.4, contrast_limits=(0, 1), contrast=False,
            scale=tuple(layer.scale)[-2:], translate=tuple(layer.translate)[-2:],
        )

    # --------------------------------------------------------------------- runs
    def _start(self, kind: str, layer: Image, gen_function, *args):
        self.job = _Job(layer.name, id(layer), tuple(layer.scale), tuple(layer.translate),
                        bool(layer.rgb), kind)
        self.plot.plot({})
        self.progress.setValue(0)
        self._set_running(True)
        self.worker = start_engine_worker(
            run_with_threads, self.threads.value, gen_function, *args,
            desc=f"NS-N2N {kind} {layer.name}", total=None,
            on_yield=self._on_yield, on_return=self._on_return, on_error=self._on_error,
            on_finish=self._on_finish,
        )

    def train(self):
        """Train on the chosen layer and denoise it."""
        if self.worker is not None:
            return
        from ..nsn2n import iter_train

        try:
            layer, axis = self._layer_and_axis()
            config = self.config()
            volume, vaxis, _ = as_volume(layer, axis)
        except Exception as exc:
            notify_error(exc, "NS-N2N")
            return
        warm_up_torch()
        self.status.setText(f"Training NS-N2N on {layer.name}…")
        self._start("train", layer, iter_train, volume, vaxis, config)

    def denoise(self):
        """Denoise the chosen layer with the current (trained or loaded) model."""
        if self.worker is not None:
            return
        if self.model is None:
            notify_error(ValueError("load or train a model first"), "NS-N2N")
            return
        try:
            layer, axis = self._layer_and_axis()
            volume, vaxis, _ = as_volume(layer, axis)
        except Exception as exc:
            notify_error(exc, "NS-N2N")
            return
        self.status.setText(f"Denoising {layer.name}…")
        self._start("denoise", layer, self.model.iter_denoise, volume, vaxis, self.tta.value)

    def _set_running(self, running: bool):
        self.train_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        self.load_btn.setEnabled(not running)
        self.save_btn.setEnabled(not running and self.model is not None)
        self.denoise_btn.setEnabled(not running and self.model is not None)

    def _on_yield(self, p):
        job = self.job
        if job is None:
            return
        if job.kind == "denoise":
            self.progress.setValue(int(1000 * p.done / max(p.total, 1)))
            self.status.setText(f"Denoised {p.done}/{p.total} slices, {_eta(p.eta)}")
            return
        if p.stage == "train":
            frac = 0.05 + 0.85 * p.iteration / max(p.iterations, 1)
            for k, v in p.losses.items():
                job.losses.setdefault(k, []).append(v)
        elif p.stage == "guide":
            frac = 0.05 * p.done / max(p.total, 1)
        else:
            frac = 0.9 + 0.1 * p.done / max(p.total, 1)
        self.progress.setValue(int(1000 * frac))
        now = time.perf_counter()
        if p.preview is not None:
            self._show_preview(job, p.preview, p.preview_index)
        if now - job.last_plot > _PLOT_EVERY_S or p.preview is not None:
            job.last_plot = now
            self.plot.plot(job.losses, xlabel="iteration")
            losses = ", ".join(f"{k} {v:.4g}" for k, v in p.losses.items())
            self.status.setText(
                f"{p.stage}: iteration {p.iteration}/{p.iterations}  {losses}  "
                f"matched {p.matched_fraction:.0%}  {_eta(p.eta)}")

    def _show_preview(self, job: _Job, preview: np.ndarray, index: int):
        name = f"{job.source_name} [NS-N2N preview]"
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        self._helper_layers.add(name)  # removed after the run
        rgb_scale = job.scale[-2:]
        set_or_add_layer(self.viewer, existing, preview, kind="image", name=name,
                         colormap="gray", scale=rgb_scale, translate=job.translate[-2:])

    def _on_return(self, result):
        job = self.job
        if job is None:
            return
        job.result = result
        if job.kind == "train":
            self.model = result.model
            self.model_label.setText("Model: trained on " + job.source_name)
            self.plot.plot(result.loss_history, xlabel="iteration")
            if result.pairs:
                self.show_pairs(result.pairs)
            for w in result.warnings:
                show_warning(f"NS-N2N: {w}")
        denoised = from_volume(result.denoised, job.rgb)
        unc = None if result.uncertainty is None else from_volume(result.uncertainty, job.rgb)
        self._show_result(job, denoised, unc)
        secs = time.perf_counter() - job.started
        extra = ""
        if job.kind == "train":
            info = result.model.info
            extra = (f"; matched fraction {result.matched_fraction:.0%}; "
                     f"{info.get('iterations_done')} steps, width {info.get('width')}")
        self.status.setText(f"Done in {secs:.1f} s{extra}.")
        show_info(f"NS-N2N finished on {job.source_name}")

    def _show_result(self, job: _Job, denoised: np.ndarray, unc: np.ndarray | None):
        layers = self._results.setdefault(job.source_key, {})
        common = {"scale": job.scale, "translate": job.translate, "rgb": job.rgb}
        if not job.rgb:
            common["colormap"] = "gray"
        layers["denoised"] = set_or_add_layer(
            self.viewer, layers.get("denoised"), denoised, kind="image",
            name=f"{job.source_name} [NS-N2N denoised]", **common)
        if unc is not None and self.show_uncertainty.value:
            if job.rgb:
                unc = unc.mean(axis=-1)
            layers["uncertainty"] = set_or_add_layer(
                self.viewer, layers.get("uncertainty"), unc, kind="image",
                name=f"{job.source_name} [NS-N2N uncertainty]", colormap="magma",
                blending="additive", opacity=0.6, scale=job.scale, translate=job.translate,
                visible=False)  # available, but not drawn over the result

    def _on_finish(self):
        if self._take_worker():
            self.status.setText(f"Cancelled ({self.job.kind}); input layers are unchanged.")
        self._remove_helper_layers()
        self._set_running(False)

    def _remove_helper_layers(self):
        """Remove the preview and weight-map layers: they only help while setting up/training."""
        names, self._helper_layers = self._helper_layers, set()
        for name in names:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)

    # ------------------------------------------------------------------ models
    def save_model(self, path: str | Path) -> Path:
        if self.model is None:
            raise ValueError("no model to save: train or load one first")
        return self.model.save(path)

    def load_model(self, path: str | Path) -> bool:
        """Load an NS-N2N model file; a bad file gives a notification and changes nothing."""
        from ..nsn2n import NSN2NModel

        model = load_model_or_notify(NSN2NModel.load, path, self.device.value, "NS-N2N")
        if model is None:
            return False
        self.model = model
        self.model_label.setText(f"Model: {Path(path).name}")
        self._set_running(self.worker is not None)
        return True

    def _save_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save NS-N2N model", "nsn2n.duet",
                                              "napari-duet model (*.duet)")
        if path:
            try:
                self.save_model(path)
            except Exception as exc:
                notify_error(exc, "Save model")

    def _load_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self, "Load NS-N2N model", "",
                                              "napari-duet model (*.duet);;All files (*)")
        if path:
            self.load_model(path)


def _eta(seconds: float) -> str:
    """"ETA 12 s", or "ETA …" while the time per step is not measured yet."""
    return f"ETA {seconds:.0f} s" if np.isfinite(seconds) else "ETA …"
