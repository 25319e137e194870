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
    layer = viewer.add_image(noisy, name="stack", scale=(2.0, 0.5, 0.5), translate=(0, 1, 1),
                             axis_labels=("z", "y", "x"), units=("um", "um", "um"))
    widget.image_picker.value = layer
    assert widget.axis.value == 0
    yields = []
    # W of the slice on screen and the next one: a 2D map in [0, 1] over the slice, with the
    # stack's pixel size so it overlays the slice.
    wmap = widget.show_weight_map()
    assert wmap.data.shape == noisy.shape[1:]
    assert 0.0 <= float(wmap.data.min()) and float(wmap.data.max()) <= 1.0
    assert float(wmap.data.mean()) > 0.5  # neighbouring slices of one stack mostly match
    np.testing.assert_allclose(wmap.scale[-2:], (0.5, 0.5))
    widget.train()
    widget.worker.yielded.connect(lambda p: yields.append(p))
    _wait(qtbot, widget)
    assert "NS-N2N weight map" not in viewer.layers  # helpers go with the run
    assert sum(getattr(p, "stage", "") == "train" for p in yields) >= 2
    assert any(getattr(p, "preview", None) is not None for p in yields)
    assert any(getattr(p, "eta", 0) > 0 for p in yields if getattr(p, "stage", "") == "train")
    # The preview helped while training; it goes away with the run.
    assert "NS-N2N preview" not in viewer.layers
    out = viewer.layers["NS-N2N denoised"]
    assert out.data.shape == noisy.shape and out.data.dtype == np.float32
    assert tuple(out.scale) == tuple(layer.scale) and tuple(out.translate) == tuple(layer.translate)
    assert tuple(out.axis_labels) == ("z", "y", "x") and tuple(out.units) == tuple(layer.units)
    assert "NS-N2N uncertainty" in viewer.layers
    assert not viewer.layers["NS-N2N uncertainty"].visible  # not over the result
    assert widget.plot.curves and widget.save_btn.isEnabled()
    # the status names the network the run chose (white noise: auto -> blind-spot)
    net = widget.model.training["context"]
    assert {"blind": "blind-spot network", "2.5d": "2.5D network"}[net] in widget.status.text()
    # Save, load into a fresh state, denoise another layer.
    path = widget.save_model(tmp_path / "m.duet")
    widget.model = None
    assert widget.load_model(path)
    other = viewer.add_image(_volume(seed=1)[0], name="other")
    widget.image_picker.value = other
    widget.denoise()
    _wait(qtbot, widget)
    out = [ly for ly in viewer.layers if ly.metadata.get("duet_source") == "other"
           and ly.name.startswith("NS-N2N denoised")]
    assert len(out) == 1
    assert out[0].data.shape == other.data.shape


def test_cancel_training_keeps_a_usable_model(widget, qtbot, tmp_path):
    """Issue 25: Cancel keeps the model trained so far and offers to denoise with it."""
    viewer = widget.viewer
    noisy, clean = _volume()
    layer = viewer.add_image(noisy, name="stack")
    widget.image_picker.value = layer
    widget.iterations.value = 100000
    widget.tta.value = False
    steps = []

    def on_yield(p):
        if getattr(p, "stage", "") == "train":
            steps.append(p.iteration)
            if len(steps) == 30:
                widget.cancel()

    widget.train()
    widget.worker.yielded.connect(on_yield)
    _wait(qtbot, widget)
    text = widget.status.text()
    assert "Cancelled after" in text and "Denoise layer" in text
    assert "NS-N2N denoised" not in viewer.layers
    assert widget.train_btn.isEnabled()
    # The model kept is the one trained so far: it denoises the stack to its shape.
    assert widget.model.predict(noisy[:4], tta=False).denoised.shape == noisy[:4].shape
    assert widget.denoise_btn.isEnabled() and widget.save_btn.isEnabled()
    assert widget.model.training["cancelled"] and widget.model.training["iterations_done"] >= 30
    widget.denoise()
    _wait(qtbot, widget)
    out = viewer.layers["NS-N2N denoised"].data
    assert out.shape == noisy.shape and np.isfinite(out).all()
    # Usable: closer to the clean volume than the noisy input is (30+ steps of training).
    assert np.mean((out - clean) ** 2) < np.mean((noisy - clean) ** 2)
    assert widget.save_model(tmp_path / "cancelled.duet").exists()


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
    assert "noise" in reason and "sigma" in reason  # the noise model found, with parameters
    widget.noise_model.value = "rician"
    assert widget.config().noise_model == "rician"
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
    assert widget.plot._xlabel == "iteration"  # losses per step, before any run (not
    # Self2Seg's "alternation")
    widget.iterations.value = 0
    widget.budget.value = 0
    widget.width.value = 0
    cfg = widget.config()
    assert cfg.iterations is None and cfg.budget == "auto" and cfg.width is None
    assert cfg.context == "auto"
    widget.budget.value = 30
    widget.iterations.value = 12
    widget.context.value = "2d"
    cfg = widget.config()
    assert (cfg.budget, cfg.iterations, cfg.context) == (30, 12, "2d")



@pytest.mark.slow
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


@pytest.fixture(scope="module")
def tiny_model():
    from napari_duet.nsn2n import NSN2NConfig, train

    vol = _volume((6, 24, 24), seed=4)[0]
    model = train(vol, 0, NSN2NConfig(iterations=2, width=4, tta=False, device="cpu",
                                      crop_size=16, batch_size=2)).model
    # The check's choice, fixed to a 3D stage reading 4 slices a side (halo 6): it may pick
    # a block-matched stage (halo 11), whose slabs would read most of the layers here (its
    # slab-by-slab equality is tested in test_wiener.py).
    model.training["wiener"] = dict(model.training["wiener"], mode="3d2", use=True)
    return model


def test_zarr_layer_is_denoised_slab_by_slab_like_in_memory(widget, qtbot, tmp_path,
                                                            tiny_model, guarded):
    """A zarr-backed layer goes slab by slab into an OME-Zarr that opens lazily, equal to
    the in-memory result, over the source (scale, translate, axis labels); Cancel keeps the
    finished slabs and the next Denoise continues from them."""
    import zarr

    from napari_duet.core.io import open_image, write_ome_zarr

    # 30 slices: a slab of 2 and its halo (up to 6 slices a side with a 3D second
    # stage) stay under half the layer, which the guard refuses to read.
    noisy = _volume((30, 32, 36), seed=5)[0]
    write_ome_zarr(tmp_path / "vol.ome.zarr", noisy)
    lazy, _ = open_image(tmp_path / "vol.ome.zarr")
    viewer = widget.viewer
    paced = guarded(lazy, delay=0.05)  # the zarr array, read slowly: Cancel lands mid-way
    layer = viewer.add_image(paced, name="vol", contrast_limits=(0, 1), scale=(2.0, 0.5, 0.5),
                             translate=(1, 2, 3), axis_labels=("z", "y", "x"),
                             units=("um", "um", "um"))
    widget.model = tiny_model
    widget.tta.value = False
    widget.slab = 2  # 15 slabs
    widget.output_folder.setText(str(tmp_path / "out"))
    widget.image_picker.value = layer
    expected = tiny_model.predict(noisy, 0, tta=False).denoised
    # Cancel after the first finished slab.
    seen = []

    def on_yield(p):
        seen.append(p)
        if getattr(p, "stage", "") == "denoise" and not widget.worker.abort_requested:
            widget.cancel()

    widget.denoise()
    widget.worker.yielded.connect(on_yield)
    _wait(qtbot, widget)
    assert "Cancelled" in widget.status.text() and "kept" in widget.status.text()
    assert layer in viewer.layers and "NS-N2N denoised" not in viewer.layers
    store = tmp_path / "out" / "vol NS-N2N denoised.ome.zarr"
    # Built beside the output (the chunked-run engine's staging store) until complete.
    staged = tmp_path / "out" / "vol NS-N2N denoised.ome.zarr.partial.zarr"
    assert not store.exists() and staged.name in widget.status.text()
    done = zarr.open_group(str(staged)).attrs["napari_duet"]["state"]["done"]
    assert 1 <= len(done) < 15
    # Denoise again: continues, and the result equals the in-memory one.
    paced.delay = 0.0
    widget.denoise()
    _wait(qtbot, widget)
    assert "interrupted run" in widget.status.text()
    assert store.exists() and not staged.exists()  # swapped in when complete
    out = viewer.layers["NS-N2N denoised"]
    level0 = out.data[0] if out.multiscale else out.data
    assert not isinstance(level0, np.ndarray)  # opened lazily from the store
    np.testing.assert_allclose(np.asarray(level0), expected, rtol=0, atol=1e-6)
    assert tuple(out.scale) == tuple(layer.scale)
    assert tuple(out.translate) == tuple(layer.translate)
    assert tuple(out.axis_labels) == ("z", "y", "x")
    assert str(out.units[0]) == "micrometer"
    _, meta = open_image(store)
    assert meta.scale == (2.0, 0.5, 0.5) and meta.axes == ("z", "y", "x")
    # A second Denoise of the same layer reuses the finished store.
    widget.denoise()
    _wait(qtbot, widget)
    assert "earlier run" in widget.status.text()
    # Other data under the same name (in memory, over the size limit) never overwrite it.
    before = np.asarray(zarr.open_group(str(store))["0"])
    widget.large_layer_bytes = 1000
    viewer.layers.remove(layer)
    other = viewer.add_image(noisy[:, ::-1].copy(), name="vol")
    widget.image_picker.value = other
    widget.denoise()
    _wait(qtbot, widget)
    assert (tmp_path / "out" / "vol NS-N2N denoised 2.ome.zarr").exists()
    np.testing.assert_array_equal(np.asarray(zarr.open_group(str(store))["0"]), before)


def test_multiscale_layer_uses_level_0_lazily(widget, qtbot, tmp_path, tiny_model):
    import dask.array as da

    noisy = _volume((6, 32, 32), seed=6)[0]
    levels = [da.from_array(noisy, chunks=(2, 32, 32)),
              da.from_array(noisy[:, ::2, ::2].copy(), chunks=(2, 16, 16))]
    viewer = widget.viewer
    layer = viewer.add_image(levels, multiscale=True, name="pyr", scale=(3.0, 1.0, 1.0))
    widget.model = tiny_model
    widget.tta.value = True  # with the uncertainty (spread over flips/rotations)
    widget.output_folder.setText(str(tmp_path))
    widget.image_picker.value = layer
    widget.denoise()
    assert widget.worker is not None  # chunked: runs although the data are lazy
    _wait(qtbot, widget)
    expected = tiny_model.predict(noisy, 0, tta=True)
    for what, want in (("denoised", expected.denoised), ("uncertainty", expected.uncertainty)):
        out = viewer.layers[f"NS-N2N {what}"]
        level0 = out.data[0] if out.multiscale else out.data
        np.testing.assert_allclose(np.asarray(level0), want, atol=1e-5)
        assert tuple(out.scale) == (3.0, 1.0, 1.0)
    assert not viewer.layers["NS-N2N uncertainty"].visible
    assert (tmp_path / "pyr NS-N2N uncertainty.ome.zarr").exists()


def test_large_layer_is_read_slab_by_slab_only(widget, qtbot, tmp_path, tiny_model, errors,
                                               guarded):
    """Level 0 is never read whole: each read is one slab and its halo."""
    noisy = _volume((32, 32, 36), seed=7)[0]
    data = guarded(noisy)
    layer = widget.viewer.add_image(data, name="big", contrast_limits=(0, 1))
    widget.model = tiny_model
    widget.tta.value = False
    widget.slab = 2
    widget.output_folder.setText(str(tmp_path))
    widget.image_picker.value = layer
    widget.denoise()
    _wait(qtbot, widget)
    assert not errors
    # A slab and the halo on both sides: the network's 2 slices and its second stage's.
    assert tiny_model.halo >= 2
    assert data.largest <= (2 + 2 * tiny_model.halo) * 32 * 36
    out = widget.viewer.layers["NS-N2N denoised"]
    level0 = np.asarray(out.data[0] if out.multiscale else out.data)
    expected = tiny_model.predict(noisy, 0, tta=False).denoised
    np.testing.assert_allclose(level0, expected, atol=1e-6)


def test_save_results_and_noise2fast_button(widget, qtbot, tmp_path):
    """Issue 25: Save results… writes the last result; Check noise's other recommendation,
    Noise2Fast, runs from the widget."""
    viewer = widget.viewer
    noisy, _ = _volume(shape=(3, 24, 24))
    layer = viewer.add_image(noisy + 1.0, name="small")  # non-negative input
    widget.image_picker.value = layer
    assert not widget.save_results_btn.isEnabled()
    widget.iterations.value = 5
    widget.tta.value = False
    widget.train()
    _wait(qtbot, widget)
    assert widget.save_results_btn.isEnabled()
    names = sorted(p.name for p in widget.save_results(tmp_path / "res"))
    assert names == ["denoised.tif", "model.duet", "report.json"]
    assert viewer.layers["NS-N2N denoised"].data.min() >= 0  # never negative here
    widget.denoise_n2f()
    _wait(qtbot, widget)
    out = viewer.layers["N2F denoised"]
    assert out.data.shape == noisy.shape and out.metadata["duet_source"] == "small"
    assert "Noise2Fast done" in widget.status.text()
    names = sorted(p.name for p in widget.save_results(tmp_path / "n2f"))
    assert names == ["denoised.tif", "report.json"]
