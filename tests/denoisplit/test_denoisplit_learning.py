"""Learning every structure from one small field, and saying when one was not learned."""

from __future__ import annotations

import numpy as np
import pytest

from napari_duet.core.metrics import range_invariant_psnr
from napari_duet.denoisplit import (
    SplitConfig,
    SplitModel,
    TrainConfig,
    fit_noise_model,
    learning_summary,
    train,
    validation_gains,
)
from napari_duet.denoisplit._synthetic import synthetic_multi

GAIN, READ = 4.0, 8.0


def _noisy(clean: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (GAIN * rng.poisson(clean / GAIN) + rng.normal(0, READ, clean.shape)).astype(
        np.float32)


def _equal_share(clean: np.ndarray) -> np.ndarray:
    """Scale every channel to the same mean: the channels differ only in shape."""
    means = clean.mean(axis=tuple(range(1, clean.ndim)), keepdims=True)
    return (clean * (clean.mean() / means)).astype(np.float32)


def _train(clean: np.ndarray, seed: int = 0):
    """Train on frame 0 of each channel (one 96 x 96 field), ~150 steps of a tiny
    network (about a CPU-minute); returns the model and the noisy channels."""
    noisy = _noisy(clean, seed + 1)
    nms = [fit_noise_model(clean[c], noisy[c], iterations=150, batch_size=10_000,
                           device="cpu") for c in range(clean.shape[0])]
    return _fit(noisy, nms, seed), noisy


def _fit(noisy: np.ndarray, nms, seed: int = 0):
    cfg = SplitConfig(n_levels=2, z_dims=8, filters=16, dropout=0.0, split_fallback=True)
    tc = TrainConfig(epochs=6, patch_size=32, batch_size=8, steps_per_epoch=25, device="cpu",
                     calibrate=False, lr=3e-3, log_every=1000, seed=seed)
    return train([noisy[c, 0] for c in range(noisy.shape[0])], cfg, tc,
                 noise_models=nms, channel_names=("A", "B")).model


@pytest.mark.slow
def test_structures_that_differ_only_in_shape_are_both_learned(tmp_path):
    """Filaments and puncta with the same intensity share: on a new field, each channel
    beats the constant split by >= 1 dB against the clean truth, and training reports
    both as learned (validation gain over the constant split), in the model file too."""
    clean = _equal_share(synthetic_multi((2, 96, 96), 2, seed=0).clean)
    model, noisy = _train(clean)
    val = model.training["validation"]
    assert val["not_learned"] == [], val
    assert all(g >= 0.1 for g in val["psnr_gain_db"].values()), val
    assert "not learned" not in val["summary"]
    # Which variance the estimate subtracted is recorded (on this small field of thin
    # bright structures the Poisson-Gaussian fit is refused: the noise models').
    assert set(val["noise_variance"]) == {"A", "B"}
    assert all(v["source"] in ("poisson_gaussian", "noise_model")
               for v in val["noise_variance"].values())
    # Each channel's weight against the constant split (the blend of least estimated
    # error) is recorded; learned channels keep most of the network's output.
    assert all(0.5 <= w <= 1.0 for w in val["network_weight"].values()), val
    inp = noisy[:, 1].sum(axis=0)
    res = model.predict(inp, samples=8, tile=96)
    share = float(noisy[0, 0].mean() / noisy[:, 0].sum(axis=0).mean())
    for c, s in enumerate((share, 1 - share)):
        split = range_invariant_psnr(res.mean[c], clean[c, 1])
        const = range_invariant_psnr(inp * s, clean[c, 1])
        assert split >= const + 1.0, (c, split, const)
    back = SplitModel.load(model.save(tmp_path / "m.duet"), device="cpu")
    assert back.training["validation"]["psnr_gain_db"] == pytest.approx(val["psnr_gain_db"])


@pytest.mark.slow
def test_a_channel_without_signal_is_reported_and_falls_back_to_the_constant_split():
    """Channel B carries no signal (a camera's read noise only): nothing can beat its
    constant split (about zero).  It is named as not learned and gives exactly the
    constant split; the structure in A is learned."""
    clean = synthetic_multi((2, 96, 96), 2, seed=0).clean[:1]
    rng = np.random.default_rng(5)
    noisy = np.concatenate([_noisy(clean, 1), rng.normal(0, READ, clean.shape)]).astype(
        np.float32)
    s = rng.uniform(0, 200, 200_000).astype(np.float32)
    nms = [fit_noise_model(clean[0], noisy[0], iterations=150, batch_size=10_000, device="cpu"),
           fit_noise_model(s, s + rng.normal(0, READ, s.size).astype(np.float32),
                           iterations=150, batch_size=10_000, device="cpu")]
    model = _fit(noisy, nms)
    val = model.training["validation"]
    assert val["not_learned"] == ["B"] and val["constant_split_for"] == ["B"], val
    assert val["network_weight"]["B"] == 0.0 and val["network_weight"]["A"] > 0, val
    assert "A: +" in val["summary"] and "B: not learned" in val["summary"]
    assert "more training time" in val["summary"]
    inp = noisy[:, 1].sum(axis=0)
    res = model.predict(inp, deterministic=True, tile=96)
    share = max(model.target_norms[1].offset, 0.0) / model.input_norm.offset
    np.testing.assert_allclose(res.mean[1], share * inp, rtol=1e-4, atol=1e-2)


def test_validation_gains_and_summary():
    """The gain is 10 log10(MSE of the constant split / MSE of the model) per channel."""
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 100, (4, 2, 8, 8))
    total = raw.sum(axis=1)
    share = raw[:, 0].sum() / total.sum()
    const = np.stack([share * total, (1 - share) * total], axis=1)
    assert validation_gains(raw, const) == pytest.approx([0.0, 0.0], abs=1e-9)
    half_err = raw + (const - raw) / np.sqrt(10)  # a tenth of the squared error
    assert validation_gains(raw, half_err) == pytest.approx([10.0, 10.0])
    assert validation_gains(raw, raw[:, ::-1] * 0 + const * 2)[0] < 0
    line = learning_summary({"actin": 2.13, "microtubules": 0.0})
    assert line == ("actin: +2.1 dB; microtubules: not learned, +0.0 dB: give more fields "
                    "or more training time")
    assert learning_summary({"a": 1.0, "b": 0.5}) == "a: +1.0 dB; b: +0.5 dB"
    assert learning_summary(None) == ""


@pytest.mark.slow
def test_split_train_names_each_structure_against_the_constant_split(tmp_path, capsys):
    """``duet split train`` prints the validation gain of every structure, the epoch lines
    carry it, and the model file records it."""
    import json

    import tifffile

    from napari_duet.cli import main
    from napari_duet.denoisplit._synthetic import synthetic_split

    d = synthetic_split((48, 64), seed=0)
    tifffile.imwrite(tmp_path / "actin.tif", d.noisy_a)
    tifffile.imwrite(tmp_path / "mito.tif", d.noisy_b)
    model = tmp_path / "m.duet"
    log = tmp_path / "log.jsonl"
    rc = main(["split", "train", "--channel", str(tmp_path / "actin.tif"), "--channel",
               str(tmp_path / "mito.tif"), "-o", str(model), "--config", "small",
               "--epochs", "2", "--steps-per-epoch", "2", "--patch-size", "16",
               "--batch-size", "2", "--device", "cpu", "--denoiser", "smooth",
               "--no-calibration", "--log-json", str(log)])
    assert rc == 0
    out = capsys.readouterr()
    line = next(x for x in out.out.splitlines() if x.startswith("validation PSNR"))
    assert "actin:" in line and "mito:" in line and " dB" in line
    assert "over the constant split: actin" in out.err  # the epoch lines
    val = SplitModel.load(model, device="cpu").training["validation"]
    assert set(val["psnr_gain_db"]) == {"actin", "mito"} and val["summary"] in line
    events = [json.loads(x) for x in log.read_text().splitlines()]
    assert any("val_gain_db_actin" in e for e in events)


def test_blend_weight_keeps_the_useful_part_of_a_network_a_little_worse_than_the_split():
    """A network whose clean error is a little above the constant split's (the old hard
    fallback threw it away) is blended with that split by the weight of least clean
    error, estimated from the noisy acquisitions only (SURE): the weight matches the
    oracle and the blend beats both."""
    from napari_duet.denoisplit._train import network_weights

    rng = np.random.default_rng(0)
    shape = (64, 2, 32, 32)
    s = rng.uniform(10, 50, shape)
    v = 4.0
    n = rng.normal(0, np.sqrt(v), shape)
    raw = s + n
    k, var_a, var_b = 0.5, 3.0, 3.5  # network: passes half the noise on, own error 3.0
    pred = s + k * n + rng.normal(0, np.sqrt(var_a), shape)
    base = s + rng.normal(0, np.sqrt(var_b), shape)
    clean_err_net, clean_err_base = k * k * v + var_a, var_b
    assert clean_err_net > clean_err_base  # the network alone is worse than the split
    w = network_weights(raw, pred, base, noise_var=np.full(shape, v),
                        slope=np.full(shape, k), base_slope=np.zeros(shape))
    oracle = var_b / (clean_err_net + var_b)
    assert w == pytest.approx([oracle, oracle], abs=0.03)
    for c in range(2):
        blend = w[c] * pred[:, c] + (1 - w[c]) * base[:, c]
        err = float(np.mean((blend - s[:, c]) ** 2))
        assert err < 0.8 * min(clean_err_base, float(np.mean((pred[:, c] - s[:, c]) ** 2)))
    # Judged against the noisy acquisitions alone, the noise the network passes on
    # would look like signal: the weight would be wrong (too high).
    assert network_weights(raw, pred, base)[0] > oracle + 0.05
    # A network that only adds to the split's error gets weight 0; a perfect one, 1.
    assert network_weights(raw, base + 2 * (base - s), base)[0] == 0.0
    assert network_weights(raw, s, base, noise_var=np.full(shape, v), slope=np.zeros(shape),
                           base_slope=np.zeros(shape))[0] == pytest.approx(1.0, abs=0.02)
