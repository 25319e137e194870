"""Checks of a Self2Seg result against its seeds and its automatic start (issue 25)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_duet.cli import main
from napari_duet.self2seg import Self2SegConfig, boxes_to_regions, self2seg
from napari_duet.self2seg._checks import check_result, stop_text


def _blobs(shape=(64, 64)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((yy - 20) ** 2 + (xx - 20) ** 2) < 64) | (((yy - 44) ** 2 + (xx - 44) ** 2) < 81)


def test_seeds_ending_in_the_other_class_give_a_warning_and_a_hint():
    truth = _blobs()
    seeds = np.zeros(truth.shape, np.uint8)
    seeds[16:24, 16:24] = 2  # a foreground box on a nucleus
    seeds[0:10, 50:60] = 1  # a background box on background
    good = check_result(truth.astype(np.uint8), seeds, 2, auto=truth.astype(np.uint8))
    assert good.ok and good.hints == [] and good.seed_agreement == {"background": 1.0,
                                                                     "foreground": 1.0}
    wrong = truth.astype(np.uint8).copy()
    wrong[0:10, 50:60] = 1  # the background box ended up in the foreground
    chk = check_result(wrong, seeds, 2, auto=truth.astype(np.uint8))
    assert len(chk.warnings) == 1 and "background seeds ended up in the foreground" in \
        chk.warnings[0]
    assert chk.hints and "move the background box" in chk.hints[0]


def test_a_collapsed_mask_is_reported_against_the_automatic_start():
    truth = _blobs()
    seeds = np.zeros(truth.shape, np.uint8)
    seeds[16:24, 16:24] = 2
    seeds[0:10, 50:60] = 1
    collapsed = np.zeros(truth.shape, np.uint8)
    collapsed[19:21, 19:21] = 1  # 4 pixels left of two nuclei
    grey = truth * 100.0 + np.random.default_rng(0).normal(0, 5, truth.shape)
    chk = check_result(collapsed, seeds, 2, grey=grey)  # the automatic start computed here
    assert chk.auto_fractions[1] > 0.1
    assert any("collapsed" in w and "automatic start had" in w for w in chk.warnings)
    assert any("seed boxes" in h for h in chk.hints) and any("λ" in h for h in chk.hints)
    # Shrunk to a tenth of the automatic start, but not below 0.5 % of the image.
    shrunk = np.zeros(truth.shape, np.uint8)
    shrunk[36:44, 36:44] = 1
    chk = check_result(shrunk, None, 2, auto=truth.astype(np.uint8))
    assert any("far below" in w for w in chk.warnings)


def test_stop_text_says_why_and_after_how_many_alternations():
    assert stop_text("mask converged", 2, 4) == "mask converged after 2 of 4 alternations"
    assert stop_text("max_alternations", 4, 4) == "reached the maximum of 4 alternations"
    assert "energy stopped decreasing after 3 of 5" in stop_text(
        "energy decrease below stop_ratio of the previous one", 3, 5)


def test_engine_result_and_report_carry_the_checks():
    truth = _blobs()
    img = 40 + 120 * truth + np.random.default_rng(1).normal(0, 20, truth.shape)
    res = self2seg(img, None, Self2SegConfig(experts="constant", max_alternations=3))
    assert res.checks["warnings"] == [] and res.checks["stopped"].endswith("alternations")
    rep = res.report()
    assert rep["checks"] == res.checks and json.dumps(rep["checks"])


def test_bad_seed_box_on_real_nuclei_warns_in_cli_and_report(bad_seed_case, tmp_path, capsys,
                                                             one_torch_thread):
    """Issue 25: the DSB image with one badly placed background box used to say only
    "mask converged"; now stderr and report.json say the mask collapsed, and what to do."""
    noisy, fg_box, bg_box, truth = bad_seed_case
    path = tmp_path / "dsb.tif"
    tifffile.imwrite(path, noisy)
    out = tmp_path / "out"
    code = main(["self2seg", str(path), "-o", str(out), "--device", "cpu",
                 "--expert-steps", "60", "--fg-box", *map(str, fg_box),
                 "--bg-box", *map(str, bg_box)])
    assert code == 0
    err = capsys.readouterr().err
    assert "warning: the foreground covers only" in err and "collapsed" in err
    assert "hint: check the seed boxes" in err
    rep = json.loads((out / "report.json").read_text())
    assert rep["checks"]["warnings"] and rep["checks"]["hints"]
    assert rep["checks"]["class_fractions"][1] < 0.005 < 0.1 < rep["checks"]["auto_fractions"][1]
    assert tifffile.imread(out / "mask.tif").mean() < 0.005  # it is a collapse
    regions = boxes_to_regions(noisy.shape, [fg_box], [bg_box])
    assert regions.max() == 2


def test_batch_processes_a_folder_and_skips_finished_images(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img = (40 + 120 * _blobs((40, 40)) + rng.normal(0, 20, (40, 40))).astype(np.float32)
        tifffile.imwrite(folder / f"cell{i}.tif", img)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    args = ["self2seg", str(folder), "-o", str(out), "--experts", "constant",
            "--max-alternations", "2", "-q"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cell0", "cell1", "cell2"]
    for i in range(3):
        assert json.loads((out / f"cell{i}" / "report.json").read_text())["input"].endswith(
            f"cell{i}.tif")
    # A rerun skips the finished ones and redoes the one without a complete report.
    (out / "cell1" / "report.json").unlink()
    stamp = (out / "cell0" / "mask.tif").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["self2seg", str(folder / "*.tif"), "-o", str(out), "--experts", "constant",
                 "--max-alternations", "2"]) == 0
    cap = capsys.readouterr()
    assert "already finished" in cap.err
    assert (out / "cell1" / "report.json").is_file()
    assert (out / "cell0" / "mask.tif").stat().st_mtime_ns == stamp
    # Seeds belong to one image; an empty pattern is a clear error.
    assert main(["self2seg", str(folder), "-o", str(out), "--fg-box", "0", "0", "4", "4"]) == 2
    assert main(["self2seg", str(tmp_path / "none" / "*.tif"), "-o", str(out)]) == 2
    assert "no image files" in capsys.readouterr().err


def test_help_shows_box_order_defaults_and_examples(capsys):
    with pytest.raises(SystemExit):
        main(["self2seg", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Y0 X0 Y1 X1" in text and "not Fiji's x, y, width, height" in text
    assert "Default: 4" in text and "Example: --max-alternations 6" in text
    assert "Example: --expert-steps 400" in text and "Default: 200" in text
    assert "examples:" in text and "plates/*.tif" in text
