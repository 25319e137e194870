"""Every engine's result reports itself and saves itself: ``report()`` and ``save(folder)``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_split_training_result_saves_its_model_and_report(tmp_path):
    from napari_duet.denoisplit import SplitConfig, SplitModel, TrainConfig, train

    rng = np.random.default_rng(0)
    chans = [rng.random((32, 32)).astype(np.float32) for _ in range(2)]
    tc = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, patch_size=16, device="cpu",
                     likelihood="gaussian", kl="musplit", calibrate=False)
    result = train(chans, SplitConfig(n_levels=2, z_dims=4, filters=8), tc)
    paths = result.save(tmp_path / "run")
    assert sorted(p.name for p in paths) == ["model.duet", "report.json"]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["method"] == "denoisplit" and report["files"] == ["model.duet"]
    assert SplitModel.load(tmp_path / "run" / "model.duet", device="cpu").n_channels == 2


def test_nsn2n_prediction_reports_what_it_holds(tmp_path):
    from napari_duet.nsn2n import DenoiseResult

    res = DenoiseResult(np.zeros((3, 8, 8), np.float32), None)
    rep = res.report()
    assert rep["method"] == "nsn2n" and rep["shape"] == [3, 8, 8] and rep["tta"] is False
    names = sorted(p.name for p in res.save(tmp_path / "out"))
    assert names == ["denoised.tif", "report.json"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["shape"] == [3, 8, 8] and saved["files"] == ["denoised.tif"]


@pytest.mark.parametrize("path", [
    "napari_duet.self2seg:Self2SegResult", "napari_duet.self2seg:Self2SegStackResult",
    "napari_duet.nsn2n:NSN2NResult", "napari_duet.nsn2n:DenoiseResult",
    "napari_duet.denoisplit:SplitTrainResult", "napari_duet.denoisplit:SplitResult",
])
def test_every_result_type_has_report_and_save(path):
    import importlib

    mod, _, name = path.partition(":")
    cls = getattr(importlib.import_module(mod), name)
    assert callable(getattr(cls, "report", None)) and callable(getattr(cls, "save", None))
