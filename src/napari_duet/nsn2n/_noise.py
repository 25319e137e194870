"""Noise that depends on the signal: fitted noise models and their transforms.

Real instruments rarely give the constant-variance Gaussian noise the
blind-spot blend (``_blind.posterior``: one sigma per slice) and BM4D assume:

* **camera data** (fluorescence): ``x = gain * Poisson(photons) + offset +
  N(0, read^2)``, so the variance grows with the signal,
  ``var(x) = a * mean(x) + b`` with ``a = gain`` and ``b = read^2 - gain *
  offset``.  The generalised Anscombe transform (GAT) makes it nearly constant
  (unit variance); the engine trains and denoises in that domain and maps the
  result back with the closed-form approximation of the exact unbiased inverse
  (Makitalo & Foi, IEEE TIP 2011/2013).  Both depend on ``a`` and ``b`` only.
* **MRI magnitude** data: Rician, ``M = |A + sigma (n1 + i n2)|``.  Where the
  signal is low its mean is biased upward (``sigma sqrt(pi/2)`` where A = 0).
  The network learns E[M], so the output is mapped back through the inverse of
  the Rician mean function ``E[M](A)`` (a Rician "exact unbiased inverse"):
  no upward bias in the background.
* **Gaussian**: nothing to do (identity), the engine's behaviour so far.

:func:`fit_noise` measures the variance of a high-pass residual against the
local mean in bins of the local mean (robust per bin: median absolute
deviation) and fits ``var = a * mean + b`` robustly (weighted least squares); ``auto``
picks the model from that relationship (:func:`choose_kind`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ..core.photon import gat, inverse_gat

NOISE_MODELS = ("auto", "gaussian", "poisson-gaussian", "rician")
KINDS = NOISE_MODELS[1:]
# Relative growth of the noise variance over the signal range above which the
# noise counts as signal-dependent (Poisson-Gaussian).  Chosen on the defaults
# half of benchmarks/nsn2n_real.py: white Gaussian noise measured -0.04 (EM) and
# -0.01 (mitotic plate); camera noise (30 photons, gain 2, read 3) 0.98 on the
# EM crop (no dark background: 3-27 photons) and 3.4-21 elsewhere.  (The
# chromosome stack's own photon noise reads 1.3 with white noise added.)
SIGNAL_DEPENDENT = 0.5
# Rician signature in the darkest bin: mean / std of a Rayleigh is 1.913, its
# variance 0.429 of the bright regions' sigma^2, its mean 1.253 sigma.
_RAYLEIGH_RATIO = (1.5, 2.5)
_RAYLEIGH_VAR = (0.2, 0.7)
_RAYLEIGH_MEAN = (0.8, 1.8)
_N_BINS = 24
_RAYLEIGH_VAR_FACTOR = 2 - math.pi / 2  # variance of a Rayleigh / sigma^2
_MAX_SLICES = 16
_LAPLACE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32) / 6.0  # unit energy


@dataclass(frozen=True)
class NoiseModel:
    """A fitted noise model (parameters in the input's intensity units).

    Attributes
    ----------
    kind : {"gaussian", "poisson-gaussian", "rician"}
    gain : float
        Poisson-Gaussian slope ``a`` of variance against mean (camera gain).
    offset : float
        Poisson-Gaussian level of zero photons (camera offset), from the darkest
        part of the data; diagnostic only (the transforms use ``gain`` and ``b``).
    read_noise : float
        Poisson-Gaussian read-noise standard deviation (at ``offset``).
    b : float
        Variance at zero signal value: ``var = gain * x + b``.
    sigma : float
        Gaussian / Rician noise standard deviation.
    """

    kind: str = "gaussian"
    gain: float = 0.0
    offset: float = 0.0
    read_noise: float = 0.0
    b: float = 0.0
    sigma: float = 0.0

    # ---------------------------------------------------------------- transforms
    def forward(self, x: np.ndarray) -> np.ndarray:
        """To the domain the network works in (GAT for Poisson-Gaussian, else identity)."""
        x = np.asarray(x, np.float32)
        if self.kind != "poisson-gaussian":
            return x
        return gat(x, self.gain, self.b).astype(np.float32)

    def inverse(self, d: np.ndarray) -> np.ndarray:
        """Back to input units, without bias (exact unbiased inverses, see module doc)."""
        d = np.asarray(d, np.float32)
        if self.kind == "poisson-gaussian":
            return inverse_gat(d, self.gain, self.b).astype(np.float32)
        if self.kind == "rician" and self.sigma > 0:
            return rician_unbiased_inverse(d, self.sigma)
        return d

    def inverse_scale(self, spread: np.ndarray, d: np.ndarray) -> np.ndarray:
        """A spread (std) at transformed value ``d`` in input units (first order)."""
        spread = np.asarray(spread, np.float32)
        if self.kind == "poisson-gaussian":
            return (spread * self.gain * np.maximum(np.asarray(d, np.float32), 0) / 2
                    ).astype(np.float32)
        return spread

    def variance(self, mean: np.ndarray) -> np.ndarray:
        """Noise variance at signal level ``mean`` (input units)."""
        mean = np.asarray(mean, np.float64)
        if self.kind == "poisson-gaussian":
            return np.maximum(self.gain * mean + self.b, 0.0)
        return np.full_like(mean, self.sigma**2)

    # ---------------------------------------------------------------- records
    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d) -> NoiseModel:
        """From :meth:`to_dict` (model files): checked, ValueError naming the field."""
        if not isinstance(d, dict):
            raise ValueError(f"noise model must be a mapping, got {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown noise model fields: {', '.join(sorted(map(str, unknown)))}")
        kind = d.get("kind", "gaussian")
        if kind not in KINDS:
            raise ValueError(f"noise model kind must be one of {', '.join(KINDS)}, got {kind!r}")
        vals = {}
        for k in ("gain", "offset", "read_noise", "b", "sigma"):
            v = d.get(k, 0.0)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"noise model {k} must be a finite number, got {v!r}")
            vals[k] = float(v)
        if kind == "poisson-gaussian" and vals["gain"] <= 0:
            raise ValueError("noise model gain must be positive for poisson-gaussian")
        if vals["sigma"] < 0:
            raise ValueError("noise model sigma must be >= 0")
        return cls(kind=kind, **vals)

    def describe(self) -> str:
        """One line for the diagnostics and the CLI report."""
        if self.kind == "poisson-gaussian":
            return (f"Poisson-Gaussian (photon) noise: gain {self.gain:.4g}, offset "
                    f"{self.offset:.4g}, read noise {self.read_noise:.3g} "
                    f"(variance = {self.gain:.3g} x signal {self.b:+.4g})")
        if self.kind == "rician":
            return f"Rician (MRI magnitude) noise: sigma {self.sigma:.4g}"
        return f"Gaussian noise of constant variance: sigma {self.sigma:.4g}"


# -------------------------------------------------------------------- inverses
def rician_mean(nu: np.ndarray) -> np.ndarray:
    """E[M] / sigma of a Rician of amplitude ``nu`` sigma (Laguerre L_1/2 form)."""
    from scipy.special import i0e, i1e

    t = np.asarray(nu, np.float64) ** 2 / 4
    return math.sqrt(math.pi / 2) * ((1 + 2 * t) * i0e(t) + 2 * t * i1e(t))


_NU = np.concatenate([np.linspace(0, 8, 801), np.linspace(8.05, 40, 640)])
_MEAN_OF_NU = rician_mean(_NU)


def rician_unbiased_inverse(m: np.ndarray, sigma: float, signed: bool = False) -> np.ndarray:
    """Amplitude A whose Rician mean is ``m``: inverts ``E[M](A)``.

    A denoiser trained on magnitudes estimates E[M]; mapping that back through
    the mean function removes the upward bias at low signal.  Above 40 sigma
    ``E[M] ~ sqrt(A^2 + sigma^2)`` is exact to 1e-5 sigma.  Below the noise
    floor ``sigma sqrt(pi/2)`` (the mean where A = 0) no amplitude fits: 0
    there (default).  ``signed`` continues the inverse as an odd function
    instead (small negative values): near the floor the inverse is a square
    root, so clipping the estimate's errors leaves a small positive bias of
    the mean, which the odd continuation cancels, but its negative values cost
    PSNR (mitotic-plate crop, Rician sigma 0.08: 30.64 dB clipped, 25.73 dB
    signed; background mean 0.0108 clipped against 0.0100 clean).
    """
    m = np.asarray(m, np.float64)
    r = m / sigma
    floor = float(_MEAN_OF_NU[0])
    nu = np.interp(r, _MEAN_OF_NU, _NU)
    high = r > _MEAN_OF_NU[-1]
    nu = np.where(high, np.sqrt(np.maximum(r * r - 1.0, 0.0)), nu)
    if signed:
        below = r < floor
        # odd continuation: the inverse at floor + (floor - r), negated
        mirror = np.interp(2 * floor - r, _MEAN_OF_NU, _NU)
        nu = np.where(below, -mirror, nu)
    return (nu * sigma).astype(np.float32)


def rician_power_correction(m: np.ndarray, sigma: float) -> np.ndarray:
    """The conventional correction ``sqrt(max(m^2 - 2 sigma^2, 0))`` (benchmark comparison)."""
    m = np.asarray(m, np.float64)
    return np.sqrt(np.maximum(m * m - 2 * sigma * sigma, 0.0)).astype(np.float32)


# -------------------------------------------------------------------- fitting
def variance_curve(stacks: np.ndarray, n_bins: int = _N_BINS
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local mean against noise variance, in bins of equal pixel counts.

    For up to 16 evenly spaced slices per stack, two residuals whose variance
    is the noise variance where the structure is locally linear: a unit-energy
    3x3 Laplacian within the slice and the second difference along z (scaled
    to unit energy; NS-N2N's premise is noise independent between slices).
    The local mean is the 5x5 mean.  Per bin of local mean, only the flattest
    quarter of its pixels (smallest gradient of the local mean: within a bin the
    noise level is the same, so the choice does not bias it).  For each
    residual, the variance from the median absolute deviation (robust to the
    edges that remain); structure only adds to a residual's variance, so the
    residual whose curve is lower overall is kept.

    Returns
    -------
    means, variances, counts : ndarray
        One value per bin, by increasing mean.
    """
    ms, rs, rz, gs = [], [], [], []
    zk = np.sqrt(2.0 / 3.0)
    for stack in np.asarray(stacks, np.float32).reshape(-1, *stacks.shape[-3:]):
        n_z = stack.shape[0]
        for z in np.unique(np.linspace(0, n_z - 1, min(n_z, _MAX_SLICES)).round().astype(int)):
            img = stack[z]
            if min(img.shape) < 8:
                continue
            crop = (slice(2, -2), slice(2, -2))
            m = ndimage.uniform_filter(img, 5, mode="reflect")
            gy, gx = np.gradient(m)
            ms.append(m[crop].ravel())
            gs.append(np.hypot(gy, gx)[crop].ravel())
            rs.append(ndimage.convolve(img, _LAPLACE, mode="reflect")[crop].ravel())
            if n_z >= 3:
                zc = min(max(z, 1), n_z - 2)
                d = zk * (stack[zc] - 0.5 * (stack[zc - 1] + stack[zc + 1]))
                rz.append(d[crop].ravel())
    if not ms:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    m, r, g = np.concatenate(ms), np.concatenate(rs), np.concatenate(gs)
    r2 = np.concatenate(rz) if rz else None
    if m.size > 2_000_000:  # enough for the fit; keeps big volumes fast
        keep = np.random.default_rng(0).choice(m.size, 2_000_000, replace=False)
        m, r, g = m[keep], r[keep], g[keep]
        r2 = None if r2 is None else r2[keep]
    order = np.argsort(m, kind="stable")
    means, v_plane, v_z, counts = [], [], [], []
    for idx in np.array_split(order, n_bins):
        if idx.size < 200:
            continue
        flat = idx[g[idx] <= np.quantile(g[idx], 0.25)]
        means.append(float(np.mean(m[idx])))
        v_plane.append(_mad_var(r[flat]))
        v_z.append(_mad_var(r2[flat]) if r2 is not None else np.inf)
        counts.append(flat.size)
    # One residual for the whole curve (a minimum per bin would bias it low):
    # the one that leaves less structure, i.e. the smaller total variance.
    v_plane, v_z = np.array(v_plane), np.array(v_z)
    variances = v_z if np.sum(v_z) < np.sum(v_plane) else v_plane
    return np.array(means), variances, np.array(counts)


def _mad_var(r: np.ndarray) -> float:
    return float((1.4826 * np.median(np.abs(r - np.median(r)))) ** 2)


def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Robust line y = a x + b: least squares weighted by 1 / y^2 (a variance
    estimate's error grows with it), refitted once without the bins more than
    3 robust deviations off (edges and texture that survived the selection)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())):
        return 0.0, float(np.median(y))
    keep = np.ones(len(x), bool)
    a = b = 0.0
    for _ in range(2):
        w = 1.0 / np.maximum(y[keep], 1e-12 * max(float(y.max()), 1e-30)) ** 2
        xs, ys = x[keep], y[keep]
        xm, ym = np.average(xs, weights=w), np.average(ys, weights=w)
        den = np.sum(w * (xs - xm) ** 2)
        a = float(np.sum(w * (xs - xm) * (ys - ym)) / den) if den > 0 else 0.0
        b = float(ym - a * xm)
        rel = (y - (a * x + b)) / np.maximum(np.abs(a * x + b), 1e-12 * max(float(y.max()), 1e-30))
        mad = 1.4826 * float(np.median(np.abs(rel - np.median(rel))))
        new = np.abs(rel) <= 3 * max(mad, 0.05)
        if new.sum() < 3 or (new == keep).all():
            break
        keep = new
    return a, b


def choose_kind(means: np.ndarray, variances: np.ndarray, nonnegative: bool = True
                ) -> tuple[str, dict]:
    """Pick the noise model from the variance-vs-mean curve (see :func:`fit_noise`).

    ``nonnegative``: the data has (almost) no values below 0, as magnitudes;
    Rician is only considered then (Gaussian noise on an offset of about 1.25
    sigma mimics a Rayleigh background's mean and variance, not its sign).

    Returns the kind and the fitted numbers (``a``, ``b``, ``sigma``,
    ``growth``: relative rise of the variance over the signal range).
    """
    if len(means) < 4:
        sig = float(np.sqrt(np.median(variances))) if len(variances) else 0.0
        return "gaussian", {"a": 0.0, "b": sig * sig, "sigma": sig, "growth": 0.0}
    a, b = _line_fit(means, variances)
    v_lo = max(a * means[0] + b, 0.0)
    v_hi = max(a * means[-1] + b, 0.0)
    floor = max(float(np.median(variances)) * 1e-3, 1e-20)
    growth = (v_hi - v_lo) / max(v_lo, floor)
    upper = variances[len(variances) // 2:]
    sigma_hi = float(np.sqrt(np.median(upper)))
    # Rician: the darkest bin looks Rayleigh (pure noise, non-negative) while the
    # bright half has a flat variance (no photon-noise slope there).
    a_up, _ = _line_fit(means[len(means) // 2:], upper)
    up_growth = a_up * (means[-1] - means[len(means) // 2]) / max(float(np.median(upper)), floor)
    m0, v0 = means[0], variances[0]
    if nonnegative and sigma_hi > 0 and v0 > 0 and abs(up_growth) < 2.0:
        ratio = m0 / math.sqrt(v0)
        if (_RAYLEIGH_RATIO[0] <= ratio <= _RAYLEIGH_RATIO[1]
                and _RAYLEIGH_VAR[0] <= v0 / sigma_hi**2 <= _RAYLEIGH_VAR[1]
                and _RAYLEIGH_MEAN[0] <= m0 / sigma_hi <= _RAYLEIGH_MEAN[1]):
            # sigma from the background bins (Rayleigh variance 0.429 sigma^2): the
            # bright bins' variance includes texture, and on mostly dark volumes
            # the upper half of the bins is still partly background.
            ratios = means / np.sqrt(np.maximum(variances, 1e-30))
            bg = (ratios >= _RAYLEIGH_RATIO[0]) & (ratios <= _RAYLEIGH_RATIO[1])
            sigma = float(np.median(np.sqrt(variances[bg] / _RAYLEIGH_VAR_FACTOR)))
            return "rician", {"a": a, "b": b, "sigma": sigma, "growth": growth}
    if a > 0 and growth >= SIGNAL_DEPENDENT:
        return "poisson-gaussian", {"a": a, "b": b, "sigma": sigma_hi, "growth": growth}
    sig = float(np.sqrt(np.median(variances)))
    return "gaussian", {"a": a, "b": b, "sigma": sig, "growth": growth}


def _nonnegative(stacks: np.ndarray) -> bool:
    return float(np.mean(stacks < 0)) < 1e-3


def fit_noise(stacks: np.ndarray, kind: str = "auto") -> NoiseModel:
    """Fit a noise model to raw (input-unit) ``(..., Z, Y, X)`` stacks.

    ``kind="auto"`` chooses from the variance-vs-mean curve: Poisson-Gaussian
    when the variance rises by more than ``SIGNAL_DEPENDENT`` times its value at
    the darkest level over the signal range, Rician when the darkest level looks
    like Rayleigh noise (mean/std 1.9, variance 0.43 of the bright level's) under
    a flat variance, else Gaussian.  A given kind is fitted as asked (for
    Poisson-Gaussian, a non-positive slope falls back to a tiny gain, which makes
    the transform nearly affine).

    The offset of Poisson-Gaussian data (the zero-photon level, reported only) is
    the mean of the darkest bin of local means (background), and the read noise
    the noise there.
    """
    from ..core.errors import DuetInputError

    if kind not in NOISE_MODELS:
        raise DuetInputError(f"noise_model must be one of {', '.join(NOISE_MODELS)}, "
                             f"got {kind!r}")
    stacks = np.asarray(stacks, np.float32)
    if kind == "auto" and stacks.ndim == 4 and len(stacks) > 1:
        # Several stacks (channels, ...) share one model: each must show the same
        # kind on its own (a channel 100x brighter than another is not photon
        # noise between them), then the parameters are fitted on all together
        # (channels of one camera share its gain).
        kinds = {choose_kind(*variance_curve(s[None])[:2], _nonnegative(s))[0]
                 for s in stacks}
        kind = kinds.pop() if len(kinds) == 1 else "gaussian"
    means, variances, _ = variance_curve(stacks)
    found, fit = choose_kind(means, variances, _nonnegative(stacks))
    if kind == "auto":
        kind = found
    if kind == "gaussian":
        return NoiseModel("gaussian", sigma=float(np.sqrt(max(np.median(variances), 0.0)))
                          if len(variances) else 0.0)
    if kind == "rician":
        sigma = fit["sigma"]
        if found != "rician" and len(variances):
            sigma = float(np.sqrt(np.median(variances[len(variances) // 2:])))
        return NoiseModel("rician", sigma=sigma)
    a, b = fit["a"], fit["b"]
    if not a > 0:  # asked for photon noise where none shows: nearly affine transform
        span = float(np.ptp(means)) if len(means) else 1.0
        a = max(float(np.median(variances)) if len(variances) else 1.0, 1e-12) / max(span, 1e-6)
        a *= 1e-3
        b = float(np.median(variances)) if len(variances) else 1.0
    # The darkest bin: the zero-photon level of fluorescence background (its mean
    # is the offset, its variance the read noise) when there is background.
    dark, read_var = float(means[0]), max(float(variances[0]), 0.0)
    return NoiseModel("poisson-gaussian", gain=float(a), offset=dark,
                      read_noise=float(math.sqrt(read_var)), b=float(b),
                      sigma=float(math.sqrt(read_var)))


IDENTITY = NoiseModel()
