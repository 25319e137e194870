"""Self2Seg dock widget: seed boxes, live alternations, cancel.

The engine (:func:`napari_duet.self2seg.iter_self2seg_stack`, plane by plane)
runs in a napari thread worker; each yielded alternation updates the result
layers in place, and the engine's progress events within an alternation
(expert training steps, the mask update) move the progress bar and let Cancel
act within a fraction of a second.
Everything the run needs (pixels, regions, scale) is captured when Run is
pressed, so selecting or deleting layers meanwhile cannot redirect results.
Large layers (dask/zarr-backed, multiscale, over the size limit) run plane by
plane (:func:`napari_duet.self2seg._chunked.iter_self2seg_into`) into a zarr store
beside the source, shown lazily as each plane is finished.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ..core.devices import available_devices, max_threads, resolve_threads
from ..core.errors import DuetInputError
from ..core.io import write_json, write_tiff
from ..core.versions import versions
from ..self2seg._engine import Self2SegProgress
from ..self2seg._regions import validate_regions
from ._common import (
    StagedUpdates,
    layer_picker,
    paint_pending,
    result_name,
    set_or_add_layer,
    warm_up_torch,
)
from ._curves import CurvePlot
from ._dock import (
    Collapsible,
    EngineDock,
    Job,
    SourceInfo,
    control_values,
    declare,
    is_large,
    layer_data,
    param_control,
)
from ._lazy import (
    mark_plane_done,
    open_plane_store,
    planes_done,
    run_key,
    show_lazy,
)
from ._seeds import ROLE_COLORS, ROLE_FEATURE, role_features, role_names, seeds_to_regions

if TYPE_CHECKING:
    import napari

SCOPES = ("current slice", "all slices")


TAG = "S2S"  # in result layer names: "<source> S2S mask"


@dataclass(kw_only=True)
class _Job(Job):
    """What one Run works on, captured at start."""

    full_shape: tuple  # source shape without the RGB channel axis
    stack: Any  # what the engine runs on: the source's data (all slices) or one plane
    regions: np.ndarray | None  # seeds for ``stack`` (per plane for all slices) or None
    indices: list  # source index (leading axes) of each plane the engine runs, in order
    config: Any
    n_classes: int
    results: dict = field(default_factory=dict)  # layer refs
    reports: dict = field(default_factory=dict)  # lead_index -> report
    last_alternation: int = 0
    states: int = 0  # alternation states received
    new_layers: list = field(default_factory=list)  # result layers this run added
    regions_by_plane: dict = field(default_factory=dict)  # leading index -> seeds
    on_disk: bool = False  # a large layer: plane by plane into a zarr store
    run_key: str = ""  # settings and seeds of an on-disk run (finished planes are kept)
    kept: list = field(default_factory=list)  # planes an interrupted run had finished
    store: Path | None = None
    planes_done: int = 0
    limits: dict = field(default_factory=dict)  # contrast of on-disk image layers so far
    checks: dict = field(default_factory=dict)  # lead_index -> the result's checks
    tables: list = field(default_factory=list)  # object tables of the finished planes
    n_objects: int = 0  # objects numbered so far (planes of a stack number on)
    nonnegative: bool = False  # the input has no negative values (nor have the results)
    # The engine's result when the run was one whole 2D image and finished: "Save
    # results…" then writes it with its own save(), as duet self2seg does.
    result: Any = None

    @property
    def source_name(self) -> str:
        return self.source.name

    def regions_of(self, idx: tuple) -> np.ndarray | None:
        """The seeds of plane ``idx`` (None: automatic start)."""
        return self.regions_by_plane.get(tuple(idx))

    def seed_image(self) -> np.ndarray | None:
        """The run's seeds as one image (for saving): a plane, or the stack's planes."""
        if not self.regions_by_plane:
            return None
        if self.regions is not None:
            return np.asarray(self.regions, np.uint8)
        if len(self.regions_by_plane) == 1:
            return np.asarray(next(iter(self.regions_by_plane.values())), np.uint8)
        keys = sorted(self.regions_by_plane)
        return np.stack([self.regions_by_plane[k] for k in keys]).astype(np.uint8)


class Self2SegWidget(EngineDock):
    """Joint denoising and segmentation of the chosen image, seeded by shapes."""

    engine_name = "Self2Seg"
    docs_anchor = "self2seg-segment-and-denoise-together"

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent=None):
        super().__init__(napari_viewer, parent)
        from ..self2seg import Self2SegConfig

        self._results_by_source: dict[int, dict] = {}
        self._last_reports: dict | None = None

        self.image_picker = layer_picker(napari_viewer, Image, "image")
        self.seeds_picker = layer_picker(napari_viewer, Shapes, "seeds", nullable=True)
        self.seed_labels_picker = layer_picker(napari_viewer, Labels, "painted seeds",
                                               nullable=True)
        self.new_seeds_btn = QPushButton("New seeds layer")
        self.new_seeds_btn.setToolTip("Add a Shapes layer for seed boxes, ready to draw rectangles")
        self.role = ComboBox(label="new boxes are", choices=role_names(2), value="foreground")
        # The parameter controls, built from Self2SegConfig's declarations (label, tooltip,
        # bounds, choices); only what differs in the widget is given here.
        C = Self2SegConfig
        self.param_class = C
        self.n_classes = param_control(C, "n_classes", max=8)
        self.lam = param_control(C, "lam", step=0.1)
        self.max_alternations = param_control(C, "max_alternations", max=50)
        self.experts = param_control(C, "experts")
        self.expert_width = param_control(C, "expert_width", max=256)
        self.expert_steps = param_control(C, "expert_steps", max=100000)
        self.device = param_control(C, "device", choices=["auto", *available_devices()])
        self.seed = param_control(C, "seed", min=0)
        self.threads = param_control(C, "threads", min=1, max=max_threads(),
                                     value=resolve_threads("auto", napari_open=True))
        self.invert = param_control(C, "invert")
        self.noise_model = param_control(C, "noise_model")
        self.param_controls = {w.param_name: w for w in (
            self.n_classes, self.lam, self.max_alternations, self.experts, self.expert_width,
            self.expert_steps, self.device, self.seed, self.threads, self.invert,
            self.noise_model)}
        self.save_params_btn, self.load_params_btn = self.param_buttons()
        self.scope = ComboBox(label="slices", choices=list(SCOPES), value=SCOPES[0])
        self._tooltips()

        self.run_btn = QPushButton("Run")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.run_btn.setToolTip("Segment and denoise the image (the settings and seeds are "
                                "read now; changing them during the run has no effect)")
        self.cancel_btn.setToolTip("Stop at the next training step; the last finished "
                                   "alternation is kept")
        self.export_btn = QPushButton("Export report…")
        self.export_btn.setToolTip("Write the last run's report (parameters, energies, "
                                   "warnings, timings) as JSON")
        self.export_btn.setEnabled(False)
        self.save_btn = QPushButton("Save results…")
        self.save_btn.setToolTip("Write the mask, denoised image, experts, seeds and report "
                                 "of the last run into a folder (TIFF + JSON)")
        self.save_btn.setEnabled(False)
        self.status.setText("Draw foreground/background boxes, or run without seeds.")
        self.plot = CurvePlot("Energy per alternation", "energy")
        self.objects_label = QLabel("No objects yet.")
        self.objects_label.setWordWrap(True)
        self.csv_btn = QPushButton("Export CSV…")
        self.csv_btn.setToolTip("Write the object table (label, area, mean intensity on the "
                                "denoised image, centroid) as CSV")
        self.csv_btn.setEnabled(False)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["object", "area (px)", "mean"])
        self.table.setToolTip("One row per object of the last run (the 'S2S objects' layer); "
                              "mean intensity is measured on the denoised image")
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        # Columns share the panel's width (no horizontal scrolling in a narrow dock).
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.table.setMaximumHeight(150)
        self.objects: dict | None = None  # the last run's object table (column -> array)
        self._updates = StagedUpdates()

        self._build_layout()
        self.new_seeds_btn.clicked.connect(self.new_seeds_layer)
        self.role.changed.connect(self._apply_role_default)
        self.n_classes.changed.connect(self._on_classes_changed)
        self.seeds_picker.changed.connect(lambda *_: self._apply_role_default())
        self.image_picker.changed.connect(lambda *_: self._update_scope())
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        self.export_btn.clicked.connect(self._export_dialog)
        self.save_btn.clicked.connect(self._save_dialog)
        self.csv_btn.clicked.connect(self._csv_dialog)
        self._update_scope()

    # ------------------------------------------------------------------ layout
    def _build_layout(self):
        layout = self.scroll_layout()
        data = QGroupBox("Data and seeds")
        form = QFormLayout(data)
        form.addRow("image", self.image_picker.native)
        form.addRow("slices", self.scope.native)
        form.addRow("seeds", self.seeds_picker.native)
        form.addRow("painted seeds", self.seed_labels_picker.native)
        form.addRow(self.new_seeds_btn)
        form.addRow("new boxes are", self.role.native)
        layout.addWidget(data)
        params = QGroupBox("Parameters")
        pform = QFormLayout(params)
        for w in (self.n_classes, self.lam, self.max_alternations, self.experts):
            pform.addRow(w.label, w.native)
        pform.addRow(self.invert.native)
        self.advanced = Collapsible("Advanced")
        for w in (self.noise_model, self.expert_width, self.expert_steps, self.device,
                  self.seed, self.threads):
            self.advanced.form.addRow(w.label, w.native)
        self.advanced.form.addRow("large-layer results in", self.output_folder)
        pform.addRow(self.advanced)
        layout.addWidget(params)
        buttons = QGridLayout()
        buttons.addWidget(self.run_btn, 0, 0)
        buttons.addWidget(self.cancel_btn, 0, 1)
        buttons.addWidget(self.export_btn, 1, 0)
        buttons.addWidget(self.save_btn, 1, 1)
        buttons.addWidget(self.save_params_btn, 2, 0)
        buttons.addWidget(self.load_params_btn, 2, 1)
        layout.addLayout(buttons)
        objects = QGroupBox("Objects")
        oform = QVBoxLayout(objects)
        oform.addWidget(self.objects_label)
        oform.addWidget(self.table)
        oform.addWidget(self.csv_btn)
        layout.addWidget(objects)
        layout.addWidget(self.plot)
        layout.addStretch(1)

    def _tooltips(self):
        from ..self2seg import Self2SegConfig as C

        declare(self.threads, C, "threads", extra="Here the default leaves napari a core.")
        self.invert.text = "dark objects (no seeds)"
        self.image_picker.tooltip = "The image to segment and denoise (2D, a stack, or RGB)."
        self.seeds_picker.tooltip = ("Shapes layer with seed boxes: each shape's role "
                                     "(foreground, background, class k) is its region; none: "
                                     "automatic start.")
        self.scope.tooltip = "For stacks: segment the slice on screen, or every slice."
        self.role.tooltip = "Role of the next boxes drawn on the seeds layer."
        self.seed_labels_picker.tooltip = (
            "A Labels layer painted with seeds: label 1 = background, 2 = foreground "
            "(k + 1 = class k); 0 = unlabelled. Boxes on the seeds layer are painted over it.")

    # ------------------------------------------------------------------- seeds
    def new_seeds_layer(self) -> Shapes:
        """Add a Shapes layer for seeds in rectangle mode, with the image's dimensions
        (boxes drawn on a slice of a stack seed that slice), scale and translate."""
        image = self.image_picker.value
        k = self.n_classes.value
        kwargs = {"ndim": 2}
        if image is not None:
            kwargs = {"ndim": image.ndim, "scale": tuple(image.scale),
                      "translate": tuple(image.translate)}
        layer = self.viewer.add_shapes(
            name="seeds",
            features=role_features(k),
            edge_color=ROLE_FEATURE,
            edge_color_cycle=ROLE_COLORS[:k],
            face_color="transparent",
            edge_width=2,
            **kwargs,
        )
        self.seeds_picker.reset_choices()
        self.seeds_picker.value = layer
        self._apply_role_default()
        layer.mode = "add_rectangle"
        self.viewer.layers.selection.active = layer
        return layer

    def _apply_role_default(self, *_):
        layer = self.seeds_picker.value
        if layer is None or self.role.value is None:
            return
        if ROLE_FEATURE not in layer.features or not hasattr(
            layer.features[ROLE_FEATURE], "cat"
        ):
            self._retag(layer, self.n_classes.value)
        layer.feature_defaults = {ROLE_FEATURE: self.role.value}
        k = role_names(self.n_classes.value).index(self.role.value)
        layer.current_edge_color = ROLE_COLORS[k % len(ROLE_COLORS)]

    def _retag(self, layer: Shapes, k: int):
        roles = list(layer.features[ROLE_FEATURE]) if ROLE_FEATURE in layer.features else (
            ["foreground"] * len(layer.data))
        layer.features = role_features(k, roles)
        layer.edge_color_cycle = ROLE_COLORS[:k]
        layer.edge_color = ROLE_FEATURE
        layer.refresh_colors()

    def _on_classes_changed(self, *_):
        k = self.n_classes.value
        current = self.role.value
        self.role.choices = role_names(k)
        if current in self.role.choices:
            self.role.value = current
        layer = self.seeds_picker.value
        if layer is not None:
            self._retag(layer, k)
        self._apply_role_default()

    def _update_scope(self):
        image = self.image_picker.value
        self.scope.enabled = image is not None and image.ndim > 2

    # --------------------------------------------------------------------- run
    def config(self):
        """The engine configuration from the controls (raises DuetInputError)."""
        from ..self2seg import Self2SegConfig

        return Self2SegConfig(**control_values(Self2SegConfig, self.param_controls))

    def _lead_indices(self, image: Image) -> list[tuple[int, ...]]:
        n_lead = image.ndim - 2
        if n_lead <= 0:
            return [()]
        shape = layer_data(image).shape[:n_lead]
        if self.scope.value == "all slices":
            return list(np.ndindex(*shape))
        point = image.world_to_data(self.viewer.dims.point)
        return [tuple(int(np.clip(round(point[i]), 0, shape[i] - 1)) for i in range(n_lead))]

    def run(self):
        """Start Self2Seg on the chosen image (no-op while a run is going)."""
        if self.running:
            return
        image = self.image_picker.value
        if image is None:
            self.report(DuetInputError("choose an image layer first"))
            return
        try:
            config = self.config()
            job = self._make_job(image, config)
            if job.on_disk:
                self._prepare_store(job)
            else:
                self._prepare_results(job)
        except Exception as exc:  # bad parameters or seeds: tell the user, keep going
            self.report(exc)
            return
        if job.results is None:  # no folder chosen for the results
            self.status.setText("No folder chosen for the results: nothing was done.")
            return
        if config.experts != "constant":
            warm_up_torch()
        before = set(map(id, job.results["layers"].values()))
        # Create the result layers now (GUI work), so each alternation only swaps data.
        self._show_results(job)
        job.new_layers = [ly for ly in job.results["layers"].values() if id(ly) not in before]
        self.plot.plot({})
        where = f" into {job.store.name}" if job.on_disk else ""
        self.status.setText(f"Running Self2Seg on {job.source_name}{where}…")
        # Paint the new layers once before the worker competes for the CPU: the first
        # draw of a new layer type (shader set-up) is the longest single GUI task.
        paint_pending()
        if job.on_disk:
            from ..self2seg._chunked import iter_self2seg_into

            arrays = job.results["arrays"]
            out = {"labels": arrays["mask"], "denoised": arrays["denoised"],
                   "experts": [arrays[f"expert{i}"] for i in range(job.n_classes)]}
            self.start(job, _label_items, iter_self2seg_into, job.indices, job.stack, out,
                       job.indices, job.regions_of, job.config, rgb=job.source.rgb,
                       progress=True, threads=self.threads.value,
                       desc=f"Self2Seg {job.source_name}")
        else:
            from ..self2seg import iter_self2seg_stack

            self.start(job, _label_items, iter_self2seg_stack, job.indices, job.stack,
                       job.regions, job.config, rgb=job.source.rgb, progress=True,
                       threads=self.threads.value, desc=f"Self2Seg {job.source_name}")

    def _make_job(self, image: Image, config) -> _Job:
        source = SourceInfo.of(image)
        data = layer_data(image)
        if source.rgb and not is_large(data, self.large_layer_bytes):
            # Colour is segmented as grey, and the user is told so (issue 25).
            data = rgb_to_grey(data)
            source = dataclasses.replace(source, rgb=False, shape=tuple(data.shape))
            show_info(f"Self2Seg: {image.name} is RGB: segmented as grey "
                      "(0.299 R + 0.587 G + 0.114 B)")
        rgb = source.rgb
        full_shape = tuple(data.shape[:-1] if rgb else data.shape)
        if len(full_shape) < 2:
            raise DuetInputError(f"{image.name} is not an image (shape {data.shape})")
        yx = full_shape[-2:]
        indices = self._lead_indices(image)
        per_plane = {}
        notes: list[str] = []
        for idx in indices:
            regions, n = seeds_to_regions(
                self.seeds_picker.value, image, yx, config.n_classes, idx
            )
            notes += n
            painted = _painted_seeds(self.seed_labels_picker.value, yx, idx)
            if painted is not None:
                if regions is not None:  # boxes are drawn over the painted seeds
                    painted = np.where(regions > 0, regions, painted)
                regions = painted if painted.any() else regions
            if regions is not None:
                # Fail now, in the GUI thread, rather than after the worker started.
                validate_regions(regions, yx, config.n_classes)
                per_plane[idx] = regions
        for note in dict.fromkeys(notes):
            show_warning(f"Self2Seg: {note}")
        job = _Job(kind="run", source=source, full_shape=full_shape, stack=data,
                   regions=None, indices=indices, config=config, n_classes=config.n_classes,
                   regions_by_plane=per_plane)
        if is_large(data, self.large_layer_bytes):
            # Plane by plane from the lazy data into a zarr store on disk.
            job.on_disk = True
            return job
        job.nonnegative = bool(np.nanmin(data) >= 0)
        if len(full_shape) > 2 and self.scope.value == "all slices":
            # The whole stack; the engine reads one plane at a time, in the order of
            # ``indices`` (C order of the leading axes).  Slices without seeds start
            # automatically (all-zero seeds).
            if per_plane:
                job.regions = np.zeros(full_shape, np.uint8)
                for idx, r in per_plane.items():
                    job.regions[idx] = r
        else:
            (idx,) = indices
            job.stack = np.asarray(data[idx]) if idx else np.asarray(data)
            job.regions = per_plane.get(idx)
        return job

    def _prepare_results(self, job: _Job):
        """Reuse this source's result layers (re-run replaces them) or plan new ones."""
        previous = self._results_by_source.get(job.source.key, {})
        k = job.n_classes
        chan = (3,) if job.source.rgb else ()
        arrays = {}
        for key, shape, dtype in (
            ("mask", job.full_shape, np.uint8),
            ("denoised", job.full_shape + chan, np.float32),
            *((f"expert{i}", job.full_shape + chan, np.float32) for i in range(k)),
            ("objects", job.full_shape, np.int32),
        ):
            layer = previous.get(key)
            if (layer is not None and layer in self.viewer.layers and layer.data.shape == shape
                    and isinstance(layer.data, np.ndarray)):
                arrays[key] = np.array(layer.data, dtype=dtype, copy=True)
            else:
                arrays[key] = np.zeros(shape, dtype=dtype)
                previous.pop(key, None)
        job.results = {"layers": previous, "arrays": arrays}
        self._results_by_source[job.source.key] = previous

    def _prepare_store(self, job: _Job):
        """Results of a large layer: zarr arrays (one chunk per plane) in
        ``<image> S2S.zarr`` in the results folder, shown lazily as they fill.  A store of
        an earlier run on the same image is reused (its other planes are kept), and the
        planes a cancelled run with the same settings and seeds finished are not redone."""
        folder = self.results_folder(job.source)
        if folder is None:
            job.results = None
            return
        chan = (3,) if job.source.rgb else ()
        k = job.n_classes
        signature = {"source": str(job.source.path or job.source.name),
                     "shape": list(job.full_shape), "classes": k, "rgb": job.source.rgb}
        job.store = self.free_store(folder, f"{job.source.name} {TAG}", ".zarr", signature)
        specs = {"mask": (job.full_shape, np.uint8),
                 "denoised": (job.full_shape + chan, np.float32),
                 **{f"expert{i}": (job.full_shape + chan, np.float32) for i in range(k)}}
        arrays = open_plane_store(job.store, specs, len(job.full_shape) - 2, signature)
        # Planes an interrupted run with the same settings and seeds finished are kept.
        job.run_key = run_key(job.config.to_dict(), job.regions_by_plane, job.stack)
        done = planes_done(job.store, job.run_key)
        job.kept = [idx for idx in job.indices if tuple(idx) in done]
        job.indices = [idx for idx in job.indices if tuple(idx) not in done]
        previous = self._results_by_source.get(job.source.key, {})
        for key in list(previous):
            layer = previous[key]
            if layer not in self.viewer.layers or layer.data is not arrays.get(key):
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)
                del previous[key]
        job.results = {"layers": previous, "arrays": arrays}
        self._results_by_source[job.source.key] = previous

    def update_controls(self, running: bool):
        self.run_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        self.export_btn.setEnabled(not running and bool(self._last_reports))
        self.save_btn.setEnabled(not running and bool(self._saved_layers()))
        self.csv_btn.setEnabled(not running and bool(self.objects)
                                and len(self.objects["label"]) > 0)

    # ------------------------------------------------------------ worker events
    def fraction_of(self, job: _Job, item) -> float | None:
        plane_no, _, state, final = item
        n = max(len(job.indices), 1)
        if isinstance(state, Self2SegProgress):
            return state.fraction
        if final:
            return (plane_no + 1) / n
        return (plane_no + state.alternation / max(state.max_alternations, 1)) / n

    def show_progress(self, job: _Job, item):
        plane_no, idx, state, final = item
        where = f" (slice {idx}, {plane_no + 1}/{len(job.indices)})" if idx else ""
        if isinstance(state, Self2SegProgress):
            if state.stage == "experts":
                what = (f"training experts, step {state.done}/{state.total}"
                        if state.total > 1 else "fitting experts")
            else:
                what = "updating the mask"
            self.status.setText(f"Alternation {state.alternation}/{state.max_alternations}"
                                f"{where}: {what}, {state.elapsed:.1f} s")
            return
        job.states += 1
        energies = list(state.energies)
        if job.on_disk:  # the worker wrote the finished plane; show it
            steps = self._result_steps(job) if final else []
        else:
            arrays = job.results["arrays"]
            sl = idx if idx else ...
            arrays["mask"][sl] = state.labels
            clip = np.maximum if job.nonnegative else (lambda a, _: a)
            arrays["denoised"][sl] = clip(state.denoised, 0)
            for i in range(job.n_classes):
                arrays[f"expert{i}"][sl] = clip(state.experts[i], 0)
            if final:
                self._add_objects(job, idx, state)
            steps = self._result_steps(job)
        if final:
            if not idx and not job.on_disk:
                job.result = state
            job.reports[idx] = state.report()
            job.checks[idx] = dict(getattr(state, "checks", None) or {})
            job.planes_done += 1
            if job.on_disk:
                mark_plane_done(job.store, job.run_key, idx)
        self._updates.submit([*steps, lambda: self.plot.plot({"energy": energies})])
        if final:
            self._updates.flush()
            return
        job.last_alternation = state.alternation
        self.status.setText(
            f"Alternation {state.alternation}/{state.max_alternations}{where}: "
            f"energy {state.energy:.4g}, {state.elapsed:.1f} s"
        )

    def _add_objects(self, job: _Job, idx: tuple, result) -> None:
        """Number the plane's objects on from the earlier planes' and measure them on
        the denoised image (the instances were computed in the worker)."""
        from ..self2seg import measure_objects

        inst = np.asarray(result.instances, np.int32)
        inst = np.where(inst > 0, inst + job.n_objects, 0).astype(np.int32)
        job.results["arrays"]["objects"][idx if idx else ...] = inst
        table = measure_objects(inst, result.denoised)
        if idx:
            table = {"plane": np.full(len(table["label"]), str(list(idx))), **table}
        job.tables.append(table)
        job.n_objects = max(job.n_objects, int(inst.max(initial=0)))

    def _show_results(self, job: _Job):
        for step in self._result_steps(job):
            step()

    def _result_steps(self, job: _Job) -> list:
        """One callable per result layer, each adding or refreshing that layer."""
        layers = job.results["layers"]
        arrays = job.results["arrays"]
        names = role_names(job.n_classes)
        common: dict[str, Any] = {"source": job.source}
        common_img = dict(common, rgb=True) if job.source.rgb else dict(common, colormap="gray")

        def step(key, kind, name, **kw):
            def run():
                if job.on_disk:
                    rest = {k: v for k, v in kw.items() if k != "source"}
                    layers[key] = show_lazy(
                        self.viewer, layers.get(key), arrays[key], kind=kind, name=name,
                        placement=job.source.placement(len(job.full_shape)),
                        written=list(job.reports)[-1] if job.reports else None,
                        limits=job.limits, **rest)
                else:
                    layers[key] = set_or_add_layer(self.viewer, layers.get(key), arrays[key],
                                                   kind=kind, name=name, **kw)
            return run

        # Creation order = stacking order: denoised at the bottom, the mask on top.
        # Short names ("cells S2S mask"), so the layer list can show them whole.
        short = {"background": "bg", "foreground": "fg"}
        steps = [step("denoised", "image", result_name(job.source_name, f"{TAG} denoised"),
                      **common_img)]
        mask_visible = True
        if job.tables and not job.on_disk:  # objects shown: the class mask steps aside
            mask_visible = False
        steps += [step(f"expert{i}", "image",
                       result_name(job.source_name,
                                   f"{TAG} {short.get(names[i], names[i])} expert"),
                       visible=False, **common_img) for i in range(job.n_classes)]
        steps.append(step("mask", "labels", result_name(job.source_name, f"{TAG} mask"),
                          opacity=0.5, **common))
        if not mask_visible:
            steps.append(step("objects", "labels", result_name(job.source_name,
                                                               f"{TAG} objects"),
                              opacity=0.6, **common))

            def hide_mask():
                layer = layers.get("mask")
                if layer is not None and layer in self.viewer.layers:
                    layer.visible = False
            steps.append(hide_mask)
        return steps

    def show_result(self, job: _Job, summary):
        self._last_reports = self._collect_reports(job)
        where = f" (results in {job.store})" if job.on_disk else ""
        if job.kept:
            where += f"; {len(job.kept)} plane(s) kept from an interrupted run"
        self._show_objects(job)
        stopped = [c.get("stopped") for c in job.checks.values() if c.get("stopped")]
        why = f": {stopped[0]}" if len(stopped) == 1 else ""
        objects = f"; {job.n_objects} object(s)" if job.tables else ""
        text = (f"Done in {job.seconds:.1f} s{why}{objects}{where}." if len(job.indices) <= 1
                else f"Done: {len(job.indices)} planes in {job.seconds:.1f} s{objects}{where}.")
        warnings, hints = self._check_lines(job)
        if warnings:
            text += "\n⚠ " + "\n⚠ ".join(warnings)
            text += "".join(f"\nHint: {h}" for h in hints)
            show_warning(f"Self2Seg on {job.source_name}: {warnings[0]}"
                         + (f" Hint: {hints[0]}" if hints else ""))
        else:
            show_info(f"Self2Seg finished on {job.source_name}")
        self.status.setText(text)

    @staticmethod
    def _check_lines(job: _Job) -> tuple[list[str], list[str]]:
        """The warnings (named by plane for a stack) and distinct hints of the run."""
        warnings, hints = [], []
        for idx, chk in job.checks.items():
            where = f"slice {list(idx)}: " if idx else ""
            warnings += [f"{where}{w}" for w in chk.get("warnings", [])]
            hints += [h for h in chk.get("hints", []) if h not in hints]
        return warnings, hints

    def _show_objects(self, job: _Job) -> None:
        """Fill the object table (count, area, mean intensity on the denoised image)."""
        self.objects = None
        if job.on_disk:
            self.objects_label.setText("Objects are not counted for large layers processed "
                                       "plane by plane (use duet self2seg for labels.tif).")
        elif job.tables:
            cols = list(job.tables[0])
            self.objects = {c: np.concatenate([t[c] for t in job.tables]) for c in cols}
        self._fill_table()

    def _fill_table(self) -> None:
        table = self.objects
        self.table.setRowCount(0)
        self.csv_btn.setEnabled(bool(table) and len(table["label"]) > 0)
        if not table:
            return
        n = len(table["label"])
        area = table["area"]
        self.objects_label.setText(
            f"{n} object(s)" + (f", area {np.median(area):.0f} px (median, "
                                f"{area.min()}–{area.max()})" if n else ""))
        shown = min(n, 500)  # the CSV has them all
        self.table.setRowCount(shown)
        for r in range(shown):
            for c, value in enumerate((f"{table['label'][r]}", f"{table['area'][r]}",
                                       f"{table['mean_intensity'][r]:.4g}")):
                item = QTableWidgetItem(value)
                item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight
                                          | Qt.AlignmentFlag.AlignVCenter))
                self.table.setItem(r, c, item)

    def export_csv(self, path: str | Path) -> Path:
        """Write the last run's object table as CSV (one row per object)."""
        import csv

        if not self.objects or not len(self.objects["label"]):
            raise DuetInputError("no objects to export: run Self2Seg first")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cols = list(self.objects)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(cols)
            for row in zip(*(self.objects[c] for c in cols), strict=True):
                writer.writerow([f"{v:.6g}" if isinstance(v, float | np.floating) else v
                                 for v in row])
        return path

    def _csv_dialog(self):
        self.save_with_dialog("Export object table", "objects.csv", "CSV (*.csv)",
                              self.export_csv, "Export CSV")

    def _collect_reports(self, job: _Job) -> dict:
        return {
            "source_layer": job.source_name,
            "parameters": job.config.to_dict(),
            "planes": {str(list(k)): v for k, v in job.reports.items()},
            "versions": versions(),
        }

    def after_error(self, job: _Job, exc: BaseException):
        self._drop_empty_results()

    def _drop_empty_results(self):
        """Remove the result layers this run added while they hold no result yet."""
        job = self.job
        if job is None or job.states:
            return
        self._updates.flush()
        for layer in job.new_layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        kept = job.results["layers"]
        for key in [k for k, ly in kept.items() if any(ly is n for n in job.new_layers)]:
            del kept[key]
        job.new_layers = []

    def after_cancel(self, job: _Job):
        self._updates.flush()  # the last completed state
        if job.on_disk:
            self.status.setText(f"Cancelled: {job.planes_done} finished plane(s) are kept in "
                                f"{job.store}.")
        elif job.states:
            self.status.setText(f"Cancelled during alternation {job.last_alternation + 1}; "
                                "the last completed state is kept.")
        else:
            self.status.setText("Cancelled before the first alternation ended.")
        if job.reports:
            self._last_reports = self._collect_reports(job)
        if job.tables:
            self._show_objects(job)

    def after_run(self, job: _Job):
        self._updates.flush()
        self._drop_empty_results()

    # ------------------------------------------------------------------ export
    def export_report(self, path: str | Path) -> Path:
        """Write the last run's report (parameters, energy history, timings) as JSON."""
        if not self._last_reports:
            raise DuetInputError("no finished run to export")
        return write_json(path, self._last_reports)

    def _saved_layers(self) -> dict:
        """The last run's result layers still in the viewer, by key."""
        job = self.job
        if job is None or not job.results:
            return {}
        return {k: ly for k, ly in job.results["layers"].items() if ly in self.viewer.layers}

    def save_results(self, folder: str | Path) -> list[Path]:
        """Write every result layer of the last run, its seeds and its report into ``folder``.

        The file names are ``duet self2seg``'s (:func:`~napari_duet.self2seg._save.result_file`):
        ``mask.tif``, ``labels.tif`` (the objects), ``denoised.tif``, ``expert_<k>.tif``,
        ``seeds.tif`` (0 = no seed, k + 1 = class k; when the run had seeds),
        ``report.json`` (after a run that finished a plane) and ``objects.csv``.
        After a finished run on a 2D image whose mask and objects were not edited, the
        result writes itself (``save``, the command's code: the same files, types and
        report); otherwise (a stack, a cancelled run, painted corrections) the layers
        are written, and results of a large layer, already on disk (the zarr store),
        as TIFF plane by plane.  Returns the paths written.
        """
        from ..core.io import write_tiff_blocks
        from ..self2seg._save import result_file

        job = self.job
        layers = self._saved_layers()
        if job is None or not layers:
            raise DuetInputError("no results to save: run Self2Seg first")
        folder = Path(folder)
        seeds = job.seed_image()
        if self._result_as_shown(job, layers):
            written = job.result.save(folder, nonnegative=job.nonnegative, report={
                "source_layer": job.source_name,
                "seeds": None if seeds is None else result_file("seeds")})
        else:
            written = []
            for key, layer in layers.items():
                path = folder / result_file(key)
                if isinstance(layer.data, np.ndarray):
                    written.append(write_tiff(path, layer.data))
                else:
                    folder.mkdir(parents=True, exist_ok=True)
                    written.append(write_tiff_blocks(path, layer.data))
            if self._last_reports:
                written.append(write_json(folder / result_file("report"), self._last_reports))
        if seeds is not None:
            written.append(write_tiff(folder / result_file("seeds"), seeds))
        if self.objects and len(self.objects["label"]):
            written.append(self.export_csv(folder / result_file("objects_csv")))
        return written

    @staticmethod
    def _result_as_shown(job: _Job, layers: dict) -> bool:
        """Whether the run's result object is what its editable layers (mask, objects)
        still show: no painted corrections would be lost by saving the result itself."""
        result = job.result
        if result is None:
            return False
        shown = {"mask": result.labels, "objects": result.instances}
        return all(np.array_equal(np.asarray(layers[k].data), v)
                   for k, v in shown.items() if k in layers)

    def _save_dialog(self):
        self.save_results_dialog("Save Self2Seg results into")

    def _export_dialog(self):
        self.save_with_dialog("Export Self2Seg report", "self2seg.json", "JSON (*.json)",
                              self.export_report, "Export")


def rgb_to_grey(data) -> np.ndarray:
    """Luminance (ITU-R BT.601) of RGB(A) data, float32, alpha dropped; non-negative
    for non-negative input."""
    arr = np.asarray(data)[..., :3].astype(np.float32)
    return arr @ np.array([0.299, 0.587, 0.114], np.float32)


def _painted_seeds(layer: Labels | None, yx: tuple, idx: tuple) -> np.ndarray | None:
    """Seed image of one plane from a painted Labels layer (None when there is none).

    The layer is either 2D (the same seeds for every slice) or has the image's
    leading axes; its label values are the seed classes (k + 1 = class k).
    """
    if layer is None:
        return None
    data = layer_data(layer)
    if data.ndim > 2:
        if len(idx) != data.ndim - 2:
            raise ValueError(f"painted seeds {layer.name!r} have shape {data.shape}; "
                             f"they need the image's plane shape {yx} or its stack shape")
        data = data[idx]
    plane = np.asarray(data)
    if plane.shape != tuple(yx):
        raise ValueError(f"painted seeds {layer.name!r} have plane shape {plane.shape}, "
                         f"the image {tuple(yx)}: paint seeds on a Labels layer of the "
                         "image's shape")
    return plane.astype(np.int64)


def _label_items(fn, indices, *args, **kwargs):
    """Run a plane generator (``iter_self2seg_stack`` or ``iter_self2seg_into``); yields
    ``(plane_no, index, state, is_final)``.

    ``index`` is the plane's index in the source layer (``indices[plane_no]``);
    the final item of a plane carries its :class:`Self2SegResult`; ``state``
    is a :class:`Self2SegProgress` for progress within an alternation.
    Closing it (Cancel) stops the engine at once, in this thread.
    """
    gen = fn(*args, **kwargs)
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            if isinstance(item, Self2SegProgress):
                yield item.plane, tuple(indices[item.plane]), item, False
                continue
            finished = item.result is not None
            if finished and hasattr(item.result, "instances"):
                item.result.instances  # noqa: B018 - computed here, in the worker thread
            yield (item.plane, tuple(indices[item.plane]),
                   item.result if finished else item.state, finished)
    finally:
        gen.close()
