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


def matched_iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of every (truth object, predicted object) pair: array (n_truth, n_pred)."""
    p = np.asarray(pred).astype(np.int64).ravel()
    t = np.asarray(truth).astype(np.int64).ravel()
    if p.size != t.size:
        raise ValueError(f"shape mismatch: {np.shape(pred)} vs {np.shape(truth)}")
    _, p = np.unique(p, return_inverse=True)  # compact ids, 0 stays first if present
    _, t = np.unique(t, return_inverse=True)
    has_bg_p = np.any(np.asarray(pred).ravel() == 0)
    has_bg_t = np.any(np.asarray(truth).ravel() == 0)
    n_p, n_t = int(p.max()) + 1, int(t.max()) + 1
    inter = np.bincount(t * n_p + p, minlength=n_t * n_p).reshape(n_t, n_p).astype(np.float64)
    area_t, area_p = inter.sum(axis=1), inter.sum(axis=0)
    union = area_t[:, None] + area_p[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return iou[int(has_bg_t):, int(has_bg_p):]


def average_precision(pred: np.ndarray, truth: np.ndarray,
                      thresholds=(0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
                      ) -> dict[float, float]:
    """Instance-segmentation precision at IoU thresholds (DSB2018 metric).

    At each threshold ``t`` >= 0.5 a predicted object matches a true one when
    their IoU exceeds ``t`` (such a match is unique), and
    ``AP(t) = TP / (TP + FP + FN)``; the DSB2018 score is the mean over
    ``t`` = 0.5, 0.55, ..., 0.95.  Both empty: 1.0.
    """
    if min(thresholds) < 0.5:
        raise ValueError("thresholds below 0.5 need an assignment step; use t >= 0.5")
    iou = matched_iou(pred, truth)
    n_t, n_p = iou.shape
    out = {}
    for t in thresholds:
        tp = int(np.sum(iou > t))
        denom = n_t + n_p - tp  # TP + FN + FP
        out[float(t)] = 1.0 if denom == 0 else tp / denom
    return out
