import numpy as np
import pytest
from nsn2n_synth import add_noise, make_clean

from napari_duet import DuetInputError
from napari_duet.nsn2n import NSN2NConfig, weight_map
from napari_duet.nsn2n._weights import auto_tau, weight_maps


def test_z_constant_volume_matches_almost_everywhere():
    clean = np.repeat(make_clean(1)[0][None], 6, axis=0)
    w = weight_map(add_noise(clean), axis=0, index=2)
    assert w.shape == clean.shape[1:] and w.dtype == np.float32
    assert set(np.unique(w)) <= {0.0, 1.0}
    assert w.mean() > 0.95


def test_region_that_changes_between_slices_is_unmatched():
    clean = np.repeat(make_clean(1)[0][None], 6, axis=0) * 0.5
    clean[3:, 10:22, 12:26] += 0.5  # a structure appears at slice 3
    noisy = add_noise(clean, sigma=0.05)
    w = weight_map(noisy, axis=0, index=2)  # pair (2, 3)
    inner = w[12:20, 14:24]
    assert inner.mean() < 0.1
    assert w[30:, 30:].mean() > 0.9
    # pairs without the change stay matched there
    assert weight_map(noisy, axis=0, index=0)[12:20, 14:24].mean() > 0.9


def test_auto_tau_scales_with_noise_and_fixed_tau_is_used():
    clean = np.repeat(make_clean(1)[0][None], 6, axis=0)
    cfg = NSN2NConfig()
    from napari_duet.nsn2n._guide import guide_stack

    taus = [weight_maps(guide_stack(add_noise(clean, s), cfg), cfg)[1] for s in (0.03, 0.15)]
    assert taus[1] > 2 * taus[0]
    _, tau = weight_maps(guide_stack(add_noise(clean), cfg), cfg.replace(tau=0.02))
    assert tau == 0.02
    assert auto_tau(np.abs(np.random.default_rng(0).normal(0, 1, 10000)), 1.0) == pytest.approx(
        1.0, rel=0.05)


@pytest.mark.parametrize("guide", ["gaussian", "bilateral", "nlm"])
def test_guides_run_and_keep_matches(guide):
    clean = np.repeat(make_clean(1, 32, 32)[0][None], 4, axis=0)
    w = weight_map(add_noise(clean), axis=0, index=1, config=NSN2NConfig(guide=guide))
    assert w.mean() > 0.8


def test_bad_pair_index():
    with pytest.raises(DuetInputError):
        weight_map(make_clean(4), axis=0, index=3)
