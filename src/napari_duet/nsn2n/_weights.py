"""Matched-region weight maps W between neighbouring slices.

``W_i = 1`` where the guides of slices i and i+1 agree within ``tau``: there the
two slices show the same structure and differ only by noise, so each is a
Noise2Noise target for the other.  Elsewhere (structure appeared, moved, or the
slice spacing is too large) the pixel is left out of the masked losses.

The paper's fixed ``tau = 0.015`` only works when the guide removes almost all
noise; with in-plane-correlated noise the guide keeps much of it and almost
nothing matches.  By default ``tau`` is therefore set from the data: a robust
(low-quantile) estimate of the standard deviation of the guide differences, times
``tau_factor`` (3 keeps ~99 % of pure-noise differences).
"""

from __future__ import annotations

import numpy as np

from ._config import NSN2NConfig

# Below this many matched pixels a pair teaches nothing; it is not sampled.
MIN_PAIR_FRACTION = 0.02


def guide_differences(guides: np.ndarray) -> np.ndarray:
    """|g_(i+1) - g_i| for all neighbouring pairs of a (Z, Y, X) guide stack."""
    return np.abs(np.diff(guides, axis=0))


def auto_tau(diffs: np.ndarray, factor: float = 3.0) -> float:
    """Threshold from the robust spread of the guide differences.

    ``diffs`` are absolute differences.  For zero-mean Gaussian differences of
    standard deviation sigma, the 25th percentile of |d| is 0.3186 sigma; a
    low quantile (rather than the median) ignores up to about half of the
    pixels having a real structural change on top of the noise.
    """
    d = np.asarray(diffs, dtype=np.float32).ravel()
    if d.size > 2_000_000:  # a strided subsample is plenty for a quantile
        d = d[:: d.size // 1_000_000]
    sigma = float(np.quantile(d, 0.25)) / 0.3186
    return float(max(factor * sigma, 1e-4))


def weight_maps(
    guides: np.ndarray, config: NSN2NConfig, tau: float | None = None
) -> tuple[np.ndarray, float]:
    """Binary weight maps for all pairs of a guide stack.

    Returns
    -------
    W : ndarray
        (Z-1, Y, X) float32 in {0, 1}; ``W[i]`` is for the pair (i, i+1).
    tau : float
        The threshold used.
    """
    diffs = guide_differences(guides)
    if tau is None:
        tau = config.tau if config.tau is not None else auto_tau(diffs, config.tau_factor)
    return (diffs <= tau).astype(np.float32), float(tau)


def guide_similarity(guides: np.ndarray, smooth: float = 3.0) -> np.ndarray:
    """Pearson correlation of neighbouring guides, one value per pair.

    ``tau`` is fitted to the guide differences themselves, so when *all* of a
    slice changes (spacing far larger than the structures) everything would
    "match"; this correlation catches that case: near 1 for a finely sampled
    stack, near 0 for unrelated slices.  The guides are smoothed further
    (``smooth`` px) first, because noise left in them lowers the correlation
    of even identical slices.
    """
    from scipy import ndimage

    g = np.stack([ndimage.gaussian_filter(x, smooth, mode="reflect") for x in guides])
    g = g.reshape(g.shape[0], -1).astype(np.float64)
    g = g - g.mean(axis=1, keepdims=True)
    num = np.sum(g[1:] * g[:-1], axis=1)
    den = np.sqrt(np.sum(g[1:] ** 2, axis=1) * np.sum(g[:-1] ** 2, axis=1))
    return np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
