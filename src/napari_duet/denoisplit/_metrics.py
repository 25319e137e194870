"""Split-quality metrics: range-invariant PSNR, SSIM and MS-SSIM per channel.

Predictions of a split are only defined up to each channel's intensity
scale, so all metrics first fit the prediction to the (standardised)
reference with the least-squares scale, as the range-invariant PSNR does.
"""

from __future__ import annotations

import numpy as np

from ..core.metrics import range_invariant_psnr

_MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


def _fit_to_reference(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a·(pred − mean), standardised ref) with the least-squares a."""
    r = np.asarray(ref, np.float64)
    r = (r - r.mean()) / max(r.std(), 1e-12)
    x = np.asarray(pred, np.float64)
    x = x - x.mean()
    a = float((x * r).sum() / max((x * x).sum(), 1e-12))
    return a * x, r


def _ssim_parts(x, y, data_range, sigma=1.5):
    from scipy.ndimage import gaussian_filter

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = gaussian_filter(x, sigma), gaussian_filter(y, sigma)
    vx = gaussian_filter(x * x, sigma) - mx * mx
    vy = gaussian_filter(y * y, sigma) - my * my
    cov = gaussian_filter(x * y, sigma) - mx * my
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    cs = (2 * cov + c2) / (vx + vy + c2)
    return float(np.mean(lum * cs)), float(np.mean(cs))


def ms_ssim(pred: np.ndarray, ref: np.ndarray, data_range: float | None = None,
            scales: int = 5) -> float:
    """Multi-scale SSIM of 2D images (Gaussian window σ 1.5, 2x2 mean down-sampling).

    Uses as many of the 5 standard scales as the image allows (the coarsest
    at least 16 px), renormalising the standard weights.
    """
    x = np.asarray(pred, np.float64)
    y = np.asarray(ref, np.float64)
    if data_range is None:
        data_range = float(y.max() - y.min()) or 1.0
    n = 1
    while n < scales and min(x.shape) // 2**n >= 16:
        n += 1
    w = np.asarray(_MS_WEIGHTS[:n])
    w = w / w.sum()
    vals = []
    for i in range(n):
        full, cs = _ssim_parts(x, y, data_range)
        vals.append(full if i == n - 1 else cs)
        if i < n - 1:
            h, wd = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
            x = x[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean((1, 3))
            y = y[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean((1, 3))
    vals = np.maximum(np.asarray(vals), 1e-8)  # negative cs would make the power undefined
    return float(np.prod(vals**w))


def split_metrics(pred, clean, names: tuple[str, ...] | None = None) -> dict[str, dict]:
    """Per channel: range-invariant PSNR, SSIM and MS-SSIM (frames averaged).

    Parameters
    ----------
    pred, clean : array-like
        (C, Y, X) or (C, F, Y, X) prediction and clean reference.
    names : sequence of str, optional
        One per channel (default A, B, C, ...).
    """
    from skimage.metrics import structural_similarity

    pred = np.asarray(pred, np.float64)
    clean = np.asarray(clean, np.float64)
    if names is None:
        from ._data import channel_letter

        names = tuple(channel_letter(c) for c in range(pred.shape[0]))
    if (pred.shape != clean.shape or pred.ndim not in (3, 4) or pred.shape[0] != len(names)
            or pred.shape[0] < 2):
        raise ValueError(f"need (C, ...) arrays of the same shape, C = {len(names)}, got "
                         f"{pred.shape}, "
                         f"{clean.shape}")
    out = {}
    for c, name in enumerate(names):
        p = pred[c][None] if pred.ndim == 3 else pred[c]
        g = clean[c][None] if clean.ndim == 3 else clean[c]
        rows = []
        for pf, gf in zip(p, g, strict=True):
            x, r = _fit_to_reference(pf, gf)
            rng = float(r.max() - r.min()) or 1.0
            rows.append((range_invariant_psnr(pf, gf),
                         float(structural_similarity(x, r, data_range=rng)),
                         ms_ssim(x, r, data_range=rng)))
        psnr, ssim, msssim = np.mean(rows, axis=0)
        out[name] = {"ri_psnr": float(psnr), "ri_ssim": float(ssim), "ri_ms_ssim": float(msssim)}
    return out


def seam_metrics(pred, reference, seams_y, seams_x, *, width: int = 2) -> dict[str, float]:
    """Tiling artefacts: the error at tile seams against the error inside tiles.

    The prediction is first fitted to the reference by least squares (gain
    and offset), as the range-invariant metrics do.  Then, with e the error:

    * ``rmse_seam`` / ``rmse_interior``: RMS of e within ``width`` pixels of a
      seam, and elsewhere;
    * ``jump_seam`` / ``jump_interior``: mean |step of e| between neighbouring
      rows (columns) across a seam, and between all other neighbouring rows
      (columns) at least ``width`` pixels from a seam.  A visible seam is a
      step in the error; ``jump_ratio`` = seam / interior is 1 without one.

    Parameters
    ----------
    pred, reference : array-like
        (Y, X) images (or (C, Y, X): channels are pooled).
    seams_y, seams_x : sequence of int
        Seam rows and columns (the first row/column of the next tile), e.g.
        from :func:`._predict.tile_seams`.
    """
    p = np.asarray(pred, np.float64)
    r = np.asarray(reference, np.float64)
    if p.shape != r.shape:
        raise ValueError(f"pred {p.shape} and reference {r.shape} differ in shape")
    if p.ndim == 2:
        p, r = p[None], r[None]
    errs = []
    for pc, rc in zip(p, r, strict=True):
        x = np.stack([pc.ravel(), np.ones(pc.size)], 1)
        coef, *_ = np.linalg.lstsq(x, rc.ravel(), rcond=None)
        errs.append((x @ coef).reshape(pc.shape) - rc)
    e = np.stack(errs)  # (C, Y, X)
    h, w = e.shape[-2:]
    near_y = np.zeros(h, bool)
    near_x = np.zeros(w, bool)
    for s in seams_y:
        near_y[max(0, s - width) : s + width] = True
    for s in seams_x:
        near_x[max(0, s - width) : s + width] = True
    band = near_y[:, None] | near_x[None, :]
    band = np.broadcast_to(band, e.shape)
    # Steps between row y-1 and y (index y-1 of the diff), and likewise for columns.
    dy = np.abs(np.diff(e, axis=-2))
    dx = np.abs(np.diff(e, axis=-1))
    seam_rows = np.zeros(h - 1, bool)
    seam_cols = np.zeros(w - 1, bool)
    for s in seams_y:
        seam_rows[s - 1] = True
    for s in seams_x:
        seam_cols[s - 1] = True
    seam_steps = np.concatenate([dy[..., seam_rows, :].ravel(), dx[..., seam_cols].ravel()])
    inner_steps = np.concatenate([dy[..., ~near_y[1:] & ~near_y[:-1], :].ravel(),
                                  dx[..., ~near_x[1:] & ~near_x[:-1]].ravel()])

    def rms(a):
        return float(np.sqrt(np.mean(a**2))) if a.size else float("nan")

    def mean(a):
        return float(np.mean(a)) if a.size else float("nan")

    out = {
        "rmse_seam": rms(e[band]), "rmse_interior": rms(e[~band]),
        "jump_seam": mean(seam_steps), "jump_interior": mean(inner_steps),
        "n_seams": len(seams_y) + len(seams_x),
    }
    out["rmse_ratio"] = out["rmse_seam"] / max(out["rmse_interior"], 1e-12)
    out["jump_ratio"] = out["jump_seam"] / max(out["jump_interior"], 1e-12)
    return out
