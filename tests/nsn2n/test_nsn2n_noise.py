"""Signal-dependent noise: fitted noise models, their transforms, and what they change."""

from __future__ import annotations

import json

import numpy as np
import pytest
from nsn2n_synth import FAST, add_noise, make_clean
from scipy import ndimage

from napari_duet.core.metrics import psnr
from napari_duet.core.photon import anscombe_unbiased_inverse as gat_unbiased_inverse
from napari_duet.nsn2n import NSN2NConfig, NSN2NModel, noise_model, recommend_method, train
from napari_duet.nsn2n._noise import (
    NoiseModel,
    fit_noise,
    rician_mean,
    rician_unbiased_inverse,
)


def _camera(clean, photons=30.0, gain=2.0, offset=100.0, read=3.0, seed=0) -> np.ndarray:
    """Raw uint16 camera frames: gain * Poisson(photons * clean) + offset + N(0, read^2)."""
    rng = np.random.default_rng(seed)
    raw = gain * rng.poisson(photons * clean) + offset + read * rng.standard_normal(clean.shape)
    return np.clip(np.round(raw), 0, 65535).astype(np.uint16)


def _smooth(z=16, y=96, x=96) -> np.ndarray:
    zz, yy, xx = np.mgrid[0:z, 0:y, 0:x]
    c = (0.5 + 0.5 * np.sin(xx / 6.0) * np.cos(yy / 9.0 + zz / 5.0)) ** 2
    c[:, :, : x // 4] = 0  # background: zero photons, the camera offset
    return c.astype(np.float32)


def _sparse(z=8, y=48, x=48) -> np.ndarray:
    """Bright objects on 85 % dark background: fluorescence as it usually looks."""
    c = make_clean(z, y, x, seed=4)
    return ndimage.gaussian_filter((c > np.quantile(c, 0.85)).astype(np.float32), (0, 0.7, 0.7))


def _rician(clean, sigma, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n1, n2 = rng.standard_normal((2, *clean.shape))
    return np.sqrt((clean + sigma * n1) ** 2 + (sigma * n2) ** 2).astype(np.float32)


def _low_signal(z=8, y=48, x=48) -> np.ndarray:
    c = make_clean(z, y, x, seed=2)
    return np.where(c < 0.3, 0.0, 0.3 * c).astype(np.float32)  # dark background, dim objects


# --------------------------------------------------------------------------- fitting
@pytest.mark.parametrize("gain,offset,read", [(2.0, 100.0, 3.0), (5.0, 300.0, 6.0)])
def test_diagnostics_recover_gain_and_offset(gain, offset, read):
    vol = _camera(_smooth(), 30.0, gain, offset, read)
    found = noise_model(vol)
    assert found.kind == "poisson-gaussian"
    assert found.gain == pytest.approx(gain, rel=0.1)
    assert found.offset == pytest.approx(offset, rel=0.1)
    assert found.read_noise == pytest.approx(read, rel=0.2)
    assert "Poisson-Gaussian" in found.describe() and "gain" in found.describe()


def test_auto_tells_gaussian_rician_and_photon_noise_apart():
    clean = make_clean(8, 64, 64)
    assert fit_noise(add_noise(clean, 0.1)).kind == "gaussian"
    ric = fit_noise(_rician(_low_signal(8, 64, 64), 0.1))
    assert ric.kind == "rician" and ric.sigma == pytest.approx(0.1, rel=0.15)
    assert fit_noise(_camera(_sparse(8, 64, 64), read=1.0)).kind == "poisson-gaussian"
    # a channel 100x brighter than another is not photon noise between them
    two = np.stack([add_noise(clean, 0.1), 100 * add_noise(clean, 0.1, seed=2)])
    assert fit_noise(two).kind == "gaussian"


def _brick_stack(n_z=12) -> np.ndarray:
    """skimage's brick texture (a real photograph), shifted a little from slice to slice."""
    from skimage import data

    im = data.brick().astype(np.float32)[:128, :128]
    im = (im - im.min()) / np.ptp(im)
    return np.stack([ndimage.shift(im, (0.5 * k, 0.3 * k), order=1, mode="nearest")
                     for k in range(n_z)]).astype(np.float32)


def test_correlated_noise_is_not_taken_for_photon_noise():
    """In-plane correlated noise leaves a high-pass residual made of the texture's
    edges, which grow with the signal: the bare variance fit reads photon noise (the
    bug that cost 1.4 dB on real CT).  ``auto`` keeps the Gaussian model there, and
    still finds real camera noise on the same texture."""
    from napari_duet.nsn2n._diagnostics import fit_stacks_noise

    clean = _brick_stack()
    corr = add_noise(clean, 0.1, correlated=True)
    assert fit_noise(corr).kind == "poisson-gaussian"  # the variance fit alone
    found, rho = fit_stacks_noise(corr[None])
    assert found.kind == "gaussian" and rho > 0.25
    assert noise_model(corr).kind == "gaussian"
    cfg = NSN2NConfig(**{**FAST, "iterations": 2})
    assert train(corr, config=cfg).model.noise.kind == "gaussian"
    assert noise_model(_camera(clean)).kind == "poisson-gaussian"
    assert fit_stacks_noise(corr[None], "poisson-gaussian")[0].kind == "poisson-gaussian"


def test_exact_unbiased_inverses_remove_the_bias_at_low_counts():
    rng = np.random.default_rng(0)
    gat = NoiseModel("poisson-gaussian", gain=1.0, b=0.0)
    for lam in (1.0, 3.0, 10.0):
        d = float(gat.forward(rng.poisson(lam, 400_000).astype(np.float32)).mean())
        assert float(gat.inverse(np.float32(d))) == pytest.approx(lam, abs=0.03 + 0.01 * lam)
        # the algebraic inverse is biased there: the reason for the exact one
        assert abs((d * d / 4 - 3 / 8) - lam) > 0.1
    assert float(gat_unbiased_inverse(np.float32(0.5))) == 0.0  # below zero photons: zero
    sigma = 0.1
    for amp in (0.0, 0.05, 0.1, 0.3, 2.0):
        m = float(_rician(np.full((200_000,), amp, np.float32), sigma).mean())
        assert m == pytest.approx(sigma * float(rician_mean(amp / sigma)), rel=0.01, abs=1e-3)
        assert float(rician_unbiased_inverse(np.float32(m), sigma, signed=True)) == pytest.approx(
            amp, abs=0.012)


# --------------------------------------------------------------------------- training
def test_signal_dependent_path_beats_the_constant_sigma_blend():
    """Photon noise on sparse objects: one sigma per slice is the background's, so
    the blend keeps the objects' noise; in the stabilised domain it does not."""
    clean = _sparse()
    raw = _camera(clean, read=1.0)
    ref = 2.0 * 30.0 * clean + 100.0
    cfg = NSN2NConfig(**{**FAST, "context": "blind", "iterations": 80, "preview_every": 0,
                         "tta": False})
    const = train(raw, config=cfg.replace(noise_model="gaussian"))
    signal = train(raw, config=cfg.replace(noise_model="poisson-gaussian"))
    p_const, p_signal = (psnr(r.denoised, ref, data_range=60.0) for r in (const, signal))
    assert p_signal > p_const + 0.5, (p_const, p_signal)


def test_rician_low_signal_mean_is_not_biased_upward():
    clean = _low_signal()
    noisy = _rician(clean, 0.1)
    assert noisy.mean() - clean.mean() > 0.05  # the magnitude's bias
    cfg = NSN2NConfig(**{**FAST, "context": "blind", "iterations": 60, "preview_every": 0,
                         "tta": False})
    res = train(noisy, config=cfg)  # noise_model auto
    assert res.model.noise.kind == "rician"
    assert res.report()["noise_model"]["kind"] == "rician"
    bias = float(res.denoised.mean() - clean.mean())
    # the same network without the correction keeps the magnitude's bias
    plain = train(noisy, config=cfg.replace(noise_model="gaussian"))
    plain_bias = float(plain.denoised.mean() - clean.mean())
    assert plain_bias > 0.04
    assert abs(bias) < 0.4 * plain_bias, (bias, plain_bias)
    bg = clean == 0
    assert float(res.denoised[bg].mean()) < 0.4 * float(plain.denoised[bg].mean())


# --------------------------------------------------------------------------- records
def test_noise_model_recorded_in_report_model_file_and_cli(tmp_path):
    import tifffile

    from napari_duet.cli import main
    from napari_duet.core.modelfile import read_model_header, save_model_file

    raw = _camera(_sparse(6, 40, 40), read=1.0)
    res = train(raw, config=NSN2NConfig(**{**FAST, "context": "blind", "iterations": 3}))
    rep = res.report()
    assert rep["noise_model"]["kind"] == "poisson-gaussian" and rep["noise_model"]["gain"] > 0
    assert rep["config"]["noise_model"] == "poisson-gaussian"  # auto, resolved
    path = res.model.save(tmp_path / "m.duet")
    assert read_model_header(path)["extra"]["noise_model"] == res.model.noise.to_dict()
    loaded = NSN2NModel.load(path, device="cpu")
    assert loaded.noise == NoiseModel.from_dict(res.model.noise.to_dict())
    assert loaded.config.noise_model == "poisson-gaussian"
    np.testing.assert_allclose(loaded.predict(raw, tta=False).denoised,
                               res.model.predict(raw, tta=False).denoised, rtol=1e-4, atol=1e-3)
    # files written before noise models: Gaussian, no transform
    cfg = res.model.config.model_dict()
    del cfg["noise_model"]
    old = save_model_file(tmp_path / "old.duet", kind="nsn2n", config=cfg,
                          tensors=dict(res.model.net.state_dict()),
                          extra={"network": res.model.net.config(), "normalizers": []})
    old_model = NSN2NModel.load(old, device="cpu")
    assert old_model.noise.kind == "gaussian" and old_model.config.noise_model == "gaussian"
    # the CLI report and the recommendation name the model found
    tif = tmp_path / "raw.tif"
    tifffile.imwrite(tif, raw)
    assert main(["nsn2n", str(tif), "-o", str(tmp_path / "out.tif"), "--iterations", "3",
                 "--device", "cpu", "-q"]) == 0
    cli = json.loads((tmp_path / "out.json").read_text())
    assert cli["noise_model"]["kind"] == "poisson-gaussian"
    assert "Poisson-Gaussian" in cli["recommendation"]["reason"]
    assert main(["nsn2n", str(tif), "-o", str(tmp_path / "g.tif"), "--iterations", "3",
                 "--device", "cpu", "-q", "--noise-model", "gaussian"]) == 0
    assert json.loads((tmp_path / "g.json").read_text())["noise_model"]["kind"] == "gaussian"
    _, reason = recommend_method(raw, noise=res.model.noise)
    assert "gain" in reason


def test_chunked_apply_matches_in_memory_with_photon_noise():
    import torch

    from napari_duet.nsn2n._blind import BlindNet
    from napari_duet.nsn2n._chunked import iter_denoise_chunked

    torch.manual_seed(0)
    net = BlindNet(width=8, depth=2)
    torch.nn.init.normal_(net.unet.head.weight, std=0.05)
    raw = _camera(_sparse(10, 32, 32), read=1.0)
    model = NSN2NModel(net, NSN2NConfig(context="blind", noise_model="poisson-gaussian"), [],
                       noise=fit_noise(raw, "poisson-gaussian"))
    ref = model.predict(raw, axis=0, tta=False).denoised
    out = np.zeros(raw.shape, np.float32)
    list(iter_denoise_chunked(model, raw, out, axis=0, tta=False, slab=4))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * float(np.ptp(raw)))


def test_bad_noise_model_values_are_refused():
    from napari_duet.core.config import ConfigError

    with pytest.raises(ConfigError, match="noise_model"):
        NSN2NConfig(noise_model="poisson")
    with pytest.raises(ValueError, match="kind"):
        NoiseModel.from_dict({"kind": "laplace"})
    with pytest.raises(ValueError, match="gain"):
        NoiseModel.from_dict({"kind": "poisson-gaussian", "gain": 0.0})
