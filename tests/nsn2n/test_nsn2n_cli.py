import json

import numpy as np
import pytest
import tifffile
from nsn2n_synth import add_noise, make_clean

from napari_duet.cli import main


@pytest.fixture
def stack_file(tmp_path):
    vol = (add_noise(make_clean(5, 28, 30)) * 200 + 20).clip(0, 255).astype(np.uint8)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, vol)
    return path, vol


def test_train_save_and_apply(stack_file, tmp_path):
    path, vol = stack_file
    out, model = tmp_path / "out.tif", tmp_path / "m.duet"
    rc = main(["nsn2n", str(path), "-o", str(out), "--iterations", "4", "--save-model",
               str(model), "--device", "cpu", "--seed", "3", "-q",
               "--uncertainty", str(tmp_path / "unc.tif")])
    assert rc == 0
    den = tifffile.imread(out)
    assert den.shape == vol.shape and den.dtype == np.float32
    assert abs(den.mean() - vol.mean()) < 0.2 * np.ptp(vol)
    assert tifffile.imread(tmp_path / "unc.tif").shape == vol.shape
    rep = json.loads((tmp_path / "out.json").read_text())
    assert rep["config"]["iterations"] == 4 and rep["config"]["seed"] == 3
    assert {"final_losses", "matched_fraction", "versions", "recommendation"} <= set(rep)
    # the correlation that chose the network is the one the recommendation reports
    assert rep["noise_correlation"] == rep["training"]["noise_correlation"]
    assert rep["training"]["context"] in ("blind", "2.5d")
    out2 = tmp_path / "applied.tif"
    assert main(["nsn2n", str(path), "-o", str(out2), "--model", str(model), "-q",
                 "--device", "cpu"]) == 0
    np.testing.assert_allclose(tifffile.imread(out2), den, rtol=1e-5, atol=1e-4)
    assert json.loads((tmp_path / "applied.json").read_text())["mode"] == "apply"


@pytest.mark.parametrize("case", ["2d", "two_slices", "axis", "foreign_model", "missing"])
def test_bad_input_exits_2_with_one_line(case, tmp_path, capsys, stack_file):
    path, _ = stack_file
    args = ["nsn2n", str(path), "-o", str(tmp_path / "o.tif"), "--iterations", "2", "-q"]
    if case == "2d":
        tifffile.imwrite(tmp_path / "img.tif", np.zeros((20, 20), np.uint8))
        args[1] = str(tmp_path / "img.tif")
    elif case == "two_slices":
        tifffile.imwrite(tmp_path / "two.tif", np.zeros((2, 20, 20), np.uint8))
        args[1] = str(tmp_path / "two.tif")
    elif case == "axis":
        args += ["--axis", "5"]
    elif case == "foreign_model":
        args += ["--model", str(path)]  # a TIFF is not a model file
    else:
        args[1] = str(tmp_path / "nope.tif")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("duet nsn2n: error:")
    assert not (tmp_path / "o.tif").exists()


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["nsn2n", "--help"])
    text = capsys.readouterr().out
    for opt in ("--axis", "--iterations", "--save-model", "--model", "--device", "--seed"):
        assert opt in text
