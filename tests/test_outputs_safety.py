"""Outputs never lose data: every output path is checked before the work starts,
results are written to a temporary file and renamed, reused folders lose stale files,
and failing to write is one line, exit 2."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import tifffile

from napari_duet.cli import main
from napari_duet.core.errors import DuetInputError
from napari_duet.core.io import (
    check_outputs,
    remove_stale_outputs,
    write_json,
    write_tiff,
)


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"duet {command}: error:"), err
    return err[0]


def _no_partial_files(folder) -> bool:
    return not [p for p in folder.rglob("*") if ".partial-" in p.name or ".duet-probe" in p.name]


def _forbid(monkeypatch, target: str) -> None:
    """Make ``target`` (module.attr) fail the test if the command gets as far as calling it."""
    def called(*_a, **_k):
        raise AssertionError(f"{target} was called: the output was not checked first")

    module, attr = target.rsplit(".", 1)
    monkeypatch.setattr(module + "." + attr, called)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 255, (6, 32, 32)).astype(np.uint8)
    yy, xx = np.mgrid[0:24, 0:24]
    blob = ((yy - 12) ** 2 + (xx - 12) ** 2 < 36).astype(np.float32)
    img = (40 + 120 * blob + rng.normal(0, 20, blob.shape)).clip(0, 255).astype(np.uint8)
    signal = np.linspace(10, 100, 16 * 16, dtype=np.float32).reshape(16, 16)
    obs = (signal + rng.normal(0, 3, signal.shape)).astype(np.float32)
    paths = {"vol": tmp_path / "vol.tif", "img": tmp_path / "img.tif",
             "signal": tmp_path / "signal.tif", "obs": tmp_path / "obs.tif"}
    for key, arr in (("vol", vol), ("img", img), ("signal", signal), ("obs", obs)):
        tifffile.imwrite(paths[key], arr)
    return paths


# ------------------------------------------------------------ outputs that would collide
def test_noise_model_output_named_like_its_plot_is_refused(files, tmp_path, capsys,
                                                           monkeypatch):
    _forbid(monkeypatch, "napari_duet.core.noise_models.fit_noise_model")
    out = tmp_path / "nm.png"
    out.write_bytes(b"an earlier plot")
    rc = main(["noise-model", "fit", "--signal", str(files["signal"]), "--observation",
               str(files["obs"]), "-o", str(out), "--iterations", "5", "--device", "cpu"])
    assert rc == 2
    line = _one_line_error(capsys, "noise-model")
    assert "nm.png" in line and "nm.duet" in line
    assert out.read_bytes() == b"an earlier plot"


def test_nsn2n_output_that_is_not_an_image_is_refused(files, tmp_path, capsys, monkeypatch):
    _forbid(monkeypatch, "napari_duet.nsn2n._train.train")
    out = tmp_path / "den.json"
    out.write_text('{"keep": true}\n')
    rc = main(["nsn2n", str(files["vol"]), "-o", str(out), "--iterations", "2", "-q",
               "--device", "cpu"])
    assert rc == 2
    line = _one_line_error(capsys, "nsn2n")
    assert "den.json" in line and ".tif" in line
    assert out.read_text() == '{"keep": true}\n'


@pytest.mark.parametrize("command", ["nsn2n", "self2seg", "noise-model", "split-train",
                                     "split-predict"])
def test_output_equal_to_the_input_is_refused(files, tmp_path, capsys, monkeypatch, command):
    if command == "nsn2n":
        _forbid(monkeypatch, "napari_duet.nsn2n._train.train")
        src = files["vol"]
        args = ["nsn2n", str(src), "-o", str(src), "--iterations", "2", "-q"]
    elif command == "self2seg":
        _forbid(monkeypatch, "napari_duet.self2seg._engine.self2seg")
        out = tmp_path / "out"
        out.mkdir()
        src = out / "mask.tif"  # the input is where an output goes
        tifffile.imwrite(src, tifffile.imread(files["img"]))
        args = ["self2seg", str(src), "-o", str(out), "--experts", "constant"]
    elif command == "noise-model":
        _forbid(monkeypatch, "napari_duet.core.noise_models.fit_noise_model")
        src = files["signal"]
        args = ["noise-model", "fit", "--signal", str(src), "--observation",
                str(files["obs"]), "-o", str(src), "--device", "cpu"]
    elif command == "split-train":
        _forbid(monkeypatch, "napari_duet.denoisplit._train.iter_train")
        src = files["obs"]
        args = ["split", "train", "--channel-a", str(files["signal"]), "--channel-b", str(src),
                "-o", str(src), "--device", "cpu", "-q"]
    else:
        _forbid(monkeypatch, "napari_duet.denoisplit._model.SplitModel.load")
        out = tmp_path / "pred"
        out.mkdir()
        src = out / "mmse.tif"
        tifffile.imwrite(src, tifffile.imread(files["img"]))
        args = ["split", "predict", str(src), "--model", str(tmp_path / "m.duet"),
                "-o", str(out)]
    before = src.read_bytes()
    assert main(args) == 2
    line = _one_line_error(capsys, args[0])
    assert "is the input" in line
    assert src.read_bytes() == before


def test_hard_link_to_the_input_is_the_input(files, tmp_path):
    link = tmp_path / "link.tif"
    os.link(files["vol"], link)
    with pytest.raises(DuetInputError, match="is the input"):
        check_outputs([files["vol"]], {"-o": link})


def test_uncertainty_equal_to_output_is_refused(files, tmp_path, capsys, monkeypatch):
    _forbid(monkeypatch, "napari_duet.nsn2n._train.train")
    out = tmp_path / "den.tif"
    out.write_bytes(b"earlier result")
    rc = main(["nsn2n", str(files["vol"]), "-o", str(out), "--uncertainty", str(out),
               "--iterations", "2", "-q", "--device", "cpu"])
    assert rc == 2
    line = _one_line_error(capsys, "nsn2n")
    assert "-o and --uncertainty" in line
    assert out.read_bytes() == b"earlier result"


def test_model_and_report_names_cannot_collide(files, tmp_path, capsys, monkeypatch):
    _forbid(monkeypatch, "napari_duet.nsn2n._train.train")
    rc = main(["nsn2n", str(files["vol"]), "-o", str(tmp_path / "den.tif"), "--save-model",
               str(tmp_path / "den.json"), "--iterations", "2", "-q", "--device", "cpu"])
    assert rc == 2
    assert "report and --save-model" in _one_line_error(capsys, "nsn2n")


def test_check_outputs_other_cases(files, tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(DuetInputError, match="is a folder"):
        check_outputs([files["vol"]], {"-o": tmp_path / "adir"})
    with pytest.raises(DuetInputError, match="is a file"):
        check_outputs([], {}, folders={"-o": files["img"]})
    with pytest.raises(DuetInputError, match="holds the input"):
        check_outputs([tmp_path / "s.zarr" / "0"], {"-o": tmp_path / "s.zarr"})
    # An input inside an output folder is fine as long as no output is the input.
    check_outputs([files["img"]], {"-o": tmp_path / "mask.tif"}, folders={"-o": tmp_path})
    assert _no_partial_files(tmp_path)


# ------------------------------------------------------------ unwritable output folder
def _unwritable_out(tmp_path, name: str):
    """An output path whose folder cannot be created: it would lie inside a file."""
    (tmp_path / "file.txt").write_text("not a folder")
    return tmp_path / "file.txt" / name


@pytest.mark.parametrize("command", ["nsn2n", "self2seg", "noise-model", "split-train",
                                     "split-predict"])
def test_unwritable_output_fails_before_the_work(files, tmp_path, capsys, monkeypatch,
                                                 command):
    if command == "nsn2n":
        _forbid(monkeypatch, "napari_duet.nsn2n._train.train")
        save = tmp_path / "m.duet"
        args = ["nsn2n", str(files["vol"]), "-o", str(_unwritable_out(tmp_path, "den.tif")),
                "--save-model", str(save), "--iterations", "2", "-q", "--device", "cpu"]
    elif command == "self2seg":
        _forbid(monkeypatch, "napari_duet.self2seg._engine.self2seg")
        args = ["self2seg", str(files["img"]), "-o", str(_unwritable_out(tmp_path, "out")),
                "--experts", "constant"]
    elif command == "noise-model":
        _forbid(monkeypatch, "napari_duet.core.noise_models.fit_noise_model")
        args = ["noise-model", "fit", "--signal", str(files["signal"]), "--observation",
                str(files["obs"]), "-o", str(_unwritable_out(tmp_path, "nm.duet"))]
    elif command == "split-train":
        _forbid(monkeypatch, "napari_duet.denoisplit._train.iter_train")
        args = ["split", "train", "--channel-a", str(files["signal"]), "--channel-b",
                str(files["obs"]), "-o", str(_unwritable_out(tmp_path, "m.duet")), "-q"]
    else:
        _forbid(monkeypatch, "napari_duet.denoisplit._model.SplitModel.load")
        args = ["split", "predict", str(files["img"]), "--model", str(tmp_path / "m.duet"),
                "-o", str(_unwritable_out(tmp_path, "pred"))]
    assert main(args) == 2
    line = _one_line_error(capsys, args[0])
    assert "cannot write" in line and "file.txt is not a folder" in line
    assert (tmp_path / "file.txt").read_text() == "not a folder"
    assert not (tmp_path / "m.duet").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_read_only_folder_fails_before_training(files, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root (or a file system without permissions)
            pytest.skip("this user can write into a read-only folder")
        _forbid(monkeypatch, "napari_duet.nsn2n._train.train")
        rc = main(["nsn2n", str(files["vol"]), "-o", str(locked / "den.tif"),
                   "--iterations", "2", "-q", "--device", "cpu"])
        assert rc == 2
        assert "cannot write" in _one_line_error(capsys, "nsn2n")
    finally:
        locked.chmod(0o700)


# ------------------------------------------------------------ atomic writes
def _partial_imwrite(exc: BaseException):
    """A tifffile.imwrite that writes the start of the file, then fails with ``exc``."""
    def imwrite(filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"II*\x00" + b"\x00" * 1000)
        raise exc

    return imwrite


def test_interrupted_tiff_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "out.tif"
    write_tiff(path, np.arange(12, dtype=np.float32).reshape(3, 4))
    before = path.read_bytes()
    monkeypatch.setattr(tifffile, "imwrite", _partial_imwrite(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_tiff(path, np.zeros((30, 40), np.float32))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_interrupted_json_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    write_json(path, {"run": 1})
    import pathlib

    real = pathlib.Path.write_text

    def dying(self, text, *a, **k):
        real(self, text[: len(text) // 2], *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(pathlib.Path, "write_text", dying)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"run": 2, "values": list(range(100))})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_cli_interrupted_while_writing_keeps_earlier_results(files, tmp_path, monkeypatch,
                                                             capsys):
    out = tmp_path / "out"
    args = ["self2seg", str(files["img"]), "-o", str(out), "--experts", "constant", "-q"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(tifffile, "imwrite", _partial_imwrite(KeyboardInterrupt()))
    assert main(args) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _no_partial_files(tmp_path)


def test_disk_full_is_one_line_and_keeps_earlier_results(files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["self2seg", str(files["img"]), "-o", str(out), "--experts", "constant", "-q"]
    assert main(args) == 0
    before = (out / "mask.tif").read_bytes()
    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(tifffile, "imwrite", _partial_imwrite(full))
    assert main(args) == 2
    line = _one_line_error(capsys, "self2seg")
    assert f"cannot write {out / 'mask.tif'}: No space left on device" in line
    assert "free disk space" in line
    assert (out / "mask.tif").read_bytes() == before
    assert _no_partial_files(tmp_path)


# ------------------------------------------------------------ order and stale files
def test_nsn2n_writes_results_before_the_model(files, tmp_path, monkeypatch):
    from napari_duet.nsn2n._model import NSN2NModel

    out, model = tmp_path / "den.tif", tmp_path / "m.duet"
    seen = {}
    real = NSN2NModel.save

    def save(self, path):
        seen["denoised_written"] = out.is_file()
        return real(self, path)

    monkeypatch.setattr(NSN2NModel, "save", save)
    assert main(["nsn2n", str(files["vol"]), "-o", str(out), "--save-model", str(model),
                 "--iterations", "2", "--width", "8", "--no-tta", "-q", "--device", "cpu"]) == 0
    assert seen == {"denoised_written": True} and model.is_file()
    assert json.loads((tmp_path / "den.json").read_text())["saved_model"] == str(model)


def test_reused_self2seg_folder_loses_stale_expert_files(files, tmp_path):
    out = tmp_path / "out"
    base = ["self2seg", str(files["img"]), "-o", str(out), "--experts", "constant", "-q"]
    assert main([*base, "--classes", "3"]) == 0
    assert (out / "expert_2.tif").is_file()
    (out / "expert_notes.tif").write_bytes(b"the user's own file")
    (out / "notes.txt").write_text("keep")
    assert main([*base, "--classes", "2"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["denoised.tif", "expert_0.tif", "expert_1.tif", "expert_notes.tif",
                     "labels.tif", "mask.tif", "notes.txt", "report.json"]
    assert json.loads((out / "report.json").read_text())["parameters"]["n_classes"] == 2


def test_remove_stale_outputs_only_touches_named_files(tmp_path):
    for name in ("samples.tif", "a.tif", "mmse.tif", "other.tif"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "b.tif").mkdir()  # not a file: left alone
    removed = remove_stale_outputs(tmp_path, names=("samples.tif", "a.tif", "b.tif",
                                                    "mmse.tif"), keep=("mmse.tif",))
    assert sorted(p.name for p in removed) == ["a.tif", "samples.tif"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tif", "mmse.tif", "other.tif"]
    assert remove_stale_outputs(tmp_path / "missing", names=("a.tif",)) == []


def test_reused_split_predict_folder_loses_stale_samples(tmp_path):
    from napari_duet.denoisplit._synthetic import synthetic_split

    d = synthetic_split((32, 32), seed=0)
    for name, arr in (("a", d.noisy_a), ("b", d.noisy_b), ("sum", d.noisy_a + d.noisy_b)):
        tifffile.imwrite(tmp_path / f"{name}.tif", arr.astype(np.float32))
    model = tmp_path / "m.duet"
    assert main(["split", "train", "--channel-a", str(tmp_path / "a.tif"), "--channel-b",
                 str(tmp_path / "b.tif"), "-o", str(model), "--likelihood", "gaussian",
                 "--config", "small", "--epochs", "1", "--steps-per-epoch", "2",
                 "--patch-size", "16", "--batch-size", "2", "--no-calibration",
                 "--device", "cpu", "-q"]) == 0
    out = tmp_path / "pred"
    base = ["split", "predict", str(tmp_path / "sum.tif"), "--model", str(model), "-o",
            str(out), "--tile", "32", "--device", "cpu", "-q"]
    assert main([*base, "--samples", "2"]) == 0
    assert (out / "samples.tif").is_file()
    assert main([*base, "--samples", "1"]) == 0
    assert not (out / "samples.tif").exists() and (out / "mmse.tif").is_file()
    assert "samples.tif" not in json.loads((out / "report.json").read_text())["files"]
