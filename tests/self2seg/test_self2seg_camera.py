"""Self2Seg on raw camera images: photon noise, offsets, sparse dim nuclei."""

import numpy as np
import pytest

from napari_duet.core.metrics import dice
from napari_duet.self2seg import Self2SegConfig, self2seg


def _sparse_camera(seed, photons=5.0, bg=0.3, shape=(160, 224), fraction=0.008):
    """Raw uint16 camera image of a few small nuclei (< 1 % of the image)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    m = np.zeros(shape, bool)
    while m.mean() < fraction:
        cy, cx = rng.uniform(10, shape[0] - 10), rng.uniform(10, shape[1] - 10)
        d = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(4, 6) ** 2
        if not (d & m).any():
            m |= d
    lam = np.where(m, photons * rng.uniform(0.5, 1.0), bg)
    raw = 2.0 * rng.poisson(lam) + rng.normal(0, 3.0, shape) + 100.0
    return np.clip(np.round(raw), 0, 65535).astype(np.uint16), m


@pytest.mark.slow
def test_sparse_photon_limited_image_does_not_collapse(one_torch_thread):
    # <= 10 photons at the brightest pixel, 0.8 % foreground: the previous automatic
    # start (noise floor 1.5, one smoothing scale) gave Dice 0.29 here.
    raw, m = _sparse_camera(1)
    assert m.mean() <= 0.01 and raw.dtype == np.uint16
    res = self2seg(raw, config=Self2SegConfig(seed=0))
    assert dice(res.labels == 1, m) > 0.75
    assert res.instances.max() >= 0.5 * (np.unique(res.instances).size - 1)


@pytest.mark.slow
def test_raw_camera_image_segments_as_well_as_its_offset_free_version(one_torch_thread):
    raw, m = _sparse_camera(2, photons=20.0, bg=2.0, fraction=0.05)
    floating = (raw.astype(np.float32) - 100.0) / 2.0  # photons, no offset
    d_raw = dice(self2seg(raw, config=Self2SegConfig(seed=0)).labels == 1, m)
    d_float = dice(self2seg(floating, config=Self2SegConfig(seed=0)).labels == 1, m)
    assert d_raw > 0.8 and d_raw >= d_float - 0.02


def test_noise_model_found_and_reported(one_torch_thread):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :128]
    photons = np.where((yy - 48) ** 2 + (xx - 64) ** 2 < 30**2, 60.0, 2.0)
    raw = (2.0 * rng.poisson(photons) + rng.normal(0, 3, photons.shape) + 100).astype(np.uint16)
    res = self2seg(raw, config=Self2SegConfig(experts="constant"))
    rep = res.report()["resolved"]["noise_model"]
    assert rep["model"] == "poisson-gaussian" and rep["a"] == pytest.approx(2.0, rel=0.35)
    # the denoised image is back in the input's units (ADU, offset included)
    assert abs(float(np.median(res.denoised[res.labels == 0])) - 104.0) < 3.0
    gauss = self2seg(raw, config=Self2SegConfig(experts="constant", noise_model="gaussian"))
    assert gauss.report()["resolved"]["noise_model"]["model"] == "gaussian"
