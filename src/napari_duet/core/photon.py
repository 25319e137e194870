"""Photon noise of cameras: the Poisson-Gaussian model, its fit, and a variance-stabilising pair.

A camera records ``z = gain * Poisson(photons) + read noise + offset`` (in ADU),
so the noise variance grows linearly with the signal::

    var(z) = a * E[z] + b          (a = gain, b = read variance - gain * offset)

:func:`fit_poisson_gaussian` estimates ``a`` and ``b`` from one image (local
means against the variance of a signal-free high-pass residual, in flat
places).  :func:`gat` is the generalised Anscombe transform, after which the
noise has unit variance whatever the signal; :func:`inverse_gat` is the
closed-form approximation of its exact unbiased inverse (Makitalo and Foi,
IEEE TIP 2011 and 2013), so a denoiser's output maps back without the bias a
plain algebraic inverse has at low counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["PoissonGaussian", "fit_poisson_gaussian", "gat", "inverse_gat",
           "anscombe_unbiased_inverse", "StabilizedScale"]

# High-pass kernel whose response to white noise of variance s^2 has variance s^2
# (Immerkaer's Laplacian difference, divided by its norm 6).
_HIGHPASS = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64) / 6.0
_MAD = 1.4826
# Least dynamic range of the signal-dependent variance (variance at the bright end over
# the variance at the dark end) for the data to count as photon-limited.
_SIGNAL_DEPENDENT_RATIO = 2.0
_ANSCOMBE_ZERO = 2.0 * np.sqrt(3.0 / 8.0)  # transform of zero photons: the inverse's floor


@dataclass(frozen=True)
class PoissonGaussian:
    """Noise variance ``a * z + b`` of an image (``z`` in the image's own units).

    ``signal_dependent`` says whether the fit found noise that grows with the
    signal clearly enough to stabilise it (else the noise is treated as
    Gaussian, variance ``gaussian_variance``).
    """

    a: float
    b: float
    low: float  # signal level at the dark end of the fit (1st percentile of local means)
    high: float  # and at the bright end (99.5th)
    signal_dependent: bool
    gaussian_variance: float

    @property
    def gain(self) -> float:
        """Camera gain in image units per photon (= ``a``)."""
        return self.a

    def variance(self, z) -> np.ndarray:
        """Noise variance at signal ``z`` (never below a small positive floor)."""
        floor = max(1e-12, 1e-6 * abs(self.a * self.high + self.b))
        return np.maximum(self.a * np.asarray(z, np.float64) + self.b, floor)

    def offset(self, read_variance: float = 0.0) -> float:
        """Zero-photon level for a given read variance: ``(read_variance - b) / a``."""
        return float((read_variance - self.b) / self.a) if self.a > 0 else float("nan")

    def to_dict(self) -> dict:
        """JSON-ready description (``model`` names the kind of noise found)."""
        d = {k: (bool(v) if isinstance(v, bool | np.bool_) else float(v))
             for k, v in asdict(self).items()}
        d["model"] = "poisson-gaussian" if self.signal_dependent else "gaussian"
        return d


def fit_poisson_gaussian(image, *, bins: int = 24, window: int = 7) -> PoissonGaussian:
    """Fit ``var(z) = a * E[z] + b`` to one 2D image or stack (last two axes are planes).

    Each pixel gives a local mean (``window`` x ``window`` box) and a noise
    sample (a high-pass residual that cancels smooth signal).  Pixels are
    grouped into ``bins`` quantile bins of their local mean, keeping the
    flattest half of each bin (edges and texture inflate the residual); the
    robust variance of each bin (``(1.4826 MAD)^2``) is then fitted by a line
    with weights for the variance's own sampling error.
    """
    x = np.asarray(image, np.float64)
    if x.ndim < 2 or min(x.shape[-2:]) < 3:
        raise ValueError(f"need a 2D image (or stack) of at least 3 x 3, got {x.shape}")
    planes = x.reshape((-1,) + x.shape[-2:])
    means, res, flat = [], [], []
    for p in planes:
        r = ndi.convolve(p, _HIGHPASS, mode="reflect")
        m = ndi.uniform_filter(p, window, mode="reflect")
        # Local activity of the signal: gradient of the smoothed image.
        s = ndi.uniform_filter(p, 3, mode="reflect")
        g = np.hypot(ndi.sobel(s, 0), ndi.sobel(s, 1))
        means.append(m[1:-1, 1:-1].ravel())
        res.append(r[1:-1, 1:-1].ravel())
        flat.append(g[1:-1, 1:-1].ravel())
    m, r, g = np.concatenate(means), np.concatenate(res), np.concatenate(flat)
    edges = np.unique(np.quantile(m, np.linspace(0.0, 1.0, bins + 1)))
    centres, variances, weights = [], [], []
    idx = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, max(len(edges) - 2, 0))
    for b in range(len(edges) - 1):
        sel = idx == b
        if sel.sum() < 50:
            continue
        gb = g[sel]
        keep = gb <= np.median(gb)
        rb = r[sel][keep]
        v = (_MAD * np.median(np.abs(rb - np.median(rb)))) ** 2
        centres.append(float(np.mean(m[sel][keep])))
        variances.append(v)
        weights.append(keep.sum())
    c, v, w = np.asarray(centres), np.asarray(variances), np.asarray(weights, np.float64)
    gauss_var = float(np.median(v)) if v.size else 0.0
    low, high = (float(np.quantile(m, 0.01)), float(np.quantile(m, 0.995)))
    if c.size < 3 or np.ptp(c) <= 0:
        return PoissonGaussian(0.0, gauss_var, low, high, False, gauss_var)
    # Weighted least squares; the variance of a variance estimate grows with v^2 / n,
    # so weight n / v^2 (iterated once from the unweighted fit).
    a, b = _line_fit(c, v, w / np.maximum(v, 1e-12) ** 2)
    fit = np.maximum(a * c + b, 1e-12)
    a, b = _line_fit(c, v, w / fit**2)
    if a <= 0:
        return PoissonGaussian(0.0, gauss_var, low, high, False, gauss_var)
    v_low = max(a * low + b, 1e-12)
    v_high = a * high + b
    dependent = bool(v_high > _SIGNAL_DEPENDENT_RATIO * v_low)
    return PoissonGaussian(float(a), float(b), low, high, dependent, gauss_var)


def _line_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted least-squares line ``y = a x + b``."""
    sw = np.sqrt(w)
    design = np.stack([x * sw, sw], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y * sw, rcond=None)
    return float(a), float(b)


def gat(z, a: float, b: float) -> np.ndarray:
    """Generalised Anscombe transform: noise of variance ``a z + b`` -> unit variance.

    ``GAT(z) = 2 / a * sqrt(max(a z + 3/8 a^2 + b, 0))``.
    """
    if not a > 0:
        raise ValueError(f"the gain a must be > 0, got {a!r}")
    z = np.asarray(z, np.float64)
    return (2.0 / a) * np.sqrt(np.maximum(a * z + 0.375 * a * a + b, 0.0))


def anscombe_unbiased_inverse(d) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse of the Anscombe transform.

    Makitalo and Foi (2011): ``I(D) = D^2/4 + sqrt(3/2)/(4D) - 11/(8D^2) +
    5 sqrt(3/2)/(8D^3) - 1/8`` photons.  It is 0 at ``D = 2 sqrt(3/8)`` (the
    transform of zero photons); below that the estimate is 0 photons.
    """
    d = np.maximum(np.asarray(d, np.float64), _ANSCOMBE_ZERO)
    s = np.sqrt(1.5)
    y = 0.25 * d**2 + 0.25 * s / d - 11.0 / 8.0 / d**2 + 0.625 * s / d**3 - 0.125
    return np.maximum(y, 0.0)


def inverse_gat(d, a: float, b: float) -> np.ndarray:
    """Exact unbiased inverse of :func:`gat` (closed-form approximation).

    Maps the mean of the stabilised data back to the mean of ``z``, unbiased
    at low counts where the algebraic inverse ``(a d / 2)^2 ...`` is not;
    the result never goes below the level of zero photons.
    """
    if not a > 0:
        raise ValueError(f"the gain a must be > 0, got {a!r}")
    # In photon units the Gaussian part adds b / a^2 to the variance (mean shift absorbed).
    return a * anscombe_unbiased_inverse(d) - b / a


@dataclass(frozen=True)
class StabilizedScale:
    """Intensity map of an engine that works on stabilised photon data.

    ``forward(x) = norm.forward(gat(x))`` and ``inverse(y) =
    inverse_gat(norm.inverse(y))`` (the unbiased inverse, for denoised means);
    ``norm`` is any object with ``forward``/``inverse`` (an affine
    :class:`~napari_duet.core.intensity.Normalizer`).
    """

    noise: PoissonGaussian
    norm: object

    def forward(self, x) -> np.ndarray:
        return self.norm.forward(gat(x, self.noise.a, self.noise.b).astype(np.float32))

    def inverse(self, y) -> np.ndarray:
        z = inverse_gat(self.norm.inverse(y), self.noise.a, self.noise.b)
        return z.astype(np.float32)
