"""The blind-spot 2.5D network (context "blind"): no identity leak, automatic choice, files."""

import numpy as np
import pytest
import torch
from nsn2n_synth import add_noise, make_clean

from napari_duet.nsn2n import NSN2NConfig, NSN2NModel, train
from napari_duet.nsn2n._blind import (
    GRID,
    BlindNet,
    blind_input,
    neighbour_slices,
    phase_mask,
    predict_mu,
)

BLIND = {"context": "blind", "width": 8, "batch_size": 4, "crop_size": 32, "device": "cpu",
         "preview_every": 0, "tta": False}


def test_the_input_holds_no_value_of_a_hidden_pixel():
    rng = np.random.default_rng(0)
    stack = rng.random((5, 9, 10)).astype(np.float32)  # odd and even sides: the borders
    for i in range(5):
        for phase in range(GRID * GRID):
            mask = phase_mask(stack.shape[1:], phase)
            a = blind_input(stack, i, mask)
            changed = stack.copy()
            changed[i][mask] += rng.normal(size=int(mask.sum())).astype(np.float32)
            np.testing.assert_array_equal(a, blind_input(changed, i, mask))
            # ... while every visible pixel of the slice is there as it is
            np.testing.assert_array_equal(a[0][~mask], stack[i][~mask])


@pytest.mark.parametrize("n_z", [3, 4, 5, 7])
def test_neighbour_channels_never_hold_the_target_slice(n_z):
    stack = np.arange(n_z, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32)
    for i in range(n_z):
        got = {float(s[0, 0]) for s in neighbour_slices(stack, i)}
        assert float(i) not in got
        assert got <= {float(j) for j in range(max(0, i - 2), min(n_z, i + 3))}


def test_each_output_pixel_is_independent_of_its_own_noisy_value():
    """Exact J-invariance of the estimate mu, for a network with random weights."""
    torch.manual_seed(0)
    net = BlindNet(width=8, depth=2)
    torch.nn.init.normal_(net.unet.head.weight, std=0.5)  # a non-trivial correction
    model = NSN2NModel(net, NSN2NConfig(context="blind", width=8), [], device="cpu")
    rng = np.random.default_rng(1)
    stack = rng.random((5, 21, 18)).astype(np.float32)
    z = 2
    for tta in (False, True):
        mu = predict_mu(model._predict_all, stack, z, tta)
        for y, x in [(0, 0), (0, 17), (20, 0), (20, 17), (10, 9), (7, 4), (11, 12)]:
            moved = stack.copy()
            moved[z, y, x] += 5.0
            mu2 = predict_mu(model._predict_all, moved, z, tta)
            assert np.abs(mu2[:, y, x] - mu[:, y, x]).max() < 1e-6  # its own value: no effect
            assert np.abs(mu2 - mu).max() > 1e-3  # ... while its neighbours see it


def test_pure_white_noise_is_not_reproduced():
    """A volume of pure white noise: neither the network's estimate nor the output follows it.

    The estimate mu (each pixel predicted with its own value hidden) must be
    uncorrelated with the noise.  The output adds back k (x - mu) with k the
    fraction of mu's error in the residual (the posterior step): a few percent
    of the noise, where a network that copies its input (an identity leak)
    would give 1.
    """
    from napari_duet.nsn2n._volume import prepare

    rng = np.random.default_rng(3)
    noise = rng.normal(size=(8, 48, 48)).astype(np.float32)
    vol = 0.5 + 0.1 * noise
    res = train(vol, config=NSN2NConfig(**{**BLIND, "iterations": 150, "width": 16}))
    stack = prepare(vol, 0)[1][0]
    mu = np.stack([predict_mu(res.model._predict_all, stack, z, False)[0] for z in range(8)])

    def corr(a):
        a = a - a.mean()
        return float(np.sum(a * noise) / np.sqrt(np.sum(a**2) * np.sum(noise**2)))

    assert abs(corr(mu)) < 0.05, corr(mu)  # measured 0.006
    out = (res.denoised - res.denoised.mean()) / 0.1  # in units of the noise
    slope = float(np.sum(out * noise) / np.sum(noise**2))  # noise fraction kept
    assert 0 <= slope < 0.1, slope  # measured 0.06 after 150 steps, 0.03 after 400
    assert out.std() < 0.3  # the noise is removed: what is left is far below it


def test_auto_context_picks_blind_for_white_and_25d_for_correlated_noise():
    clean = make_clean(8, 48, 48)
    cfg = NSN2NConfig(**{**BLIND, "context": "auto", "iterations": 2})
    white = train(add_noise(clean, 0.1), config=cfg)
    corr = train(add_noise(clean, 0.1, correlated=True), config=cfg)
    assert white.model.training["context"] == "blind" and white.model.is_blind
    assert corr.model.training["context"] == "2.5d" and corr.model.is_context
    assert (white.model.training["noise_correlation"] < 0.25
            < corr.model.training["noise_correlation"])
    assert white.model.config.context == "blind"  # the file records what was trained
    assert white.report()["training"]["context"] == "blind"
    rho = white.report()["training"]["noise_correlation"]
    assert rho == white.model.training["noise_correlation"]
    # a context given by the user is not measured: None, not NaN (the report is JSON)
    fixed = train(add_noise(clean, 0.1), config=cfg.replace(context="2.5d"))
    assert fixed.report()["training"]["noise_correlation"] is None
    assert set(white.loss_history) == {"total", "recon", "blind"}


def test_blind_model_round_trip(tmp_path):
    clean = make_clean(6, 40, 40)
    noisy = add_noise(clean, 0.1)
    res = train(noisy, config=NSN2NConfig(**{**BLIND, "iterations": 20}))
    path = res.model.save(tmp_path / "b.duet")
    loaded = NSN2NModel.load(path, device="cpu")
    from napari_duet.nsn2n._blind import stage_reach

    assert loaded.is_blind and loaded.config.context == "blind"
    assert loaded.wiener_mode == res.model.wiener_mode  # the chosen second stage travels
    assert loaded.halo == 2 + stage_reach(loaded.wiener_mode)
    a = res.model.predict(noisy, tta=False).denoised
    np.testing.assert_array_equal(a, loaded.predict(noisy, tta=False).denoised)
    np.testing.assert_array_equal(a, res.denoised)


def test_blind_mode_denoises():
    clean = make_clean(8, 48, 48)
    noisy = add_noise(clean, 0.1)
    res = train(noisy, config=NSN2NConfig(**{**BLIND, "iterations": 200, "width": 16}))
    from napari_duet.core.metrics import psnr

    assert psnr(res.denoised, clean, 1.0) > psnr(noisy, clean, 1.0) + 5.0


def test_moving_content_does_not_break_the_blind_mode():
    """A time-lapse whose content jumps between frames 3 and 4: those frames still denoise.

    The blind-spot network reads the neighbours as extra inputs, not as targets,
    so where they do not match it relies on the frame itself.
    """
    from napari_duet.core.metrics import psnr

    clean = make_clean(8, 48, 48)
    clean[4:] = np.roll(clean[4:], 9, axis=2)
    noisy = add_noise(clean, 0.1)
    res = train(noisy, config=NSN2NConfig(**{**BLIND, "iterations": 200, "width": 16}))
    gains = [psnr(res.denoised[z], clean[z], 1.0) - psnr(noisy[z], clean[z], 1.0)
             for z in range(8)]
    assert min(gains[3], gains[4]) > 4.0, gains  # measured 6.0 and 5.4 dB (others 5.3-6.2)
    assert min(gains[3], gains[4]) > np.median(gains) - 1.5, gains


# ---------------------------------------------------------------------- the mix stage
def test_fit_mix_recovers_weights_and_prefers_a_single_stage_when_it_is_exact():
    from napari_duet.nsn2n._blind import STAGES, fit_mix

    rng = np.random.default_rng(0)
    n = 200_000
    clean = rng.standard_normal(n)
    # eight estimates of ``clean`` with partly shared, partly own errors
    shared = rng.standard_normal(n)
    a = np.stack([clean + 0.3 * shared * (k % 3 - 1) + 0.3 * rng.standard_normal(n)
                  for k in range(len(STAGES))], 1)
    noise = 2.0 * rng.standard_normal(n)  # the recorruption target's noise: large
    half = (np.arange(n) // 1000) % 2
    mix = fit_mix(a, clean + noise, half)
    w = np.array(list(mix["weights"].values()))
    assert abs(w.sum() - 1) < 0.05  # unbiased estimates: the weights add up to 1
    assert mix["loss_cv"] < mix["loss_best_cv"]  # averaging independent errors wins
    # One candidate is the clean signal itself: the sum cannot beat it out of sample.
    a[:, 3] = clean
    exact = fit_mix(a, clean + noise, half)
    assert exact["weights"]["3d2"] > 0.95
    assert exact["loss_cv"] >= exact["loss_best_cv"]


def test_mix_stage_is_the_weighted_sum_of_the_stages():
    from napari_duet.nsn2n._blind import STAGES, stage_stack

    rng = np.random.default_rng(1)
    clean = np.cumsum(rng.standard_normal((6, 24, 20)), axis=2) * 0.05
    x = (clean + 0.1 * rng.standard_normal(clean.shape)).astype(np.float32)
    pilot = (clean + 0.03 * rng.standard_normal(clean.shape)).astype(np.float32)
    sig = [0.1] * 6
    weights = dict(zip(STAGES, (0.2, -0.1, 0.3, 0.0, 0.25, -0.05, 0.3, 0.1), strict=True))
    got = stage_stack(x, pilot, "mix", sig, weights)
    expected = sum(w * stage_stack(x, pilot, m, sig) for m, w in weights.items())
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="weights"):
        stage_stack(x, pilot, "mix", sig)
    with pytest.raises(ValueError, match="white noise"):
        stage_stack(x, pilot, "mix", None, weights)
