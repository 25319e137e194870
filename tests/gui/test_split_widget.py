"""Split (denoiSplit) dock widget in a real napari viewer, with a tiny model trained here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 300_000
FAST_BOOTSTRAP = {"denoiser": "smooth", "iterations": 60}


def _tiny_configs(epochs=2):
    from napari_duet.denoisplit import SplitConfig, TrainConfig

    net = SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.0)
    tc = TrainConfig(epochs=epochs, steps_per_epoch=4, patch_size=32, batch_size=4,
                     device="cpu", calib_samples=4, log_every=1)
    return net, tc


@pytest.fixture(scope="module")
def data():
    from napari_duet.denoisplit._synthetic import synthetic_split

    return synthetic_split((64, 64), seed=2)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, data):
    from napari_duet.denoisplit import train

    net, tc = _tiny_configs()
    model = train([data.noisy_a, data.noisy_b], net, tc, channel_names=("actin", "mito"),
                  bootstrap_kwargs=FAST_BOOTSTRAP).model
    return model.save(tmp_path_factory.mktemp("model") / "tiny.duet")


def _wait(qtbot, w):
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)


def test_drop_model_docks_widget_and_splits(make_napari_viewer, qtbot, model_path, data):
    viewer = make_napari_viewer()
    image = viewer.add_image(data.noisy_a + data.noisy_b, name="mix", scale=(0.3, 0.3),
                             translate=(5, 5), axis_labels=("y", "x"), units=("um", "um"))
    n_layers = len(viewer.layers)
    viewer.open(str(model_path), plugin="napari-duet")  # what drag-and-drop does
    assert len(viewer.layers) == n_layers  # a model adds no layer
    widget = viewer.window.dock_widgets["Split (denoiSplit) (napari-duet)"]
    # The dropped file's model, not another one: same weights, same output.
    from napari_duet.denoisplit import SplitModel

    probe = (data.noisy_a + data.noisy_b)[:32, :32]
    np.testing.assert_array_equal(
        widget.model.predict(probe, deterministic=True, samples=1).mean,
        SplitModel.load(model_path, device="cpu").predict(probe, deterministic=True,
                                                          samples=1).mean)
    info = widget.model_info.text()
    assert "actin" in info and "mito" in info and "calibration" in info
    widget.image_picker.value = image
    widget.samples.value = 5
    widget.device.value = "cpu"
    widget.split()
    _wait(qtbot, widget)
    names = [layer.name for layer in viewer.layers]
    for ch in ("actin", "mito"):
        base = f"{ch}"
        main = viewer.layers[f"{base} · split"]
        assert main.data.shape == image.data.shape
        assert main.blending == "additive"
        assert tuple(main.scale) == tuple(image.scale)
        assert tuple(main.translate) == tuple(image.translate)
        assert tuple(main.units) == tuple(image.units)
        assert viewer.layers[f"{base} · std"].data.min() >= 0
        samples = viewer.layers[f"{base} · samples"]
        assert samples.data.shape == (5, *image.data.shape)  # the slider has N entries
        assert tuple(samples.axis_labels) == ("sample", "y", "x")
        assert tuple(samples.scale)[1:] == tuple(image.scale)
        assert f"{base} · sample diff" in names
    cmaps = {viewer.layers[f"{ch} · split"].colormap.name for ch in ("actin", "mito")}
    assert len(cmaps) == 2
    # Calibration and noise-model plots can be produced from the widget.
    assert widget.calibration_png().stat().st_size > 1000
    assert len(widget.noise_model_pngs()) == 2


def test_stack_split_and_cancel(make_napari_viewer, qtbot, model_path, data):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", "Split (denoiSplit)")
    assert widget.load_model(model_path)
    mix = data.noisy_a + data.noisy_b
    stack = viewer.add_image(np.stack([mix, mix[::-1], mix[:, ::-1]]), name="stack")
    widget.image_picker.value = stack
    widget.samples.value = 2
    widget.split()
    _wait(qtbot, widget)
    assert viewer.layers["actin · split"].data.shape == stack.data.shape
    assert viewer.layers["actin · samples"].data.shape == (2, *stack.data.shape)
    # Cancel: a long split stops early and adds nothing new.
    widget.samples.value = 400
    widget.tile.value = 32
    widget.batch_size.value = 8
    big = viewer.add_image(np.tile(mix, (2, 2)), name="big")
    widget.image_picker.value = big
    seen = []

    def on_yield(p):
        seen.append(p)
        if len(seen) == 1:
            widget.cancel()

    n_layers = len(viewer.layers)
    widget.split()
    widget.worker.yielded.connect(on_yield)
    _wait(qtbot, widget)
    assert "Cancelled" in widget.status.text()
    assert len(viewer.layers) == n_layers  # no result of "big"
    assert all(ly.metadata.get("duet_source") != "big" for ly in viewer.layers)
    assert seen[-1].done < seen[-1].total


def test_corrupted_model_changes_nothing(make_napari_viewer, model_path, errors, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", "Split (denoiSplit)")
    assert widget.load_model(model_path)
    before = widget.model
    bad = tmp_path / "broken.duet"
    bad.write_bytes(model_path.read_bytes()[:200])
    n_layers = len(viewer.layers)
    assert not widget.load_model(bad)
    assert errors and "broken.duet" in errors[-1] and "\n" not in errors[-1]
    assert widget.model is before and len(viewer.layers) == n_layers
    # Dropping the broken file on the viewer also just notifies.
    viewer.open(str(bad), plugin="napari-duet")
    assert len(viewer.layers) == n_layers and "broken.duet" in errors[-1]


def test_nsn2n_model_file_opens_nsn2n_widget(make_napari_viewer, tmp_path):
    from napari_duet.nsn2n import NSN2NConfig, train

    rng = np.random.default_rng(0)
    vol = rng.random((4, 24, 24)).astype(np.float32)
    result = train(vol, 0, NSN2NConfig(iterations=2, width=4, tta=False, device="cpu",
                                       crop_size=16, batch_size=2))
    path = result.model.save(tmp_path / "n.duet")
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-duet")
    widget = viewer.window.dock_widgets["Slice denoising (NS-N2N) (napari-duet)"]
    assert widget.model is not None and widget.denoise_btn.isEnabled()


def test_train_tab(make_napari_viewer, qtbot, data, monkeypatch):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", "Split (denoiSplit)")
    a = viewer.add_image(data.noisy_a, name="actin")
    b = viewer.add_image(data.noisy_b, name="mito")
    widget.train_a.value, widget.train_b.value = a, b
    widget.epochs.value = 7
    cmd = widget.command.text()
    assert cmd.startswith("duet split train --channel-a actin.tif --channel-b mito.tif")
    assert "--epochs 7" in cmd
    monkeypatch.setattr(widget, "train_configs", lambda: _tiny_configs(epochs=2))
    monkeypatch.setattr(widget, "bootstrap_kwargs", lambda: FAST_BOOTSTRAP)
    seen = []  # (phase, epoch, step, progress bar, status) after the widget's handler
    widget.train()
    widget.worker.yielded.connect(lambda p: seen.append(
        (p.stage, p.epoch, p.step, widget.progress.value(), widget.status.text())))
    _wait(qtbot, widget)
    assert widget.model is not None and widget.split_btn.isEnabled()
    assert widget.plot.curves
    assert "actin" in widget.model_info.text()
    # Real epoch/step progress: 1-based epochs, never past the last, a bar that moves.
    train = [x for x in seen if x[0] == "train"]
    bars = [x[3] for x in train]
    # The epochs fill most of the bar (noise models and calibration the rest); it ends full.
    assert bars == sorted(bars) and bars[0] < 500 and bars[-1] >= 900
    assert widget.progress.value() == 1000
    assert any("/8 (epoch 1, 4 steps each)" in x[4] for x in train)  # steps of all epochs
    assert not any("epoch 3/2" in x[4] or "epoch 0/" in x[4] for x in seen)


def test_model_info_says_when_calibration_or_split_is_poor():
    from napari_duet._napari._split import calibration_line, split_worse_line

    names = ("actin", "mito")
    good = {"stats_after": [{"ence": 0.05}, {"ence": 0.1}], "rmse": [1.0, 2.0],
            "naive_rmse": [3.0, 4.0]}
    assert calibration_line(good, names).startswith("calibration: yes")
    assert split_worse_line(good, names) == ""
    bad = {"stats_after": [{"ence": 0.05}, {"ence": 0.8}], "rmse": [1.0, 5.0],
           "naive_rmse": [3.0, 4.0]}
    line = calibration_line(bad, names)
    assert "poor" in line and "mito 0.80" in line and "calibrated" not in line
    assert "mito" in split_worse_line(bad, names) and "actin" not in split_worse_line(bad, names)
    assert calibration_line(None, names) == "calibration: no, std is not calibrated"


def test_split_screenshot_and_save_results(make_napari_viewer, qtbot, model_path, data,
                                           tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", "Split (denoiSplit)")
    widget.load_model(model_path)
    image = viewer.add_image(data.noisy_a + data.noisy_b, name="mix")
    widget.image_picker.value = image
    widget.samples.value = 4
    widget.split()
    _wait(qtbot, widget)
    image.visible = False
    shot = viewer.screenshot(str(tmp_path / "split_widget.png"), canvas_only=False)
    assert shot.ndim == 3 and (tmp_path / "split_widget.png").stat().st_size > 0
    # The split's layers are really drawn: with every layer hidden the canvas is one flat
    # colour, with the results shown it is not (an undrawn GL surface fails both ways).
    results = [layer for layer in viewer.layers if layer is not image]
    assert results
    shown = viewer.screenshot(canvas_only=True)[..., :3]
    for layer in results:
        layer.visible = False
    empty = viewer.screenshot(canvas_only=True)[..., :3]
    for layer in results:
        layer.visible = True
    assert np.ptp(empty.reshape(-1, 3), axis=0).max() <= 1
    assert np.any(shown != empty, axis=-1).mean() > 0.05
    # Save results: the files of `duet split predict`, from the same writer.
    from napari_duet.denoisplit._save import PREDICT_FILES

    paths = widget.save_results(tmp_path / "res")
    names = {p.name for p in paths}
    assert names == set(PREDICT_FILES)  # two structures, samples kept
    import json

    import tifffile

    rep = json.loads((tmp_path / "res" / "report.json").read_text())
    assert rep["files"]["mmse.tif"] == [2, *image.data.shape]
    np.testing.assert_allclose(tifffile.imread(tmp_path / "res" / "a.tif"),
                               widget.last_result.mean[0], rtol=1e-6)
    # One wording of the calibration: the status says what the model panel says.
    from napari_duet._napari._split import calibration_state

    _, detail = calibration_state(widget.model.calibration, widget.model.channel_names)
    assert detail in widget.status.text() and detail in widget.legend.text()
    assert "68" not in widget.legend.text()


def test_three_structures_train_and_split(make_napari_viewer, qtbot, monkeypatch):
    from napari_duet.denoisplit._synthetic import synthetic_multi

    d = synthetic_multi((64, 64), 3, seed=2)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", "Split (denoiSplit)")
    layers = [viewer.add_image(x, name=n) for x, n in zip(d.noisy, ("actin", "mito", "nuc"),
                                                            strict=True)]
    assert widget.train_pickers[2].native.isHidden()  # two structures by default
    widget.n_structures.value = 3
    assert not widget.train_pickers[2].native.isHidden()
    assert widget.train_pickers[3].native.isHidden()
    for picker, layer in zip(widget.train_pickers, layers, strict=False):
        picker.value = layer
    widget.lateral_context.value = True
    cmd = widget.command.text()
    assert "--channel actin.tif --channel mito.tif --channel nuc.tif" in cmd
    assert "--channel-a" not in cmd and "--lateral-context 3" in cmd
    net, _ = widget.train_configs()
    assert net.n_channels == 3 and net.multiscale_count == 3
    widget.lateral_context.value = False
    # The same layer twice is refused with a notification.
    widget.train_pickers[2].value = layers[0]
    widget.train()
    assert widget.worker is None and widget.model is None
    widget.train_pickers[2].value = layers[2]
    monkeypatch.setattr(widget, "train_configs", lambda: _tiny_configs(epochs=1))
    monkeypatch.setattr(widget, "bootstrap_kwargs", lambda: FAST_BOOTSTRAP)
    widget.train()
    _wait(qtbot, widget)
    assert widget.model is not None and widget.model.n_channels == 3
    assert "3 channels" in widget.model_info.text()
    mix = viewer.add_image(d.noisy.sum(0), name="mix")
    widget.image_picker.value = mix
    widget.samples.value = 3
    widget.split()
    _wait(qtbot, widget)
    cmaps = set()
    for ch in ("actin", "mito", "nuc"):
        base = f"{ch}"
        assert viewer.layers[f"{base} · split"].data.shape == mix.data.shape
        cmaps.add(viewer.layers[f"{base} · split"].colormap.name)
        assert viewer.layers[f"{base} · std"].data.min() >= 0
        assert viewer.layers[f"{base} · samples"].data.shape == (3, *mix.data.shape)
    assert len(cmaps) == 3


def test_split_demo_sample_docks_split_with_bundled_model(make_napari_viewer, qtbot):
    """The split_demo sample docks Split with its model loaded, and Split works at once."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-duet", "split_demo")
    assert [layer.name for layer in viewer.layers] == [
        "split demo (filaments + puncta)", "true filaments", "true puncta"]
    widget = viewer.window.dock_widgets["Split (denoiSplit) (napari-duet)"]
    assert widget.model is not None and widget.model_path.name == "split_demo.safetensors"
    assert "filaments" in widget.model_info.text()
    assert widget.split_btn.isEnabled()
    # Opening the widget again (as scripts/launch_napari.py does) reuses this dock.
    _, again = viewer.window.add_plugin_dock_widget("napari-duet", "Split (denoiSplit)")
    assert again is widget
    # The superimposed image is the layer Split offers first.
    assert widget.image_picker.value is viewer.layers["split demo (filaments + puncta)"]
    widget.samples.value = 3
    widget.keep_samples.value = False
    widget.device.value = "cpu"
    widget.threads.value = 1
    widget.split()
    _wait(qtbot, widget)
    for name in ("filaments", "puncta"):
        out = viewer.layers[f"{name} · split"]
        assert out.metadata["duet_source"] == "split demo (filaments + puncta)"
        assert out.data.shape == (256, 256)


@pytest.mark.parametrize("settings", [
    {},
    {"n_structures": 3, "lateral_context": True, "net_config": "default", "epochs": 3,
     "max_minutes": 2.5, "patch_size": 48, "train_batch": 7, "seed": 11,
     "train_device": "cpu", "bootstrap": "smooth"},
])
def test_command_line_parses_back_to_the_same_training(make_napari_viewer, settings):
    """The Train tab's command line is made by the mapping the CLI parses: parsing it gives
    back the widget's configurations (device, bootstrap and every option included)."""
    import shlex

    from napari_duet.cli import build_parser
    from napari_duet.cli._split import train_configs

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", "Split (denoiSplit)")
    for c in range(4):
        widget.train_pickers[c].value = viewer.add_image(np.zeros((8, 8)), name=f"ch {c}")
    for name, value in settings.items():
        getattr(widget, name).value = value
    argv = shlex.split(widget.command.text())
    assert argv[:3] == ["duet", "split", "train"]
    args = build_parser().parse_args(argv[1:])
    n = widget.n_structures.value
    files = args.channel or [args.channel_a, args.channel_b]
    assert files == [f"ch {c}.tif" for c in range(n)]
    assert train_configs(args, n) == widget.train_configs()
    assert args.denoiser == widget.bootstrap.value
    assert args.device == widget.train_device.value  # not a hard-coded cuda
    # A setting the command cannot express is said, not silently dropped.
    from dataclasses import replace

    net, tc = widget.train_configs()
    widget.train_configs = lambda: (net, replace(tc, lr_patience=7))
    widget._update_command()
    assert "no command-line equivalent" in widget.command.text()
    assert "lr_patience" in widget.command.text()
