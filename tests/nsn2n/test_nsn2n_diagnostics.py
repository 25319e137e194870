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
    assert "2.5D" in reason
    # pixel-independent noise: the blind-spot network (measured above BM4D, benchmarks/nsn2n.py)
    method, reason = recommend_method(add_noise(clean, 0.1))
    assert method == "nsn2n" and "pixel-independent" in reason and "blind-spot" in reason
    from napari_duet.nsn2n import NSN2NConfig

    # slices hardly matching: a single-image method, whatever the noise
    method, reason = recommend_method(add_noise(clean, 0.1, correlated=True),
                                      config=NSN2NConfig(tau=0.002))
    assert method == "noise2fast" and "match" in reason


def test_recommendation_rule_thresholds(monkeypatch):
    """The rule itself, on measured values: correlation, matched fraction, similarity."""
    from napari_duet.nsn2n import _diagnostics as d

    def rule(rho, frac, sim):
        monkeypatch.setattr(d, "noise_correlation", lambda *a, **k: rho)
        monkeypatch.setattr(d, "matched_fraction", lambda *a, **k: frac)
        monkeypatch.setattr(d, "slice_similarity", lambda *a, **k: sim)
        monkeypatch.setattr(d, "noise_model", lambda *a, **k: d.NoiseModel())
        return d.recommend_method(None)

    for sim in (0.95, 0.6):                        # correlated noise, thin / thick slices
        method, reason = rule(0.6, 0.9, sim)
        assert method == "nsn2n" and "2.5D" in reason and "blind" not in reason
    white_thin = rule(0.0, 0.95, 0.98)
    assert white_thin[0] == "nsn2n" and "blind-spot" in white_thin[1]
    assert "thin slices" in white_thin[1]
    white_thick = rule(0.0, 0.9, 0.6)
    assert white_thick[0] == "nsn2n" and "thick slices" in white_thick[1]
    assert "blind-spot" in white_thick[1]
    assert rule(0.24, 0.9, 0.9)[0] == "nsn2n" and "blind-spot" in rule(0.24, 0.9, 0.9)[1]
    assert "2.5D" in rule(0.25, 0.9, 0.9)[1]       # the threshold auto uses too
    assert rule(0.6, 0.2, 0.9)[0] == "noise2fast"  # slices hardly match
    assert rule(0.6, 0.9, 0.1)[0] == "noise2fast"  # unrelated slices


def test_pair_diagnostics_flag_the_moving_pairs():
    """A time-lapse where the content jumps between frames 3 and 4 (motion)."""
    from napari_duet.nsn2n import pair_diagnostics, summarize_pairs

    clean = _smooth_clean()[:8]
    clean[4:] = np.roll(clean[4:], 9, axis=2)
    pairs = pair_diagnostics(add_noise(clean, 0.05))
    assert [p["pair"] for p in pairs] == [[z, z + 1] for z in range(7)]
    moved = pairs[3]
    others = [p["matched"] for i, p in enumerate(pairs) if i != 3]
    assert moved["matched"] < min(others) - 0.1
    assert moved["verdict"] != "good"
    assert all(p["verdict"] == "good" for i, p in enumerate(pairs) if i != 3)
    line = summarize_pairs(pairs)
    assert "3-4" in line and "\n" not in line
    assert summarize_pairs([p for i, p in enumerate(pairs) if i != 3]) == ""


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
