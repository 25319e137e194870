"""The noise variance that judges a split: a Poisson-Gaussian fit from the flat parts of
the data, independent of any denoiser.

Training judges each structure against the constant split with Stein's unbiased risk
estimate (:func:`~napari_duet.denoisplit._train.validation_gains`), which subtracts the
noise variance of the held-back acquisitions from their error.  A noise model
bootstrapped from a denoiser counts the denoiser's blur as noise; on a weak punctate
structure (nuclear pores of the development set: 1.8 photons on average, read noise 2)
it overestimated the mean variance by 51 %, more than the whole clean error of the
network, and the estimate said +17.6 dB where the test part measured +0.4 dB.

Here the variance is read from the data themselves: differences of neighbouring
pixels carry twice the noise variance and, where the image is flat, nothing else.
Binned by local brightness, each bin's robust (median) variance is an upper bound
(structure only adds to it); a line ``v = a s + b`` (the Poisson-Gaussian camera model,
Foi et al. 2008) is fitted under the bins: bins above it count less.  Where the
data do not follow that model (clipped 8-bit data give ``b < 0``; spatially correlated
noise has no flat-part signature) the fit is refused and the noise models' variance is
used as before.
"""

from __future__ import annotations

import numpy as np

#: Median of chi-square with one degree of freedom: median(d^2) = 0.4549 var(d) for a
#: Gaussian d.
_MEDIAN_CHI2_1 = 0.45493642
#: Brightness bins of the fit, and the fewest pixel pairs a bin needs.
_BINS = 20
_MIN_PAIRS = 100


def fit_poisson_gaussian(frames: np.ndarray) -> tuple[float, float] | None:
    """Fit ``variance = a * signal + b`` to one channel's noisy ``(F, Y, X)`` frames.

    Parameters
    ----------
    frames : ndarray
        Noisy frames of one structure (raw intensities, hot pixels already replaced).

    Returns
    -------
    (a, b) or None
        The gain ``a >= 0`` and the signal-independent variance ``b > 0``; None when
        the data do not follow that model (too few pixels, or a fit with ``b <= 0``,
        as on clipped 8-bit data), so that the caller keeps its noise models.
    """
    from scipy import ndimage as ndi

    f = np.asarray(frames, np.float64)
    if f.ndim == 2:
        f = f[None]
    ds, ms = [], []
    for img in f:
        local = ndi.uniform_filter(img, 3, mode="reflect")
        # Horizontal and vertical neighbours: the difference of two pixels has twice
        # the noise variance (independent noise) plus the structure's step.
        ds += [(img[:, 1:] - img[:, :-1]).ravel(), (img[1:] - img[:-1]).ravel()]
        ms += [(0.5 * (local[:, 1:] + local[:, :-1])).ravel(),
               (0.5 * (local[1:] + local[:-1])).ravel()]
    d2 = np.concatenate(ds) ** 2 / 2.0
    m = np.concatenate(ms)
    if d2.size < _BINS * _MIN_PAIRS:
        return None
    edges = np.unique(np.quantile(m, np.linspace(0.0, 1.0, _BINS + 1)))
    if edges.size < 3:
        return None
    idx = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, edges.size - 2)
    xs, vs, ws = [], [], []
    for b in range(edges.size - 1):
        sel = idx == b
        n = int(sel.sum())
        if n < _MIN_PAIRS:
            continue
        xs.append(float(m[sel].mean()))
        # The median ignores the pairs that straddle an edge (a minority of a bin).
        vs.append(float(np.median(d2[sel])) / _MEDIAN_CHI2_1)
        ws.append(float(n))
    if len(xs) < 3:
        return None
    return _fit_below(np.array(xs), np.array(vs), np.array(ws))


def _least_absolute_line(xs: np.ndarray, vs: np.ndarray,
                         ws: np.ndarray) -> tuple[float, float] | None:
    """The line ``a x + b`` (``a >= 0``) of least weighted absolute deviation from
    ``vs``: robust to a minority of bins, a stable start for :func:`_fit_below`."""
    from scipy.optimize import linprog

    n = xs.size
    # Variables: a >= 0, b free, then the residuals above (u) and below (l) the line.
    cost = np.concatenate([[0.0, 0.0], ws, ws])
    eq = np.hstack([xs[:, None], np.ones((n, 1)), np.eye(n), -np.eye(n)])
    bounds = [(0, None), (None, None)] + [(0, None)] * (2 * n)
    res = linprog(cost, A_eq=eq, b_eq=vs, bounds=bounds, method="highs")
    return (float(res.x[0]), float(res.x[1])) if res.success else None


def _fit_below(xs: np.ndarray, vs: np.ndarray, ws: np.ndarray, rounds: int = 20,
               tol: float = 0.05) -> tuple[float, float] | None:
    """A line under the bins' variances: from the least-absolute-deviation line,
    weighted least squares where bins more than ``tol`` (relative) above the line lose
    weight (structure raises a bin's variance, never lowers it); bins below keep their
    weight.  The brightness is floored at 0 (a dark bin's local mean is below 0 only by
    noise; its variance is the read noise's)."""
    xs = np.maximum(xs, 0.0)
    start = _least_absolute_line(xs, vs, ws)
    if start is None:
        return None
    a, b = start
    a_mat = np.stack([xs, np.ones_like(xs)], axis=1)
    for _ in range(rounds):
        line = np.maximum(a * xs + b, 1e-12)
        above = np.maximum((vs - line) / line, 0.0)
        w = ws / (1.0 + (above / tol) ** 2)
        sw = np.sqrt(w)[:, None]
        a, b = np.linalg.lstsq(a_mat * sw, vs * sw[:, 0], rcond=None)[0]
        if a < 0:  # a flat line: the variance does not grow with the signal here
            a, b = 0.0, float(np.sum(w * vs) / np.sum(w))
    if not (np.isfinite(a) and np.isfinite(b)) or b <= 0:
        return None
    return float(a), float(b)


def poisson_gaussian_variance(signal: np.ndarray, a: float, b: float) -> np.ndarray:
    """``a * signal + b``, with the signal floored at 0 (a variance is never below ``b``)."""
    return a * np.maximum(np.asarray(signal, np.float64), 0.0) + b
