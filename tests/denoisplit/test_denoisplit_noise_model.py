"""GMM noise models: normalisation, mean, recovery of Poisson-Gaussian noise, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from denoisplit_helpers import poisson_gaussian

from napari_duet import DuetInputError, ModelFileError
from napari_duet.core.noise_models import (
    GaussianMixtureNoiseModel,
    bootstrap_noise_model,
    fit_noise_model,
)


@pytest.fixture(scope="module")
def pg_model() -> GaussianMixtureNoiseModel:
    torch.set_num_threads(1)
    s, x = poisson_gaussian(200_000, seed=0)
    return fit_noise_model(s, x, n_gaussian=3, n_coeff=2, min_sigma=125.0, iterations=300,
                           batch_size=20_000, device="cpu", seed=0)


@pytest.mark.parametrize("signal", [500.0, 2500.0, 4500.0])
def test_density_integrates_to_one_and_has_mean_signal(pg_model, signal):
    xs = torch.linspace(-3000, 9000, 24001)
    p = pg_model.likelihood(xs, torch.full_like(xs, signal))
    dx = float(xs[1] - xs[0])
    assert float(p.sum()) * dx == pytest.approx(1.0, abs=2e-3)
    assert float((p * xs).sum()) * dx == pytest.approx(signal, abs=0.5)


def test_recovers_poisson_gaussian_std(pg_model):
    s = np.array([500.0, 2500.0, 4500.0])
    true = np.sqrt(10.0 * s + 50.0**2)  # 86.6, 165.8, 217.9
    np.testing.assert_allclose(pg_model.std(s), true, rtol=0.04)


def test_log_likelihood_is_elementwise_and_finite(pg_model):
    obs = torch.randn(2, 3, 5) * 1e4  # far outside the fitted range too
    sig = torch.rand(2, 3, 5) * 8000 - 1000
    lp = pg_model.log_likelihood(obs, sig)
    assert lp.shape == obs.shape
    assert torch.isfinite(lp).all()


def test_mean_is_exact_even_outside_range(pg_model):
    means, var, alpha = pg_model.mixture_parameters(torch.tensor([-200.0, 7000.0]))
    np.testing.assert_allclose((alpha * means).sum(-1).numpy(), [-200.0, 7000.0], rtol=1e-5)
    assert bool((var >= pg_model.min_sigma).all())


def test_save_load_roundtrip_and_plot(pg_model, tmp_path):
    path = pg_model.save(tmp_path / "nm.duet")
    back = GaussianMixtureNoiseModel.load(path)
    obs, sig = torch.tensor([100.0, 3000.0]), torch.tensor([120.0, 2900.0])
    torch.testing.assert_close(back.log_likelihood(obs, sig), pg_model.log_likelihood(obs, sig))
    assert back.hist is not None and back.info["n_pairs"] == 200_000
    png = back.plot(tmp_path / "nm.png")
    assert png.stat().st_size > 1000


def test_foreign_and_corrupted_files_raise(tmp_path):
    bad = tmp_path / "bad.duet"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError):
        GaussianMixtureNoiseModel.load(bad)
    with pytest.raises(ModelFileError):
        GaussianMixtureNoiseModel.load(tmp_path / "missing.duet")


def test_bad_pairs_raise():
    with pytest.raises(DuetInputError):
        fit_noise_model(np.ones((10, 10)), np.ones((10, 11)))
    with pytest.raises(DuetInputError):
        fit_noise_model(np.ones((20, 20)), np.ones((20, 20)))  # constant signal


def test_bootstrap_from_noisy_data_alone():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:96, 0:96]
    clean = 200 + 1500 * (np.sin(xx / 9.0) * np.cos(yy / 13.0)) ** 2
    noisy = (rng.poisson(clean / 5.0) * 5.0 + rng.normal(0, 20, clean.shape)).astype(np.float32)
    nm = bootstrap_noise_model(noisy, denoiser="smooth", iterations=200, batch_size=20_000,
                               n_gaussian=2, device="cpu")
    assert nm.info["source"] == "bootstrap:smooth"
    s = np.array([600.0, 1200.0])
    # A smoothing denoiser blurs some signal into the "noise": allow a loose match.
    np.testing.assert_allclose(nm.std(s), np.sqrt(5.0 * s + 400.0), rtol=0.3)


def test_bootstrap_with_noise2fast():
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:48, 0:48]
    clean = 100 + 800 * (np.sin(xx / 6.0) * np.cos(yy / 7.0)) ** 2
    noisy = (rng.poisson(clean / 5.0) * 5.0).astype(np.float32)
    nm = bootstrap_noise_model(noisy, denoiser="noise2fast", steps=20, iterations=50,
                               batch_size=2000, device="cpu")
    assert nm.info["source"] == "bootstrap:noise2fast"
    assert np.all(np.isfinite(nm.std([200.0, 600.0])))


def test_gradient_stays_finite_when_a_component_weight_underflows():
    # Found on a GPU fit of real data: alpha logits of -48 to +58 per unit signal made one
    # component's weight exactly 0, and log(softmax) turned its gradient into NaN.
    w = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0],
                      [3.0, 1.0], [3.0, 1.0], [3.0, 1.0],
                      [2.7, -80.0], [0.2, 60.0], [0.1, 90.0]], requires_grad=True)
    nm = GaussianMixtureNoiseModel(w.detach(), 0.0, 100.0, 0.25)
    sig = torch.linspace(0, 100, 50)
    loss = -nm.log_likelihood(sig + 3.0, sig, weight=w).mean()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(w.grad).all()
    _, _, alpha = nm.mixture_parameters(sig)
    assert float(alpha.min()) == 0.0  # the case that used to break
