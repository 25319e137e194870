import numpy as np
import pytest

from napari_duet import DuetInputError
from napari_duet.core.n2f import noise2fast


def test_noise2fast_denoises_and_keeps_scale():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48]
    clean = 100 + 80 * np.sin(yy / 6.0) * np.cos(xx / 7.0)
    noisy = (clean + rng.normal(0, 25, clean.shape)).astype(np.float32)
    den = noise2fast(noisy, steps=80, device="cpu", seed=0, width=8, depth=3, patience=0,
                      threads=1)
    assert den.shape == noisy.shape and den.dtype == np.float32
    mse_noisy = np.mean((noisy - clean) ** 2)
    mse_den = np.mean((den - clean) ** 2)
    assert mse_den < 0.5 * mse_noisy
    den2 = noise2fast(noisy, steps=80, device="cpu", seed=0, width=8, depth=3, patience=0,
                      threads=1)
    np.testing.assert_allclose(den, den2, rtol=1e-5, atol=1e-3)


def test_noise2fast_rejects_bad_input():
    with pytest.raises(DuetInputError):
        noise2fast(np.zeros((2, 3, 40, 40)))
    with pytest.raises(DuetInputError):
        noise2fast(np.zeros((40, 40)), steps=0)
