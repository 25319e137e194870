import numpy as np
from nsn2n_synth import add_noise, make_clean
from scipy import ndimage

from napari_duet.nsn2n import (
    matched_fraction,
    noise_correlation,
    recommend_method,
    slice_similarity,
)


def _smooth_clean():
    # slowly varying along z, like a finely sampled stack
    return ndimage.zoom(make_clean(4, 64, 64), (3, 1, 1), order=1)


def test_noise_correlation_separates_white_from_in_plane_correlated_noise():
    clean = _smooth_clean()
    white = noise_correlation(add_noise(clean, 0.1))
    corr = noise_correlation(add_noise(clean, 0.1, correlated=True))
    assert abs(white) < 0.15
    assert corr > 0.5


def test_recommendation_follows_the_noise():
    clean = _smooth_clean()
    method, reason = recommend_method(add_noise(clean, 0.1, correlated=True))
    assert method == "nsn2n" and "\n" not in reason
    # strong correlated noise must not make similar slices look unrelated
    assert slice_similarity(add_noise(clean, 0.2, correlated=True)) > 0.4
    method, reason = recommend_method(add_noise(clean, 0.1))
    assert method == "nsn2n" and "pixel-independent" in reason
    from napari_duet.nsn2n import NSN2NConfig

    # pixel-independent noise and slices matching only in part: single-image method
    method, reason = recommend_method(add_noise(clean, 0.1), config=NSN2NConfig(tau=0.01))
    assert method == "noise2fast" and "pixel-independent" in reason


def test_unrelated_slices_recommend_single_image_method():
    vol = np.stack([make_clean(1, 48, 48, seed=s)[0] for s in range(6)])
    vol = add_noise(vol, 0.02, correlated=True)
    assert slice_similarity(vol) < 0.25
    assert slice_similarity(_smooth_clean()) > 0.8
    method, reason = recommend_method(vol)
    assert method == "noise2fast" and "alike" in reason


def test_matched_fraction_drops_with_a_fixed_small_tau():
    from napari_duet.nsn2n import NSN2NConfig

    vol = add_noise(_smooth_clean(), 0.1, correlated=True)
    assert matched_fraction(vol) > 0.8
    assert matched_fraction(vol, config=NSN2NConfig(tau=0.005)) < 0.5
