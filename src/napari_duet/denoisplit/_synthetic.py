"""Synthetic two-structure data with known ground truth (filaments vs. puncta)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticSplit:
    """Clean and noisy versions of two structures; ``noisy_*`` are independent acquisitions."""

    clean_a: np.ndarray  # filaments, float32
    clean_b: np.ndarray  # puncta, float32
    noisy_a: np.ndarray
    noisy_b: np.ndarray
    gain: float
    read_noise: float


def _filaments(rng: np.random.Generator, h: int, w: int, count: int) -> np.ndarray:
    """``count`` thin filaments, each a smooth random walk drawn as a line of ones (h, w)."""
    a = np.zeros((h, w), np.float32)
    for _ in range(count):
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        ang = rng.uniform(0, 2 * np.pi)
        for _ in range(int(1.5 * max(h, w))):
            ang += rng.normal(0, 0.08)
            y, x = y + np.sin(ang), x + np.cos(ang)
            if 0 <= y < h and 0 <= x < w:
                a[int(y), int(x)] = 1.0
    return a


def synthetic_split(
    shape: tuple[int, ...] = (128, 128),
    *,
    n_filaments: int | None = None,
    n_puncta: int | None = None,
    peak: float = 200.0,
    background: float = 10.0,
    gain: float = 4.0,
    read_noise: float = 8.0,
    seed: int = 0,
) -> SyntheticSplit:
    """Random filaments (channel A) and round puncta (channel B) with Poisson-Gaussian noise.

    Parameters
    ----------
    shape : (Y, X) or (N, Y, X)
        Image or stack size.
    n_filaments, n_puncta : int, optional
        Per frame; by default proportional to the area.
    peak, background : float
        Brightness of the structures and the background level.
    gain : float
        Photon gain: noisy = gain * Poisson(clean / gain) + N(0, read_noise²).
    read_noise : float
        Standard deviation of the additive Gaussian noise.
    seed : int
        Seed of the generator.
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    frames = (1,) + tuple(shape) if len(shape) == 2 else tuple(shape)
    n, h, w = frames
    area = h * w
    nf = n_filaments if n_filaments is not None else max(2, area // 1500)
    npn = n_puncta if n_puncta is not None else max(3, area // 300)
    a = np.zeros(frames, np.float32)
    b = np.zeros(frames, np.float32)
    for i in range(n):
        a[i] = ndi.gaussian_filter(_filaments(rng, h, w, nf), 1.0)
        ys, xs = rng.integers(0, h, npn), rng.integers(0, w, npn)
        b[i, ys, xs] = rng.uniform(0.6, 1.0, npn)
        b[i] = ndi.gaussian_filter(b[i], 2.0)
    a = background + peak * a / max(a.max(), 1e-6)
    b = background + peak * b / max(b.max(), 1e-6)

    def noisy(clean):
        return (gain * rng.poisson(clean / gain) + rng.normal(0, read_noise, clean.shape)).astype(
            np.float32
        )

    if len(shape) == 2:
        a, b = a[0], b[0]
    return SyntheticSplit(a.astype(np.float32), b.astype(np.float32), noisy(a), noisy(b),
                          gain, read_noise)


STRUCTURES = ("filaments", "puncta", "blobs", "rings")


@dataclass(frozen=True)
class SyntheticMulti:
    """Clean and noisy versions of N structures, stacked on the first axis."""

    clean: np.ndarray  # (N, ...) float32
    noisy: np.ndarray  # (N, ...) independent noisy acquisitions
    names: tuple[str, ...]
    gain: float
    read_noise: float


def synthetic_multi(
    shape: tuple[int, ...] = (128, 128),
    n_structures: int = 3,
    *,
    peak: float = 200.0,
    background: float = 10.0,
    gain: float = 4.0,
    read_noise: float = 8.0,
    seed: int = 0,
) -> SyntheticMulti:
    """Up to four distinct structures with Poisson-Gaussian noise.

    In order: thin random filaments, small round puncta, large smooth blobs
    (nucleus-like) and hollow rings.  Each channel is scaled to
    ``background + peak * structure / max``, then made noisy as in
    :func:`synthetic_split`.
    """
    from scipy import ndimage as ndi

    if not 2 <= n_structures <= len(STRUCTURES):
        raise ValueError(f"n_structures must be 2 to {len(STRUCTURES)}")
    rng = np.random.default_rng(seed)
    frames = (1,) + tuple(shape) if len(shape) == 2 else tuple(shape)
    n, h, w = frames
    area = h * w
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((n_structures, *frames), np.float32)
    for i in range(n):
        out[0, i] = ndi.gaussian_filter(_filaments(rng, h, w, max(2, area // 1500)), 1.0)
        # Puncta: small bright spots (the values are drawn before the places).
        b = np.zeros((h, w), np.float32)
        k = max(3, area // 300)
        b[rng.integers(0, h, k), rng.integers(0, w, k)] = rng.uniform(0.6, 1.0, k)
        out[1, i] = ndi.gaussian_filter(b, 2.0)
        if n_structures > 2:
            # Blobs: large filled ellipses, softened.
            c = np.zeros((h, w), np.float32)
            for _ in range(max(1, area // 3000)):
                cy, cx = rng.uniform(0, h), rng.uniform(0, w)
                ry, rx = rng.uniform(7, 13, 2)
                c[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = rng.uniform(0.6, 1.0)
            out[2, i] = ndi.gaussian_filter(c, 2.5)
        if n_structures > 3:
            # Rings: hollow circles of radius 4-8 px.
            d = np.zeros((h, w), np.float32)
            for _ in range(max(2, area // 1500)):
                cy, cx = rng.uniform(0, h), rng.uniform(0, w)
                r = rng.uniform(4, 8)
                d[np.abs(np.hypot(yy - cy, xx - cx) - r) < 0.8] = 1.0
            out[3, i] = ndi.gaussian_filter(d, 0.8)
    for c in range(n_structures):
        out[c] = background + peak * out[c] / max(float(out[c].max()), 1e-6)
    noisy = (gain * rng.poisson(out / gain) + rng.normal(0, read_noise, out.shape)).astype(
        np.float32)
    if len(shape) == 2:
        out, noisy = out[:, 0], noisy[:, 0]
    return SyntheticMulti(out.astype(np.float32), noisy, STRUCTURES[:n_structures], gain,
                          read_noise)
