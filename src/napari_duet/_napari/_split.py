"""denoiSplit dock widget: "Split (denoiSplit)".

Split tab: load a model, split an image layer into its 2 to 4 structures with
posterior samples and calibrated uncertainty.  Train tab: train a model from
2 to 4 layers (noisy acquisitions of each structure) with live losses, or copy
the equivalent ``duet split train`` command for a GPU server.
"""

from __future__ import annotations

import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_info
from qtpy.QtCore import Qt
from qtpy.QtGui import QPixmap
from qtpy.QtWidgets import (
    QDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
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
    layer_data,
    param_control,
)

if TYPE_CHECKING:
    import napari

CHANNEL_COLORMAPS = ("green", "magenta", "cyan", "yellow")
MAX_STRUCTURES = len(CHANNEL_COLORMAPS)
UNCERTAINTY_LEGEND = (
    "The '· std' layers (hidden) show the spread of the posterior samples, rescaled by "
    "the model's calibration where it has one: a guide to how large the split's error is, "
    "in the structure's intensity units."
)
_PLOT_EVERY_S = 0.5


TAG = "split"  # in result layer names: "<source> split <channel>"


@dataclass(kw_only=True)
class _Job(Job):
    train_layers: tuple = ()  # names of the training layers (train)
    nonnegative: bool = False  # the input has no negative values (nor have the results)
    val_gains: dict = field(default_factory=dict)  # structure -> gains (dB) per validation
    validated: int | None = None  # epoch of the last validation plotted
    best_model: Any = None  # builds the best model so far (kept on Cancel)


class SplitWidget(EngineDock):
    """Split one noisy superimposed image into 2 to 4 denoised structures."""

    engine_name = "denoiSplit"
    docs_anchor = "split-denoisplit"

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent=None):
        super().__init__(napari_viewer, parent)
        from ..denoisplit import PredictConfig, TrainConfig

        self.model = None
        self.model_path: Path | None = None
        self._results: dict[str, Any] = {}
        devices = ["auto", *available_devices()]

        # Split tab
        self.image_picker = layer_picker(napari_viewer, Image, "image")
        # The split's controls from PredictConfig's declarations (as `duet split predict`'s
        # options), the training's from TrainConfig's (as `duet split train`'s).
        P, T = PredictConfig, TrainConfig
        self.samples = param_control(P, "samples", max=1000)
        self.tile = param_control(P, "tile", max=8192)
        self.batch_size = param_control(P, "batch_size", max=4096)
        self.predict_controls = {w.param_name: w for w in (self.samples, self.tile,
                                                           self.batch_size)}
        self.keep_samples = CheckBox(text="add posterior samples as layers", value=True)
        self.device = param_control(P, "device", choices=devices)
        self.threads = SpinBox(label="CPU threads",
                               value=resolve_threads("auto", napari_open=True),
                               min=1, max=max_threads())
        self.load_btn = QPushButton("Load model…")
        self.split_btn = QPushButton("Split")
        self.split_btn.setEnabled(False)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.calib_btn = QPushButton("Calibration plot")
        self.nm_btn = QPushButton("Noise-model plots")
        for b in (self.calib_btn, self.nm_btn):
            b.setEnabled(False)
        self.model_info = QLabel("No model loaded.")
        self.model_info.setWordWrap(True)
        self.legend = QLabel(UNCERTAINTY_LEGEND)
        self.legend.setWordWrap(True)

        # Train tab
        self.n_structures = SpinBox(label="structures", value=2, min=2, max=MAX_STRUCTURES)
        self.n_structures.tooltip = "How many structures the image is split into (2 to 4)"
        self.train_pickers = [layer_picker(napari_viewer, Image, f"structure {chr(65 + c)}")
                              for c in range(MAX_STRUCTURES)]
        self.train_a, self.train_b = self.train_pickers[:2]
        self.lateral_context = CheckBox(text="lateral context (coarser context inputs)",
                                        value=False)
        self.lateral_context.tooltip = (
            "Feed the network two lower-resolution views around each patch (μSplit's lateral "
            "contextualisation); slower per step.")
        self.net_config = ComboBox(label="network", choices=["small", "default"], value="small")
        # Training ends when the validation stops improving, at the step cap from the
        # data size, or after 9 minutes on a CPU (TrainConfig's defaults).
        self.epochs = param_control(T, "epochs", max=100000)
        self.max_minutes = param_control(T, "max_minutes", auto_text="auto (9 on a CPU)",
                                         max=100000)
        self.patch_size = param_control(T, "patch_size", min=16, max=1024, step=16)
        self.train_batch = param_control(T, "batch_size", max=1024)
        self.train_device = param_control(T, "device", choices=devices)
        self.train_threads = SpinBox(label="CPU threads", value=self.threads.value,
                                     min=1, max=max_threads())
        self.seed = param_control(T, "seed")
        self.bootstrap = ComboBox(label="noise models", value="noise2fast", choices=[
            ("bootstrap with Noise2Fast", "noise2fast"),
            ("bootstrap with smoothing (fast)", "smooth")])
        self.bootstrap.tooltip = ("Noise models are fitted to (denoised, noisy) pairs of the "
                                  "training layers; Noise2Fast gives better signal estimates.")
        self.train_btn = QPushButton("Train")
        self.train_cancel_btn = QPushButton("Cancel")
        self.train_cancel_btn.setEnabled(False)
        self.save_btn = QPushButton("Save model…")
        self.save_btn.setEnabled(False)
        self.command = QLineEdit()
        self.command.setReadOnly(True)
        self.command.setToolTip("The same training on the command line (e.g. on a GPU server)")
        self.plot = CurvePlot("Training losses", "loss", xlabel="logged step")
        self.val_plot = CurvePlot("Validation: PSNR gain over the constant split", "dB",
                                  xlabel="epoch")
        self.learned_info = QLabel("")
        self.learned_info.setWordWrap(True)

        # Save/Load parameters (the dock's shared buttons): the training controls by
        # TrainConfig field; the file is what `duet split train --config FILE.json` reads.
        self.param_class = TrainConfig
        self.param_controls = {
            "epochs": self.epochs, "max_minutes": self.max_minutes,
            "patch_size": self.patch_size, "batch_size": self.train_batch,
            "device": self.train_device, "seed": self.seed}
        self.save_params_btn, self.load_params_btn = self.param_buttons()

        self.save_results_btn = QPushButton("Save results…")
        self.save_results_btn.setToolTip(
            "Write the last split into a folder as 'duet split predict' does: mmse.tif, "
            "std.tif (a.tif, b.tif, std_a.tif, std_b.tif for two structures), samples.tif, "
            "report.json")
        self.save_results_btn.setEnabled(False)
        self.last_result = None
        self.status.setText("Load a model to split images, or train one in the Train tab.")
        self._tooltips()
        self._build_layout()

        self.load_btn.clicked.connect(self._load_dialog)
        self.save_results_btn.clicked.connect(self._save_results_dialog)
        self.split_btn.clicked.connect(self.split)
        self.cancel_btn.clicked.connect(self.cancel)
        self.train_cancel_btn.clicked.connect(self.cancel)
        self.calib_btn.clicked.connect(lambda: self._show_png(self.calibration_png()))
        self.nm_btn.clicked.connect(lambda: [self._show_png(p) for p in self.noise_model_pngs()])
        self.train_btn.clicked.connect(self.train)
        self.save_btn.clicked.connect(lambda: self.save_with_dialog(
            "Save denoiSplit model", "split.duet", "napari-duet model (*.duet)",
            self.save_model, "Save model"))
        for w in (*self.train_pickers, self.n_structures, self.net_config, self.epochs,
                  self.max_minutes, self.patch_size, self.train_batch, self.seed,
                  self.train_device, self.lateral_context, self.bootstrap):
            w.changed.connect(self._update_command)
        self.n_structures.changed.connect(self._on_n_structures)
        self._on_n_structures()

    def _tooltips(self):

        self.image_picker.tooltip = ("The superimposed image to split (one channel: 2D, or a "
                                     "stack split frame by frame).")
        self.keep_samples.tooltip = ("Add the posterior samples (a layer with a sample "
                                     "slider) and the difference of two samples, which shows "
                                     "where the split is ambiguous.")
        self.threads.tooltip = "torch CPU threads; the default leaves napari a core."
        self.train_threads.tooltip = self.threads.tooltip
        self.load_btn.setToolTip("Load a .duet model (or a bioimage.io zip made from one)")
        self.split_btn.setToolTip("Split the chosen image into its structures")
        self.cancel_btn.setToolTip("Stop the split or the training")
        self.train_cancel_btn.setToolTip("Stop the training; the best model so far is kept")
        self.calib_btn.setToolTip("How the model's std compares with its real error on "
                                  "validation data (RMV against RMSE)")
        self.nm_btn.setToolTip("The noise models: how noisy each structure's pixels are at "
                               "each signal level")
        self.train_btn.setToolTip("Train a model from one layer per structure")
        self.save_btn.setToolTip("Write the current model to a .duet file")
        for c, picker in enumerate(self.train_pickers):
            picker.tooltip = (f"A noisy image of structure {chr(65 + c)} alone (the same "
                              "field of view or others, same microscope)")
        self.net_config.tooltip = ("Network size: small trains fast on a CPU; default is the "
                                   "paper's (for a GPU).")

    def _build_layout(self):
        tabs = QTabWidget()
        split = QWidget()
        s = QVBoxLayout(split)
        mbox = QGroupBox("Model")
        mrow = QVBoxLayout(mbox)
        buttons = QHBoxLayout()
        buttons.addWidget(self.load_btn)
        buttons.addWidget(self.calib_btn)
        buttons.addWidget(self.nm_btn)
        mrow.addLayout(buttons)
        mrow.addWidget(self.model_info)
        s.addWidget(mbox)
        form = QFormLayout()
        form.addRow("image", self.image_picker.native)
        form.addRow(self.samples.label, self.samples.native)
        form.addRow(self.keep_samples.native)
        self.advanced = Collapsible("Advanced")
        for w in (self.tile, self.batch_size, self.device, self.threads):
            self.advanced.form.addRow(w.label, w.native)
        form.addRow(self.advanced)
        s.addLayout(form)
        run = QHBoxLayout()
        run.addWidget(self.split_btn)
        run.addWidget(self.cancel_btn)
        run.addWidget(self.save_results_btn)
        s.addLayout(run)
        s.addWidget(self.legend)
        s.addStretch(1)
        tabs.addTab(split, "Split")

        train = QWidget()
        t = QVBoxLayout(train)
        tform = QFormLayout()
        tform.addRow(self.n_structures.label, self.n_structures.native)
        self._picker_labels = []
        for c, picker in enumerate(self.train_pickers):
            label = QLabel(f"structure {chr(65 + c)}")
            self._picker_labels.append(label)
            tform.addRow(label, picker.native)
        for w in (self.net_config, self.epochs, self.max_minutes):
            tform.addRow(w.label, w.native)
        self.train_advanced = Collapsible("Advanced")
        for w in (self.patch_size, self.train_batch, self.train_device, self.train_threads,
                  self.seed, self.bootstrap):
            self.train_advanced.form.addRow(w.label, w.native)
        self.train_advanced.form.addRow(self.lateral_context.native)
        tform.addRow(self.train_advanced)
        t.addLayout(tform)
        trow = QHBoxLayout()
        trow.addWidget(self.train_btn)
        trow.addWidget(self.train_cancel_btn)
        trow.addWidget(self.save_btn)
        t.addLayout(trow)
        prow = QHBoxLayout()
        prow.addWidget(self.save_params_btn)
        prow.addWidget(self.load_params_btn)
        t.addLayout(prow)
        t.addWidget(QLabel("Command line equivalent:"))
        t.addWidget(self.command)
        t.addWidget(self.plot)
        t.addWidget(self.val_plot)
        t.addWidget(self.learned_info)
        t.addStretch(1)
        tabs.addTab(train, "Train")
        self.tabs = tabs

        layout = self.scroll_layout()
        layout.addWidget(tabs)

    # ------------------------------------------------------------------ models
    def load_model(self, path: str | Path) -> bool:
        """Load a denoiSplit model; a bad file gives a notification and changes nothing."""
        from ..denoisplit import SplitModel

        model = self.load_model_file(SplitModel.load, path, self.device.value)
        if model is None:
            return False
        self._set_model(model, Path(path))
        return True

    def _set_model(self, model, path: Path | None):
        self.model, self.model_path = model, path
        meta = model.metadata()
        names = " / ".join(meta["channel_names"])
        shape = meta.get("training_data_shape")
        lc = meta.get("lateral_context") or 0
        lines = [
            f"<b>{path.name if path else 'trained in this session'}</b>: "
            f"{meta['n_channels']} channels {names}",
            f"trained on {shape if shape else 'unknown'} pixels, patch {meta['patch_size']}"
            + (f", lateral context ({lc} coarser inputs)" if lc else ""),
            "noise models: " + ("yes" if meta["noise_models"] else "no (Gaussian likelihood)"),
            calibration_line(getattr(model, "calibration", None), meta["channel_names"]),
        ]
        learned = learned_text((meta.get("training") or {}).get("validation", {}).get(
            "psnr_gain_db"))
        if learned:
            lines.append(learned)
        worse = split_worse_line(getattr(model, "calibration", None), meta["channel_names"])
        if worse:
            lines.append(worse)
        self.model_info.setText("<br>".join(lines))
        _, detail = calibration_state(getattr(model, "calibration", None),
                                      meta["channel_names"])
        self.legend.setText(f"{UNCERTAINTY_LEGEND} This model: {detail}.")
        self.calib_btn.setEnabled(bool(meta["calibration"]))
        self.nm_btn.setEnabled(bool(meta["noise_models"]))
        self.update_controls(self.running)

    def save_model(self, path: str | Path) -> Path:
        if self.model is None:
            raise DuetInputError("no model to save: train or load one first")
        out = self.model.save(path)
        self.model_path = Path(out)
        return out

    def calibration_png(self) -> Path | None:
        """Write the model's RMV-vs-RMSE plot to a temporary PNG."""
        from ..denoisplit import calibration_plot

        cal = getattr(self.model, "calibration", None)
        if not cal or not cal.get("stats_after"):
            self.report(DuetInputError("this model has no calibration data"))
            return None
        out = Path(tempfile.mkdtemp(prefix="duet-")) / "calibration.png"
        return calibration_plot(cal["stats_after"], out, tuple(self.model.channel_names),
                                title="Calibration (RMSE vs RMV)")

    def noise_model_pngs(self) -> list[Path]:
        nms = getattr(self.model, "noise_models", None) or []
        tmp = Path(tempfile.mkdtemp(prefix="duet-"))
        return [nm.plot(tmp / f"noise_model_{name}.png")
                for nm, name in zip(nms, self.model.channel_names, strict=False)]

    def _show_png(self, path: Path | None):
        if path is None:
            return
        dialog = QDialog(self)
        dialog.setWindowTitle(path.stem.replace("_", " "))
        label = QLabel()
        label.setPixmap(QPixmap(str(path)))
        label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        QVBoxLayout(dialog).addWidget(label)
        dialog.show()

    def _load_dialog(self):
        path = self.ask_open_path("Load denoiSplit model", MODEL_FILTER)
        if path:
            self.load_model(path)

    # -------------------------------------------------------------------- split
    def split(self):
        """Split the chosen layer in a worker (frame by frame for stacks)."""
        if self.running:
            return
        layer = self.image_picker.value
        try:
            if self.model is None:
                raise DuetInputError("load or train a model first")
            if layer is None:
                raise DuetInputError("choose an image layer first")
            if layer.rgb:
                raise DuetInputError(f"{layer.name} is RGB: split a single-channel image")
            data = layer_data(layer)
            if len(data.shape) not in (2, 3):
                raise DuetInputError(
                    f"{layer.name} has {len(data.shape)} dimensions: use a 2D image or a stack")
            if data_nbytes(data) > self.large_layer_bytes:
                raise DuetInputError(
                    f"{layer.name} is {data_nbytes(data) / 2**30:.1f} GiB: splitting works in "
                    "memory; split a crop, or use 'duet split predict' on the command line")
            data = np.asarray(data)
        except Exception as exc:
            self.report(exc, "Split")
            return
        self.status.setText(f"Splitting {layer.name}…")
        self.start(
            _Job(kind="split", source=SourceInfo.of(layer),
                 nonnegative=bool(np.nanmin(data) >= 0)), self.model.iter_predict, data,
            **self._predict_values(), return_samples=self.keep_samples.value,
            threads=self.threads.value, desc=f"denoiSplit split {layer.name}",
        )

    def _predict_values(self) -> dict:
        """samples, tile and batch size as the controls show them (0: None, automatic)."""
        from ..denoisplit import PredictConfig

        return control_values(PredictConfig, self.predict_controls)

    def update_controls(self, running: bool):
        has_model = self.model is not None
        self.split_btn.setEnabled(not running and has_model)
        self.load_btn.setEnabled(not running)
        self.train_btn.setEnabled(not running)
        self.save_btn.setEnabled(not running and has_model)
        self.save_results_btn.setEnabled(not running and self.last_result is not None)
        self.cancel_btn.setEnabled(running)
        self.train_cancel_btn.setEnabled(running)

    def show_progress(self, job: _Job, p):
        if job.kind == "split":
            self.status.setText(f"Split: {p.done}/{p.total} tiles, {p.elapsed:.0f} s")
            return
        stage = getattr(p, "phase", None) or getattr(p, "stage", "")
        if stage != "train":  # noise models before the epochs, calibration after them
            what = {"noise_model": "fitting noise models",
                    "calibrate": "calibrating the uncertainty"}.get(stage, stage)
            self.status.setText(f"{what}, {p.elapsed:.0f} s")
            return
        for k, v in p.losses.items():
            job.losses.setdefault(k, []).append(v)
        if getattr(p, "best_model", None) is not None:
            job.best_model = p.best_model
        new_val = p.val_gain_db and p.validated_epoch != job.validated
        if new_val:  # one point per validation (every epoch), plotted at once
            job.validated = p.validated_epoch
            for name, g in p.val_gain_db.items():
                job.val_gains.setdefault(name, []).append(g)
            self.val_plot.plot(job.val_gains)
            self.learned_info.setText(learned_text(p.val_gain_db, final=False))
        now = time.perf_counter()
        if now - job.last_plot > _PLOT_EVERY_S:
            job.last_plot = now
            self.plot.plot(job.losses, xlabel="logged step")
            val = f", validation {p.val_loss:.4g}" if p.val_loss is not None else ""
            eta = f", {eta_text(p.eta)}" if p.eta else ""
            self.status.setText(f"Training: step {p.done}/{p.total} (epoch {p.epoch}, "
                                f"{p.steps_per_epoch} steps each){val}{eta}")

    def fraction_of(self, job: _Job, p) -> float | None:
        stage = getattr(p, "phase", None) or getattr(p, "stage", "")
        if job.kind == "train" and stage == "calibrate":
            return 1.0
        if job.kind == "train" and stage != "train":
            return None  # noise models: no count, a busy bar
        return super().fraction_of(job, p)

    def show_result(self, job: _Job, result):
        if job.kind == "train":
            self.plot.plot(job.losses, xlabel="logged step")  # the last, unthrottled
            model = getattr(result, "model", result)
            self._set_model(model, None)
            gains = (model.training.get("validation") or {}).get("psnr_gain_db")
            self.learned_info.setText(learned_text(gains))
            show_info("denoiSplit training finished: the model is ready to split")
            self.status.setText(f"Trained in {job.seconds:.0f} s.")
            return
        self.last_result = result
        self._show_split(job, result)
        names = self.model.channel_names
        _, detail = calibration_state(getattr(self.model, "calibration", None), names)
        if not result.calibrated:
            detail = "std not calibrated"
        self.status.setText(f"Split {job.source.name} in {job.seconds:.1f} s; uncertainty: "
                            f"{detail}.")

    def save_results(self, folder: str | Path) -> list[Path]:
        """Write the last split into ``folder`` with ``duet split predict``'s file names."""
        if self.last_result is None:
            raise DuetInputError("no split to save: split an image first")
        extra = {"model": str(self.model_path) if self.model_path else None,
                 "model_metadata": self.model.metadata() if self.model is not None else None}
        return self.last_result.save(folder, report=extra)

    def _save_results_dialog(self):
        self.save_results_dialog("Save the split into")

    def after_cancel(self, job: _Job) -> None:
        if job.kind != "train" or job.best_model is None:
            super().after_cancel(job)
            return
        # Cancel keeps the best model so far (by validation), uncalibrated.
        model = job.best_model()
        self._set_model(model, None)
        val = model.training.get("validation") or {}
        self.learned_info.setText(learned_text(val.get("psnr_gain_db")))
        self.status.setText(f"Cancelled: kept the best model so far (epoch "
                            f"{model.training.get('best_epoch')}, std not calibrated).")

    def _show_split(self, job: _Job, result):
        n_before = len(self.viewer.layers)
        names = self.model.channel_names
        src = job.source
        added = {}
        for c in range(result.mean.shape[0]):
            cmap = CHANNEL_COLORMAPS[c % len(CHANNEL_COLORMAPS)]
            # What first, short ("puncta · std"); the source is in metadata and tooltip.
            base = result_name(src.name, names[c])
            mean = _nonneg(result.mean[c], job)
            added[base] = self._put(f"{base} · split", mean, src, colormap=cmap,
                                    blending="additive")
            std = self._put(f"{base} · std", result.std[c], src, colormap="magma",
                            blending="additive", opacity=0.6, visible=False)
            std.metadata["description"] = self.legend.text()
            if result.samples is not None:
                smp = result.samples[:, c]
                self._put(f"{base} · samples", _nonneg(smp, job), src, colormap=cmap,
                          visible=False)
                if smp.shape[0] > 1:
                    diff = smp[0] - smp[1]
                    lim = float(np.abs(diff).max()) or 1.0
                    self._put(f"{base} · sample diff", diff, src, colormap="PiYG",
                              contrast_limits=(-lim, lim), visible=False)
        if len(self.viewer.layers) != n_before:
            self.viewer.reset_view()  # the sample axis adds a slider; frame the new layers
        return added

    def _put(self, name: str, data, source: SourceInfo, **kwargs):
        existing = self._results.get(name)
        if existing is not None and (existing not in self.viewer.layers
                                     or existing.data.shape != data.shape):
            if existing in self.viewer.layers:
                self.viewer.layers.remove(existing)
            existing = None
        layer = set_or_add_layer(self.viewer, existing, data, kind="image", name=name,
                                 source=source, contrast="contrast_limits" not in kwargs,
                                 **kwargs)
        self._results[name] = layer
        return layer

    # -------------------------------------------------------------------- train
    def _on_n_structures(self, *_):
        """Show as many layer pickers as structures."""
        n = self.n_structures.value
        for c, (picker, label) in enumerate(zip(self.train_pickers, self._picker_labels,
                                                strict=True)):
            picker.native.setVisible(c < n)
            label.setVisible(c < n)
        self._update_command()

    def train_layers(self) -> list:
        """The chosen layer of each structure, in order (None where none is chosen)."""
        return [p.value for p in self.train_pickers[: self.n_structures.value]]

    def train_configs(self):
        from ..denoisplit import SplitConfig

        name = "small" if self.net_config.value == "small" else "default"
        net = SplitConfig.preset(
            name, n_channels=self.n_structures.value,
            multiscale_count=self._lateral_count(name) if self.lateral_context.value else 1)
        return net, self._train_config()

    @staticmethod
    def _lateral_count(name: str) -> int:
        from ..denoisplit import SplitConfig

        return min(3, SplitConfig.preset(name).n_levels)

    def _train_config(self):
        from ..denoisplit import TrainConfig

        # "no limit" (0) in max minutes is None, as control_values reads every "auto".
        return TrainConfig(**control_values(TrainConfig, self.param_controls))

    def param_config(self):
        """The training parameters (TrainConfig) that Save parameters… writes."""
        return self._train_config()

    def param_sections(self) -> dict:
        """The network (preset and lateral context) beside the training parameters, so
        that ``duet split train --config FILE`` trains the same network."""
        return {"network": self.train_configs()[0].params_section()}

    def apply_param_sections(self, sections: dict):
        from ..denoisplit import SplitConfig

        if "network" not in sections:  # an older file or a plain object: keep the network
            return lambda: None
        net = SplitConfig.from_params_section(sections["network"],
                                              n_channels=self.n_structures.value)
        lateral = net.multiscale_count > 1
        if lateral and net.multiscale_count != self._lateral_count(net.preset_name()):
            raise DuetInputError(f"lateral context of {net.multiscale_count} scales is not "
                                 f"available here (on: {self._lateral_count(net.preset_name())})")

        def show():
            self.net_config.value = net.preset_name()
            self.lateral_context.value = lateral

        return show

    def train(self):
        """Train on the chosen layers (one per structure) in a worker."""
        if self.running:
            return
        from ..denoisplit import iter_train

        layers = self.train_layers()
        letters = [chr(65 + c) for c in range(len(layers))]
        try:
            missing = [x for x, layer in zip(letters, layers, strict=True) if layer is None]
            if missing:
                raise DuetInputError("choose the layer of structure " + ", ".join(missing))
            if len({id(layer) for layer in layers}) != len(layers):
                raise DuetInputError("each structure needs a different layer")
            net, tc = self.train_configs()
            data = [layer_data(layer) for layer in layers]
            for x, d in zip(letters[1:], data[1:], strict=True):
                if d.shape != data[0].shape:
                    raise DuetInputError(f"all structures must have the same shape: A is "
                                         f"{data[0].shape}, {x} is {d.shape}")
            if sum(data_nbytes(d) for d in data) > self.large_layer_bytes:
                raise DuetInputError("the training layers exceed the in-memory limit: train "
                                     "on crops, or with the command line below")
            data = [np.asarray(d) for d in data]
        except Exception as exc:
            self.report(exc, "denoiSplit training")
            return
        warm_up_torch()
        self.plot.plot({})
        self.val_plot.plot({})
        self.learned_info.setText("")
        self.status.setText("Training…")
        self.start(_Job(kind="train", source=SourceInfo.of(layers[0]),
                        train_layers=tuple(layer.name for layer in layers)),
                   iter_train, data, net, tc, channel_names=tuple(ly.name for ly in layers),
                   bootstrap_kwargs=self.bootstrap_kwargs(), threads=self.train_threads.value,
                   desc="denoiSplit train")

    def bootstrap_kwargs(self) -> dict:
        """How the noise models are bootstrapped from the training layers."""
        return {"denoiser": self.bootstrap.value}

    def command_line(self) -> list[str]:
        """``duet split train`` arguments for the training set up in the Train tab, made
        by the same mapping the command parses (channel files named after the layers)."""
        from ..denoisplit._command import command_line

        files = [f"{layer.name if layer else chr(65 + c)}.tif"
                 for c, layer in enumerate(self.train_layers())]
        net, tc = self.train_configs()
        return command_line(net, tc, files, "model.duet",
                            denoiser=self.bootstrap_kwargs().get("denoiser", "auto"))

    def _update_command(self, *_):
        if not hasattr(self, "_picker_labels"):
            return
        try:
            self.command.setText(shlex.join(self.command_line()))
        except Exception as exc:  # a setting the command line cannot express
            self.command.setText(f"(no command-line equivalent: {exc})")


def learned_text(gains: dict | None, final: bool = True) -> str:
    """The structures learned and not learned, from validation gains over the constant
    split (``"actin: +2.1 dB; microtubules: not learned, +0.0 dB: give more fields or
    more training time"``)."""
    from ..denoisplit import learning_summary

    line = learning_summary(gains)
    if not line:
        return ""
    what = "Validation PSNR over the constant split" + ("" if final else " (so far)")
    if "not learned" in line and final:
        return f"{what}: <b>{line}</b>"
    return f"{what}: {line}"


#: Expected normalised calibration error above which the std is called poorly calibrated.
ENCE_POOR = 0.25


def calibration_state(cal: dict | None, names) -> tuple[str, str]:
    """The model's uncertainty calibration in one wording for the status, the model panel
    and the legend: ``(quality, detail)``, quality "good", "poor", "unmeasured" or "none".

    Only what was measured is said: the validation ENCE (expected normalised
    calibration error), never a coverage such as "68 % of errors are smaller".
    """
    if not cal:
        return "none", "std not calibrated"
    ences = [st.get("ence") if isinstance(st, dict) else None
             for st in cal.get("stats_after") or []]
    known = [(n, float(e)) for n, e in zip(names, ences, strict=False) if e is not None]
    if not known:
        return "unmeasured", "std calibrated, quality not measured"
    bad = [(n, e) for n, e in known if not e <= ENCE_POOR]
    if bad:
        which = ", ".join(f"{n} {e:.2f}" for n, e in bad)
        return "poor", (f"std rescaled, but its calibration is poor (ENCE {which}; good is "
                        f"below {ENCE_POOR}): a rough guide only")
    worst = max(e for _, e in known)
    return "good", f"std matches the error on validation data (ENCE {worst:.2f})"


def calibration_line(cal: dict | None, names) -> str:
    """What the model's calibration says about its std (the model panel's line)."""
    quality, detail = calibration_state(cal, names)
    if quality == "none":
        return "calibration: no, std is not calibrated"
    if quality == "poor":
        return "calibration: <b>poor</b> " + detail.replace(
            "std rescaled, but its calibration is poor ", "")
    if quality == "unmeasured":
        return "calibration: yes (no validation statistics stored)"
    return f"calibration: yes, {detail}"


def _nonneg(arr: np.ndarray, job) -> np.ndarray:
    """A split of a non-negative image has no negative intensities."""
    return np.maximum(arr, 0) if getattr(job, "nonnegative", False) else arr


def split_worse_line(cal: dict | None, names) -> str:
    """A warning when the model's channels are no closer to their targets than the naive
    split of the input (by intensity share), else an empty string."""
    if not cal or not cal.get("rmse") or not cal.get("naive_rmse"):
        return ""
    worse = [n for n, r, b in zip(names, cal["rmse"], cal["naive_rmse"], strict=False)
             if not r < b]
    if not worse:
        return ""
    return ("<b>warning</b>: on validation data " + ", ".join(worse) +
            " split no better than the input divided by intensity share")
