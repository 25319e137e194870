"""``duet split predict IMG -o OUT.ome.zarr``: block tasks equal the in-memory prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

from napari_duet.cli import main
from napari_duet.core.chunks import staging_path
from napari_duet.core.intensity import Normalizer
from napari_duet.core.io import ImageMeta, open_image, write_ome_zarr
from napari_duet.denoisplit import SplitConfig, SplitModel
from napari_duet.denoisplit import _chunked as chunked
from napari_duet.denoisplit._lvae import LadderVAE

META = ImageMeta(("t", "y", "x"), (5.0, 0.4, 0.4), ("second", "micrometer", "micrometer"))


def _model(context: int = 1) -> SplitModel:
    cfg = SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.0, multiscale_count=context)
    torch.manual_seed(0)
    net = LadderVAE(cfg, 16).eval()
    return SplitModel(net, cfg, patch_size=16, input_norm=Normalizer(10.0, 5.0),
                      target_norms=[Normalizer(4.0, 2.0), Normalizer(6.0, 3.0)])


def _image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 20, size=shape).astype(np.float32)


def _outs(shape, n_channels=2, samples=1):
    lead, yx = shape[:-2], shape[-2:]
    full = (*lead, n_channels, *yx)
    return {"mmse": np.full(full, np.nan, np.float32), "std": np.full(full, np.nan, np.float32),
            "samples": np.full((samples, *full), np.nan, np.float32) if samples > 1 else None}


@pytest.mark.parametrize("context", [1, 2])
@pytest.mark.parametrize("shape", [(37, 53), (2, 45, 40)])
def test_blocks_equal_in_memory_everywhere(context, shape):
    """Deterministic: every block computes the in-memory tiles that meet it, from the same
    inputs (lateral context included), so the blocks' seams are invisible."""
    model = _model(context)
    img = _image(shape)
    ref = model.predict(img, deterministic=True, tile=16 * context, batch_size=3)
    outs = _outs(shape)
    events = list(chunked.iter_predict_chunked(model, zarr.array(img), outs, deterministic=True,
                                               tile=16 * context, batch_size=5, block=12))
    assert events[-1].done == events[-1].total == len(events) > 4  # progress per block
    mmse = np.moveaxis(outs["mmse"], 1, 0) if len(shape) == 3 else outs["mmse"]
    np.testing.assert_allclose(mmse, ref.mean, rtol=1e-5, atol=1e-5)
    assert np.all(outs["std"] == 0)


def test_one_block_image_gives_the_in_memory_samples():
    model = _model()
    img = _image((30, 34))
    ref = model.predict(img, samples=3, tile=16, batch_size=4, return_samples=True, seed=7)
    outs = _outs(img.shape, samples=3)
    list(chunked.iter_predict_chunked(model, img, outs, samples=3, tile=16, batch_size=4,
                                      seed=7))
    np.testing.assert_allclose(outs["mmse"], ref.mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs["std"], ref.std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs["samples"], ref.samples, rtol=1e-5, atol=1e-5)


@pytest.fixture
def files(tmp_path):
    model = _model()
    path = tmp_path / "m.duet"
    model.save(path)
    img = _image((3, 40, 36), seed=2)
    src = tmp_path / "img.ome.zarr"
    write_ome_zarr(src, img, META, levels=1)
    return SplitModel.load(path, device="cpu"), path, src, img


def test_cli_writes_mmse_std_samples_with_axes(tmp_path, files):
    model, path, src, img = files
    out = tmp_path / "split.ome.zarr"
    log = tmp_path / "log.jsonl"
    assert main(["split", "predict", str(src), "--model", str(path), "-o", str(out),
                 "--samples", "3", "--tile", "16", "--device", "cpu", "-q",
                 "--log-json", str(log)]) == 0
    mmse, meta = open_image(out)
    assert mmse.shape == (3, 2, 40, 36) and meta.axes == ("t", "c", "y", "x")
    assert meta.scale == (5.0, 1.0, 0.4, 0.4)
    group = zarr.open_group(str(out), mode="r")
    assert group["std"].shape == (3, 2, 40, 36) and group["samples"].shape == (3, 3, 2, 40, 36)
    # Frame 0 is the first task: the in-memory samples of that frame with the same seed.
    ref = model.predict(img[0], samples=3, tile=16, return_samples=True, seed=0)
    np.testing.assert_allclose(mmse[0], ref.mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(group["samples"][:, 0], ref.samples, rtol=1e-5, atol=1e-5)
    # Later frames have their own seeds: a different draw of the same posterior.
    other = model.predict(img[1], samples=3, tile=16, seed=0).mean
    assert not np.allclose(mmse[1], other)
    np.testing.assert_allclose(mmse[1], other, atol=0.5 * float(np.abs(other).max()))
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["done"] for e in events if e.get("stage") == "predict"] == [1, 2, 3]
    rep = json.loads((tmp_path / "split.ome.json").read_text())
    assert rep["chunked"] and rep["tile"] == 16 and rep["samples"] == 3


def test_cli_resume_computes_the_missing_blocks_only(tmp_path, files, monkeypatch):
    _, path, src, _ = files
    out, full = tmp_path / "o.ome.zarr", tmp_path / "full.ome.zarr"
    args = ["split", "predict", str(src), "--model", str(path), "-o", str(out), "--samples",
            "2", "--tile", "16", "--block", "24", "--device", "cpu", "-q"]
    assert main([*args[:6], str(full), *args[7:]]) == 0
    calls = [0]
    original = chunked._task_block

    def dying(*a, **k):
        calls[0] += 1
        if calls[0] > 5:  # 5 of 12 blocks finished, then the run is killed
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(chunked, "_task_block", dying)
    assert main(args) == 130
    assert not out.exists()  # staged beside the output until complete
    assert zarr.open_group(str(staging_path(out)), mode="r").attrs["napari_duet"]["state"][
        "done"] == [0, 1, 2, 3, 4]
    calls[0] = -100
    assert main([*args, "--resume"]) == 0
    assert calls[0] + 100 == 12 - 5
    a, b = zarr.open_group(str(out), mode="r"), zarr.open_group(str(full), mode="r")
    for name in ("0", "std", "samples"):
        np.testing.assert_array_equal(a[name][...], b[name][...])


def test_resume_refuses_another_runs_store(tmp_path, files, capsys):
    _, path, src, _ = files
    out = tmp_path / "o.ome.zarr"
    base = ["split", "predict", str(src), "--model", str(path), "-o", str(out), "--tile", "16",
            "--samples", "2", "--device", "cpu", "-q"]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "--seed", "3", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0]
    assert main([*base[:6], str(tmp_path / "folder"), *base[7:], "--resume"]) == 2
