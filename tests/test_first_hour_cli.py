"""Issue 25 outside the viewer: one parameter declaration, `duet n2f`, save(folder)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tifffile

from napari_duet.cli import main


@pytest.mark.parametrize("cls_path, names", [
    ("napari_duet.self2seg:Self2SegConfig",
     ["n_classes", "lam", "max_alternations", "experts", "expert_width", "expert_steps",
      "invert", "device", "seed", "threads"]),
    ("napari_duet.nsn2n:NSN2NConfig",
     ["context", "iterations", "budget", "width", "guide", "tau", "lambda_rc", "lambda_ic",
      "tta", "device", "seed"]),
    ("napari_duet.denoisplit:TrainConfig",
     ["epochs", "max_minutes", "patch_size", "batch_size", "steps_per_epoch", "device",
      "seed"]),
])
def test_user_facing_fields_declare_label_and_help(cls_path, names):
    import importlib

    from napari_duet.core.config import param_help, param_label

    module, name = cls_path.split(":")
    cls = getattr(importlib.import_module(module), name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for n in names:
        meta = fields[n].metadata
        assert meta.get("label") and len(meta.get("help", "")) > 20, n
        assert param_label(cls, n) == meta["label"]
        assert "Default:" in param_help(cls, n)
    cls()  # defaults unchanged and valid


def test_automatic_defaults_say_what_auto_does():
    from napari_duet.core.config import param_help
    from napari_duet.denoisplit import TrainConfig
    from napari_duet.nsn2n import NSN2NConfig

    assert "Default: auto (24 on a CPU" in param_help(NSN2NConfig, "width")
    assert "Default: auto (9 minutes on a CPU" in param_help(TrainConfig, "max_minutes")


def test_n2f_command_denoises_every_plane(tmp_path, capsys):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    clean = (50 + 100 * (((yy - 16) ** 2 + (xx - 16) ** 2) < 80)).astype(np.float32)
    stack = np.stack([clean, clean[::-1]]) + rng.normal(0, 20, (2, 32, 32)).astype(np.float32)
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, stack)
    out = tmp_path / "den.tif"
    assert main(["n2f", str(src), "-o", str(out), "--steps", "40", "--threads", "1",
                 "-q"]) == 0
    den = tifffile.imread(out)
    assert den.shape == stack.shape and den.dtype == np.float32
    # Smoother than the input in the flat background (a short training is no full denoise).
    flat = np.stack([clean, clean[::-1]]) == 50
    assert den[flat].std() < 0.9 * stack[flat].std()
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["method"] == "noise2fast" and rep["parameters"]["steps"] == 40
    assert main(["n2f", str(src), "-o", str(tmp_path / "x.png")]) == 2
    assert "must end in .tif" in capsys.readouterr().err


def test_nsn2n_results_save_into_a_folder(tmp_path):
    from napari_duet.nsn2n import NSN2NConfig, train

    rng = np.random.default_rng(0)
    vol = rng.random((4, 24, 24)).astype(np.float32)
    res = train(vol, 0, NSN2NConfig(iterations=2, width=4, device="cpu", tta=True,
                                    preview_every=0))
    paths = res.save(tmp_path / "out", report={"input": "vol"})
    names = sorted(p.name for p in paths)
    assert names == ["denoised.tif", "model.duet", "report.json", "uncertainty.tif"]
    assert tifffile.imread(tmp_path / "out" / "denoised.tif").shape == vol.shape
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["input"] == "vol" and rep["method"] == "nsn2n"
