"""Synthetic volumes with known clean data for the NS-N2N tests."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def make_clean(z: int = 10, y: int = 48, x: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth blobs with sharp edges that change slowly from slice to slice, in [0, 1]."""
    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.random((z, y, x)), (1.5, 3, 3))
    f = (f - f.min()) / (f.max() - f.min())
    v = 0.6 * (f > 0.5) + 0.4 * f
    return ndimage.gaussian_filter(v, (0, 0.7, 0.7)).astype(np.float32)


def add_noise(clean: np.ndarray, sigma: float = 0.1, correlated: bool = False, seed: int = 1):
    rng = np.random.default_rng(seed)
    n = rng.standard_normal(clean.shape)
    if correlated:
        n = ndimage.gaussian_filter(n, (0, 1, 1))
        n /= n.std()
    return (clean + sigma * n).astype(np.float32)


# The 2.5D network (context "auto" would pick the blind-spot one for this white noise).
FAST = {"iterations": 60, "width": 8, "batch_size": 4, "crop_size": 32, "device": "cpu",
        "preview_every": 20, "context": "2.5d"}
