"""Noise2Fast checkerboard downsampling and its inverse.

An (even-sized) image is split into its two checkerboard phases, squeezed
either vertically (``A``, ``B``: shape (H/2, W)) or horizontally (``C``,
``D``: shape (H, W/2)).  Each phase is a plausible image of the same scene
with independent noise, so a network trained to map one phase to the other
learns to denoise without ever seeing a pixel's own noise (Noise2Fast).

* ``A``: pixels with (row + col) odd, squeezed vertically.
* ``B``: pixels with (row + col) even, squeezed vertically.
* ``C``: (row + col) odd, squeezed horizontally.
* ``D``: (row + col) even, squeezed horizontally.

Training pairs (input -> target): B->A, A->B, D->C, C->D.  All functions act on
the last two axes, so channel-first stacks (C, H, W) work as well.
"""

from __future__ import annotations

import numpy as np

__all__ = ["checkerboard_split", "checkerboard_merge", "blind_prediction", "even_crop"]


def even_crop(img: np.ndarray) -> np.ndarray:
    """Crop the last two axes to even sizes (drop the last row/column if odd)."""
    h, w = img.shape[-2:]
    return img[..., : h - h % 2, : w - w % 2]


def checkerboard_split(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split an image into the four squeezed checkerboard phases ``(A, B, C, D)``.

    Parameters
    ----------
    img : ndarray (..., H, W)
        H and W must be even (see :func:`even_crop`).
    """
    img = np.asarray(img)
    h, w = img.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"checkerboard_split needs even sizes, got {h}x{w}")
    lead = img.shape[:-2]
    r = img.reshape(lead + (h // 2, 2, w))
    jeven = np.arange(w) % 2 == 0
    a = np.where(jeven, r[..., 1, :], r[..., 0, :])
    b = np.where(jeven, r[..., 0, :], r[..., 1, :])
    c4 = img.reshape(lead + (h, w // 2, 2))
    ieven = (np.arange(h) % 2 == 0)[:, None]
    c = np.where(ieven, c4[..., 1], c4[..., 0])
    d = np.where(ieven, c4[..., 0], c4[..., 1])
    return a, b, c, d


def checkerboard_merge(
    a: np.ndarray, b: np.ndarray, *, horizontal: bool = False
) -> np.ndarray:
    """Inverse of the split: put the odd phase ``a`` and even phase ``b`` back in place.

    With ``horizontal=False`` the inputs are (…, H/2, W) (``A``, ``B``); with
    ``horizontal=True`` they are (…, H, W/2) (``C``, ``D``).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if not horizontal:
        h2, w = a.shape[-2:]
        jeven = np.arange(w) % 2 == 0
        row0 = np.where(jeven, b, a)  # rows 2i: even phase where j even
        row1 = np.where(jeven, a, b)
        out = np.stack([row0, row1], axis=-2)  # (…, H/2, 2, W)
        return out.reshape(a.shape[:-2] + (2 * h2, w))
    h, w2 = a.shape[-2:]
    ieven = (np.arange(h) % 2 == 0)[:, None]
    col0 = np.where(ieven, b, a)
    col1 = np.where(ieven, a, b)
    out = np.stack([col0, col1], axis=-1)  # (…, H, W/2, 2)
    return out.reshape(a.shape[:-2] + (h, 2 * w2))


def blind_prediction(img: np.ndarray, predict) -> np.ndarray:
    """Predict every pixel from the *other* checkerboard phase only.

    ``predict(phase) -> prediction of the complementary phase`` is applied to
    the four squeezed phases; the vertical and horizontal reconstructions are
    averaged.  A pixel's own noise never enters its prediction, so the
    residual ``img - prediction`` is an honest measure of how well the expert
    models that pixel (no credit for copying the noise).

    Odd sizes are handled by reflect-padding one row/column.
    """
    img = np.asarray(img, np.float32)
    h, w = img.shape[-2:]
    ph, pw = h % 2, w % 2
    if ph or pw:
        pad = [(0, 0)] * (img.ndim - 2) + [(0, ph), (0, pw)]
        img = np.pad(img, pad, mode="reflect" if min(h, w) > 1 else "edge")
    a, b, c, d = checkerboard_split(img)
    pa, pb, pc, pd = predict(b), predict(a), predict(d), predict(c)
    vert = checkerboard_merge(pa, pb)
    hori = checkerboard_merge(pc, pd, horizontal=True)
    out = 0.5 * (vert + hori)
    return out[..., :h, :w].astype(np.float32)
