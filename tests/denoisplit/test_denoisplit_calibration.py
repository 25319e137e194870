"""Calibration of the sample std: scalar NLL fit, linear fit, noise-aware fit, plot."""

from __future__ import annotations

import numpy as np
import pytest

from napari_duet.denoisplit import calibration_plot, calibration_stats, fit_calibration
from napari_duet.denoisplit._calibration import apply_calibration, fit_scalar_calibration


def _data(seed=0, n=60_000):
    rng = np.random.default_rng(seed)
    true_std = rng.uniform(0.5, 4.0, size=n)
    clean = rng.uniform(0, 100, size=n)
    pred = clean + rng.normal(0, true_std)
    return clean, pred, true_std, rng


def test_scalar_recovers_underestimated_std():
    clean, pred, true_std, _ = _data()
    k = fit_scalar_calibration(pred, true_std / 3.0, clean)
    assert k == pytest.approx(3.0, rel=0.03)


def test_noise_aware_fit_calibrates_against_clean_signal():
    """With noisy targets, the known noise variance is separated from the model error."""
    clean, pred, true_std, rng = _data(1)
    noise_sd = 5.0
    noisy = clean + rng.normal(0, noise_sd, size=clean.shape)
    nv = np.full_like(clean, noise_sd**2)
    naive = fit_scalar_calibration(pred, true_std / 2.0, noisy)
    aware = fit_scalar_calibration(pred, true_std / 2.0, noisy, nv)
    assert aware == pytest.approx(2.0, rel=0.1)
    assert naive > 3.0  # absorbs the noise: overestimates the error


def test_calibration_reduces_miscalibration_and_linear_fit():
    clean, pred, true_std, _ = _data(2)
    std = 0.25 * true_std
    shape = (2, 200, 300)
    arr = [np.stack([x, x]).reshape(shape) for x in (pred, std, clean)]
    cal = fit_calibration(*arr)
    for c in range(2):
        assert cal["stats_after"][c]["ence"] < 0.1 < cal["stats_before"][c]["ence"]
        a, b = cal["linear"][c]
        assert a == pytest.approx(4.0, rel=0.1) and abs(b) < 0.3
    lin = apply_calibration(arr[1], cal, "linear")
    np.testing.assert_allclose(lin.mean(), true_std.mean(), rtol=0.1)
    assert np.array_equal(apply_calibration(arr[1], None), arr[1])


def test_stats_keep_top_bin_and_plot(tmp_path):
    std = np.array([0.0, 0.5, 1.0, 1.0])
    st = calibration_stats(np.zeros(4), std, np.ones(4), num_bins=2, drop_quantile=0.0)
    assert st["count"] == [1, 3]  # the largest std lands in the last bin, not dropped
    png = calibration_plot([st, st], tmp_path / "cal.png")
    assert png.stat().st_size > 1000
