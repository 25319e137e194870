"""Helpers shared by the denoiSplit tests."""

from __future__ import annotations

import numpy as np


def poisson_gaussian(n: int, seed: int = 0, gain: float = 10.0, read: float = 50.0):
    """(signal, observation) pairs: obs = gain * Poisson(s / gain) + N(0, read²)."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0, 5000, size=n).astype(np.float32)
    x = (rng.poisson(s / gain) * gain + rng.normal(0, read, size=n)).astype(np.float32)
    return s, x
