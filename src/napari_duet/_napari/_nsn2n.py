"""NS-N2N dock widget: "Slice denoising (NS-N2N)".

Train & denoise runs :func:`napari_duet.nsn2n.iter_train` in a thread worker
(live loss plot, preview of the current slice, progress); a trained or loaded
model denoises any image layer through :meth:`NSN2NModel.iter_predict`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
)

from ..core.devices import available_devices, max_threads, resolve_threads
from ..core.errors import DuetInputError
from ._common import layer_picker, result_name, set_or_add_layer, warm_up_torch
from ._curves import CurvePlot
from ._dock import (
    MODEL_FILTER,
    Collapsible,
    EngineDock,
    Job,
    SourceInfo,
    control_values,
    data_nbytes,
    eta_text,
    is_large,
    layer_data,
    param_control,
)
from ._lazy import sample_limits

if TYPE_CHECKING:
    import napari

_PLOT_EVERY_S = 0.4  # redraw the loss plot at most this often
TAG = "NS-N2N"  # in result layer names: "<source> NS-N2N denoised"


@dataclass(kw_only=True)
class _Job(Job):
    chunked: bool = False  # a large layer denoised slab by slab into an OME-Zarr
    output: Path | None = None
    model: Any = None  # the model in training (kept by Cancel)
    steps: int = 0  # training steps done
    nonnegative: bool = False  # the input has no negative values: neither has the result


def _nonnegative(volume) -> bool:
    """True when the input has no negative value (its result is then clipped at 0)."""
    try:
        return bool(np.nanmin(volume) >= 0)
    except (TypeError, ValueError):
        return False


def _clip(arr: np.ndarray, job) -> np.ndarray:
    """A denoised result of a non-negative input has no negative intensities."""
    return np.maximum(arr, 0) if getattr(job, "nonnegative", False) else arr


def as_volume(data, rgb: bool, axis: int) -> tuple[np.ndarray, int]:
    """Layer data as an engine volume; RGB channels become a leading stack axis."""
    arr = np.asarray(data)
    if rgb:
        return np.moveaxis(arr, -1, 0), axis + 1
    return arr, axis


def from_volume(arr: np.ndarray, rgb: bool) -> np.ndarray:
    return np.moveaxis(arr, 0, -1) if rgb else arr


class NSN2NWidget(EngineDock):
    """Train NS-N2N on a stack or time-lapse, or apply a saved model.

    Large layers (dask/zarr-backed, multiscale or over the size limit) are denoised
    slab by slab into an OME-Zarr (beside the source file, or in the chosen
    folder) that opens lazily as the result; Cancel keeps the finished slabs and
    Denoise continues where it stopped.
    """

    engine_name = "NS-N2N"
    docs_anchor = "slice-denoising-ns-n2n"

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent=None):
        super().__init__(napari_viewer, parent)
        from ..nsn2n import NSN2NConfig

        self._helper_layers: set[str] = set()  # preview, weight maps: removed after a run
        self.model = None
        self.slab: int | None = None  # slices per slab of large layers (None: automatic)
        self._results: dict[int, dict] = {}

        self.image_picker = layer_picker(napari_viewer, Image, "image")
        self.axis = ComboBox(label="slice axis", choices=[])
        # The parameter controls, built from NSN2NConfig's declarations (label, tooltip,
        # bounds, choices; "auto" at 0); only what differs in the widget is given here.
        C = NSN2NConfig
        self.param_class = C
        self.budget = param_control(C, "budget", number=int, max=86_400)
        self.iterations = param_control(C, "iterations", max=1_000_000)
        self.width = param_control(C, "width", max=256)
        self.context = param_control(C, "context")
        self.noise_model = param_control(C, "noise_model")
        self.guide = param_control(C, "guide", choices=["gaussian", "nlm"])
        self.lambda_rc = param_control(C, "lambda_rc", max=100, step=0.1)
        self.lambda_ic = param_control(C, "lambda_ic", max=100, step=0.1)
        self.tta = param_control(C, "tta", text="test-time augmentation (mean + uncertainty)")
        self.wiener = param_control(C, "wiener")
        self.device = param_control(C, "device", choices=["auto", *available_devices()])
        self.seed = param_control(C, "seed")
        self.param_controls = {w.param_name: w for w in (
            self.iterations, self.budget, self.width, self.context, self.guide,
            self.noise_model, self.lambda_rc, self.lambda_ic, self.tta, self.wiener,
            self.device, self.seed)}
        # Passed to the run, not part of the configuration that Save parameters… writes.
        self.threads = SpinBox(label="CPU threads",
                               value=resolve_threads("auto", napari_open=True),
                               min=1, max=max_threads())
        self.show_uncertainty = CheckBox(text="add uncertainty layer (hidden)", value=True)
        self.check_btn = QPushButton("Check noise")
        self.check_btn.setToolTip("Measure in-plane noise correlation and slice matching, and "
                                  "recommend NS-N2N or a single-image denoiser")
        self.weights_btn = QPushButton("Show weight map")
        self.weights_btn.setToolTip("Matched-region map W of the slice on screen and the next")
        self.n2f_btn = QPushButton("Denoise with Noise2Fast")
        self.n2f_btn.setToolTip("Denoise every slice on its own with Noise2Fast (a "
                                "single-image denoiser): for noise independent between pixels, "
                                "or slices too far apart for NS-N2N. Also: duet n2f")
        self.save_results_btn = QPushButton("Save results…")
        self.save_results_btn.setToolTip("Write the last result into a folder: denoised.tif, "
                                         "uncertainty.tif, report.json and, after training, "
                                         "model.duet")
        self.save_results_btn.setEnabled(False)
        self.last_result = None  # the last run's result (for Save results…)
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
        self.pair_plot = CurvePlot("Matched fraction per slice pair", "matched",
                                   xlabel="pair (z, z+1)")
        self.pair_plot.setVisible(False)
        self.pairs: list[dict] = []
        self.status.setText("Choose a stack or time-lapse and press Train & denoise.")
        self.plot = CurvePlot("Training losses", "loss", xlabel="iteration")
        self.save_params_btn, self.load_params_btn = self.param_buttons()
        self._tooltips()
        self._build_layout()

        self.image_picker.changed.connect(lambda *_: self._update_axes())
        self.check_btn.clicked.connect(self.check_noise)
        self.weights_btn.clicked.connect(self.show_weight_map)
        self.train_btn.clicked.connect(self.train)
        self.cancel_btn.clicked.connect(self.cancel)
        self.save_btn.clicked.connect(lambda: self.save_with_dialog(
            "Save NS-N2N model", "nsn2n.duet", "napari-duet model (*.duet)", self.save_model,
            "Save model"))
        self.load_btn.clicked.connect(self._load_dialog)
        self.denoise_btn.clicked.connect(self.denoise)
        self.n2f_btn.clicked.connect(self.denoise_n2f)
        self.save_results_btn.clicked.connect(self._save_results_dialog)
        self._update_axes()

    def _tooltips(self):
        self.threads.tooltip = ("torch CPU threads during training and denoising; the "
                                "default leaves napari a core.")
        self.image_picker.tooltip = "The stack or time-lapse to denoise (3D or more)."
        self.axis.tooltip = ("The axis along which slices are neighbours: z of a stack or t "
                             "of a time-lapse (default: the slider's axis).")
        self.show_uncertainty.tooltip = ("With test-time augmentation: add the spread of the "
                                         "8 predictions as a hidden layer (magma).")
        self.train_btn.setToolTip("Train a network on this stack (self-supervised, from "
                                  "neighbouring slices) and denoise it")
        self.cancel_btn.setToolTip("Stop: during training, the model trained so far is kept "
                                   "and Denoise layer uses it")
        self.save_btn.setToolTip("Write the current model to a .duet file")
        self.load_btn.setToolTip("Load a .duet model (or a bioimage.io zip made from one)")
        self.denoise_btn.setToolTip("Denoise the chosen layer with the current model")

    def _build_layout(self):
        layout = self.scroll_layout()
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
        for w in (self.budget, self.iterations, self.context, self.noise_model):
            pform.addRow(w.label, w.native)
        pform.addRow(self.tta.native)
        pform.addRow(self.show_uncertainty.native)
        self.advanced = Collapsible("Advanced")
        for w in (self.width, self.guide, self.lambda_rc, self.lambda_ic, self.wiener,
                  self.device, self.seed, self.threads):
            self.advanced.form.addRow(w.label, w.native)
        self.advanced.form.addRow("large-layer results in", self.output_folder)
        pform.addRow(self.advanced)
        layout.addWidget(params)
        run = QHBoxLayout()
        run.addWidget(self.train_btn)
        run.addWidget(self.cancel_btn)
        layout.addLayout(run)
        models = QGroupBox("Model and results")
        mrow = QVBoxLayout(models)
        buttons = QGridLayout()
        buttons.addWidget(self.save_btn, 0, 0)
        buttons.addWidget(self.load_btn, 0, 1)
        buttons.addWidget(self.denoise_btn, 1, 0)
        buttons.addWidget(self.save_results_btn, 1, 1)
        buttons.addWidget(self.n2f_btn, 2, 0, 1, 2)
        buttons.addWidget(self.save_params_btn, 3, 0)
        buttons.addWidget(self.load_params_btn, 3, 1)
        mrow.addLayout(buttons)
        mrow.addWidget(self.model_label)
        layout.addWidget(models)
        layout.addWidget(self.plot)
        layout.addStretch(1)

    def _update_axes(self):
        layer = self.image_picker.value
        if layer is None or layer.ndim < 3:
            self.axis.choices = []
            return
        shape = layer_data(layer).shape
        choices = [(f"axis {i} (size {shape[i]})", i) for i in range(layer.ndim - 2)]
        self.axis.choices = choices
        # Default: the first axis the viewer is not displaying (the slider axis).
        offset = self.viewer.dims.ndim - layer.ndim
        for world_axis in self.viewer.dims.not_displayed:
            if 0 <= world_axis - offset < layer.ndim - 2:
                self.axis.value = world_axis - offset
                break

    def config(self):
        from ..nsn2n import NSN2NConfig

        values = control_values(NSN2NConfig, self.param_controls)
        iters = values["iterations"]
        return NSN2NConfig(
            **values, preview_index=self._current_index(),
            # About 20 previews per run with fixed steps; every 50 steps with a budget.
            preview_every=max(1, iters // 20) if iters else 50,
        )

    def _layer_and_axis(self) -> tuple[Image, int]:
        layer = self.image_picker.value
        if layer is None:
            raise DuetInputError("choose an image layer first")
        if layer.ndim < 3 or self.axis.value is None:
            raise DuetInputError(
                f"{layer.name} is 2D: NS-N2N needs a stack or time-lapse with at least 3 slices")
        return layer, int(self.axis.value)

    def _volume(self, layer: Image, axis: int, purpose: str) -> tuple[np.ndarray, int]:
        """The layer in memory as an engine volume (refused above the large-layer size)."""
        data = layer_data(layer)
        if data_nbytes(data) > self.large_layer_bytes:
            raise DuetInputError(
                f"{layer.name} is {data_nbytes(data) / 2**30:.1f} GiB: {purpose} works in memory; "
                "use a crop or a lower resolution, then Denoise this layer slab by slab")
        return as_volume(data, bool(layer.rgb), axis)

    def _current_index(self) -> int | None:
        layer = self.image_picker.value
        if layer is None or self.axis.value is None:
            return None
        point = layer.world_to_data(self.viewer.dims.point)
        n = layer_data(layer).shape[self.axis.value]
        return int(np.clip(round(point[self.axis.value]), 0, n - 1))

    # ------------------------------------------------------------ diagnostics
    def check_noise(self):
        """Recommend NS-N2N, BM4D or a single-image denoiser; show the pairs' matching."""
        from ..nsn2n import pair_diagnostics, recommend_method

        try:
            layer, axis = self._layer_and_axis()
            volume, axis = self._volume(layer, axis, "Check noise")
            method, reason = recommend_method(volume, axis, self.config())
            pairs = pair_diagnostics(volume, axis)
        except Exception as exc:
            self.report(exc)
            return None
        name = {"nsn2n": "NS-N2N", "bm4d": "BM4D (not part of napari-duet)"}.get(
            method, "Noise2Fast, a single-image denoiser (Denoise with Noise2Fast below, or "
            "duet n2f)")
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
            volume, vaxis = self._volume(layer, axis, "the weight map")
            index = min(self._current_index() or 0, volume.shape[vaxis] - 2)
            w = weight_map(volume, vaxis, index, self.config())
        except Exception as exc:
            self.report(exc)
            return None
        name = result_name(layer.name, f"{TAG} weight map")
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        self._helper_layers.add(name)  # removed after the next run
        return set_or_add_layer(
            self.viewer, existing, w, kind="image", name=name, colormap="green",
            blending="additive", opacity=0.4, contrast_limits=(0, 1), contrast=False,
            source=SourceInfo.of(layer))

    # --------------------------------------------------------------------- runs
    def train(self):
        """Train on the chosen layer and denoise it."""
        if self.running:
            return
        from ..nsn2n import iter_train

        try:
            layer, axis = self._layer_and_axis()
            config = self.config()
            volume, vaxis = self._volume(layer, axis, "training")
        except Exception as exc:
            self.report(exc)
            return
        warm_up_torch()
        self.plot.plot({})
        self.status.setText(f"Training NS-N2N on {layer.name}…")
        self.start(_Job(kind="train", source=SourceInfo.of(layer),
                        nonnegative=_nonnegative(volume)), iter_train, volume, vaxis,
                   config, threads=self.threads.value, desc=f"NS-N2N train {layer.name}")

    def denoise(self):
        """Denoise the chosen layer with the current (trained or loaded) model.

        Large layers go slab by slab into an OME-Zarr (see the class docstring).
        """
        if self.running:
            return
        try:
            if self.model is None:
                raise DuetInputError("load or train a model first")
            # The Wiener stage as the control says (auto: the model's own check).
            self.model.config = self.model.config.replace(wiener=self.wiener.value)
            layer, axis = self._layer_and_axis()
            if is_large(layer_data(layer), self.large_layer_bytes):
                return self._denoise_chunked(layer, axis)
            volume, vaxis = self._volume(layer, axis, "denoising")
        except Exception as exc:
            self.report(exc)
            return
        self.status.setText(f"Denoising {layer.name}…")
        self.start(_Job(kind="denoise", source=SourceInfo.of(layer),
                        nonnegative=_nonnegative(volume)), self.model.iter_predict,
                   volume, vaxis, self.tta.value, threads=self.threads.value,
                   desc=f"NS-N2N denoise {layer.name}")

    def denoise_n2f(self):
        """Denoise every slice of the chosen layer on its own with Noise2Fast (what
        Check noise recommends for pixel-independent noise or mismatched slices)."""
        if self.running:
            return
        from ..core.n2f._stack import iter_noise2fast_stack

        try:
            layer = self.image_picker.value
            if layer is None:
                raise DuetInputError("choose an image layer first")
            data = layer_data(layer)
            if data_nbytes(data) > self.large_layer_bytes:
                raise DuetInputError(f"{layer.name} is too large for Noise2Fast in memory: "
                                     "use duet n2f on a crop")
            volume, _ = as_volume(data, bool(layer.rgb), 0)
        except Exception as exc:
            self.report(exc)
            return
        warm_up_torch()
        self.status.setText(f"Noise2Fast on every slice of {layer.name}…")
        self.start(_Job(kind="n2f", source=SourceInfo.of(layer),
                        nonnegative=_nonnegative(volume)), iter_noise2fast_stack, volume,
                   device=self.device.value, seed=self.seed.value,
                   threads=self.threads.value, desc=f"Noise2Fast {layer.name}")

    def chunked_output(self, source: SourceInfo, signature: dict) -> Path | None:
        """The OME-Zarr a large layer is denoised into: ``<source> NS-N2N denoised.ome.zarr``
        in the results folder (built beside it until complete).  A store of the same run
        is continued (or reused when finished); other data are never overwritten: the name
        gets a number."""
        folder = self.results_folder(source)
        if folder is None:
            return None
        return self.free_store(folder, f"{source.name} {TAG} denoised", ".ome.zarr",
                               signature)

    def _denoise_chunked(self, layer: Image, axis: int) -> None:
        from ..nsn2n._store import iter_denoise_to_zarr, run_signature

        if layer.rgb:
            raise DuetInputError(f"{layer.name} is a large RGB layer: slab-by-slab denoising "
                                 "needs one channel")
        source = SourceInfo.of(layer)
        data = layer_data(layer)
        tta = bool(self.tta.value)
        signature = run_signature(self.model, data, axis=axis, tta=tta,
                                  input_name=str(source.path or source.name))
        signature["uncertainty"] = tta and bool(self.show_uncertainty.value)
        out = self.chunked_output(source, signature)
        if out is None:
            self.status.setText("No folder chosen for the result: nothing was done.")
            return
        unc = None
        if signature["uncertainty"]:  # "<source> NS-N2N uncertainty[ n].ome.zarr" beside it
            i = out.name.rfind(" denoised")
            unc = out.with_name(out.name[:i] + " uncertainty" + out.name[i + 9:])
        self.status.setText(f"Denoising {layer.name} slab by slab into {out.name}…")
        self.start(_Job(kind="denoise", source=source, chunked=True, output=out),
                   iter_denoise_to_zarr, self.model, data, out, ome_meta(source), axis=axis,
                   tta=tta, signature=signature, slab=self.slab, uncertainty_path=unc,
                   threads=self.threads.value, desc=f"NS-N2N denoise {layer.name}")

    def update_controls(self, running: bool):
        self.train_btn.setEnabled(not running)
        self.n2f_btn.setEnabled(not running)
        self.save_results_btn.setEnabled(not running and self.last_result is not None)
        self.cancel_btn.setEnabled(running)
        self.load_btn.setEnabled(not running)
        self.save_btn.setEnabled(not running and self.model is not None)
        self.denoise_btn.setEnabled(not running and self.model is not None)

    def show_progress(self, job: _Job, p):
        stage = getattr(p, "stage", "")
        if getattr(p, "model", None) is not None:  # the model in training: Cancel keeps it
            job.model, job.steps = p.model, int(getattr(p, "iteration", 0))
        if job.kind == "n2f":
            self.status.setText(f"Noise2Fast: {p.done}/{p.total} slices, {eta_text(p.eta)}")
            return
        if job.kind == "denoise":
            what = {"statistics": "reading intensity statistics", "pyramid":
                    "writing the lower resolutions"}.get(stage)
            unit = "slices" if not job.chunked else "slices (finished slabs are kept)"
            self.status.setText(f"{what}…" if what else
                                f"Denoised {p.done}/{p.total} {unit}, {eta_text(p.eta)}")
            return
        if stage == "train":
            for k, v in p.losses.items():
                job.losses.setdefault(k, []).append(v)
        now = time.perf_counter()
        preview = getattr(p, "preview", None)
        if preview is not None:
            self._show_preview(job, preview)
        if now - job.last_plot > _PLOT_EVERY_S or preview is not None:
            job.last_plot = now
            self.plot.plot(job.losses, xlabel="iteration")
            losses = ", ".join(f"{k} {v:.4g}" for k, v in p.losses.items())
            it = getattr(p, "iteration", p.done)
            its = getattr(p, "iterations", p.total)
            matched = getattr(p, "matched_fraction", float("nan"))
            self.status.setText(f"{stage}: iteration {it}/{its}  {losses}  "
                                f"matched {matched:.0%}  {eta_text(p.eta)}")

    def fraction_of(self, job: _Job, p) -> float | None:
        from ..core.progress import Progress

        stage = getattr(p, "stage", "")
        if job.kind == "train" and not isinstance(p, Progress):
            # Until the engine's progress has a whole-run fraction: guide 5 %, train 85 %.
            if stage == "train":
                return 0.05 + 0.85 * p.iteration / max(p.iterations, 1)
            base, share = (0.0, 0.05) if stage == "guide" else (0.9, 0.1)
            return base + share * p.done / max(p.total, 1)
        if job.chunked and stage == "pyramid":
            return None  # a busy bar: the pyramid has no count
        return super().fraction_of(job, p)

    def _show_preview(self, job: _Job, preview: np.ndarray):
        name = result_name(job.source.name, f"{TAG} preview")
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        self._helper_layers.add(name)  # removed after the run
        set_or_add_layer(self.viewer, existing, preview, kind="image", name=name,
                         colormap="gray", source=job.source)

    def show_result(self, job: _Job, result):
        if job.chunked:
            return self._show_chunked(job, result)
        src = job.source
        self.last_result = result
        if job.kind == "n2f":
            self._show_result(job, from_volume(_clip(result.denoised, job), src.rgb), None,
                              what="N2F denoised")
            self.status.setText(f"Noise2Fast done in {job.seconds:.1f} s (every slice on "
                                "its own).")
            show_info(f"Noise2Fast finished on {src.name}")
            return
        if job.kind == "train":
            self.model = result.model
            self.model_label.setText("Model: trained on " + src.name)
            self.plot.plot(result.loss_history, xlabel="iteration")
            if result.pairs:
                self.show_pairs(result.pairs)
            for w in result.warnings:
                show_warning(f"NS-N2N: {w}")
        denoised = from_volume(_clip(result.denoised, job), src.rgb)
        unc = None if result.uncertainty is None else from_volume(result.uncertainty, src.rgb)
        self._show_result(job, denoised, unc)
        extra = ""
        if job.kind == "train":
            info = result.model.training
            net = {"blind": "blind-spot", "2.5d": "2.5D", "2d": "2D"}.get(info.get("context"), "")
            extra = (f"; matched fraction {result.matched_fraction:.0%}; "
                     f"{info.get('iterations_done')} steps, {net} network, width "
                     f"{info.get('width')}; {result.model.noise.describe()}")
            if result.model.describe_wiener():
                extra += f"; {result.model.describe_wiener()}"
        self.status.setText(f"Done in {job.seconds:.1f} s{extra}.")
        show_info(f"NS-N2N finished on {src.name}")

    def _show_result(self, job: _Job, denoised: np.ndarray, unc: np.ndarray | None,
                     what: str = "denoised"):
        src = job.source
        layers = self._results.setdefault(src.key, {})
        if what != "denoised":  # another method's result: a layer of its own
            layers = self._results.setdefault((src.key, what), {})
        common: dict[str, Any] = {"source": src, "rgb": src.rgb}
        if not src.rgb:
            common["colormap"] = "gray"
        layers["denoised"] = set_or_add_layer(
            self.viewer, layers.get("denoised"), denoised, kind="image",
            name=result_name(src.name, f"{TAG} {what}" if what == "denoised" else what),
            **common)
        if unc is not None and self.show_uncertainty.value:
            if src.rgb:
                unc = unc.mean(axis=-1)
            layers["uncertainty"] = set_or_add_layer(
                self.viewer, layers.get("uncertainty"), unc, kind="image",
                name=result_name(src.name, f"{TAG} uncertainty"), colormap="magma",
                blending="additive", opacity=0.6, source=src,
                visible=False)  # available, but not drawn over the result

    def _show_chunked(self, job: _Job, result):
        """Open the OME-Zarr result(s) lazily (every pyramid level) over the source."""
        src = job.source
        layers = self._results.setdefault(src.key, {})
        layers["denoised"] = self._open_store(
            layers.get("denoised"), result.path, result_name(src.name, f"{TAG} denoised"),
            src, colormap="gray")
        if result.uncertainty is not None:
            layers["uncertainty"] = self._open_store(
                layers.get("uncertainty"), result.uncertainty,
                result_name(src.name, f"{TAG} uncertainty"), src, colormap="magma",
                blending="additive", opacity=0.6, visible=False)
        how = ("already denoised by an earlier run" if result.reused else
               f"in {job.seconds:.1f} s" + (f", {result.resumed_slabs} slabs from an "
                                            "interrupted run" if result.resumed_slabs else ""))
        self.status.setText(f"Done: {result.path.name} ({how}).")
        show_info(f"NS-N2N finished on {src.name}: {result.path}")

    def _open_store(self, old, path: Path, name: str, src: SourceInfo, **kwargs):
        """Replace ``old`` by a lazy layer over the OME-Zarr ``path`` (all its levels)."""
        import zarr

        group = zarr.open_group(str(path), mode="r")
        levels = []
        while str(len(levels)) in group:
            levels.append(group[str(len(levels))])
        if old is not None and old in self.viewer.layers:
            self.viewer.layers.remove(old)
        return self.viewer.add_image(
            levels if len(levels) > 1 else levels[0], multiscale=len(levels) > 1, name=name,
            contrast_limits=sample_limits(levels[-1]) or (0.0, 1.0),
            **src.placement(len(levels[0].shape)), **kwargs)

    def after_cancel(self, job: _Job):
        if job.kind == "train" and job.model is not None:
            self._keep_cancelled_model(job)
            return
        if job.chunked:
            from ..core.chunks import staging_path

            self.status.setText(f"Cancelled: the finished slabs are kept in "
                                f"{staging_path(job.output)}; Denoise continues where it "
                                "stopped.")
        else:
            super().after_cancel(job)

    def _keep_cancelled_model(self, job: _Job) -> None:
        """Keep the model a cancelled training had trained so far, and offer to use it."""
        model = job.model
        model.net.eval()
        info = dict(getattr(model, "training", None) or {})
        info.setdefault("iterations_done", job.steps)
        info["cancelled"] = True
        model.training = info
        self.model = model
        self.model_label.setText(f"Model: trained on {job.source.name} for {job.steps} "
                                 "steps (cancelled)")
        self.status.setText(f"Cancelled after {job.steps} training steps: the model trained "
                            "so far is kept. Press Denoise layer to denoise with it, or Save "
                            "model… to keep it.")
        show_info(f"NS-N2N: training cancelled after {job.steps} steps; the model so far is "
                  "kept: Denoise layer uses it")

    def save_results(self, folder: str | Path) -> list[Path]:
        """Write the last result (denoised, uncertainty, report, model) into ``folder``."""
        if self.last_result is None:
            raise DuetInputError("no result to save: train, denoise or run Noise2Fast first")
        return self.last_result.save(folder)

    def _save_results_dialog(self):
        self.save_results_dialog("Save NS-N2N results into")

    def after_run(self, job: _Job):
        self._remove_helper_layers()

    def _remove_helper_layers(self):
        """Remove the preview and weight-map layers: they only help while setting up/training."""
        names, self._helper_layers = self._helper_layers, set()
        for name in names:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)

    # ------------------------------------------------------------------ models
    def save_model(self, path: str | Path) -> Path:
        if self.model is None:
            raise DuetInputError("no model to save: train or load one first")
        return self.model.save(path)

    def load_model(self, path: str | Path) -> bool:
        """Load an NS-N2N model file; a bad file gives a notification and changes nothing."""
        from ..nsn2n import NSN2NModel

        model = self.load_model_file(NSN2NModel.load, path, self.device.value)
        if model is None:
            return False
        self.model = model
        self.model_label.setText(f"Model: {Path(path).name}")
        self.update_controls(self.running)
        return True

    def _load_dialog(self):
        path = self.ask_open_path("Load NS-N2N model", MODEL_FILTER)
        if path:
            self.load_model(path)


def ome_meta(source: SourceInfo):
    """The OME-Zarr axes, pixel size and units of a result over ``source``."""
    from ..core.io import ImageMeta

    n = len(source.scale)
    meta = ImageMeta.default(n)
    axes = meta.axes
    labels = tuple(str(a) for a in source.axis_labels)
    if len(labels) == n and len(set(labels)) == n and not all(
            a.lstrip("-").isdigit() for a in labels):
        axes = labels
    units = tuple(None if str(u) in ("pixel", "") else str(u) for u in source.units)
    if len(units) != n:
        units = (None,) * n
    return ImageMeta(tuple(axes), tuple(float(s) for s in source.scale), units)
