"""Split-quality metrics."""

from __future__ import annotations

import numpy as np
import pytest

from napari_duet.core.metrics import range_invariant_psnr
from napari_duet.denoisplit import ms_ssim, split_metrics


def _img(seed=0, shape=(64, 80)):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.random.default_rng(seed).normal(size=shape), 3.0) * 50 + 100


def test_range_invariant_psnr_matches_reference_definition():
    gt, pred = _img(0), _img(1) * 0.3 + _img(0) * 2 + 7
    g = (gt - gt.mean()) / gt.std()
    x = pred - pred.mean()
    a = (g * x).sum() / (x * x).sum()
    ref = 20 * np.log10((g.max() - g.min()) / np.sqrt(np.mean((g - a * x) ** 2)))
    assert range_invariant_psnr(pred, gt) == pytest.approx(ref, rel=1e-9)
    assert range_invariant_psnr(3 * pred - 5, gt) == pytest.approx(ref, rel=1e-9)


def test_ms_ssim_orders_quality():
    gt = _img(0)
    rng = np.random.default_rng(3)
    assert ms_ssim(gt, gt) == pytest.approx(1.0)
    small = ms_ssim(gt + rng.normal(0, 5, gt.shape), gt)
    large = ms_ssim(gt + rng.normal(0, 30, gt.shape), gt)
    assert 1.0 > small > large > 0


def test_split_metrics_per_channel_and_frames():
    clean = np.stack([np.stack([_img(0), _img(1)]), np.stack([_img(2), _img(3)])])
    res = split_metrics(clean * 2 + 1, clean)
    assert set(res) == {"A", "B"}
    assert res["A"]["ri_ssim"] == pytest.approx(1.0) and res["B"]["ri_ms_ssim"] == pytest.approx(
        1.0)
    with pytest.raises(ValueError):
        split_metrics(clean[:1], clean[:1])
