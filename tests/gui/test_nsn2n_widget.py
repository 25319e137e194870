"""NS-N2N dock widget in a real napari viewer (pytest-xvfb provides the screen)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

pytestmark = pytest.mark.gui
RUN_TIMEOUT = 300_000


@pytest.fixture
def widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-duet", "Slice denoising (NS-N2N)")
    w.iterations.value = 40
    w.width.value = 8
    w.device.value = "cpu"
    return w


def _volume(shape=(6, 40, 44), sigma=0.15, seed=0):
    rng = np.random.default_rng(seed)
    clean = gaussian_filter(rng.random(shape), (2, 3, 3))
    clean = (clean - clean.min()) / np.ptp(clean)
    noisy = clean + rng.normal(0, sigma, shape)
    return noisy.astype(np.float32), clean.astype(np.float32)


def _wait(qtbot, w):
    qtbot.waitUntil(lambda: w.worker is None, timeout=RUN_TIMEOUT)


def test_train_live_updates_and_result_layers(widget, qtbot, tmp_path):
    viewer = widget.viewer
    noisy, clean = _volume()
    layer = viewer.add_image(noisy, name="stack", scale=(2.0, 0.5, 0.5), translate=(0, 1, 1))
    widget.image_picker.value = layer
    assert widget.axis.value == 0
    yields = []
    assert widget.show_weight_map() is not None
    widget.train()
    widget.worker.yielded.connect(lambda p: yields.append(p))
    _wait(qtbot, widget)
    assert "stack [NS-N2N weight map]" not in viewer.layers  # helpers go with the run
    assert sum(getattr(p, "stage", "") == "train" for p in yields) >= 2
    assert any(getattr(p, "preview", None) is not None for p in yields)
    assert any(getattr(p, "eta", 0) > 0 for p in yields if getattr(p, "stage", "") == "train")
    # The preview helped while training; it goes away with the run.
    assert "stack [NS-N2N preview]" not in viewer.layers
    out = viewer.layers["stack [NS-N2N denoised]"]
    assert out.data.shape == noisy.shape and out.data.dtype == np.float32
    assert tuple(out.scale) == tuple(layer.scale) and tuple(out.translate) == tuple(layer.translate)
    assert "stack [NS-N2N uncertainty]" in viewer.layers
    assert not viewer.layers["stack [NS-N2N uncertainty]"].visible  # not over the result
    assert widget.plot.curves and widget.save_btn.isEnabled()
    # Save, load into a fresh state, denoise another layer.
    path = widget.save_model(tmp_path / "m.duet")
    widget.model = None
    assert widget.load_model(path)
    other = viewer.add_image(_volume(seed=1)[0], name="other")
    widget.image_picker.value = other
    widget.denoise()
    _wait(qtbot, widget)
    assert viewer.layers["other [NS-N2N denoised]"].data.shape == other.data.shape


def test_cancel_training(widget, qtbot):
    viewer = widget.viewer
    layer = viewer.add_image(_volume()[0], name="stack")
    widget.image_picker.value = layer
    widget.iterations.value = 100000
    n = []

    def on_yield(p):
        n.append(p)
        if len(n) == 5:
            widget.cancel()

    widget.train()
    widget.worker.yielded.connect(on_yield)
    _wait(qtbot, widget)
    assert "Cancelled" in widget.status.text()
    assert "stack [NS-N2N denoised]" not in viewer.layers
    assert widget.train_btn.isEnabled()


def test_errors_are_notifications(widget, errors, tmp_path):
    viewer = widget.viewer
    flat = viewer.add_image(np.zeros((30, 30), np.float32), name="flat")
    widget.image_picker.value = flat
    widget.train()
    assert errors and "2D" in errors[-1] and widget.worker is None
    bad = tmp_path / "bad.duet"
    bad.write_bytes(b"not a model")
    assert not widget.load_model(bad)
    assert "bad.duet" in errors[-1] and "\n" not in errors[-1]
    assert widget.model is None and not widget.denoise_btn.isEnabled()
    assert flat in viewer.layers


def test_check_noise_and_weight_map(widget):
    viewer = widget.viewer
    layer = viewer.add_image(_volume()[0], name="stack")
    widget.image_picker.value = layer
    method, reason = widget.check_noise()
    assert method in {"nsn2n", "bm4d", "noise2fast"} and reason
    assert "Recommended" in widget.recommendation.text()
    # every slice pair is listed and plotted
    assert len(widget.pairs) == layer.data.shape[0] - 1
    assert widget.pair_plot.isVisibleTo(widget) and widget.pairs_label.text()
    w = widget.show_weight_map()
    assert w.data.shape == layer.data.shape[1:]
    assert set(np.unique(w.data)) <= {0.0, 1.0}


def test_time_lapse_with_motion_shows_the_poor_pair(widget):
    """Frames 0-3 still, then the content jumps: the pair (3, 4) is named."""
    viewer = widget.viewer
    clean = _volume(shape=(8, 48, 48), sigma=0.0)[1]
    clean = np.repeat(clean[:1], 8, axis=0)
    clean[4:] = np.roll(clean[4:], 12, axis=2)
    noisy = clean + np.random.default_rng(0).normal(0, 0.05, clean.shape).astype(np.float32)
    layer = viewer.add_image(noisy, name="movie")
    widget.image_picker.value = layer
    widget.check_noise()
    assert "3-4" in widget.pairs_label.text()
    verdicts = [p["verdict"] for p in widget.pairs]
    assert verdicts[3] != "good" and verdicts.count("good") == len(verdicts) - 1


def test_budget_and_auto_fields_map_to_the_config(widget):
    widget.iterations.value = 0
    widget.budget.value = 0
    widget.width.value = 0
    cfg = widget.config()
    assert cfg.iterations is None and cfg.budget == "auto" and cfg.width is None
    assert cfg.context == "2.5d"
    widget.budget.value = 30
    widget.iterations.value = 12
    widget.context.value = "2d"
    cfg = widget.config()
    assert (cfg.budget, cfg.iterations, cfg.context) == (30, 12, "2d")



def test_threads_setting_applies_during_the_run(widget, qtbot, monkeypatch):
    import torch

    import napari_duet.nsn2n as nsn2n

    assert widget.threads.value == 1  # the default with napari open
    before = torch.get_num_threads()
    widget.threads.value = 2 if before == 1 else 1
    widget.iterations.value = 3
    widget.image_picker.value = widget.viewer.add_image(_volume((4, 24, 24))[0], name="t")
    seen = []
    real = nsn2n.iter_train

    def spy(*args, **kwargs):  # runs in the worker thread (OpenMP settings are per thread)
        gen = real(*args, **kwargs)
        while True:
            seen.append(torch.get_num_threads())
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            yield item

    monkeypatch.setattr(nsn2n, "iter_train", spy)
    widget.train()
    _wait(qtbot, widget)
    assert seen and set(seen) == {widget.threads.value}
    assert torch.get_num_threads() == before
