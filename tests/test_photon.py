"""Photon noise: Poisson-Gaussian fit, variance stabilisation and its unbiased inverse."""

import numpy as np
import pytest

from napari_duet.core.photon import StabilizedScale, fit_poisson_gaussian, gat, inverse_gat


def _camera(photons_img, rng, gain=2.0, read=3.0, offset=100.0):
    raw = gain * rng.poisson(photons_img) + rng.normal(0, read, photons_img.shape) + offset
    return np.clip(np.round(raw), 0, 65535).astype(np.uint16)


def _ramp_scene(shape=(192, 256), top=60.0):
    """Smooth intensities from 0 to ``top`` photons: flat steps and a ramp."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    steps = np.floor(xx / (shape[1] / 8)) / 7.0
    return top * np.where(yy < shape[0] // 2, steps, xx / (shape[1] - 1))


@pytest.mark.parametrize("gain,offset", [(2.0, 100.0), (0.7, 400.0)])
def test_fit_recovers_gain_and_offset(gain, offset):
    rng = np.random.default_rng(3)
    raw = _camera(_ramp_scene(), rng, gain=gain, read=3.0, offset=offset)
    fit = fit_poisson_gaussian(raw)
    assert fit.signal_dependent
    assert fit.gain == pytest.approx(gain, rel=0.10)
    assert fit.offset(read_variance=9.0) == pytest.approx(offset, rel=0.10)
    assert fit.to_dict()["model"] == "poisson-gaussian"


def test_fit_says_gaussian_for_constant_noise():
    rng = np.random.default_rng(4)
    img = 10 * _ramp_scene() + rng.normal(0, 20, (192, 256))
    fit = fit_poisson_gaussian(img)
    assert not fit.signal_dependent
    assert np.sqrt(fit.gaussian_variance) == pytest.approx(20, rel=0.1)


def test_gat_gives_unit_variance_at_every_level():
    rng = np.random.default_rng(5)
    a, b = 2.0, 9.0 - 2.0 * 100
    for photons in (2.0, 10.0, 50.0):
        z = _camera(np.full((200, 200), photons), rng).astype(np.float64)
        assert np.std(gat(z, a, b)) == pytest.approx(1.0, abs=0.08)
        # without the transform the std grows with the signal
    assert np.std(_camera(np.full((200, 200), 50.0), rng)) > 3 * np.std(
        _camera(np.full((200, 200), 2.0), rng))


def test_inverse_is_unbiased_at_low_counts():
    rng = np.random.default_rng(6)
    a, b = 2.0, 9.0 - 200.0
    for photons in (0.5, 1.0, 3.0):
        z = _camera(np.full(400_000, photons), rng).astype(np.float64)
        d = gat(z, a, b).mean()
        unbiased = float(inverse_gat(np.array([d]), a, b)[0])
        algebraic = (a * d / 2) ** 2 / a - 0.375 * a - b / a  # naive inverse of the mean
        truth = a * photons + 100.0
        assert abs(unbiased - truth) < 0.05 * a * photons + 0.05
        assert abs(algebraic - truth) > 2 * abs(unbiased - truth)


def test_stabilized_scale_round_trips():
    from napari_duet.core.intensity import fit_normalizer

    z = np.linspace(100, 600, 50)
    fit = fit_poisson_gaussian(_camera(_ramp_scene(), np.random.default_rng(7)))
    t = gat(z, fit.a, fit.b)
    m = StabilizedScale(fit, fit_normalizer(t))
    # the map of a noise-free level comes back near itself (the unbiased inverse
    # adds the small positive correction a mean of noisy counts needs)
    assert np.allclose(m.inverse(m.forward(z)), z, rtol=0.02, atol=2.0)
