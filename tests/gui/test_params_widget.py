"""Save/Load parameters in the Self2Seg widget; a widget's file runs identically from the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_duet.cli import main
from napari_duet.core.synthetic import synthetic_nuclei
from napari_duet.self2seg import Self2SegConfig

pytestmark = pytest.mark.gui
RUN_TIMEOUT = 240_000


def _widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", "Self2Seg")
    return widget


def _set(widget, **values):
    for name, value in values.items():
        widget.param_controls[name].value = value


def test_controls_are_the_declarations(make_napari_viewer):
    widget = _widget(make_napari_viewer)
    # Every control shows the config default and the declared choices; config() reads them.
    cfg = widget.config()
    defaults = Self2SegConfig()
    for name in ("n_classes", "max_alternations", "experts", "expert_width", "expert_steps",
                 "seed", "invert", "noise_model", "lam"):
        assert getattr(cfg, name) == getattr(defaults, name), name
    assert tuple(widget.experts.choices) == ("cnn", "linear", "constant")
    assert widget.lam.value == 0 and cfg.lam is None  # "auto" at 0
    assert widget.max_alternations.min == 1  # the declared lower bound
    # A control whose minimum is not 0 has no "auto" text: one CPU thread reads "1" (it
    # read "auto", though the run used one thread).
    widget.threads.value = 1
    assert widget.threads.native.lineEdit().text() == "1" and widget.config().threads == 1


def test_saved_parameters_load_back_into_another_widget(make_napari_viewer, tmp_path):
    first = _widget(make_napari_viewer)
    _set(first, n_classes=3, lam=2.5, experts="linear", max_alternations=5, seed=11,
         invert=True, noise_model="gaussian", expert_steps=123)
    path = first.save_parameters(tmp_path / "p.json")
    second = _widget(make_napari_viewer)
    assert second.config() != first.config()
    assert second.load_parameters(path)
    assert second.config() == first.config()
    assert second.lam.value == 2.5 and second.experts.value == "linear"


@pytest.mark.parametrize(("content", "words"), [
    ({"experts": "constant", "max_alternatons": 2}, "max_alternatons"),
    ({"experts": "magic"}, "experts must be one of"),
    ({"n_classes": 12}, "classes"),  # valid for the engine, beyond the widget's 8
    ("{not json", "not readable JSON"),
])
def test_a_bad_parameter_file_is_one_notification_and_changes_nothing(
        make_napari_viewer, tmp_path, errors, content, words):
    widget = _widget(make_napari_viewer)
    _set(widget, seed=4)
    before = widget.config()
    path = tmp_path / "p.json"
    path.write_text(content if isinstance(content, str) else json.dumps(
        {"seed": 9, **content}))
    assert not widget.load_parameters(path)
    assert len(errors) == 1 and words in errors[0] and "\n" not in errors[0], errors
    assert widget.config() == before  # not even the valid seed was applied


def test_widget_parameters_run_identically_from_the_cli(make_napari_viewer, qtbot, tmp_path):
    widget = _widget(make_napari_viewer)
    data = synthetic_nuclei((64, 64), noise_sigma=20.0, seed=3)
    layer = widget.viewer.add_image(data.noisy, name="noisy")
    widget.image_picker.value = layer
    _set(widget, experts="constant", max_alternations=3, seed=2, lam=1.2, device="cpu")
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT)
    in_napari = np.asarray(widget.viewer.layers["S2S mask"].data)
    params = widget.save_parameters(tmp_path / "params.json")
    tifffile.imwrite(tmp_path / "noisy.tif", data.noisy)
    out = tmp_path / "out"
    assert main(["self2seg", str(tmp_path / "noisy.tif"), "-o", str(out), "--config",
                 str(params), "-q"]) == 0
    np.testing.assert_array_equal(tifffile.imread(out / "mask.tif"), in_napari)
    report = json.loads((out / "report.json").read_text())["parameters"]
    assert {k: report[k] for k in ("experts", "max_alternations", "seed", "lam")} == {
        "experts": "constant", "max_alternations": 3, "seed": 2, "lam": 1.2}


def test_nsn2n_parameters_save_and_load(make_napari_viewer, tmp_path, errors):
    viewer = make_napari_viewer()
    _, first = viewer.window.add_plugin_dock_widget("napari-duet", "Slice denoising (NS-N2N)")
    _set(first, iterations=60, budget=0, width=8, context="2d", seed=5, lambda_rc=0.25)
    path = first.save_parameters(tmp_path / "n.json")
    _, second = make_napari_viewer().window.add_plugin_dock_widget(
        "napari-duet", "Slice denoising (NS-N2N)")
    assert second.load_parameters(path), errors
    keep = ("iterations", "budget", "width", "context", "seed", "lambda_rc", "tta", "guide")
    a, b = first.config().to_dict(), second.config().to_dict()
    assert {k: b[k] for k in keep} == {k: a[k] for k in keep}
    assert b["budget"] == "auto" and b["iterations"] == 60
    # A Self2Seg file is not an NS-N2N file: one notification, nothing changed.
    other = tmp_path / "s.json"
    from napari_duet.core.config import save_params

    save_params(other, Self2SegConfig())
    assert not second.load_parameters(other)
    assert len(errors) == 1 and "Self2Seg" in errors[0]
    assert second.config().to_dict()["width"] == 8


def test_nsn2n_controls_are_the_declarations(make_napari_viewer):
    """The NS-N2N controls are generated from NSN2NConfig's declarations, as Self2Seg's:
    each is tagged with its field, shows the declared label, choices and lower bound, and
    the widget's config is the config defaults ("auto" at 0)."""
    from napari_duet.core.config import param_info, param_label
    from napari_duet.nsn2n import NSN2NConfig

    _, widget = make_napari_viewer().window.add_plugin_dock_widget(
        "napari-duet", "Slice denoising (NS-N2N)")
    for name, control in widget.param_controls.items():
        assert control.param_name == name
        assert control.label == param_label(NSN2NConfig, name)
        choices = param_info(NSN2NConfig, name).get("choices")
        if choices and name not in ("guide", "device"):  # the widget narrows these two
            assert tuple(control.choices) == choices, name
    assert widget.lambda_rc.min == param_info(NSN2NConfig, "lambda_rc")["lo"]
    cfg = widget.config()
    defaults = NSN2NConfig()
    for name in widget.param_controls:
        assert getattr(cfg, name) == getattr(defaults, name), name
    assert widget.budget.value == 0 and widget.budget.auto_value == "auto"
    assert widget.iterations.auto_value is None


def test_split_controls_are_the_declarations(make_napari_viewer):
    """The Split tab's controls come from PredictConfig (as `split predict`'s options) and
    the Train tab's from TrainConfig: tagged with their field, the declared label and
    lower bound, "auto" (or "no limit") at 0 read back as None."""
    from napari_duet.core.config import param_info, param_label
    from napari_duet.denoisplit import PredictConfig, TrainConfig

    widget = _split_widget(make_napari_viewer)
    for cls, controls in ((PredictConfig, widget.predict_controls),
                          (TrainConfig, widget.param_controls)):
        for name, control in controls.items():
            assert control.param_name == name and control.label == param_label(cls, name)
    assert widget.samples.min == param_info(PredictConfig, "samples")["lo"]
    assert widget._predict_values() == {"samples": 20, "tile": None, "batch_size": None}
    widget.tile.value = 64
    assert widget._predict_values()["tile"] == 64
    assert widget.max_minutes.value == 0 and widget.max_minutes.auto_value is None
    assert widget.max_minutes.native.lineEdit().text() == "auto (9 on a CPU)"
    assert widget.train_configs()[1].max_minutes is None


def test_split_parameter_file_keeps_the_network(make_napari_viewer, tmp_path):
    """Save parameters… records the network preset and lateral context; Load parameters…
    and ``split train --config`` both bring them back."""
    from napari_duet.cli import build_parser
    from napari_duet.cli._split import train_configs

    first = _split_widget(make_napari_viewer)
    first.net_config.value = "default"
    first.lateral_context.value = True
    _set(first, epochs=4)
    path = first.save_parameters(tmp_path / "s.json")
    assert json.loads(path.read_text())["network"]["preset"] == "default"
    second = _split_widget(make_napari_viewer)
    assert second.net_config.value == "small" and not second.lateral_context.value
    assert second.load_parameters(path)
    assert second.train_configs() == first.train_configs()
    args = build_parser().parse_args(["split", "train", "--channel-a", "a.tif", "--channel-b",
                                      "b.tif", "-o", "m.duet", "--config", str(path)])
    assert train_configs(args, 2) == first.train_configs()


def _split_widget(make_napari_viewer):
    _, widget = make_napari_viewer().window.add_plugin_dock_widget(
        "napari-duet", "Split (denoiSplit)")
    return widget


def test_split_parameters_save_load_and_show_in_the_command(make_napari_viewer, tmp_path):
    first = _split_widget(make_napari_viewer)
    # The buttons are the dock's shared ones, in the Train tab.
    assert first.save_params_btn.text() == "Save parameters…"
    assert first.tabs.widget(1).isAncestorOf(first.load_params_btn)
    _set(first, epochs=7, max_minutes=2.5, patch_size=48, batch_size=5, seed=13,
         device="cpu")
    path = first.save_parameters(tmp_path / "s.json")
    saved = json.loads(path.read_text())
    assert saved["engine"] == "denoiSplit training"
    assert {k: saved["parameters"][k] for k in ("epochs", "max_minutes", "patch_size",
                                                "batch_size", "seed", "device")} == {
        "epochs": 7, "max_minutes": 2.5, "patch_size": 48, "batch_size": 5, "seed": 13,
        "device": "cpu"}
    second = _split_widget(make_napari_viewer)
    assert second.train_configs()[1] != first.train_configs()[1]
    assert second.load_parameters(path)
    assert second.train_configs()[1] == first.train_configs()[1]
    # The controls moved, so the command-line equivalent follows them.
    assert "--epochs 7" in second.command.text() and "--seed 13" in second.command.text()
    # "auto" (0 minutes) saves as None and loads back as 0.
    _set(second, max_minutes=0.0)
    assert first.load_parameters(second.save_parameters(tmp_path / "n.json"))
    assert first.max_minutes.value == 0 and first.train_configs()[1].max_minutes is None


@pytest.mark.parametrize(("content", "words"), [
    ({"epoch": 3}, "did you mean 'epochs'"),
    ({"patch_size": 8}, "outside"),  # valid for the engine, below the widget's 16
    ({"kl": "magic"}, "kl must be one of"),
    ("[1, 2", "not readable JSON"),
])
def test_a_bad_split_parameter_file_is_one_notification_and_changes_nothing(
        make_napari_viewer, tmp_path, errors, content, words):
    widget = _split_widget(make_napari_viewer)
    _set(widget, seed=4)
    before, command = widget.train_configs(), widget.command.text()
    path = tmp_path / "p.json"
    path.write_text(content if isinstance(content, str) else json.dumps(
        {"seed": 9, **content}))
    assert not widget.load_parameters(path)
    assert len(errors) == 1 and words in errors[0] and "\n" not in errors[0], errors
    assert widget.train_configs() == before and widget.command.text() == command
    # Another engine's file is refused the same way.
    from napari_duet.core.config import save_params

    assert not widget.load_parameters(save_params(tmp_path / "s.json", Self2SegConfig()))
    assert len(errors) == 2 and "Self2Seg" in errors[1]


def test_split_widget_parameters_train_from_the_cli(make_napari_viewer, tmp_path):
    from napari_duet.denoisplit import SplitModel
    from napari_duet.denoisplit._synthetic import synthetic_split

    widget = _split_widget(make_napari_viewer)
    _set(widget, epochs=1, patch_size=16, batch_size=3, seed=21, device="cpu",
         max_minutes=5.0)
    params = widget.save_parameters(tmp_path / "split-params.json")
    d = synthetic_split((32, 48), seed=0)
    for name, arr in (("a", d.noisy_a), ("b", d.noisy_b)):
        tifffile.imwrite(tmp_path / f"{name}.tif", arr.astype(np.float32))
    model = tmp_path / "m.duet"
    assert main(["split", "train", "--channel-a", str(tmp_path / "a.tif"), "--channel-b",
                 str(tmp_path / "b.tif"), "-o", str(model), "--config", str(params),
                 "--likelihood", "gaussian", "--steps-per-epoch", "2", "--no-calibration",
                 "--threads", "1", "-q"]) == 0
    training = SplitModel.load(model).metadata()["training"]
    tc = training["train_config"]
    assert {k: tc[k] for k in ("epochs", "patch_size", "batch_size", "seed", "max_minutes")} \
        == {"epochs": 1, "patch_size": 16, "batch_size": 3, "seed": 21, "max_minutes": 5.0}
    assert training["epochs_run"] == 1 and tc["likelihood"] == "gaussian"
