"""Quality metrics used by tests and benchmarks (array in, float out)."""

from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two binary masks (1.0 if both empty)."""
    a = np.asarray(pred) > 0
    b = np.asarray(truth) > 0
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(a, b).sum() / denom)


def psnr(x: np.ndarray, ref: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB; ``data_range`` defaults to ref's max - min."""
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if data_range is None:
        data_range = float(ref.max() - ref.min())
    mse = float(np.mean((x - ref) ** 2))
    if mse == 0:
        return float("inf")
    return float(10 * np.log10(data_range**2 / mse))


def range_invariant_psnr(x: np.ndarray, ref: np.ndarray) -> float:
    """PSNR after the least-squares affine fit of ``x`` to ``ref`` (denoiSplit's RI-PSNR).

    The reference is standardised (zero mean, unit std); the prediction is fit
    to it with the best scale and offset, and the PSNR uses the reference's
    range, so a global intensity mismatch does not count as error.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    ref = (ref - ref.mean()) / max(ref.std(), 1e-12)
    xc = x - x.mean()
    denom = float(np.dot(xc, xc))
    alpha = float(np.dot(xc, ref) / denom) if denom > 0 else 0.0
    fitted = alpha * xc  # ref has zero mean, so the offset is absorbed
    return psnr(fitted, ref, data_range=float(ref.max() - ref.min()))


def ssim(x: np.ndarray, ref: np.ndarray, data_range: float | None = None) -> float:
    """Structural similarity (scikit-image), data range from the reference by default."""
    from skimage.metrics import structural_similarity

    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if data_range is None:
        data_range = float(ref.max() - ref.min()) or 1.0
    return float(structural_similarity(x, ref, data_range=data_range))
