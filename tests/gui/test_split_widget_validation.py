"""Split widget, Train tab: validation gain per structure while training; Cancel keeps
the best model so far."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui
TIMEOUT = 300_000
FAST_BOOTSTRAP = {"denoiser": "smooth", "iterations": 60}


def _configs(epochs: int):
    from napari_duet.denoisplit import SplitConfig, TrainConfig

    net = SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.0, split_fallback=True)
    tc = TrainConfig(epochs=epochs, steps_per_epoch=3, patch_size=32, batch_size=4,
                     device="cpu", calib_samples=2, log_every=1)
    return net, tc


def _widget(make_napari_viewer, monkeypatch, epochs: int):
    from napari_duet.denoisplit._synthetic import synthetic_split

    data = synthetic_split((64, 64), seed=2)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", "Split (denoiSplit)")
    widget.train_a.value = viewer.add_image(data.noisy_a, name="actin")
    widget.train_b.value = viewer.add_image(data.noisy_b, name="mito")
    monkeypatch.setattr(widget, "train_configs", lambda: _configs(epochs))
    monkeypatch.setattr(widget, "bootstrap_kwargs", lambda: FAST_BOOTSTRAP)
    return widget


def test_train_tab_plots_validation_gain_per_structure(make_napari_viewer, qtbot, monkeypatch):
    widget = _widget(make_napari_viewer, monkeypatch, epochs=3)
    widget.train()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT)
    # The widget holds the model it trained: two structures, named, trained for 3 epochs.
    assert widget.model.n_channels == 2
    assert list(widget.model.channel_names) == ["actin", "mito"]
    # One point per epoch and structure, the gains the model records at the end.
    curves = widget.val_plot.curves
    assert set(curves) == {"actin", "mito"} and all(len(v) == 3 for v in curves.values())
    val = widget.model.training["validation"]
    assert set(val["psnr_gain_db"]) == {"actin", "mito"}
    text = widget.learned_info.text()
    assert "over the constant split" in text
    assert all(f"{name}:" in text for name in ("actin", "mito"))
    for name in val["not_learned"]:  # a structure not learned is named as such
        assert f"{name}: not learned" in text


def test_cancel_keeps_the_best_model_so_far(make_napari_viewer, qtbot, monkeypatch):
    widget = _widget(make_napari_viewer, monkeypatch, epochs=10_000)
    widget.train()
    # After the first epoch's validation there is a best model to keep.
    qtbot.waitUntil(lambda: widget.job.best_model is not None, timeout=TIMEOUT)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT)
    model = widget.model
    assert model is not None and widget.split_btn.isEnabled()
    assert model.training["cancelled"] and model.training["best_epoch"] >= 1
    assert "validation" in model.training and model.calibration is None
    assert "kept the best model" in widget.status.text()
    assert "over the constant split" in widget.learned_info.text()
