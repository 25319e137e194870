import json

import numpy as np
import pytest
import tifffile

from napari_duet.cli import main


@pytest.fixture
def blob_tif(write_blob):
    return write_blob((48, 56), radius=12)


def test_cli_writes_outputs(blob_tif, tmp_path, capsys):
    path, mask = blob_tif
    out = tmp_path / "out"
    code = main(["self2seg", str(path), "-o", str(out), "--experts", "constant", "--seed", "1"])
    assert code == 0
    m = tifffile.imread(out / "mask.tif")
    assert m.dtype == np.uint8 and m.shape == mask.shape and set(np.unique(m)) <= {0, 1}
    assert np.mean((m == 1) == mask) > 0.95
    den = tifffile.imread(out / "denoised.tif")
    assert den.dtype == np.float32 and den.shape == mask.shape
    assert 100 < float(np.median(den[mask])) < 200  # input intensity scale
    for k in (0, 1):
        assert tifffile.imread(out / f"expert_{k}.tif").dtype == np.float32
    rep = json.loads((out / "report.json").read_text())
    assert rep["parameters"]["experts"] == "constant" and rep["parameters"]["seed"] == 1
    assert len(rep["energies"]) == rep["alternations"] >= 1
    assert "total" in rep["timings"] and "numpy" in rep["versions"]
    assert "alternation 1/" in capsys.readouterr().out


def test_cli_boxes_and_classes(blob_tif, tmp_path):
    path, mask = blob_tif
    out = tmp_path / "o2"
    code = main(["self2seg", str(path), "-o", str(out), "--experts", "constant",
                 "--fg-box", "20", "24", "28", "32", "--bg-box", "0", "0", "8", "8", "--quiet"])
    assert code == 0
    assert np.mean((tifffile.imread(out / "mask.tif") == 1) == mask) > 0.95
    out3 = tmp_path / "o3"
    code = main(["self2seg", str(path), "-o", str(out3), "--experts", "constant",
                 "--classes", "3", "--quiet"])
    assert code == 0
    m3 = tifffile.imread(out3 / "mask.tif")
    assert m3.max() <= 2 and (out3 / "expert_2.tif").exists()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--fg-box", "0", "0", "100", "100"], "partly outside"),
        (["--fg-box", "60", "60", "70", "70"], "outside"),
        (["--classes", "1"], "n_classes"),
        (["--bg-box", "0", "0", "5", "5"], "class 1 (foreground) has no seed"),
        (["--lam", "-1"], "lam"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(blob_tif, tmp_path, capsys, extra, words):
    path, _ = blob_tif
    code = main(["self2seg", str(path), "-o", str(tmp_path / "x"), "--experts", "constant",
                 *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert words in err and err.strip().count("\n") == 0


def test_cli_missing_and_unreadable_files(tmp_path, capsys):
    assert main(["self2seg", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    assert main(["self2seg", str(bad), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and err.strip().count("\n") == 0


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["self2seg", "--help"])
    text = capsys.readouterr().out
    for opt in ("--fg-box", "--bg-box", "--lam", "--classes", "--experts", "--device", "--seed",
                "--max-alternations", "--invert", "--class-box"):
        assert opt in text
