"""Calibration of the posterior-sample std against the real prediction error.

The spread of posterior samples is only proportional to the error; a
per-channel factor (fitted by Gaussian NLL on held-out data, as in the
paper) or a linear map ``a·std + b`` (fitted on RMSE vs. RMV bins, as in
MicroSplit) turns it into an error estimate.

Only noisy targets exist at training time.  Their error against the
prediction is the clean error plus the noise: E[(x - m)²] = E[(s - m)²] +
Var(noise | s).  When the noise variance is known (from the noise models, or
the Gaussian likelihood's predicted variance) it is added to the model
variance in the fit and subtracted from the binned squared errors, so the
calibrated std estimates the error against the *clean* signal.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core.errors import DuetInputError
from ..core.plotting import save_figure


def _flat(*arrays):
    return [np.asarray(a, dtype=np.float64).ravel() for a in arrays]


def fit_scalar_calibration(
    mean, std, target, noise_var=None
) -> float:
    """Factor k minimising the Gaussian NLL of ``target`` under N(mean, k²·std² + noise_var).

    Returns
    -------
    float
        k, the factor that multiplies the predicted std.
    """
    from scipy.optimize import minimize_scalar

    m, s, t = _flat(mean, std, target)
    nv = np.zeros_like(m) if noise_var is None else _flat(noise_var)[0]
    err2 = (t - m) ** 2
    s2 = np.maximum(s**2, 1e-12)
    floor = 1e-12 * max(float(np.mean(err2)), 1e-12)

    def nll(log_k2):
        var = np.exp(log_k2) * s2 + nv + floor
        return float(np.mean(np.log(var) + err2 / var))

    res = minimize_scalar(nll, bounds=(-20.0, 20.0), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(0.5 * res.x))


def calibration_stats(mean, std, target, *, noise_var=None, num_bins: int = 30,
                      drop_quantile: float = 1e-3) -> dict:
    """RMV and RMSE per bin of predicted std (uniform bins between min and max).

    Bins holding fewer than ``drop_quantile`` of the pixels are dropped.  With
    ``noise_var`` the noise's share is subtracted from each bin's MSE.

    Returns
    -------
    dict
        ``rmv``, ``rmse``, ``count`` (lists, one entry per kept bin) and
        ``ence`` (mean relative gap |RMV - RMSE| / RMV over the kept bins).
    """
    m, s, t = _flat(mean, std, target)
    nv = np.zeros_like(m) if noise_var is None else _flat(noise_var)[0]
    lo, hi = float(s.min()), float(s.max())
    if hi <= lo:
        hi = lo + 1e-12
    # All bins 0..num_bins-1, including the top one (the reference drops it by mistake).
    idx = np.clip(((s - lo) / (hi - lo) * num_bins).astype(int), 0, num_bins - 1)
    count = np.bincount(idx, minlength=num_bins)
    var_sum = np.bincount(idx, weights=s**2, minlength=num_bins)
    err_sum = np.bincount(idx, weights=(t - m) ** 2 - nv, minlength=num_bins)
    keep = count > max(drop_quantile * s.size, 0)
    rmv = np.sqrt(var_sum[keep] / count[keep])
    rmse = np.sqrt(np.maximum(err_sum[keep] / count[keep], 0.0))
    # Expected normalised calibration error (Levi et al.): relative to the predicted RMV.
    ence = float(np.mean(np.abs(rmv - rmse) / np.maximum(rmv, 1e-12))) if keep.any() else 0.0
    return {"rmv": rmv.tolist(), "rmse": rmse.tolist(), "count": count[keep].tolist(),
            "ence": ence}


def fit_linear_calibration(stats: dict) -> tuple[float, float]:
    """Least-squares line RMSE ≈ a·RMV + b over the bins of :func:`calibration_stats`."""
    rmv, rmse = np.asarray(stats["rmv"]), np.asarray(stats["rmse"])
    if rmv.size < 2 or np.ptp(rmv) <= 0:
        a = float(np.sum(rmse) / max(np.sum(rmv), 1e-12))
        return a, 0.0
    a, b = np.polyfit(rmv, rmse, 1)
    return float(a), float(b)


def fit_calibration(mean, std, target, noise_var=None, num_bins: int = 30) -> dict:
    """Scalar and linear calibration of each channel.

    Parameters
    ----------
    mean, std, target : array-like
        (C, ...) MMSE prediction, uncalibrated sample std and target, one
        entry per channel (C = 2 to 4).
    noise_var : array-like, optional
        (C, ...) noise variance of the target (noisy targets).

    Returns
    -------
    dict
        ``{"scalar": [k_a, k_b, ...], "linear": [[a, b], [a, b], ...],
        "stats_before": [...], "stats_after": [...]}`` (stats: see
        :func:`calibration_stats`, after = with the scalar applied).
    """
    mean, std, target = (np.asarray(x) for x in (mean, std, target))
    if not (mean.shape == std.shape == target.shape) or mean.ndim < 2:
        raise DuetInputError("calibration needs (C, ...) mean, std and target of equal shape")
    out = {"scalar": [], "linear": [], "stats_before": [], "stats_after": []}
    for c in range(mean.shape[0]):
        nv = None if noise_var is None else np.asarray(noise_var)[c]
        k = fit_scalar_calibration(mean[c], std[c], target[c], nv)
        before = calibration_stats(mean[c], std[c], target[c], noise_var=nv, num_bins=num_bins)
        after = calibration_stats(mean[c], k * std[c], target[c], noise_var=nv,
                                  num_bins=num_bins)
        out["scalar"].append(k)
        out["linear"].append(list(fit_linear_calibration(before)))
        out["stats_before"].append(before)
        out["stats_after"].append(after)
    return out


def apply_calibration(std: np.ndarray, calibration: dict | None, mode: str = "scalar"):
    """Calibrated std (C, ...) from the uncalibrated one; ``mode`` scalar, linear or none."""
    if calibration is None or mode == "none":
        return std
    out = np.empty_like(std)
    for c in range(std.shape[0]):
        if mode == "scalar":
            out[c] = std[c] * calibration["scalar"][c]
        elif mode == "linear":
            a, b = calibration["linear"][c]
            out[c] = np.maximum(std[c] * a + b, 0.0)
        else:
            raise DuetInputError(f"unknown calibration mode {mode!r}: use scalar, linear or none")
    return out


def calibration_plot(stats: list[dict], path: str | os.PathLike,
                     channel_names: tuple[str, ...] = ("A", "B", "C", "D"),
                     title: str = "RMSE vs RMV") -> Path:
    """Plot RMSE against RMV per channel (ideal: the diagonal) to a PNG.

    Parameters
    ----------
    stats : list of dict
        One :func:`calibration_stats` result per channel.
    path : path-like
        PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    top = 0.0
    for st, name in zip(stats, channel_names, strict=False):
        ax.plot(st["rmv"], st["rmse"], "o-", ms=3, label=f"{name} (ENCE {st['ence']:.2f})")
        top = max(top, max(st["rmv"], default=0), max(st["rmse"], default=0))
    ax.plot([0, top], [0, top], "k--", lw=1, label="ideal")
    ax.set(xlabel="RMV (predicted std)", ylabel="RMSE", title=title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
