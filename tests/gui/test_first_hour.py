"""Issue 25, a biologist's first hour: panels that fit a laptop, controls that explain
themselves, readable layer names, and a bad seed box that does not pass silently."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

WIDGETS = ("Self2Seg", "Slice denoising (NS-N2N)", "Split (denoiSplit)")
RUN_TIMEOUT = 300_000


def _controls(widget):
    """Every control a user can operate in ``widget`` (Qt's internals excluded)."""
    from qtpy.QtWidgets import (
        QAbstractButton,
        QAbstractItemView,
        QAbstractSpinBox,
        QComboBox,
        QLineEdit,
        QScrollBar,
        QTabBar,
    )

    out = []
    for child in widget.findChildren(QAbstractButton) + widget.findChildren(QComboBox) + \
            widget.findChildren(QAbstractSpinBox) + widget.findChildren(QLineEdit):
        parent = child.parentWidget()
        if isinstance(parent, QTabBar | QScrollBar | QAbstractSpinBox | QComboBox
                      | QAbstractItemView):
            continue  # a tab bar's arrows, a spin box's own line edit, a table's corner
        out.append(child)
    return out


@pytest.mark.parametrize("name", WIDGETS)
def test_every_widget_fits_1366x768_with_its_status_visible(make_napari_viewer, qtbot, name):
    from qtpy.QtCore import QPoint

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.random.default_rng(0).random((8, 64, 64)).astype(np.float32),
                     name="stack")
    win = viewer.window._qt_window
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", name)
    if name.startswith("Slice"):  # the panel that grew most: after Check noise
        widget.check_noise()
        assert widget.recommendation.text().startswith("Recommended")
    for section in ("advanced", "train_advanced"):  # unfolded, it must still fit
        if hasattr(widget, section):
            getattr(widget, section).toggle.setChecked(True)
    win.resize(1366, 768)
    qtbot.wait(300)
    assert win.width() <= 1366 and win.height() <= 768, (win.width(), win.height())
    status = widget.status
    assert status.isVisible() and status.text()
    bottom = status.mapTo(win, QPoint(0, status.height())).y()
    assert bottom <= win.height()
    # Not clipped by the dock either: the whole label is on screen.
    assert status.visibleRegion().boundingRect().height() == status.height()
    assert widget.progress.isVisible()
    # The dock does not force the window wider than a laptop screen.
    assert widget.minimumSizeHint().width() < 450
    # No control is cut at the right edge (the panel scrolls vertically only).
    port = widget.scroll.viewport()
    cut = [type(c).__name__ for c in _controls(widget) if c.isVisible()
           and port.isAncestorOf(c) and c.mapTo(port, QPoint(c.width(), 0)).x() > port.width()
           + 1]
    assert not cut, cut


@pytest.mark.parametrize("name", WIDGETS)
def test_every_control_has_a_tooltip_and_a_help_button(make_napari_viewer, monkeypatch, name):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", name)
    controls = _controls(widget)
    assert len(controls) > 10
    missing = [f"{type(c).__name__} {getattr(c, 'text', lambda: '')()!r}"
               for c in controls if not c.toolTip().strip()]
    assert not missing, missing
    # Automatic values say "auto" instead of 0.
    autos = {"Self2Seg": [widget.lam] if name == "Self2Seg" else []}.get(name, [])
    if name.startswith("Slice"):
        autos = [widget.budget, widget.iterations, widget.width]
    elif name.startswith("Split"):
        autos = [widget.tile, widget.batch_size]
    for w in autos:
        w.value = 0
        assert w.native.text() == "auto", w.native.text()
    # Advanced settings start folded.
    assert widget.advanced.folded and not widget.advanced.content.isVisible()
    # "?" opens the widget's section of the docs.
    opened = []
    from napari_duet._napari import _dock

    monkeypatch.setattr(_dock.QDesktopServices, "openUrl", lambda url: opened.append(url)
                        or True)
    widget.help_btn.click()
    assert opened and opened[0].toString().startswith(_dock.DOCS_URL + "#")


def test_tooltips_and_cli_help_come_from_one_declaration(make_napari_viewer):
    """The widget's tooltip and `duet self2seg --help` read the same field metadata."""
    import argparse

    from napari_duet.cli._self2seg import register
    from napari_duet.core.config import param_help, param_info
    from napari_duet.self2seg import Self2SegConfig

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", "Self2Seg")
    parser = argparse.ArgumentParser()
    sub = register(parser.add_subparsers())
    helps = {a.dest: a.help for a in sub._actions}
    for dest, field_name, control in (("lam", "lam", widget.lam),
                                      ("max_alternations", "max_alternations",
                                       widget.max_alternations),
                                      ("expert_steps", "expert_steps", widget.expert_steps)):
        text = param_help(Self2SegConfig, field_name)
        assert helps[dest].replace("%%", "%") == text
        declared = param_info(Self2SegConfig, field_name)["help"]
        tip = control.native.toolTip()
        assert tip.startswith(declared) and "Default:" in tip


def test_layer_names_show_structure_and_kind_within_the_visible_width(make_napari_viewer,
                                                                        qtbot):
    from qtpy.QtGui import QFontMetrics

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    viewer.open_sample("napari-duet", "split_demo")
    widget = viewer.window.dock_widgets["Split (denoiSplit) (napari-duet)"]
    widget.samples.value = 3
    widget.device.value = "cpu"
    widget.threads.value = 1
    widget.split()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT)
    qtbot.wait(100)
    view = viewer.window._qt_viewer.layers
    fm = QFontMetrics(view.font())
    # The name's room in a row: the row less the thumbnail, eye and type icons (~100 px).
    room = view.viewport().width() - 100
    source = "split demo (filaments + puncta)"
    results = [ly for ly in viewer.layers if ly.metadata.get("duet_source") == source]
    assert {ly.name for ly in results} >= {"puncta · std", "puncta · samples",
                                           "filaments · std", "filaments · split"}
    for layer in results:
        structure, kind = layer.name.split(" · ")
        assert structure in ("filaments", "puncta") and kind
        assert fm.horizontalAdvance(layer.name) <= room, (layer.name, room)
        assert source in layer.get_source_str()  # the layer list's tooltip names the source


@pytest.mark.slow
def test_bad_seed_box_gives_a_warning_and_a_hint(make_napari_viewer, qtbot, bad_seed_case,
                                                 monkeypatch):
    """Issue 25's case: one background box on a slightly brighter patch collapses the
    mask; the widget says so, with what to change, and why the run stopped."""
    from napari_duet._napari import _self2seg

    shown = []
    monkeypatch.setattr(_self2seg, "show_warning", shown.append)
    noisy, fg_box, bg_box, _ = bad_seed_case
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", "Self2Seg")
    layer = viewer.add_image(noisy, name="dsb")
    widget.image_picker.value = layer
    widget.device.value = "cpu"
    widget.threads.value = 1
    widget.expert_steps.value = 60
    seeds = widget.new_seeds_layer()
    widget.role.value = "foreground"
    seeds.add_rectangles(np.array([fg_box[:2], fg_box[2:]]))
    widget.role.value = "background"
    seeds.add_rectangles(np.array([bg_box[:2], bg_box[2:]]))
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT)
    text = widget.status.text()
    assert "⚠" in text and "collapsed" in text and "Hint:" in text
    assert "alternations" in text  # why the run stopped
    assert shown and "collapsed" in shown[0] and "Hint" in shown[0]
    report = widget._last_reports["planes"]["[]"]
    assert report["checks"]["warnings"] and report["checks"]["hints"]


def test_good_run_states_why_it_stopped_and_counts_objects(make_napari_viewer, qtbot,
                                                           tmp_path):
    from napari_duet.core.synthetic import synthetic_nuclei

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", "Self2Seg")
    data = synthetic_nuclei((96, 96), noise_sigma=15.0, seed=2)
    widget.image_picker.value = viewer.add_image(data.noisy, name="cells")
    widget.experts.value = "constant"
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT)
    text = widget.status.text()
    assert "after" in text and "alternations" in text and "⚠" not in text
    objects = viewer.layers["S2S objects"]
    n = int(objects.data.max())
    assert n >= 3 and f"{n} object(s)" in text
    assert widget.table.rowCount() == n and widget.csv_btn.isEnabled()
    assert not viewer.layers["S2S mask"].visible  # the objects replace the class mask
    path = widget.export_csv(tmp_path / "objects.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "label,area,mean_intensity,centroid_y,centroid_x"
    assert len(lines) == n + 1
    # Mean intensity is measured on the denoised image.
    den = viewer.layers["S2S denoised"].data
    first = [float(v) for v in lines[1].split(",")]
    assert abs(first[2] - float(den[objects.data == int(first[0])].mean())) < 1e-3 * abs(
        first[2]) + 1e-3


def test_quick_start_shows_the_whole_image_selected(make_napari_viewer, qtbot):
    """scripts/launch_napari.py: after docking, the view is reset (not a vertical strip)
    and the image is the selected layer (not the hidden ground truth)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "launch_napari.py"
    spec = importlib.util.spec_from_file_location("launch_napari", path)
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    widget = launch.open_quickstart(viewer, "nuclei_medium_noise")
    qtbot.wait(300)
    image = viewer.layers["noisy nuclei (σ=30)"]
    assert viewer.layers.selection.active is image
    assert widget.image_picker.value is image
    canvas = viewer.window._qt_viewer.canvas.native
    h, w = canvas.height(), canvas.width()
    camera = getattr(viewer, "scene", viewer).camera
    zoom = camera.zoom
    assert w / zoom >= 256 * 0.99 and h / zoom >= 256 * 0.99  # the whole image in view
    cy, cx = camera.center[-2:]
    assert abs(cy - 127.5) < 2 and abs(cx - 127.5) < 2
