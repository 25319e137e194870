"""Synthetic images with known ground truth, for sample data, tests and benchmarks.

Generated in code (nothing is downloaded), deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticNuclei:
    """A noisy nuclei image with its clean version and foreground mask."""

    noisy: np.ndarray  # uint8 (Y, X)
    clean: np.ndarray  # float32 (Y, X), 8-bit scale
    mask: np.ndarray  # uint8 (Y, X), 1 = nucleus
    noise_sigma: float


def synthetic_nuclei(
    shape: tuple[int, int] = (256, 256),
    *,
    n_nuclei: int | None = None,
    radius: tuple[float, float] = (9.0, 18.0),
    noise_sigma: float = 30.0,
    background: float = 30.0,
    foreground: tuple[float, float] = (120.0, 200.0),
    seed: int = 0,
) -> SyntheticNuclei:
    """Ellipsoidal nuclei with textured interiors on a dim background.

    Parameters
    ----------
    shape : (int, int)
        Image size.
    n_nuclei : int, optional
        Number of nuclei; by default about one per 2500 pixels.
    radius : (float, float)
        Range of the ellipse semi-axes in pixels.
    noise_sigma : float
        Standard deviation of additive Gaussian noise on the 8-bit scale.
    background, foreground : float, (float, float)
        Background level and range of nucleus brightness (8-bit scale).
    seed : int
        Seed of the generator.
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    h, w = shape
    if n_nuclei is None:
        n_nuclei = max(1, int(h * w / 2500))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mask = np.zeros(shape, dtype=bool)
    clean = np.full(shape, background, dtype=np.float32)
    texture = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), 2.0)
    texture /= texture.std() + 1e-6
    for _ in range(n_nuclei * 4):
        if n_nuclei <= 0:
            break
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a, b = rng.uniform(*radius, size=2)
        t = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(t) + dy * np.sin(t)) / a
        v = (-dx * np.sin(t) + dy * np.cos(t)) / b
        nucleus = u**2 + v**2 <= 1.0
        if not nucleus.any() or (nucleus & ndi.binary_dilation(mask, iterations=2)).any():
            continue  # keep nuclei apart so the mask is unambiguous
        level = rng.uniform(*foreground)
        clean[nucleus] = level * (1.0 + 0.12 * texture[nucleus])
        mask |= nucleus
        n_nuclei -= 1
    # Soft edges as in a real, slightly blurred acquisition.
    clean = ndi.gaussian_filter(clean, 1.0).astype(np.float32)
    noisy = clean + rng.normal(0.0, noise_sigma, size=shape).astype(np.float32)
    noisy = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    return SyntheticNuclei(noisy, clean, mask.astype(np.uint8), float(noise_sigma))
