"""Each parameter is declared once: validation, the CLI options and ``--config`` come from it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tifffile

from napari_duet import DuetInputError
from napari_duet.cli import main
from napari_duet.core.config import (
    ConfigError,
    load_params,
    param_info,
    param_type,
    save_params,
    user_params,
)
from napari_duet.denoisplit import SplitConfig, TrainConfig
from napari_duet.nsn2n import NSN2NConfig
from napari_duet.self2seg import Self2SegConfig

DECLARED = [(cls, f.name) for cls in (Self2SegConfig, NSN2NConfig, SplitConfig, TrainConfig)
            for f in dataclasses.fields(cls) if {"lo", "hi", "choices"} & set(f.metadata)]


def _bad_values(cls, name):
    """Values just outside the declaration of ``name`` (and of the wrong type)."""
    info = param_info(cls, name)
    base, _ = param_type(cls, name)
    if "choices" in info:
        return ["no-such-choice"]
    bad = []
    if "lo" in info:
        bad.append(info["lo"] if info.get("lo_open") else info["lo"] - 1)
    if "hi" in info:
        bad.append(info["hi"] + 1)
    if base is int:
        bad.append(1.5)
    return bad


@pytest.mark.parametrize(("cls", "name"), DECLARED)
def test_declared_bounds_and_choices_are_enforced(cls, name):
    for value in _bad_values(cls, name):
        with pytest.raises(ConfigError, match=rf"^{name} must be .*, got {value!r}$"):
            cls(**{name: value})
    cls(**{name: getattr(cls(), name)})  # the default itself is valid


def test_rules_a_declaration_cannot_state_stay_explicit():
    with pytest.raises(ConfigError, match="budget must be 'auto' or a positive number"):
        NSN2NConfig(budget="fast")
    assert NSN2NConfig(budget=30).budget == 30
    with pytest.raises(ConfigError, match="multiscale_count must be at most n_levels"):
        SplitConfig(n_levels=2, multiscale_count=3)
    with pytest.raises(ConfigError, match="var_clip_max must be a finite number"):
        SplitConfig(var_clip_max=float("inf"))


def test_cross_field_and_odd_rules_stay():
    with pytest.raises(ConfigError, match="linear_size must be odd"):
        Self2SegConfig(linear_size=4)
    with pytest.raises(ConfigError, match="threads must be a positive integer or None"):
        Self2SegConfig(threads=0)


def test_every_user_facing_self2seg_parameter_has_a_cli_option_with_its_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["self2seg", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in user_params(Self2SegConfig):
        flag = "--" + param_info(Self2SegConfig, name).get("cli", name).replace("_", "-")
        assert flag in text, flag
        if name == "threads":  # --threads (with "auto") is every compute command's option
            continue
        # the declaration's help, first words
        assert " ".join(param_info(Self2SegConfig, name)["help"].split()[:4]) in text, name
    assert "--config PARAMS.json" in text



def _report(out):
    return json.loads((out / "report.json").read_text())["parameters"]


def test_config_file_sets_parameters_and_flags_override_it(blob_tif, tmp_path):
    params = save_params(tmp_path / "p.json", Self2SegConfig(
        experts="constant", max_alternations=2, seed=5, lam=1.5, device="cpu"))
    out = tmp_path / "a"
    assert main(["self2seg", str(blob_tif), "-o", str(out), "--config", str(params), "-q"]) == 0
    got = _report(out)
    assert (got["experts"], got["max_alternations"], got["seed"], got["lam"]) == (
        "constant", 2, 5, 1.5)
    out = tmp_path / "b"
    assert main(["self2seg", str(blob_tif), "-o", str(out), "--config", str(params),
                 "--seed", "7", "-q"]) == 0
    got = _report(out)
    assert got["seed"] == 7 and got["max_alternations"] == 2  # the flag wins, the rest stays


@pytest.mark.parametrize(("content", "words"), [
    ({"experts": "constant", "max_alternatons": 2}, "max_alternatons"),
    ({"experts": "magic"}, "experts must be one of"),
    ({"format": "napari-duet parameters", "engine": "NS-N2N", "parameters": {}}, "NS-N2N"),
    ("[1, 2]", "JSON object"),
    ("{not json", "not readable JSON"),
])
def test_bad_config_file_exits_2_with_one_line_and_writes_nothing(blob_tif, tmp_path, capsys,
                                                                  content, words):
    path = tmp_path / "p.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    out = tmp_path / "out"
    assert main(["self2seg", str(blob_tif), "-o", str(out), "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_parameter_files_round_trip_and_name_their_engine(tmp_path):
    cfg = Self2SegConfig(experts="linear", n_classes=3, lam=None, invert=True, threads=2)
    path = save_params(tmp_path / "p.json", cfg)
    data = json.loads(path.read_text())
    assert data["engine"] == "Self2Seg" and data["format"] == "napari-duet parameters"
    assert Self2SegConfig.from_dict(load_params(path, Self2SegConfig)) == cfg


def test_nsn2n_config_file_and_flags(tmp_path, capsys):
    rng = np.random.default_rng(0)
    vol = (rng.normal(100, 20, (5, 24, 24))).clip(0, 255).astype(np.uint8)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, vol)
    params = save_params(tmp_path / "p.json", NSN2NConfig(
        iterations=3, width=4, batch_size=2, crop_size=16, seed=6, tta=False, device="cpu"))
    out = tmp_path / "out.tif"
    assert main(["nsn2n", str(path), "-o", str(out), "--config", str(params), "--seed", "8",
                 "-q"]) == 0
    rep = json.loads((tmp_path / "out.json").read_text())["config"]
    assert (rep["iterations"], rep["width"], rep["seed"], rep["tta"]) == (3, 4, 8, False)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"iterations": 3, "widht": 4}))
    capsys.readouterr()
    assert main(["nsn2n", str(path), "-o", str(tmp_path / "o2.tif"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "widht" in err and "did you mean 'width'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o2.tif").exists()


def test_split_train_config_file_and_flags(tmp_path):
    from napari_duet.cli import build_parser
    from napari_duet.cli._split import train_configs

    params = save_params(tmp_path / "t.json", TrainConfig(epochs=7, patch_size=32, seed=4,
                                                         likelihood="gaussian"))
    base = ["split", "train", "--channel-a", "a.tif", "--channel-b", "b.tif", "-o", "m.duet"]
    args = build_parser().parse_args([*base, "--config", str(params), "--seed", "9"])
    net, tc = train_configs(args, 2)
    assert (tc.epochs, tc.patch_size, tc.seed, tc.likelihood) == (7, 32, 9, "gaussian")
    assert net == SplitConfig.preset("default", n_channels=2)
    # Without a file: the presets and the TrainConfig defaults, as before.
    net, tc = train_configs(build_parser().parse_args([*base, "--config", "small"]), 2)
    assert net == SplitConfig.preset("small", n_channels=2) and tc == TrainConfig()
    # No --config: the small network on a CPU (the paper's takes hours there), as the widget.
    net, _ = train_configs(build_parser().parse_args([*base, "--device", "cpu"]), 2)
    assert net == SplitConfig.preset("small", n_channels=2)
    net, _ = train_configs(build_parser().parse_args([*base, "--config", "default",
                                                      "--device", "cpu"]), 2)
    assert net == SplitConfig.preset("default", n_channels=2)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epoch": 3}))
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        train_configs(build_parser().parse_args([*base, "--config", str(bad)]), 2)
    with pytest.raises(DuetInputError, match="--config must be auto, small, default or a .json"):
        train_configs(build_parser().parse_args([*base, "--config", "huge"]), 2)


def test_split_train_options_are_generated_from_the_declarations(capsys):
    from napari_duet.cli._params import option_flag

    with pytest.raises(SystemExit) as e:
        main(["split", "train", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    # likelihood and kl are declared user-facing now: their options carry the declared help.
    assert {"likelihood", "kl"} <= set(user_params(TrainConfig))
    for name in user_params(TrainConfig):
        assert option_flag(TrainConfig, name) in text, name
        if name == "threads":  # --threads (with "auto") is every compute command's option
            continue
        assert " ".join(param_info(TrainConfig, name)["help"].split()[:4]) in text, name
    assert "{auto,small,default,PARAMS.json}" in text  # the split's own --config stays


@pytest.mark.parametrize(("argv", "words"), [
    (["--likelihood", "poisson"], "--likelihood: invalid choice"),
    (["--device", "tpu"], "--device: invalid choice"),
    (["--epochs", "0"], "epochs must be a positive integer"),
    (["--patch-size", "x"], "--patch-size: invalid int value"),
])
def test_split_train_bad_option_exits_2_with_one_line(tmp_path, capsys, argv, words):
    for name in ("a", "b"):
        tifffile.imwrite(tmp_path / f"{name}.tif", np.ones((32, 32), np.float32))
    try:  # argparse's own refusals exit; a declaration's refusal returns 2
        rc = main(["split", "train", "--channel-a", str(tmp_path / "a.tif"), "--channel-b",
                   str(tmp_path / "b.tif"), "-o", str(tmp_path / "m.duet"), *argv])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and words in err[-1], err
    assert not (tmp_path / "m.duet").exists()


def test_split_train_file_values_and_options_over_them(tmp_path):
    from napari_duet.cli import build_parser
    from napari_duet.cli._split import train_configs

    # lr and free_bits have no option: only a parameter file sets them.
    params = save_params(tmp_path / "t.json", TrainConfig(device="cpu", lr=2e-4, free_bits=0.5,
                                                         kl="musplit", max_minutes=3.0))
    base = ["split", "train", "--channel-a", "a.tif", "--channel-b", "b.tif", "-o", "m.duet",
            "--config", str(params)]
    _, tc = train_configs(build_parser().parse_args(base), 2)
    assert (tc.device, tc.lr, tc.free_bits, tc.kl, tc.max_minutes) == (
        "cpu", 2e-4, 0.5, "musplit", 3.0)
    assert tc.checkpoint_path is None and not tc.resume and tc.calibrate
    # An option given overrides the file, even when it gives the default value.
    _, tc = train_configs(build_parser().parse_args(
        [*base, "--device", "auto", "--kl", "denoisplit", "--no-calibration",
         "--checkpoint", "c.duet"]), 2)
    assert (tc.device, tc.kl, tc.lr, tc.calibrate) == ("auto", "denoisplit", 2e-4, False)
    assert tc.checkpoint_path == "c.duet" and tc.resume


def test_switches_are_declared_both_ways_and_override_a_file(tmp_path):
    """A declared switch gives --x and --no-x (BooleanOptionalAction), each overriding the
    parameter file: before, a generated switch could only turn a setting on, so
    --no-calibration and --no-tta were written by hand and --calibration did not exist."""
    from napari_duet.cli import build_parser
    from napari_duet.cli._nsn2n import _config
    from napari_duet.cli._split import train_configs

    off = save_params(tmp_path / "off.json", TrainConfig(calibrate=False))
    base = ["split", "train", "--channel-a", "a.tif", "--channel-b", "b.tif", "-o", "m.duet"]
    parse = build_parser().parse_args
    assert not train_configs(parse([*base, "--config", str(off)]), 2)[1].calibrate
    assert train_configs(parse([*base, "--config", str(off), "--calibration"]), 2)[1].calibrate
    assert not train_configs(parse([*base, "--no-calibration"]), 2)[1].calibrate
    # --checkpoint is declared too: from a file it names the checkpoint and resumes.
    ckpt = save_params(tmp_path / "c.json", TrainConfig(checkpoint_path="c.duet"))
    tc = train_configs(parse([*base, "--config", str(ckpt)]), 2)[1]
    assert tc.checkpoint_path == "c.duet" and tc.resume
    # NS-N2N's test-time augmentation: --no-tta as before, and --tta over a file.
    no_tta = save_params(tmp_path / "n.json", NSN2NConfig(tta=False))
    nbase = ["nsn2n", "v.tif", "-o", "o.tif"]
    assert not _config(parse([*nbase, "--no-tta"])).tta
    assert not _config(parse([*nbase, "--config", str(no_tta)])).tta
    assert _config(parse([*nbase, "--config", str(no_tta), "--tta"])).tta
    # Self2Seg's --invert gained its --no-invert.
    assert parse(["self2seg", "x.tif", "-o", "o", "--no-invert"]).invert is False


def test_split_predict_options_and_config_file_come_from_the_declarations(tmp_path, capsys):
    from napari_duet.cli import build_parser
    from napari_duet.cli._split import predict_config
    from napari_duet.denoisplit import PredictConfig

    with pytest.raises(SystemExit):
        main(["split", "predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in user_params(PredictConfig):
        flag = "--" + param_info(PredictConfig, name).get("cli", name).replace("_", "-")
        assert flag in text, name
        assert " ".join(param_info(PredictConfig, name)["help"].split()[:4]) in text, name
    params = save_params(tmp_path / "p.json", PredictConfig(samples=5, tile=64, seed=3,
                                                           calibration="none"))
    base = ["split", "predict", "img.tif", "--model", "m.duet", "-o", "out"]
    pc = predict_config(build_parser().parse_args([*base, "--config", str(params),
                                                   "--seed", "8"]))
    assert (pc.samples, pc.tile, pc.seed, pc.calibration) == (5, 64, 8, "none")
    assert predict_config(build_parser().parse_args(base)) == PredictConfig()


def test_split_predict_bad_value_exits_2_with_one_line(tmp_path, capsys):
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, np.ones((16, 16), np.float32))
    rc = main(["split", "predict", str(img), "--model", str(tmp_path / "m.duet"), "-o",
               str(tmp_path / "out"), "--samples", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "samples must be a positive integer, got 0" in err[-1], err
    assert not (tmp_path / "out").exists()


def test_split_parameter_file_records_the_network(tmp_path):
    """The file a widget writes names its network (preset and lateral context), and
    ``split train --config FILE`` trains that network, not always the default one."""
    from napari_duet.cli import build_parser
    from napari_duet.cli._split import train_configs

    net = SplitConfig.preset("small", n_channels=2, multiscale_count=3)
    path = save_params(tmp_path / "p.json", TrainConfig(epochs=3),
                       network=net.params_section())
    assert json.loads(path.read_text())["network"] == {"preset": "small",
                                                       "multiscale_count": 3}
    base = ["split", "train", "--channel-a", "a.tif", "--channel-b", "b.tif", "-o", "m.duet",
            "--config", str(path)]
    got, tc = train_configs(build_parser().parse_args(base), 2)
    assert got == net and tc.epochs == 3
    got, _ = train_configs(build_parser().parse_args([*base, "--lateral-context", "1"]), 2)
    assert got == SplitConfig.preset("small", n_channels=2)
    bad = save_params(tmp_path / "b.json", TrainConfig(), network={"preset": "huge"})
    with pytest.raises(ConfigError, match="network preset must be small or default"):
        train_configs(build_parser().parse_args([*base[:-1], str(bad)]), 2)


def test_nsn2n_budget_and_device_options_are_generated(tmp_path, capsys):
    """--budget (seconds or auto) and --device come from NSN2NConfig's declarations like the
    other options, so both override a parameter file: before, the hand-written --device
    defaulted to auto, and --device auto could not override a file's device."""
    from napari_duet.cli import build_parser
    from napari_duet.cli._nsn2n import _config

    params = save_params(tmp_path / "p.json", NSN2NConfig(device="cpu", budget=30.0))
    base = ["nsn2n", "v.tif", "-o", "o.tif", "--config", str(params)]
    parse = build_parser().parse_args
    cfg = _config(parse(base))
    assert (cfg.device, cfg.budget) == ("cpu", 30.0)
    cfg = _config(parse([*base, "--device", "auto", "--budget", "auto"]))
    assert (cfg.device, cfg.budget) == ("auto", "auto")
    assert _config(parse([*base, "--budget", "12.5"])).budget == 12.5
    vol = tmp_path / "v.tif"
    tifffile.imwrite(vol, np.ones((5, 16, 16), np.float32))
    capsys.readouterr()
    assert main(["nsn2n", str(vol), "-o", str(tmp_path / "o.tif"), "--budget", "fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "budget must be 'auto' or a positive number" in err[0], err
    assert not (tmp_path / "o.tif").exists()
