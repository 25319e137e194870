"""The energy's data terms and scales: residuals of the experts, noise, lambda's scale.

The data term of class ``k`` is the channel-summed square of the expert's
box-filtered blind residual (see :func:`data_terms`); the scale of lambda
comes from the spread of the data-term differences and from their noise
(:func:`noise_scale`), the noise from the image itself (:func:`estimate_noise`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ._experts import ExpertOutput, box_filter


def robust_scale(r: np.ndarray) -> float:
    """1.4826 * MAD of the pairwise data-term differences (mean over class pairs)."""
    k = r.shape[0]
    vals = []
    for i in range(k):
        for j in range(i + 1, k):
            g = (r[i] - r[j]).ravel()
            vals.append(1.4826 * float(np.median(np.abs(g - np.median(g)))))
    s = float(np.mean(vals))
    if not s > 0:  # degenerate (e.g. piecewise-constant noise-free image)
        s = float(np.mean([np.std(r[i] - r[j]) for i in range(k) for j in range(i + 1, k)]))
    return s if s > 0 else 1e-6


_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def estimate_noise(f: np.ndarray) -> float:
    """Robust white-noise std of a (C, Y, X) image (median form of Immerkaer's estimator)."""
    vals = []
    for ch in f:
        lap = ndi.convolve(ch, _IMMERKAER, mode="reflect")
        vals.append(1.4826 * float(np.median(np.abs(lap))) / 6.0)  # ||kernel|| = 6
    return float(np.mean(vals))


def noise_scale(f: np.ndarray, outs: list[ExpertOutput], sigma_n: float, filter_size: int,
                 variances: np.ndarray | None = None) -> float:
    """Noise std of the data-term difference ``g = r_j - r_i``.

    With residuals ``e = box(f - D)`` sharing the same noise ``n`` (std
    ``sigma_n / F`` after an F x F box filter) and data terms ``e^2 / v``,
    ``g = e_j^2 / v_j - e_i^2 / v_i`` carries the noise
    ``2 (e_j / v_j - e_i / v_i) n``.  With ``v = 1`` this is
    ``2 |D_i - D_j| sigma_n / F``.
    """
    k = len(outs)
    v = np.ones(k, np.float32) if variances is None else np.asarray(variances, np.float32)
    res = [box_filter(f - o.blind, filter_size) / v[i] for i, o in enumerate(outs)]
    vals = []
    for i in range(k):
        for j in range(i + 1, k):
            diff = np.sqrt(((res[j] - res[i]) ** 2).sum(axis=0))
            vals.append(2.0 * float(np.median(diff)) * sigma_n / max(1, filter_size))
    return float(np.mean(vals))


def data_terms(f: np.ndarray, outs: list[ExpertOutput], filter_size: int,
                masks: list[np.ndarray] | None = None,
                var_floor: float = 0.0,
                local_energy: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-class data term from the channel-summed squared box-filtered blind residual ``e^2``.

    Without ``masks``: ``r_k = e_k^2`` (Chan-Vese).  With ``masks`` (region
    variance, a Gaussian likelihood per region): ``r_k = e_k^2 / v_k + log v_k``
    with ``v_k`` the mean of ``e_k^2`` over region ``k`` (its maximum-likelihood
    variance, at least ``var_floor``).  A region whose intensities spread
    more (nuclei of varied brightness) then claims the pixels between the
    two levels that a fixed midpoint threshold gives away.

    Returns ``(r, v)``; ``v`` is None without masks.
    """
    r = np.empty((len(outs),) + f.shape[1:], np.float32)
    for k, out in enumerate(outs):
        res = f - out.blind
        if local_energy:
            # Square, then average: zero-mean errors (a texture the expert cannot
            # predict) still count, where averaging first would cancel them.
            r[k] = box_filter((res * res).sum(axis=0), filter_size)
        else:
            res = box_filter(res, filter_size)
            r[k] = (res * res).sum(axis=0)
    if masks is None:
        return r, None
    v = np.array([max(float(r[k][m].mean()) if m.any() else 0.0, var_floor, 1e-12)
                  for k, m in enumerate(masks)], np.float32)
    for k in range(len(outs)):
        r[k] = r[k] / v[k] + np.float32(np.log(v[k]))
    return r, v


def auto_filter_size(f: np.ndarray, masks: list[np.ndarray], sigma_n: float,
                     z: float = 2.0, max_size: int = 3) -> int:
    """Smallest odd box size F <= ``max_size`` with ``delta * F / (2 sigma_n) >= z``.

    ``delta`` is the smallest difference between the (channel-mean) intensity
    means of two initial regions adjacent in brightness; ``delta / 2`` is the
    distance of the midpoint threshold from either level and ``sigma_n / F``
    the noise left after an F x F box filter.  Clean images get no filter
    (sharp data term at edges), noisy ones a 3 x 3 box.
    """
    g = f.mean(axis=0)
    means = sorted(float(g[m].mean()) for m in masks if m.any())
    if len(means) < 2 or not sigma_n > 0:
        return 1
    delta = min(b - a for a, b in zip(means[:-1], means[1:], strict=True))
    size = 1
    while size < max_size and delta * size / (2.0 * sigma_n) < z:
        size += 2
    return size
