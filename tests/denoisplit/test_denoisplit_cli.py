"""``duet split`` and ``duet noise-model``: outputs and exit-2 cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_duet.cli import main
from napari_duet.denoisplit._synthetic import synthetic_split


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("split_cli")
    d = synthetic_split((32, 48), seed=0)
    paths = {}
    for name, arr in {"a": d.noisy_a, "b": d.noisy_b, "ca": d.clean_a, "cb": d.clean_b,
                      "sum": d.noisy_a + d.noisy_b, "b_crop": d.noisy_b[:, :40],
                      "tiny_a": d.noisy_a[:8, :8], "tiny_b": d.noisy_b[:8, :8]}.items():
        paths[name] = root / f"{name}.tif"
        tifffile.imwrite(paths[name], arr.astype(np.float32))
    paths["root"] = root
    return paths


def _err(capsys) -> str:
    return capsys.readouterr().err.strip()


def test_noise_model_fit_then_train_then_predict(files, capsys):
    root = files["root"]
    for ch in ("a", "b"):
        rc = main(["noise-model", "fit", "--signal", str(files[f"c{ch}"]), "--observation",
                   str(files[ch]), "-o", str(root / f"nm_{ch}.duet"), "--iterations", "30",
                   "--device", "cpu"])
        assert rc == 0 and (root / f"nm_{ch}.png").is_file()
    model = root / "m.duet"
    rc = main(["split", "train", "--channel-a", str(files["a"]), "--channel-b", str(files["b"]),
               "-o", str(model), "--noise-model-a", str(root / "nm_a.duet"),
               "--noise-model-b", str(root / "nm_b.duet"), "--config", "small", "--epochs", "1",
               "--steps-per-epoch", "2", "--patch-size", "16", "--batch-size", "2",
               "--device", "cpu", "--quiet"])
    assert rc == 0 and model.is_file()
    assert (root / "m.calibration.png").is_file()
    out = root / "pred"
    rc = main(["split", "predict", str(files["sum"]), "--model", str(model), "-o", str(out),
               "--samples", "3", "--tile", "32", "--device", "cpu"])
    assert rc == 0
    for name in ("a", "b", "std_a", "std_b"):
        arr = tifffile.imread(out / f"{name}.tif")
        assert arr.shape == (32, 48) and arr.dtype == np.float32
    samples = tifffile.imread(out / "samples.tif")
    assert samples.shape == (3, 2, 32, 48)
    # The samples are streamed to the file while predicting, never all in memory: the
    # same numbers as the API's in-memory samples.
    from napari_duet.denoisplit import SplitModel

    api = SplitModel.load(model, device="cpu").predict(
        tifffile.imread(files["sum"]), samples=3, tile=32, return_samples=True, seed=0)
    np.testing.assert_array_equal(samples, api.samples)
    np.testing.assert_array_equal(tifffile.imread(out / "a.tif"), api.mean[0])
    assert not list(out.glob(".partial-*"))
    report = json.loads((out / "report.json").read_text())
    assert report["files"]["samples.tif"] == [3, 2, 32, 48]
    assert report["samples"] == 3 and report["std_calibrated"] is True
    assert report["model_metadata"]["noise_models"] is True


@pytest.mark.parametrize(
    ("a", "b", "needle"),
    [("a", "b_crop", "same shape"), ("tiny_a", "tiny_b", "smaller than the patch size")],
)
def test_train_bad_input_exits_2(files, capsys, a, b, needle):
    rc = main(["split", "train", "--channel-a", str(files[a]), "--channel-b", str(files[b]),
               "-o", str(files["root"] / "never.duet"), "--config", "small",
               "--likelihood", "gaussian", "--device", "cpu"])
    err = _err(capsys)
    assert rc == 2 and needle in err and len(err.splitlines()) == 1
    assert not (files["root"] / "never.duet").exists()


def test_predict_with_foreign_or_corrupted_model_exits_2(files, capsys, tmp_path):
    corrupted = tmp_path / "bad.duet"
    corrupted.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + b"\x00" * 40)
    nm = tmp_path / "nm.duet"
    assert main(["noise-model", "fit", "--signal", str(files["ca"]), "--observation",
                 str(files["a"]), "-o", str(nm), "--iterations", "5", "--device", "cpu"]) == 0
    capsys.readouterr()
    for model in (files["a"], corrupted, nm, tmp_path / "missing.duet"):
        rc = main(["split", "predict", str(files["sum"]), "--model", str(model), "-o",
                   str(tmp_path / "out")])
        err = _err(capsys)
        assert rc == 2 and len(err.splitlines()) == 1, err
    assert "'noise_model' model" in err or "not found" in err


def test_noise_model_given_as_only_one_exits_2(files, capsys):
    rc = main(["split", "train", "--channel-a", str(files["a"]), "--channel-b", str(files["b"]),
               "-o", str(files["root"] / "x.duet"), "--noise-model-a", str(files["a"])])
    assert rc == 2 and "both" in _err(capsys)


def test_train_checkpoint_resumes(files, capsys, tmp_path):
    base = ["split", "train", "--channel-a", str(files["a"]), "--channel-b", str(files["b"]),
            "--config", "small", "--likelihood", "gaussian", "--steps-per-epoch", "2",
            "--patch-size", "16", "--batch-size", "2", "--device", "cpu", "-q",
            "--no-calibration"]
    ckpt, model = tmp_path / "run.ckpt.duet", tmp_path / "m.duet"
    assert main([*base, "-o", str(model), "--epochs", "1", "--checkpoint", str(ckpt)]) == 0
    from napari_duet.denoisplit import SplitModel

    assert SplitModel.load(ckpt).metadata()["training"]["checkpoint_epoch"] == 1
    # The same command with more epochs goes on from epoch 1.
    assert main([*base, "-o", str(model), "--epochs", "2", "--checkpoint", str(ckpt)]) == 0
    training = SplitModel.load(model).metadata()["training"]
    assert training["epochs_run"] == 2 and "resume" not in training
    # Another run's checkpoint is refused before training, in one line.
    capsys.readouterr()
    assert main([*base, "-o", str(model), "--epochs", "2", "--seed", "1",
                 "--checkpoint", str(ckpt)]) == 2
    err = _err(capsys)
    assert "checkpoint of another run" in err and len(err.splitlines()) == 1
    assert main([*base, "-o", str(ckpt), "--checkpoint", str(ckpt)]) == 2
