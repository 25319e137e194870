"""N structures (2-4), old two-channel model files, lateral context and tile seams."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_duet import DuetInputError
from napari_duet.cli import main
from napari_duet.core.intensity import Normalizer
from napari_duet.core.metrics import range_invariant_psnr
from napari_duet.core.noise_models import GaussianMixtureNoiseModel
from napari_duet.denoisplit import (
    SplitConfig,
    SplitModel,
    TrainConfig,
    fit_noise_model,
    seam_metrics,
    tile_seams,
    train,
)
from napari_duet.denoisplit._data import PatchSampler, context_inputs, prepare_data
from napari_duet.denoisplit._lvae import LadderVAE
from napari_duet.denoisplit._synthetic import synthetic_multi

DATA = Path(__file__).parent / "data"


def _fast(**kw) -> TrainConfig:
    base = dict(epochs=1, patch_size=16, batch_size=4, steps_per_epoch=3, device="cpu",
                calib_samples=2, log_every=1, likelihood="gaussian", kl="musplit")
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------- old model files
def test_old_two_channel_file_loads_and_predicts_the_same(tmp_path):
    """A model file written before N-channel support (tiny net, noise models, calibration).

    The fixture and its expected outputs were produced by the two-channel code;
    its header has no ``n_channels`` / ``multiscale_count`` and noise models a, b.
    """
    path = tmp_path / "old.duet"
    shutil.copy(DATA / "old_two_channel_v1.safetensors", path)
    exp = np.load(DATA / "old_two_channel_expected.npz")
    from napari_duet.core.modelfile import read_model_header

    header = read_model_header(path)
    assert "n_channels" not in header["config"] and "multiscale_count" not in header["config"]
    model = SplitModel.load(path, device="cpu")
    meta = model.metadata()
    assert meta["n_channels"] == 2 and meta["channel_names"] == ["fil", "punc"]
    assert meta["lateral_context"] == 0 and meta["noise_models"] and meta["calibration"]
    img = exp["image"]
    det = model.predict(img, deterministic=True, tile=16, overlap=4)
    np.testing.assert_allclose(det.mean, exp["det_mean"], rtol=1e-5, atol=1e-4)
    res = model.predict(img, samples=3, tile=16, overlap=4, seed=7)
    np.testing.assert_allclose(res.mean, exp["mean"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(res.std, exp["std"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(res.noise_std, exp["noise_std"], rtol=1e-5, atol=1e-4)
    lin = model.predict(img, samples=3, tile=16, overlap=4, seed=7, calibration="linear")
    np.testing.assert_allclose(lin.std, exp["lin_std"], rtol=1e-5, atol=1e-4)
    # Saved again by this version, it still predicts the same.
    again = SplitModel.load(model.save(tmp_path / "new.duet"), device="cpu")
    assert again.config.n_channels == 2
    np.testing.assert_allclose(
        again.predict(img, deterministic=True, tile=16, overlap=4).mean, det.mean, atol=1e-6)


# ------------------------------------------------------------------- N channels
@pytest.mark.parametrize("n", [3, 4])
def test_n_channel_model_roundtrip_shapes_and_report(tmp_path, n):
    cfg = SplitConfig(n_levels=2, z_dims=3, filters=6, dropout=0.0, n_channels=n)
    torch.manual_seed(0)
    net = LadderVAE(cfg, 16).eval()
    assert net.out_channels == n
    w = torch.randn(9, 2)
    nms = [GaussianMixtureNoiseModel(w + c, 0.0, 100.0, 1.0) for c in range(n)]
    names = tuple(f"s{c}" for c in range(n))
    model = SplitModel(net, cfg, patch_size=16, input_norm=Normalizer(10.0, 5.0),
                       target_norms=[Normalizer(c, 2.0 + c) for c in range(n)],
                       noise_models=nms, channel_names=names)
    img = np.random.default_rng(0).uniform(0, 20, (24, 40)).astype(np.float32)
    res = model.predict(img, samples=3, tile=16, overlap=4, return_samples=True)
    assert res.mean.shape == res.std.shape == res.noise_std.shape == (n, 24, 40)
    assert res.samples.shape == (3, n, 24, 40)
    rep = res.report()
    assert rep["n_channels"] == n and rep["channel_names"] == list(names)
    assert set(rep["channels"]) == set(names)
    back = SplitModel.load(model.save(tmp_path / "m.duet"), device="cpu")
    assert back.metadata()["n_channels"] == n and back.channel_names == names
    for c in range(n):  # noise models keep their channel (prefixes a..d)
        torch.testing.assert_close(back.noise_models[c].weight, nms[c].weight)
    stack = model.predict(np.stack([img, img[::-1]]), deterministic=True, tile=16, overlap=4)
    assert stack.mean.shape == (n, 2, 24, 40)
    np.testing.assert_allclose(back.predict(img, deterministic=True, tile=16, overlap=4).mean,
                               stack.mean[:, 0], atol=1e-5)


def test_channel_count_and_shape_checks(tiny_config):
    d = synthetic_multi((32, 32), 4, seed=0)
    rng = np.random.default_rng(0)
    with pytest.raises(DuetInputError, match="2 to 4"):
        prepare_data(d.noisy[0], patch_size=16, val_fraction=0.2, rng=rng)
    with pytest.raises(DuetInputError, match="2 to 4"):
        next(iter(train([*d.noisy, d.noisy[0]], tiny_config, _fast())))
    with pytest.raises(DuetInputError, match="channel C"):
        next(iter(train([d.noisy[0], d.noisy[1], d.noisy[2][:, :30]], tiny_config, _fast())))
    nm = GaussianMixtureNoiseModel(torch.zeros(9, 2), 0.0, 100.0, 1.0)
    with pytest.raises(DuetInputError, match="one per channel"):
        train(list(d.noisy[:3]), tiny_config, _fast(likelihood="noise_model"),
              noise_models=[nm, nm])
    with pytest.raises(DuetInputError, match="channel names"):
        train(list(d.noisy[:3]), tiny_config, _fast(), channel_names=("a", "b"))
    with pytest.raises(DuetInputError):
        SplitConfig(n_channels=5)
    with pytest.raises(DuetInputError):
        SplitConfig(n_levels=2, multiscale_count=3)


@pytest.fixture(scope="module")
def three_structures():
    """A short CPU training on three distinct structures (filaments, puncta, blobs)."""
    torch.set_num_threads(1)
    d = synthetic_multi((96, 96), 3, seed=3)
    nms = [fit_noise_model(c, x, iterations=150, batch_size=10_000, device="cpu")
           for c, x in zip(d.clean, d.noisy, strict=True)]
    cfg = SplitConfig(n_levels=2, z_dims=8, filters=16, dropout=0.0)
    tc = TrainConfig(epochs=8, patch_size=32, batch_size=8, steps_per_epoch=40, device="cpu",
                     calib_samples=8, lr=3e-3, log_every=1000)
    model = train(list(d.noisy), cfg, tc, noise_models=nms, channel_names=d.names).model
    test = synthetic_multi((96, 96), 3, seed=13)  # another field of view
    res = model.predict(test.noisy.sum(0), samples=8, tile=32, batch_size=32)
    return d, test, model, res


@pytest.mark.slow
def test_three_channel_split_beats_constant_split(three_structures):
    d, test, model, res = three_structures
    assert model.n_channels == 3 and res.mean.shape == (3, 96, 96)
    inp = test.noisy.sum(0)
    shares = d.noisy.mean(axis=(1, 2)) / d.noisy.sum(0).mean()
    for c in range(3):
        split = range_invariant_psnr(res.mean[c], test.clean[c])
        const = range_invariant_psnr(inp * shares[c], test.clean[c])
        assert split > const + 1.0, (d.names[c], split, const)
    # Swapping channels must be worse: each output found its own structure.
    for c in range(3):
        other = (c + 1) % 3
        assert (range_invariant_psnr(res.mean[c], test.clean[c])
                > range_invariant_psnr(res.mean[other], test.clean[c]) + 1.0)


@pytest.mark.slow
def test_three_channel_calibration_per_channel(three_structures):
    _, _, model, res = three_structures
    cal = model.calibration
    assert len(cal["scalar"]) == len(cal["linear"]) == len(cal["stats_after"]) == 3
    assert all(k > 0 and np.isfinite(k) for k in cal["scalar"])
    assert res.calibrated and np.all(res.std >= 0)


# --------------------------------------------------------------- lateral context
def test_context_inputs_are_centred_block_averages():
    rng = np.random.default_rng(0)
    frame = rng.normal(size=(1, 20, 28)).astype(np.float32)
    t = torch.as_tensor(frame)
    f, y0, x0 = torch.tensor([0, 0]), torch.tensor([4, 0]), torch.tensor([8, 20])
    ctx = context_inputs(t, f, y0, x0, (8, 8), 2)
    assert ctx.shape == (2, 2, 8, 8)
    padded = np.pad(frame[0], 40, mode="reflect")
    for b in range(2):
        for k in (1, 2):
            s = 2**k
            ys = int(y0[b]) + 4 - 4 * s + 40
            xs = int(x0[b]) + 4 - 4 * s + 40
            region = padded[ys : ys + 8 * s, xs : xs + 8 * s]
            ref = region.reshape(8, s, 8, s).mean((1, 3))
            np.testing.assert_allclose(ctx[b, k - 1].numpy(), ref, atol=1e-5)


def test_augmented_context_stays_aligned_with_patch():
    """Under flips and transposes the context keeps the patch in its centre."""
    rng = np.random.default_rng(1)
    data = rng.uniform(0, 10, (2, 3, 40, 40)).astype(np.float32)
    ident = Normalizer(0.0, 1.0)
    s = PatchSampler(data, ident, [ident] * 3, patch_size=8, device=torch.device("cpu"),
                     seed=0, augment=True, context=2)
    inp, tgt = s.sample(32)
    assert inp.shape == (32, 3, 8, 8) and tgt.shape == (32, 3, 8, 8)
    torch.testing.assert_close(inp[:, 0], tgt.sum(1))
    # The centre 4x4 of context 1 is the patch itself averaged over 2x2 blocks.
    down = torch.nn.functional.avg_pool2d(inp[:, :1], 2)[:, 0]
    torch.testing.assert_close(inp[:, 1, 2:6, 2:6], down, atol=1e-5, rtol=1e-5)


def test_lateral_context_network_shapes_and_plain_keys(tiny_config):
    plain = LadderVAE(tiny_config, 16)
    lc = LadderVAE(replace(tiny_config, multiscale_count=2), 16)
    assert set(plain.state_dict()) < set(lc.state_dict())
    assert not any(k.startswith("context") for k in plain.state_dict())
    assert lc.cfg.multiple == 2 * plain.cfg.multiple
    x = torch.randn(2, 2, 32, 48)
    out_lc, kl_lc = lc(x)
    out, kl = plain(x[:, :1])
    assert out_lc.shape == out.shape == (2, 2, 32, 48)
    assert [k.shape for k in kl_lc] == [k.shape for k in kl]
    with pytest.raises(ValueError, match="input channel"):
        lc(x[:, :1])


@pytest.mark.parametrize("context", [1, 2])
def test_lateral_context_on_off_train_predict_and_seams(tmp_path, tiny_config, context):
    d = synthetic_multi((64, 64), 3, seed=2)
    cfg = replace(tiny_config, multiscale_count=context)
    model = train(list(d.noisy), cfg, _fast(patch_size=16, steps_per_epoch=4)).model
    assert model.config.context_count == context - 1
    img = d.noisy.sum(0)
    kw = dict(tile=32, overlap=8, deterministic=True)
    res = model.predict(img, **kw)
    assert res.mean.shape == (3, 64, 64)
    back = SplitModel.load(model.save(tmp_path / "lc.duet"), device="cpu")
    np.testing.assert_allclose(back.predict(img, **kw).mean, res.mean, atol=1e-5)
    whole = model.predict(img, tile=64, overlap=0, deterministic=True)
    sy, sx = tile_seams(img.shape, res.info["tile"], res.info["overlap"],
                        model.config.multiple)
    assert sy and sx
    m = seam_metrics(res.mean, whole.mean, sy, sx)
    assert m["n_seams"] == len(sy) + len(sx)
    assert all(np.isfinite(v) for v in m.values())
    # Untiled against itself: no error at all.
    assert seam_metrics(whole.mean, whole.mean, sy, sx)["rmse_seam"] < 1e-6


def test_seam_metrics_find_a_step_at_the_seam():
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float64)
    ref = np.sin(xx / 5.0) + np.cos(yy / 7.0)
    rng = np.random.default_rng(0)
    pred = ref + rng.normal(0, 0.01, ref.shape)
    stepped = pred.copy()
    stepped[:, 32:] += 0.2  # a tile whose output is offset
    smooth = seam_metrics(pred, ref, [], [32])
    step = seam_metrics(stepped, ref, [], [32])
    assert smooth["jump_ratio"] < 1.5 < step["jump_ratio"]
    assert tile_seams((64, 64), 32, 8, 8) == ([16, 32, 48], [16, 32, 48])
    assert tile_seams((60, 64), 32, 8, 8)[0] == [14, 30, 46]  # padded by 2 above


# ----------------------------------------------------------------------- CLI
def test_cli_three_channels_and_stack_outputs(tmp_path, capsys):
    d = synthetic_multi((32, 48), 3, seed=0)
    files = []
    for name, arr in zip(("actin", "mito", "nuclei"), d.noisy, strict=True):
        files.append(tmp_path / f"{name}.tif")
        tifffile.imwrite(files[-1], arr)
    mix = tmp_path / "mix.tif"
    tifffile.imwrite(mix, d.noisy.sum(0))
    model = tmp_path / "m.duet"
    args = ["split", "train", *[x for f in files for x in ("--channel", str(f))], "-o",
            str(model), "--config", "small", "--epochs", "1", "--steps-per-epoch", "2",
            "--patch-size", "16", "--batch-size", "2", "--device", "cpu", "--quiet",
            "--likelihood", "gaussian", "--lateral-context", "2"]
    assert main(args) == 0
    out = tmp_path / "pred"
    assert main(["split", "predict", str(mix), "--model", str(model), "-o", str(out),
                 "--samples", "2", "--device", "cpu"]) == 0
    assert tifffile.imread(out / "mmse.tif").shape == (3, 32, 48)
    assert tifffile.imread(out / "std.tif").shape == (3, 32, 48)
    assert tifffile.imread(out / "samples.tif").shape == (2, 3, 32, 48)
    assert not (out / "a.tif").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["channel_names"] == ["actin", "mito", "nuclei"]
    assert report["model_metadata"]["lateral_context"] == 1
    assert set(report["channels"]) == {"actin", "mito", "nuclei"}
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([d.noisy.sum(0)] * 2))
    out2 = tmp_path / "pred2"
    assert main(["split", "predict", str(stack), "--model", str(model), "-o", str(out2),
                 "--samples", "1", "--device", "cpu"]) == 0
    assert tifffile.imread(out2 / "mmse.tif").shape == (2, 3, 32, 48)  # (T, C, Y, X)
    assert not (out2 / "samples.tif").exists()
    capsys.readouterr()
    # Mixed option styles, a lone channel and a noise-model count mismatch exit 2.
    base = ["split", "train", "-o", str(tmp_path / "x.duet"), "--device", "cpu"]
    for extra in (["--channel", str(files[0]), "--channel-a", str(files[1]),
                   "--channel-b", str(files[2])],
                  ["--channel", str(files[0])],
                  ["--channel", str(files[0]), "--channel", str(files[1]),
                   "--noise-model", str(model)]):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.duet").exists()
